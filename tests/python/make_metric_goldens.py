"""Writes tests/data/metric_goldens.json, the expected values for tests/metrics_test.cpp.

The expected metrics come from scikit-learn (accuracy_score, top_k_accuracy_score,
matthews_corrcoef) and from float64 NumPy (loss, perplexity), so they are
independent of the C++ code under test. The per-batch losses that the test feeds
into the metrics are what PyTorch's float32 cross-entropy (or BCE with logits)
returns, as a training loop would see them.

Regenerate from the repository root with Debian's Python (numpy, torch, sklearn):

    /usr/bin/python3 tests/python/make_metric_goldens.py

The output is deterministic: fixed seeds, logits rounded to two decimals, and
a stable JSON layout, so a rerun changes nothing unless this script changed.

Layout: {"fixtures": [{"name", "description", "num_classes", "batch_sizes",
"batches": [{"outputs_shape", "outputs" (flat, row-major), "targets_shape",
"targets" (flat), "loss"}], "expected": {metric name: value}}]}.
A metric missing from "expected" does not apply to that fixture.
"""

import json
import math
import pathlib
import warnings

import numpy as np
import sklearn.metrics as skm
import torch
import torch.nn.functional as F

OUTPUT = pathlib.Path(__file__).resolve().parents[1] / "data" / "metric_goldens.json"
TOP_KS = (1, 2, 5)


def log_softmax64(logits, axis):
    x = logits.astype(np.float64)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def token_ce64(logits, targets):
    """Per-token cross-entropy in float64; logits [N, C, ...], targets [N, ...]."""
    logp = log_softmax64(logits, axis=1)
    return -np.take_along_axis(logp, targets[:, None], axis=1)[:, 0]


def bce64(logits, targets):
    x = logits.astype(np.float64)
    y = targets.astype(np.float64)
    # log(1 + exp(-|x|)) form, stable for large |x|.
    return np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))


def topk_by_rule(logits, targets, k):
    """The rule the C++ code implements; checked against sklearn below."""
    n, c = logits.shape
    target_score = logits[np.arange(n), targets][:, None]
    higher = (logits > target_score).sum(axis=1)
    tied_above = ((logits == target_score) & (np.arange(c)[None, :] > targets[:, None])).sum(axis=1)
    return float(np.mean(higher + tied_above < k))


def split(n, batch_sizes):
    assert sum(batch_sizes) == n, (batch_sizes, n)
    bounds = np.cumsum([0] + list(batch_sizes))
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def as_float32(values):
    """Rounds to two decimals, then to float32, which is what the C++ test builds."""
    return np.round(values, 2).astype(np.float32)


def flat(array):
    """Row-major values; float32 logits are written with their two decimals,
    which narrow back to the same float32 in the C++ test."""
    array = np.asarray(array)
    if array.dtype.kind != "f":
        return [int(v) for v in array.ravel()]
    values = [round(float(v), 2) for v in array.ravel()]
    assert np.array_equal(np.array(values, dtype=array.dtype), array.ravel())
    return values


def batch_entry(outputs, targets, loss):
    return {
        "outputs_shape": list(outputs.shape),
        "outputs": flat(outputs),
        "targets_shape": list(targets.shape),
        "targets": flat(targets),
        # float32 loss widened to double: the C++ test narrows it back exactly.
        "loss": float(loss),
    }


def multiclass_fixture(name, description, logits, targets, batch_sizes):
    n, c = logits.shape
    batches = []
    for s in split(n, batch_sizes):
        loss = F.cross_entropy(torch.from_numpy(logits[s]), torch.from_numpy(targets[s])).item()
        batches.append(batch_entry(logits[s], targets[s], np.float32(loss)))
    predicted = np.argmax(logits, axis=1)  # first maximum, as torch.argmax
    ce = token_ce64(logits, targets)
    expected = {
        "loss": float(ce.mean()),
        "perplexity": math.exp(ce.mean()),
        "accuracy": float(skm.accuracy_score(targets, predicted)),
        "matthews_correlation": float(skm.matthews_corrcoef(targets, predicted)),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k >= C: sklearn warns, scores 1.0
        for k in TOP_KS:
            value = float(skm.top_k_accuracy_score(targets, logits, k=k, labels=np.arange(c)))
            assert value == topk_by_rule(logits, targets, k), (name, k)
            expected[f"top{k}_accuracy"] = value
    return {"name": name, "description": description, "num_classes": c,
            "batch_sizes": list(batch_sizes), "batches": batches, "expected": expected}


def multiclass10():
    rng = np.random.default_rng(20240501)
    n, c = 50, 10
    logits = rng.normal(0.0, 1.5, size=(n, c))
    targets = rng.integers(0, c, size=n)
    # Bias rows toward their target so accuracy is neither 0 nor 1.
    logits[np.arange(n), targets] += rng.uniform(0.0, 2.5, size=n)
    logits = np.round(logits, 2)
    # Ties at the argmax: the target shares the maximum with a lower index
    # (argmax picks the other class; sklearn's top-1 ranks the target first)
    # and with a higher index (the reverse).
    for row, other_offset in ((0, -3), (1, +4), (2, -1), (3, +1)):
        t = targets[row]
        other = (t + other_offset) % c
        top = logits[row].max() + 0.5
        logits[row, t] = top
        logits[row, other] = top
    # Ties at the second place: one class above the target, one class tied
    # with it on either side of its index.
    for row, other_offset in ((4, -2), (5, +2), (6, +5), (7, -5)):
        t = targets[row]
        other = (t + other_offset) % c
        first = next(j for j in range(c) if j not in (t, other))
        peak = logits[row].max()
        logits[row, first] = peak + 1.0
        logits[row, t] = peak + 0.5
        logits[row, other] = peak + 0.5
    # Ties at the fifth place: three classes clearly above, the target tied
    # with two others around the fifth rank.
    for row in (8, 9):
        t = targets[row]
        others = [(t + d) % c for d in (1, 2, 3)]
        peers = [(t - 1) % c, (t + 4) % c]
        peak = logits[row].max()
        for j, cls in enumerate(others):
            logits[row, cls] = peak + 2.0 + j
        for cls in peers + [t]:
            logits[row, cls] = peak + 1.0
    # A row of all-equal scores: argmax is class 0, sklearn ranks class C-1 first.
    logits[10, :] = 0.25
    return multiclass_fixture(
        "multiclass10",
        "C=10, N=50 in unequal batches, ties at the argmax, second and fifth place",
        as_float32(logits), targets.astype(np.int64), [7, 13, 1, 29])


def one_class():
    rng = np.random.default_rng(7)
    n, c = 12, 3
    logits = rng.normal(0.0, 1.0, size=(n, c))
    logits[:, 0] = np.abs(logits).max(axis=1) + 1.0
    targets = np.zeros(n, dtype=np.int64)
    return multiclass_fixture(
        "one_class",
        "C=3, every target and prediction class 0: MCC undefined, reported 0; k=5 > C scores 1",
        as_float32(logits), targets, [5, 7])


def single_example():
    logits = np.array([[0.3, -1.2, 2.0, 2.0, 0.1]])
    targets = np.array([3], dtype=np.int64)
    return multiclass_fixture(
        "single_example",
        "one batch of one example, C=5, target tied at the top with a lower class",
        as_float32(logits), targets, [1])


def binary(name, description, seed, column, float_targets):
    rng = np.random.default_rng(seed)
    n = 40
    targets = rng.integers(0, 2, size=n)
    logits = rng.normal(0.0, 1.5, size=n) + (targets - 0.5) * 1.5
    logits[[3, 17]] = 0.0  # exactly 0: not positive, predicted class 0
    logits = as_float32(logits)
    batch_sizes = [9, 2, 18, 11]
    batches = []
    target_values = targets.astype(np.float32) if float_targets else targets.astype(np.int64)
    for s in split(n, batch_sizes):
        out = logits[s][:, None] if column else logits[s]
        loss = F.binary_cross_entropy_with_logits(
            torch.from_numpy(logits[s]), torch.from_numpy(targets[s].astype(np.float32))).item()
        batches.append(batch_entry(out, target_values[s], np.float32(loss)))
    predicted = (logits > 0).astype(np.int64)
    expected = {
        "loss": float(bce64(logits, targets).mean()),
        "accuracy": float(skm.accuracy_score(targets, predicted)),
        "matthews_correlation": float(skm.matthews_corrcoef(targets, predicted)),
    }
    return {"name": name, "description": description, "num_classes": 2,
            "batch_sizes": batch_sizes, "batches": batches, "expected": expected}


def sequence():
    """Per-token perplexity over batches of different sequence lengths.

    Weighting by tokens (perplexity) and by examples (loss) give different
    answers here, which is the point of the fixture.
    """
    rng = np.random.default_rng(99)
    c = 6
    shapes = [(3, 4), (5, 2), (2, 7)]  # (batch, time)
    batches, token_losses, batch_means, sizes = [], [], [], []
    for b, t in shapes:
        logits = as_float32(rng.normal(0.0, 1.0, size=(b, c, t)))
        targets = rng.integers(0, c, size=(b, t)).astype(np.int64)
        loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets)).item()
        batches.append(batch_entry(logits, targets, np.float32(loss)))
        ce = token_ce64(logits, targets)
        token_losses.append(ce.ravel())
        batch_means.append(ce.mean())
        sizes.append(b)
    all_tokens = np.concatenate(token_losses)
    expected = {
        "loss": float(np.average(batch_means, weights=sizes)),
        "perplexity": math.exp(all_tokens.mean()),
    }
    return {"name": "sequence", "description": "logits [B, C, T], targets [B, T], T varies",
            "num_classes": c, "batch_sizes": sizes, "batches": batches, "expected": expected}


def dump(value, indent=0):
    """JSON with objects spread over lines and number lists kept on one line."""
    pad = " " * indent
    if isinstance(value, dict):
        items = [f"{pad}  {json.dumps(k)}: {dump(v, indent + 2)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        items = [f"{pad}  {dump(v, indent + 2)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value)


def main():
    fixtures = [
        multiclass10(),
        binary("binary_flat", "binary logits [N], integer 0/1 targets", 11, False, False),
        binary("binary_column", "binary logits [N, 1], float 0/1 targets", 12, True, True),
        one_class(),
        single_example(),
        sequence(),
    ]
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(dump({"fixtures": fixtures}) + "\n")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
