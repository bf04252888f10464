"""Golden learning rates for tests/reduce_lr_on_plateau_test.cpp.

Feeds fixed metric sequences (plateaus, noise, rising and falling trends) to
PyTorch's torch.optim.lr_scheduler.ReduceLROnPlateau under several settings
(min and max mode, rel and abs thresholds, cooldown, min_lr, eps) and records
the learning rate after each step. The C++ test feeds the same sequences to
trainloop::callbacks::reduce_lr_on_plateau and compares the rates (1e-12).

Deterministic (a fixed NumPy seed). Run from the repository root:
    /usr/bin/python3 tests/python/make_plateau_goldens.py
It writes tests/data/plateau_goldens.json.
"""

import json
import os

import numpy as np
import torch

INITIAL_LR = 0.1


def sequences():
    rng = np.random.default_rng(7)
    epochs = np.arange(40)
    falling = 1.0 / (1.0 + 0.3 * epochs)
    return {
        # Improves, then stalls flat for a long time, then improves again.
        "plateau": [1.0, 0.8, 0.7] + [0.7] * 12 + [0.5, 0.45] + [0.45] * 10,
        # A decreasing loss with noise: small bumps that rel/abs treat differently.
        "noisy_falling": list(falling + 0.05 * rng.standard_normal(40)),
        # An accuracy-like value that rises, then stalls with noise.
        "rising_then_noisy": list(np.minimum(0.5 + 0.05 * epochs, 0.9)
                                  + 0.01 * rng.standard_normal(40)),
        # Tiny improvements, below a rel threshold of 1e-4 but above abs 1e-6.
        "creeping": [1.0 - 1e-5 * i for i in range(30)],
        # Alternating values, never a new best after the first two.
        "zigzag": [0.5, 0.4] + [0.6 if i % 2 else 0.45 for i in range(28)],
    }


CASES = [
    ("plateau", dict(mode="min", factor=0.5, patience=2)),
    ("plateau", dict(mode="min", factor=0.1, patience=1, cooldown=3)),
    ("plateau", dict(mode="min", factor=0.5, patience=0, min_lr=0.01)),
    ("plateau", dict(mode="min", factor=0.5, patience=0, min_lr=0.0124999999)),  # eps skip
    ("noisy_falling", dict(mode="min", factor=0.5, patience=2)),
    ("noisy_falling", dict(mode="min", factor=0.5, patience=1, threshold=0.05,
                           threshold_mode="abs")),
    ("noisy_falling", dict(mode="min", factor=0.3, patience=1, threshold=0.1,
                           threshold_mode="rel", cooldown=2)),
    ("rising_then_noisy", dict(mode="max", factor=0.5, patience=2)),
    ("rising_then_noisy", dict(mode="max", factor=0.5, patience=1, threshold=0.02,
                               threshold_mode="abs", cooldown=1, min_lr=0.005)),
    ("rising_then_noisy", dict(mode="max", factor=0.2, patience=3, threshold=0.01,
                               threshold_mode="rel")),
    ("creeping", dict(mode="min", factor=0.5, patience=3)),
    ("creeping", dict(mode="min", factor=0.5, patience=3, threshold=1e-6,
                      threshold_mode="abs")),
    ("zigzag", dict(mode="min", factor=0.7, patience=4, cooldown=2, min_lr=0.02)),
    ("zigzag", dict(mode="max", factor=0.5, patience=1, threshold=0.0, threshold_mode="abs")),
]

DEFAULTS = dict(mode="min", factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel",
                cooldown=0, min_lr=0.0, eps=1e-8)


def run(values, settings):
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=INITIAL_LR)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **settings)
    rates = []
    for value in values:
        scheduler.step(float(value))
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


def main():
    data = sequences()
    cases = []
    for name, overrides in CASES:
        settings = dict(DEFAULTS, **overrides)
        values = [float(v) for v in data[name]]
        cases.append({"sequence": name, "settings": settings, "initial_lr": INITIAL_LR,
                      "values": values, "rates": run(values, settings)})
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(root, "tests", "data", "plateau_goldens.json")
    with open(path, "w") as out:
        json.dump({"torch_version": torch.__version__, "cases": cases}, out, indent=1)
        out.write("\n")


if __name__ == "__main__":
    main()
