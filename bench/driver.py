"""Runs every benchmark side by side and writes bench/RESULTS.md.

Called by bench/run after the Release build; see bench/run for the knobs.
Every number in the report is measured in this run: the implementations
alternate (the order rotates every repetition) so that a change in machine
load hits all of them, and the report gives medians, spreads and ratios,
never absolute times alone.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time

PYTHON = "/usr/bin/python3"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

WORKLOAD_TEXT = {
    "w1": "W1 — MLP 64-32-16-10 on scikit-learn's digits, full batch (1437 rows), Adam 0.01, "
          "100 epochs, test accuracy at the end (the PyTorch tutorial's loop)",
    "w2": "W2 — the same MLP, shuffled mini-batches of 32 (45 steps per epoch), Adam 0.01, "
          "20 epochs, validation after every epoch",
    "w3": "W3 — LeNet-5 on Fashion-MNIST (60,000 images), batch 64 (938 steps), SGD 0.01 "
          "momentum 0.9, 1 epoch + validation on 10,000",
}
IMPL_TEXT = {
    "hand": "hand-written LibTorch loop",
    "trainloop": "trainloop `fit` (progress to a file, CSV per batch, TensorBoard, accuracy)",
    "torchdata": "LibTorch `torch::data` DataLoader + `Stack`",
    "plain": "Python, plain loop",
    "dataloader": "Python, `DataLoader` loop",
    "skorch": "Python, skorch `NeuralNetClassifier`",
}
SHORT = {"hand": "hand-written", "trainloop": "trainloop", "torchdata": "torch::data", "plain": "Python plain",
         "dataloader": "Python DataLoader", "skorch": "skorch"}
ABLATION_TEXT = {
    "hand": "hand-written loop",
    "fit_loss_only": "`fit`, loss metric only, no callbacks",
    "plus_accuracy": "+ accuracy metric",
    "plus_progress": "+ progress (to a file)",
    "plus_csv": "+ CSV logger (a row per batch)",
    "plus_tensorboard": "+ TensorBoard (every 10 steps) — the workloads' configuration",
}
PIPELINE_TEXT = {
    "epochs": "trainloop `Epochs` (one `index_select` per batch)",
    "prefetch_epochs": "`prefetch(Epochs)` (a background thread, in-memory data)",
    "torch_data_stack": "`torch::data` DataLoader + `Stack`, no workers",
    "torch_dataset_adapter": "trainloop `TorchDataset` over the same torch::data dataset",
    "python_index_select": "Python, `index_select` per batch",
    "python_dataloader": "Python `DataLoader(TensorDataset)`, no workers",
}
CPP_IMPLS = ["hand", "trainloop", "torchdata"]
PY_IMPLS = {"w1": ["plain", "dataloader", "skorch"], "w2": ["plain", "dataloader", "skorch"],
            "w3": ["plain", "dataloader"]}
# Largest allowed difference of test accuracy to the hand-written loop.
TOLERANCE = {"w1": 0.02, "w2": 0.02, "w3": 0.01}
TARGET = {"w1": 1.05, "w2": 1.05, "w3": 1.03}


def log(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def load1():
    return os.getloadavg()[0]


class Runner:
    def __init__(self, args):
        self.args = args
        self.build = os.path.abspath(args.build_dir)
        self.work = os.path.join(self.build, "bench-work")
        self.data = os.path.join(self.work, "data")
        self.logs = os.path.join(self.work, "logs")
        self.env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
                        OPENBLAS_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        self.loads = []
        self.count = 0
        self.pipeline_load = float("nan")
        self.has_skorch = subprocess.run([PYTHON, "-c", "import skorch"], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL).returncode == 0

    def binary(self, name):
        return os.path.join(self.build, "bench", name)

    def result(self, command, label):
        """Runs `command`; returns (its RESULT json, wall seconds, start time)."""
        self.loads.append(load1())
        self.count += 1
        start = time.monotonic()
        proc = subprocess.run(command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=self.work)
        wall = time.monotonic() - start
        with open(os.path.join(self.logs, f"{self.count:04d}-{label}.log"), "w") as out:
            out.write(" ".join(command) + "\n" + proc.stdout)
        if proc.returncode != 0:
            sys.exit(f"bench: {' '.join(command)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            sys.exit(f"bench: {' '.join(command)} printed no RESULT line:\n{proc.stdout[-3000:]}")
        return json.loads(lines[-1][len("RESULT "):]), wall, start


def run_command(runner, workload, impl, runs):
    a = runner.args
    if impl in CPP_IMPLS:
        command = [runner.binary("loop_overhead"), "run", "--data", runner.data, "--workload", workload,
                   "--impl", impl, "--runs", str(runs), "--threads", str(a.threads),
                   "--log-dir", os.path.join(runner.work, f"callbacks-{workload}-{impl}")]
    else:
        command = [PYTHON, os.path.join(HERE, "workloads.py"), "run", "--data", runner.data,
                   "--workload", workload, "--impl", impl, "--runs", str(runs), "--threads", str(a.threads)]
    if a.epochs:
        command += ["--epochs", str(a.epochs)]
    return command


def python_impls(runner, workload):
    return [i for i in PY_IMPLS[workload] if i != "skorch" or runner.has_skorch]


def measure_workloads(runner):
    a = runner.args
    jobs = []
    for workload in a.workloads:
        for impl in CPP_IMPLS + python_impls(runner, workload):
            jobs.append((workload, impl))
    samples = {job: [] for job in jobs}
    rounds = max(a.repeats, a.repeats_w3)
    for r in range(rounds):
        todo = [j for j in jobs if r < (a.repeats_w3 if j[0] == "w3" else a.repeats)]
        shift = r % len(todo)
        todo = todo[shift:] + todo[:shift]
        log(f"workloads, round {r + 1}/{rounds}: {len(todo)} processes (load {load1():.1f})")
        for workload, impl in todo:
            runs = a.runs_w3 if workload == "w3" else a.runs
            result, wall, start = runner.result(run_command(runner, workload, impl, runs), f"{workload}-{impl}")
            result["wall"] = wall
            result["t_spawn"] = start
            result["round"] = r
            samples[(workload, impl)].append(result)
    return samples


def measure_startup(runner):
    """Start-up alone: the interpreter, `import torch`, skorch, and the C++ binary."""
    commands = {
        "python3 -c pass": [PYTHON, "-c", "pass"],
        "python3 -c 'import torch'": [PYTHON, "-c", "import torch; print('RESULT {}')"],
        "python3 -c 'import torch, skorch'": [PYTHON, "-c", "import torch, skorch; print('RESULT {}')"],
        "loop_overhead noop": [runner.binary("loop_overhead"), "noop"],
    }
    if not runner.has_skorch:
        del commands["python3 -c 'import torch, skorch'"]
    walls = {name: [] for name in commands}
    for r in range(runner.args.startup_repeats):
        for name, command in commands.items():
            if name == "python3 -c pass":
                start = time.monotonic()
                subprocess.run(command, env=runner.env, check=True)
                walls[name].append(time.monotonic() - start)
            else:
                walls[name].append(runner.result(command, "startup")[1])
    return walls


def measure_ablation(runner):
    out = {}
    for workload, repeats in (("w1", runner.args.ablation_repeats), ("w2", runner.args.ablation_repeats)):
        if workload not in runner.args.workloads:
            continue
        log(f"ablation {workload} ({repeats} rounds)")
        command = [runner.binary("loop_overhead"), "ablation", "--data", runner.data, "--workload", workload,
                   "--repeats", str(repeats), "--threads", str(runner.args.threads),
                   "--log-dir", os.path.join(runner.work, "ablation")]
        if runner.args.epochs:
            command += ["--epochs", str(runner.args.epochs)]
        out[workload] = runner.result(command, f"ablation-{workload}")[0]
    return out


def measure_pairs(runner):
    """trainloop against the hand-written loop, each training paired with one next to it in one process."""
    a = runner.args
    out = {w: [] for w in a.workloads}
    for p in range(a.pair_processes):
        for w in a.workloads:
            repeats = a.pair_repeats_w3 if w == "w3" else a.pair_repeats
            log(f"pairs {w}, process {p + 1}/{a.pair_processes} ({repeats} rounds)")
            command = [runner.binary("loop_overhead"), "pairs", "--data", runner.data, "--workload", w,
                       "--repeats", str(repeats), "--threads", str(a.threads),
                       "--log-dir", os.path.join(runner.work, "pairs")]
            if a.epochs:
                command += ["--epochs", str(a.epochs)]
            out[w].append(runner.result(command, f"pairs-{w}")[0])
    return out


def config_values(pairs, w, name, key):
    """`key`'s values of configuration `name`, all pairs processes of the workload together."""
    return [x for result in pairs[w] for config in result["configs"] if config["name"] == name
            for x in config[key]]


def pair_ratios(pairs, w, key="paired_cpu_ratios"):
    """Every round's trainloop/hand ratio, all processes of the workload together."""
    return config_values(pairs, w, "trainloop", key)


def measure_pipeline(runner):
    a = runner.args
    log("data pipeline")
    runner.pipeline_load = load1()
    cpp = runner.result([runner.binary("bench_pipeline"), "--data", runner.data, "--repeats",
                         str(a.pipeline_repeats), "--threads", str(a.threads),
                         "--overlap-examples", str(a.overlap_examples)], "pipeline")[0]
    py = runner.result([PYTHON, os.path.join(HERE, "workloads.py"), "pipeline", "--data", runner.data,
                        "--repeats", str(a.pipeline_repeats), "--threads", str(a.threads)], "pipeline-python")[0]
    return cpp, py


def measure_scaling(runner):
    a = runner.args
    log("scaling")
    return runner.result([runner.binary("bench_scaling"), "--repeats", str(a.scaling_repeats), "--threads",
                          str(a.threads), "--steps", *[str(s) for s in a.scaling_steps],
                          "--callback-steps", str(a.callback_steps),
                          "--memory-epochs", str(a.memory_epochs),
                          "--log-dir", os.path.join(runner.work, "scaling")], "scaling")[0]


def measure_distributed(runner):
    """The data-parallel scaling table, as bench/distributed_scaling prints it."""
    a = runner.args
    log("data-parallel scaling")
    runner.loads.append(load1())
    command = [runner.binary("distributed_scaling"), "--images", str(a.distributed_images),
               "--repeats", str(a.distributed_repeats)]
    proc = subprocess.run(command, env=runner.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, cwd=runner.work)
    with open(os.path.join(runner.logs, "distributed.log"), "w") as out:
        out.write(" ".join(command) + "\n" + proc.stdout)
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(command)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    return proc.stdout.strip()


# What each sample of a profile is charged to: the first category (in this
# order) with a frame matching its pattern, among the frames below the loop's
# own entry (TrainingLoop::fit, or the hand-written loop's function).
CATEGORIES = [
    ("CSV logger", r"CsvLogger", None),
    ("TensorBoard", r"TensorBoard|tensorboard::", None),
    ("progress", r"callbacks::.*Progress::", None),
    ("event dispatch (other callbacks)", r"TrainingLoop::emit", None),
    ("optimizer step", r"torch::optim::\w+::step", r"torch::optim::\w+::step"),
    ("zero_grad", r"zero_grad", r"zero_grad"),
    ("backward", r"autograd|Tensor::_?backward", r"autograd|Tensor::_?backward"),
    ("loss", r"trainloop::losses|cross_entropy", r"cross_entropy"),
    ("forward", r"Model::forward|SequentialImpl::forward|LeNetImpl::forward",
     r"SequentialImpl::forward|LeNetImpl::forward"),
    ("running loss and accuracy", r"(MeanLoss|Accuracy)::update|labels_of|check_batch|record_history|"
     r"LoopState::metric|(MeanLoss|Accuracy)::compute",
     r"_ops::(argmax|eq_|sum|add_|mul|detach|_local_scalar|zeros)|Tensor::item|torch::zeros"),
    ("batch (index_select)", r"Epochs::batch|to_device", r"index_select|_ops::narrow"),
]


def categorize(script, entry, trainloop):
    counts = {}
    total = 0
    for sample in script.split("\n\n"):
        frames = [line.strip().split(" ", 1)[1] if " " in line.strip() else ""
                  for line in sample.strip().splitlines()]
        below = next((i for i, f in enumerate(frames) if re.search(entry, f)), None)
        if below is None:
            continue
        total += 1
        frames = frames[:below]
        for name, ours, hand in CATEGORIES:
            pattern = ours if trainloop else hand
            if pattern and any(re.search(pattern, f) for f in frames):
                counts[name] = counts.get(name, 0) + 1
                break
        else:
            counts["the loop itself and the rest"] = counts.get("the loop itself and the rest", 0) + 1
    return counts, total


def measure_profile(runner):
    """perf's cpu-clock samples of W2 under trainloop and under the hand-written loop."""
    a = runner.args
    perf = shutil.which("perf")
    if not perf or "w2" not in a.workloads:
        return {"error": "perf is not installed" if not perf else "W2 was not run"}
    out = {"frequency": 999}
    for impl, entry in (("trainloop", r"trainloop::TrainingLoop::fit"), ("hand", r"hand_written<")):
        log(f"profile of W2, {impl} (perf record)")
        data = os.path.join(runner.work, f"perf-{impl}.data")
        command = [perf, "record", "-q", "-e", "cpu-clock", "-F", str(out["frequency"]), "--call-graph",
                   "dwarf,8192", "-o", data, "--", *run_command(runner, "w2", impl, a.profile_runs)]
        proc = subprocess.run(command, env=runner.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=runner.work)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            return {"error": f"perf record failed here ({proc.stdout.strip()[-300:]})"}
        script = subprocess.run([perf, "script", "--no-inline", "-i", data, "-F", "ip,sym"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
        os.remove(data)
        counts, total = categorize(script, entry, impl == "trainloop")
        if total == 0:
            return {"error": "perf recorded no samples inside the loop (no call graphs?)"}
        steps = sum(run["steps"] for run in json.loads(lines[-1][len("RESULT "):])["runs"])
        out[impl] = {"counts": counts, "total": total, "steps": steps}
    return out


# ------------------------------------------------------------ statistics ---

def med(values):
    return statistics.median(values) if values else float("nan")


def quartiles(values):
    if len(values) < 2:
        return f"{values[0]:.3f}–{values[0]:.3f}" if values else "–"
    q = statistics.quantiles(values, n=4, method="inclusive")
    return f"{q[0]:.3f}–{q[2]:.3f}"


def spread(values):
    return f"{min(values):.3g}–{max(values):.3g}" if values else "–"


def train_times(samples, key="cpu_seconds"):
    """All timed runs' seconds (CPU or wall), and one median per process (round)."""
    flat = [run[key] for s in samples for run in s["runs"]]
    per_round = {s["round"]: med([run[key] for run in s["runs"]]) for s in samples}
    return flat, per_round


def phases(s):
    """Wall time of one process split into its parts, in seconds."""
    train = sum(run["seconds"] for run in s["runs"])
    return {
        "to_main": s["t_main"] - s["t_spawn"],
        "imports": s["t_imported"] - s["t_main"],
        "load": s["t_loaded"] - s["t_imported"],
        "warm_up": s["t_warm"] - s["t_loaded"],
        "exit": s["t_spawn"] + s["wall"] - s["t_end"],
        "fixed": s["wall"] - train,
    }


def paired_ratios(samples, impl, workload, key="cpu_seconds"):
    _, base = train_times(samples[(workload, "hand")], key)
    _, mine = train_times(samples[(workload, impl)], key)
    return [mine[r] / base[r] for r in sorted(mine) if r in base]


def ms(x):
    return f"{x * 1000:.0f} ms" if x < 10 else f"{x:.1f} s"


def per_step(values, steps):
    return med(values) / steps * 1e6


# ---------------------------------------------------------------- report ---

def write_report(runner, facts, samples, pairs, startup, ablation, pipeline, scaling, distributed, profile):
    a = runner.args
    lines = []
    add = lines.append
    failures = []
    add("# Benchmarks: trainloop against the loops users would write instead")
    add("")
    add(f"Generated by `bench/run` on {facts['date']} from commit `{facts['commit']}` in {facts['duration']}; "
        "every number below was measured in that one run (rerun `bench/run` to refresh this file, do not edit "
        "it). Implementations alternate process by process, the order rotating each round, so load changes hit "
        "all of them; ratios are what to read, absolute times on this machine are noise.")
    add("")
    add("**CPU time and wall time.** Every training is timed with both clocks. *CPU time* (the process's "
        "`CLOCK_PROCESS_CPUTIME_ID`, Python's `time.process_time()`) counts only the work of the loop, which "
        "runs on one thread; *wall time* also counts the moments another process held the core. On a quiet "
        "machine the two agree; on a shared one CPU time is the fair comparison, so the ratios and the targets "
        "below are of CPU time, with the wall-time ratios beside them.")
    add("")
    add("## Machine")
    add("")
    for key, value in facts["machine"]:
        add(f"- {key}: {value}")
    add(f"- load average (1 min) when each process started: median {med(runner.loads):.1f}, "
        f"range {spread(runner.loads)}; {facts['shared']}")
    add("")

    # Headline.
    impls = [i for i in CPP_IMPLS + ["plain", "dataloader", "skorch"] if i != "hand"]
    add("## Headline: ratios to the hand-written LibTorch loop")
    add("")
    add("Time of one training inside the process, CPU time, then wall time; start-up is separated out further "
        "down. Two ways of pairing trainings:")
    add("")
    add(f"- *in one process* (`loop_overhead pairs`): the hand-written loop and `fit` train one right after the "
        f"other, the order alternating, {a.pair_repeats} rounds ({a.pair_repeats_w3} for W3) in each of "
        f"{a.pair_processes} processes; the median over all rounds of each round's ratio, in brackets the "
        "middle half of the rounds' ratios and then the smallest and largest;")
    add("- *process against process*: every implementation in processes of its own, alternating, the order "
        "rotating each round, the only way to set C++ beside Python; the median over rounds of the ratio of "
        "the two processes' medians, in brackets the smallest and largest.")
    add("")
    hand_times = [config["cpu_seconds"] for w in a.workloads for result in pairs[w]
                  for config in result["configs"] if config["name"] == "hand"]
    drift = [max(t) / min(t) for t in hand_times if len(t) > 1]
    if drift:
        add("The targets are read from the first. This machine's speed drifts over seconds: within one process "
            "the same hand-written training took up to "
            f"{med(drift):.2f}× its fastest time (median over the pairs processes; largest {max(drift):.2f}×). "
            "Two trainings next to each other see nearly the same speed; two processes seconds apart do not, "
            "which on W1's trainings of a few dozen milliseconds is most of the second column's spread.")
        add("")
    add("| implementation | " + " | ".join(w.upper() for w in a.workloads) + " |")
    add("|---|" + "---|" * len(a.workloads))
    cells = []
    for w in a.workloads:
        cpu, wall = pair_ratios(pairs, w), pair_ratios(pairs, w, "paired_ratios")
        ok = med(cpu) <= TARGET[w]
        cells.append(f"**{med(cpu):.3f}** [{quartiles(cpu)}; {spread(cpu)}], wall {med(wall):.3f}; "
                     f"target ≤ {TARGET[w]}: **{'met' if ok else 'NOT met'}**")
    add(f"| {IMPL_TEXT['trainloop']}, in one process | " + " | ".join(cells) + " |")
    for impl in impls:
        cells = []
        for w in a.workloads:
            if (w, impl) not in samples:
                cells.append(("not installed" if not runner.has_skorch else "W1, W2 only")
                             if impl == "skorch" else "–")
                continue
            cpu = paired_ratios(samples, impl, w)
            wall = paired_ratios(samples, impl, w, "seconds")
            cells.append(f"**{med(cpu):.3f}** [{spread(cpu)}], wall {med(wall):.3f}")
        suffix = ", process against process" if impl == "trainloop" else ""
        add(f"| {IMPL_TEXT[impl]}{suffix} | " + " | ".join(cells) + " |")
    add("")
    per_process = "; ".join(
        f"{w.upper()} " + ", ".join(f"{med(c['paired_cpu_ratios']):.3f}" for result in pairs[w]
                                   for c in result["configs"] if c["name"] == "trainloop")
        for w in a.workloads)
    add(f"In one process, each process's median ratio: {per_process}.")
    add("")

    # Accuracy.
    add("## Same work: accuracy of every implementation")
    add("")
    add("All start from the same initial weights (drawn once by `loop_overhead export`, loaded by every "
        "implementation), see the same split and the same batches in the same order (the C++ side draws each "
        "epoch's `epoch_permutation` and checks it equals the exported one; the Python side reads the exported "
        "orders), with the same optimizer and hyperparameters. Test accuracy after training, every run of "
        "every round, the in-process pairs' included; `bench/run` fails when any differs from the hand-written loop's by more than the "
        "tolerance.")
    add("")
    add("| workload | tolerance | " + " | ".join(SHORT[i] for i in CPP_IMPLS + ["plain", "dataloader", "skorch"])
        + " | check |")
    add("|---|---|" + "---|" * (len(CPP_IMPLS) + 4))
    for w in a.workloads:
        base = [run["test_accuracy"] for s in samples[(w, "hand")] for run in s["runs"]]
        base += config_values(pairs, w, "hand", "test_accuracy")
        cells, ok = [], True
        for impl in CPP_IMPLS + ["plain", "dataloader", "skorch"]:
            if (w, impl) not in samples:
                cells.append("–")
                continue
            accs = [run["test_accuracy"] for s in samples[(w, impl)] for run in s["runs"]]
            if impl in ("hand", "trainloop"):
                accs += config_values(pairs, w, impl, "test_accuracy")
            if max(abs(x - base[0]) for x in accs) > TOLERANCE[w]:
                ok = False
                failures.append(f"{w} {impl}: test accuracy {accs} vs hand-written {base[0]:.4f}")
            cells.append(f"{min(accs):.4f}" if min(accs) == max(accs) else f"{min(accs):.4f}–{max(accs):.4f}")
        add(f"| {w.upper()} | {TOLERANCE[w]:.2f} | " + " | ".join(cells) + f" | {'ok' if ok else 'FAILED'} |")
    add("")

    # Per workload detail.
    add("## Per workload: training time, per step, and the process around it")
    add("")
    add("*CPU* and *wall*: median seconds of one training (optimizer set-up to final test accuracy) over all "
        f"timed runs ({a.runs} per process for W1/W2, {a.runs_w3} for W3; {a.repeats} rounds for W1/W2, "
        f"{a.repeats_w3} for W3), with the range of CPU; *ratio*: process against process, as in the headline; *µs/step*: CPU time "
        "divided by optimizer steps. Then the rest of the process, wall time, medians: *to main* — exec, "
        "dynamic loading of LibTorch and its static initializers, or the interpreter until the script's first "
        "line; *imports* — `import torch` (and skorch); *data load* — reading the exported tensors; *warm-up* — "
        "one untimed step; *exit*; *fixed* — the process's wall time minus its trainings; *process ratio* — "
        "fixed plus one median training, against the hand-written one's.")
    add("")
    for w in a.workloads:
        add(f"### {WORKLOAD_TEXT[w]}")
        add("")
        add("| implementation | CPU (s) | range | ratio | wall (s) | wall ratio | µs/step | to main | imports "
            "| data load | warm-up | exit | fixed | process ratio |")
        add("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        base_fixed = med([phases(s)["fixed"] for s in samples[(w, "hand")]])
        base_process = base_fixed + med(train_times(samples[(w, "hand")], "seconds")[0])
        for impl in CPP_IMPLS + python_impls(runner, w):
            ss = samples[(w, impl)]
            cpu, _ = train_times(ss)
            wall, _ = train_times(ss, "seconds")
            steps = ss[0]["runs"][0]["steps"]
            ph = {k: med([phases(s)[k] for s in ss]) for k in phases(ss[0])}
            process = ph["fixed"] + med(wall)
            add(f"| {IMPL_TEXT[impl]} | {med(cpu):.3f} | {spread(cpu)} | {med(paired_ratios(samples, impl, w)):.3f} "
                f"| {med(wall):.3f} | {med(paired_ratios(samples, impl, w, 'seconds')):.3f} "
                f"| {per_step(cpu, steps):.0f} | {ms(ph['to_main'])} | {ms(ph['imports'])} | {ms(ph['load'])} "
                f"| {ms(ph['warm_up'])} | {ms(ph['exit'])} | {ms(ph['fixed'])} | {process / base_process:.2f} |")
        add("")

    add("### Start-up alone")
    add("")
    add(f"Wall time of processes that only start and exit (median and range over {a.startup_repeats} runs):")
    add("")
    add("| command | wall |")
    add("|---|---|")
    for name, walls in startup.items():
        add(f"| `{name}` | {ms(med(walls))} ({spread([w * 1000 for w in walls])} ms) |")
    add("")

    # Ablation and profile.
    add("## Where trainloop's remaining cost goes")
    add("")
    add("### Piece by piece")
    add("")
    add("`loop_overhead ablation`: in one process, the hand-written loop and `fit` with its pieces switched on "
        "one after another, alternating, the order rotating each round (CPU time; the wall-time ratio last). "
        "*added per step* is the difference of the CPU median to the line above, divided by the steps.")
    add("")
    for w, result in ablation.items():
        add(f"{w.upper()}: {result['repeats']} rounds, {result['steps']} steps per fit.")
        add("")
        add("| configuration | CPU median (s) | ratio to hand (median of pairs) | range | added per step | wall ratio |")
        add("|---|---|---|---|---|---|")
        previous = None
        for config in result["configs"]:
            m = med(config["cpu_seconds"])
            added = "" if previous is None else f"{(m - previous) / result['steps'] * 1e6:+.1f} µs"
            ratios = config["paired_cpu_ratios"]
            add(f"| {ABLATION_TEXT.get(config['name'], config['name'])} | {m:.4f} | {med(ratios):.3f} | "
                f"{spread(ratios)} | {added} | {med(config['paired_ratios']):.3f} |")
            previous = m
        add("")
    add("### Profile")
    add("")
    if "error" in profile:
        add(f"Not profiled: {profile['error']}.")
    else:
        f = profile["frequency"]
        add(f"`perf record -e cpu-clock -F {f} --call-graph dwarf` of `loop_overhead run --workload w2 "
            f"--runs {a.profile_runs}`, once with `--impl trainloop` ({profile['trainloop']['total']} samples inside "
            f"`fit`) and once with `--impl hand` ({profile['hand']['total']} samples inside the loop); the "
            "container has no hardware counters, so perf samples the software CPU clock. Each sample is charged "
            "to the first category, in this order, with a frame on its stack below the loop's entry; samples "
            f"÷ {f} Hz ÷ steps gives CPU µs per step (sampling noise: a few % of each line).")
        add("")
        add("| category | hand-written µs/step | trainloop µs/step | difference |")
        add("|---|---|---|---|")
        names = [c[0] for c in CATEGORIES] + ["the loop itself and the rest"]
        per = {impl: {n: profile[impl]["counts"].get(n, 0) / f / profile[impl]["steps"] * 1e6 for n in names}
               for impl in ("hand", "trainloop")}
        for n in names:
            h, t = per["hand"][n], per["trainloop"][n]
            add(f"| {n} | {h:.1f} | {t:.1f} | {t - h:+.1f} |")
        th, tt = sum(per["hand"].values()), sum(per["trainloop"].values())
        add(f"| **total** | {th:.1f} | {tt:.1f} | {tt - th:+.1f} ({(tt / th - 1) * 100:+.1f}%) |")
        add("")
        add("The two profiles come from two processes, one after the other: the lines that do the same work in "
            "both (optimizer step, backward, forward, loss) differ only by how fast the machine was for each, "
            "which bounds the noise of the totals; the lines only trainloop has (the callbacks, the dispatch, "
            "the loop itself) are the signal.")
        add("")
    with open(os.path.join(HERE, "profile_notes.md")) as notes:
        add(notes.read().strip())
    add("")

    # Pipeline.
    cpp, py = pipeline
    add("## Data pipeline")
    add("")
    add(f"Batches per second out of the same Fashion-MNIST training tensors ({cpp['examples']} images, batch "
        f"{cpp['batch_size']}, epoch 0's shuffled order in all), nothing trained; medians over "
        f"{a.pipeline_repeats} alternating rounds. *per wall second* is what a loop waits for; *per CPU second* "
        "is what it costs, all threads together:")
    add("")
    add("| source | per wall second | range | per CPU second | ratio to `Epochs` (CPU) |")
    add("|---|---|---|---|---|")
    base = med(cpp["cpu_rates"]["epochs"])
    for rates, cpu_rates in ((cpp["rates"], cpp["cpu_rates"]), (py["rates"], py["cpu_rates"])):
        for source, values in rates.items():
            label = PIPELINE_TEXT.get(source, source.replace("torch_data_stack_", "`torch::data` + `Stack`, ")
                                      .replace("_workers", " worker threads"))
            add(f"| {label} | {med(values):.0f} | {spread(values)} | {med(cpu_rates[source]):.0f} | "
                f"{med(cpu_rates[source]) / base:.2f} |")
    add("")
    d, c = med(cpp["data_only"]), med(cpp["compute_only"])
    s, p = med(cpp["serial"]), med(cpp["prefetched"])
    hidden = (s - p) / min(d, c) if min(d, c) > 0 else float("nan")
    add(f"Prefetcher overlap: LeNet-5 `fit` (SGD, no callbacks) over {cpp['overlap_examples']} images whose "
        f"per-example transform (pad and crop, mirror, {cpp['blur_passes']} 3×3 blurs through `conv2d`) runs in "
        f"`TorchDataset::batch`; wall time, medians over {len(cpp['serial'])} alternating rounds:")
    add("")
    add("| run | seconds | range |")
    add("|---|---|---|")
    add(f"| transform alone (draining the source) | {d:.3f} | {spread(cpp['data_only'])} |")
    add(f"| compute alone (`fit` on in-memory `Epochs`) | {c:.3f} | {spread(cpp['compute_only'])} |")
    add(f"| `fit` on the transforming source | {s:.3f} | {spread(cpp['serial'])} |")
    add(f"| `fit` on `prefetch(source)` | {p:.3f} | {spread(cpp['prefetched'])} |")
    add("")
    cores = med(cpp["prefetched_cores"])
    add(f"The prefetcher hid **{hidden * 100:.0f}%** of the smaller of transform and compute "
        "((serial − prefetched) / min(transform, compute); 100% is a perfect overlap, the prefetched fit then "
        "taking as long as the larger of the two). That needs a core for the background thread: during the "
        f"prefetched fits the process used {cores:.2f} cores on average (its CPU time over its wall time, "
        f"range {spread(cpp['prefetched_cores'])}; 2 means both threads ran at once), with a load average of "
        f"{runner.pipeline_load:.1f} on {facts['cores']} cores when this part began"
        + (" — the other core was mostly taken by other work, so this number says more about the machine than "
           "about the prefetcher." if cores < 1.5 else "."))
    add("")

    # Scaling.
    add("## Scaling")
    add("")
    add(f"A tiny model (16-8-4 MLP, batch {scaling['batch_size']}, SGD) where the loop's own work is as visible "
        "as it can be. The implementations alternate in one process, the order rotating each round; the shorter "
        f"the fits, the more rounds ({a.scaling_repeats} × √(100k / steps), the count beside each row). CPU µs "
        "per step, medians over the rounds; *ratio*: the median of each round's ratio to the hand-written fit "
        "of the same round, in brackets the middle half of the rounds' ratios (the wall-time ratios last):")
    add("")
    add("| steps | rounds | hand-written | `fit` (loss, accuracy) | ratio | `fit` + progress, CSV, TensorBoard "
        "| ratio | wall ratios |")
    add("|---|---|---|---|---|---|---|---|")

    def round_ratios(mine, base):
        return [m / b for m, b in zip(mine, base)]

    for row in scaling["step_counts"]:
        n = row["steps"]
        h, b, u = (per_step(row[k + "_cpu"], n) for k in ("hand", "fit", "fit_usual_callbacks"))
        fit_r = round_ratios(row["fit_cpu"], row["hand_cpu"])
        usual_r = round_ratios(row["fit_usual_callbacks_cpu"], row["hand_cpu"])
        fit_w = med(round_ratios(row["fit"], row["hand"]))
        usual_w = med(round_ratios(row["fit_usual_callbacks"], row["hand"]))
        add(f"| {n} | {len(row['hand_cpu'])} | {h:.1f} | {b:.1f} | {med(fit_r):.3f} [{quartiles(fit_r)}] "
            f"| {u:.1f} | {med(usual_r):.3f} [{quartiles(usual_r)}] | {fit_w:.3f}, {usual_w:.3f} |")
    add("")
    add("No-op callbacks: *ratio* is each round's time against the same round's fit without them, its median "
        "and the middle half; *added per callback per step* is the median ratio's excess over 1 times the "
        "per-step time without them, divided by the callbacks.")
    add("")
    add("| no-op callbacks | rounds | CPU µs per step | ratio | added per callback per step |")
    add("|---|---|---|---|---|")
    base_row = next((row for row in scaling["callback_counts"] if row["callbacks"] == 0), None)
    for row in scaling["callback_counts"]:
        value = per_step(row["seconds_cpu"], row["steps"])
        if base_row is None or row["callbacks"] == 0:
            add(f"| {row['callbacks']} | {len(row['seconds_cpu'])} | {value:.1f} | | |")
            continue
        ratios = round_ratios(row["seconds_cpu"], base_row["seconds_cpu"])
        base = per_step(base_row["seconds_cpu"], base_row["steps"])
        extra = (med(ratios) - 1) * base / row["callbacks"] * 1000
        add(f"| {row['callbacks']} | {len(row['seconds_cpu'])} | {value:.1f} | {med(ratios):.3f} "
            f"[{quartiles(ratios)}] | {extra:+.0f} ns |")
    add("")
    rss = scaling["rss_kb_per_epoch"]
    if rss:
        marks = sorted({0, 1, len(rss) // 10, len(rss) // 2, len(rss) - 1})
        add(f"Resident memory at the end of epochs of a {len(rss)}-epoch fit "
            f"({scaling['memory_steps_per_epoch']} steps each, progress, CSV and TensorBoard writing): "
            + ", ".join(f"epoch {i + 1}: {rss[i] / 1024:.1f} MiB" for i in marks)
            + f"; from epoch 2 to the last: {(rss[-1] - rss[min(1, len(rss) - 1)]) / 1024:+.2f} MiB; "
            f"peak {scaling['peak_rss_kb'] / 1024:.1f} MiB.")
        add("")

    add("## Data-parallel scaling")
    add("")
    if distributed is None:
        add("Skipped (`--skip-distributed`).")
    else:
        add("`bench/distributed_scaling`: `fit` of LeNet-5 in one process with 1 and 2 threads, and in 2 processes "
            "of 1 thread each started with torchrun's environment (c10d Gloo over 127.0.0.1, gradients averaged in "
            "1 MiB buckets during backward unless the row says otherwise), no callbacks. *Blocked in all-reduce* is "
            "the less-blocked rank's time in the all-reduce's wait per step: what backward did not hide plus any "
            "wait for the other rank; *share of step time* is that over the fit's time. The last line times one "
            "all-reduce of the gradients alone, in the same rotation.")
        add("")
        add(distributed)
    add("")
    add("## Not measured")
    add("")
    add("- CUDA: this machine has no GPU. Nothing in bench/ needs CUDA or breaks a CUDA build (all code runs on "
        "`torch::kCPU` explicitly). Still to be done on a machine with one: W3 at batch 64 and 512 with the data "
        "on the GPU against the hand-written loop, Python's plain loop and Lightning; an opt-in training step "
        "captured as a CUDA graph; opt-in bf16 autocast; host–device syncs and pinned non-blocking copies.")
    add("- Data-parallel scaling beyond 2 processes on 2 cores, and across machines or GPUs (NCCL).")
    add(f"- More than one thread: every run here uses {a.threads} (`torch::set_num_threads`, "
        "`torch.set_num_threads`, `OMP_NUM_THREADS`); `bench/run --threads 2` repeats the whole run with two, "
        "worth doing only on an otherwise idle machine.")
    add("")
    add("## How to rerun")
    add("")
    add("    bench/run                  # build in Release (build-bench/), run everything, rewrite bench/RESULTS.md")
    add("    bench/run --quick          # the same with tiny settings, a smoke test (build-bench/RESULTS-quick.md)")
    add("")
    add("Raw logs of every process are left under `build-bench/bench-work/logs/`.")
    add("")
    if failures:
        add("## FAILED")
        add("")
        for f in failures:
            add(f"- {f}")
        add("")
    with open(a.out, "w") as out:
        out.write("\n".join(lines))
    return failures


def machine_facts(runner, started):
    def sh(command):
        return subprocess.run(command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True).stdout.strip()

    cores = os.cpu_count()
    model = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip() or platform.processor()
    noop = subprocess.run([runner.binary("loop_overhead"), "noop"], stdout=subprocess.PIPE, text=True).stdout
    torch_cpp = json.loads(noop.split("RESULT ", 1)[1])["torch_version"] if "RESULT " in noop else "?"
    torch_py = sh(f"{PYTHON} -c 'import torch; print(torch.__version__)'")
    skorch = sh(f"{PYTHON} -c 'import skorch; print(skorch.__version__)'") or "not installed"
    libtorch_pkg = sh("dpkg-query -W -f='${Version}' libtorch-dev")
    blas = sh("readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3") or "?"
    facts = {
        "date": started.strftime("%Y-%m-%d %H:%M"),
        "commit": sh(f"git -C {ROOT} rev-parse --short HEAD") + (" + local changes" if sh(
            f"git -C {ROOT} status --porcelain --untracked-files=no") else ""),
        "cores": cores,
        "machine": [
            ("CPU", f"{model}, {cores} cores ({platform.machine()}, {sh('. /etc/os-release; echo $PRETTY_NAME')})"),
            ("LibTorch", f"{torch_cpp} (Debian libtorch-dev {libtorch_pkg}, CPU); Python torch {torch_py} "
                         f"(Debian python3-torch), skorch {skorch}, Python {platform.python_version()}"),
            ("threads", f"{runner.args.threads} in every implementation (`torch::set_num_threads` / "
                        f"`torch.set_num_threads`, and OMP_NUM_THREADS={runner.args.threads})"),
            ("BLAS", f"`libblas.so.3` → `{blas}`"),
            ("compiler", sh(f"grep -m1 CMAKE_CXX_COMPILER: {runner.build}/CMakeCache.txt | cut -d= -f2") + " "
             + sh("g++ -dumpfullversion") + ", " + sh(f"grep -m1 CMAKE_BUILD_TYPE: {runner.build}/CMakeCache.txt "
                                                        "| cut -d= -f2") + " build"),
        ],
    }
    return facts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-dir", default=os.path.join(ROOT, "build"))
    parser.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workloads", nargs="+", default=["w1", "w2", "w3"])
    parser.add_argument("--repeats", type=int, default=5, help="rounds of W1 and W2")
    parser.add_argument("--runs", type=int, default=3, help="trainings per W1/W2 process")
    parser.add_argument("--repeats-w3", type=int, default=5)
    parser.add_argument("--runs-w3", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=0, help="override every workload's epochs (smoke runs)")
    parser.add_argument("--pair-processes", type=int, default=3, help="processes of `loop_overhead pairs` per workload")
    parser.add_argument("--pair-repeats", type=int, default=30, help="rounds of W1 and W2 in each pairs process")
    parser.add_argument("--pair-repeats-w3", type=int, default=4)
    parser.add_argument("--startup-repeats", type=int, default=5)
    parser.add_argument("--ablation-repeats", type=int, default=15)
    parser.add_argument("--pipeline-repeats", type=int, default=5)
    parser.add_argument("--overlap-examples", type=int, default=6400)
    parser.add_argument("--scaling-repeats", type=int, default=3)
    parser.add_argument("--scaling-steps", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--callback-steps", type=int, default=10000)
    parser.add_argument("--memory-epochs", type=int, default=100)
    parser.add_argument("--distributed-images", type=int, default=24000)
    parser.add_argument("--distributed-repeats", type=int, default=3)
    parser.add_argument("--skip-distributed", action="store_true")
    parser.add_argument("--profile-runs", type=int, default=8)
    parser.add_argument("--skip-profile", action="store_true")
    parser.add_argument("--fashion-examples", type=int, default=60000)
    parser.add_argument("--shared", default="",
                        help="a sentence about other work on the machine during the run")
    args = parser.parse_args()

    started = datetime.datetime.now()
    t0 = time.monotonic()
    runner = Runner(args)
    shutil.rmtree(runner.work, ignore_errors=True)
    os.makedirs(runner.logs)
    log(f"exporting the workloads' data to {runner.data}")
    export = subprocess.run([runner.binary("loop_overhead"), "export", "--out", runner.data,
                             "--fashion-examples", str(args.fashion_examples)], env=runner.env)
    if export.returncode != 0:
        sys.exit("bench: export failed")
    log("start-up alone")
    startup = measure_startup(runner)
    samples = measure_workloads(runner)
    pairs = measure_pairs(runner)
    ablation = measure_ablation(runner)
    pipeline = measure_pipeline(runner)
    scaling = measure_scaling(runner)
    distributed = None if args.skip_distributed else measure_distributed(runner)
    profile = {"error": "skipped (--skip-profile)"} if args.skip_profile else measure_profile(runner)
    facts = machine_facts(runner, started)
    minutes, seconds = divmod(int(time.monotonic() - t0), 60)
    facts["duration"] = f"{minutes} min {seconds} s"
    busy = med(runner.loads) > facts["cores"]
    facts["shared"] = args.shared or (
        "the machine was shared with other engineers' builds during the run (load above its core count)"
        if busy else "the machine was otherwise quiet")
    failures = write_report(runner, facts, samples, pairs, startup, ablation, pipeline, scaling, distributed,
                            profile)
    log(f"wrote {args.out} ({facts['duration']})")
    if failures:
        for f in failures:
            print("bench: accuracy diverged: " + f, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
