"""Writes tests/data/schedule_goldens.json, the expected rates for tests/schedule_test.cpp
and tests/lr_scheduler_test.cpp.

The numbers come from PyTorch's own schedulers (torch.optim.lr_scheduler.OneCycleLR,
LinearLR, CosineAnnealingLR), so they are independent of the C++ code under test.
For every optimizer step the script records what that step actually used: the
parameter group's 'lr' (and 'momentum' for SGD, betas[0] for Adam) read just before
optimizer.step(), then calls scheduler.step() after it, as PyTorch prescribes.

Regenerate from the repository root with Debian's Python (torch 1.13):

    /usr/bin/python3 tests/python/make_schedule_goldens.py

The output is deterministic (no randomness reaches the recorded values; floats are
written with repr, which round-trips), so a rerun changes nothing unless this script
or PyTorch's schedulers changed.

Layout: {"one_cycle": {"max_lr", "total_steps", "sgd": {"lr": [...], "momentum": [...]},
"adam": {"lr": [...], "beta1": [...]}}, "linear_lr": {"base_lr", "start_factor",
"end_factor", "total_iters", "steps", "lr": [...]}, "cosine_annealing_lr": {"base_lr",
"t_max", "eta_min", "steps", "lr": [...]}}; list element i is what update i+1 used.
"""

import json
import pathlib
import warnings

import torch

OUTPUT = pathlib.Path(__file__).resolve().parents[1] / "data" / "schedule_goldens.json"


def record(optimizer, scheduler, steps, keys):
    """Runs `steps` updates and returns {key: [value used by each update]}."""
    parameter = optimizer.param_groups[0]["params"][0]
    values = {key: [] for key in keys}
    for _ in range(steps):
        group = optimizer.param_groups[0]
        for key in keys:
            if key == "beta1":
                values[key].append(float(group["betas"][0]))
            else:
                values[key].append(float(group[key]))
        optimizer.zero_grad()
        parameter.sum().backward()
        optimizer.step()
        scheduler.step()
    return values


def one_cycle(optimizer_class, keys, **optimizer_args):
    parameter = torch.nn.Parameter(torch.zeros(3))
    optimizer = optimizer_class([parameter], **optimizer_args)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=100)
    return record(optimizer, scheduler, 100, keys)


def linear_lr():
    parameter = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([parameter], lr=0.05)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, end_factor=1.0,
                                                  total_iters=10)
    return {"base_lr": 0.05, "start_factor": 0.1, "end_factor": 1.0, "total_iters": 10,
            "steps": 20, **record(optimizer, scheduler, 20, ["lr"])}


def cosine_annealing_lr():
    # 100 steps = two half periods: down to eta_min at step 50, back up to the
    # base rate (PyTorch's curve continues past T_max; it does not hold).
    parameter = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=50, eta_min=0.001)
    return {"base_lr": 0.1, "t_max": 50, "eta_min": 0.001, "steps": 100,
            **record(optimizer, scheduler, 100, ["lr"])}


def main():
    # The warning about scheduler.step() order does not apply: step() follows
    # optimizer.step() here.
    warnings.simplefilter("ignore", UserWarning)
    goldens = {
        "one_cycle": {
            "max_lr": 0.1,
            "total_steps": 100,
            "sgd": one_cycle(torch.optim.SGD, ["lr", "momentum"], lr=0.1, momentum=0.9),
            "adam": one_cycle(torch.optim.Adam, ["lr", "beta1"], lr=0.1),
        },
        "linear_lr": linear_lr(),
        "cosine_annealing_lr": cosine_annealing_lr(),
    }
    OUTPUT.write_text(json.dumps(goldens, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
