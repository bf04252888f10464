"""Golden weight averages for tests/weight_averaging_test.cpp.

Trains a small model (Linear, BatchNorm1d, ReLU, Linear) with SGD and
momentum on fixed batches, and averages its weights with PyTorch's
torch.optim.swa_utils:
- EMA: AveragedModel with an exponential avg_fn (decay * average + (1 -
  decay) * weight; with warm-up, decay_t = min(decay, (1 + t) / (10 + t)),
  t the number of earlier EMA updates, read from AveragedModel's
  num_averaged), updated once before training (a copy) and after every n-th
  optimizer step, buffers included or not;
- SWA: AveragedModel's equal average at the end of each epoch from
  swa_start, SWALR (constructed at the start of epoch swa_start, stepped at
  the end of each epoch from there), then update_bn over the training
  batches.
The initial weights, the data and every result go into the JSON, so the C++
test trains the same model on the same batches through TrainingLoop and
compares (float32; see the test for the tolerances).

Deterministic (fixed seeds). Run from the repository root with Debian's
Python (torch 1.13):
    /usr/bin/python3 tests/python/make_weight_averaging_goldens.py
It writes tests/data/weight_averaging_goldens.json.
"""

import copy
import json
import os

import torch
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

LEARNING_RATE = 0.05
MOMENTUM = 0.9
BATCH_SIZE = 8
EXAMPLES = 40  # 5 batches per epoch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(4, 6)
        self.bn = torch.nn.BatchNorm1d(6)
        self.fc2 = torch.nn.Linear(6, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


EMA_CASES = [
    dict(decay=0.9, warmup=False, every_n_steps=1, include_buffers=True, epochs=3),
    dict(decay=0.99, warmup=True, every_n_steps=1, include_buffers=True, epochs=3),
    dict(decay=0.8, warmup=False, every_n_steps=2, include_buffers=False, epochs=3),
]

SWA_CASES = [
    dict(swa_start=2, swa_lr=0.01, anneal_epochs=2, anneal_strategy="cos", epochs=6),
    dict(swa_start=1, swa_lr=0.02, anneal_epochs=3, anneal_strategy="linear", epochs=5),
    dict(swa_start=3, swa_lr=0.005, anneal_epochs=0, anneal_strategy="cos", epochs=5),
]


def tensor_json(tensor):
    return {"shape": list(tensor.shape), "values": tensor.detach().reshape(-1).tolist()}


def named_json(pairs):
    return {name: tensor_json(tensor) for name, tensor in pairs}


def make_data():
    torch.manual_seed(0)
    x = torch.randn(EXAMPLES, 4)
    y = torch.stack([x[:, 0] * x[:, 1], x[:, 2] - 0.5 * x[:, 3]], dim=1)
    y = y + 0.1 * torch.randn(EXAMPLES, 2)
    return x, y


def batches(x, y):
    return [(x[i:i + BATCH_SIZE], y[i:i + BATCH_SIZE]) for i in range(0, EXAMPLES, BATCH_SIZE)]


def train_epoch(net, optimizer, loader, after_step=None):
    net.train()
    for inputs, targets in loader:
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(net(inputs), targets).backward()
        optimizer.step()
        if after_step is not None:
            after_step()


def ema_avg_fn(decay, warmup):
    def average(averaged, weight, num_averaged):
        if not averaged.is_floating_point():
            return weight  # num_batches_tracked: copied
        decay_t = decay
        if warmup:
            # num_averaged counts the copy before training, so t, the EMA
            # updates before this one, is one less.
            t = int(num_averaged) - 1
            decay_t = min(decay, (1 + t) / (10 + t))
        return decay_t * averaged + (1 - decay_t) * weight
    return average


def run_ema(initial, loader, case):
    net = copy.deepcopy(initial)
    optimizer = torch.optim.SGD(net.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    average = AveragedModel(net, avg_fn=ema_avg_fn(case["decay"], case["warmup"]),
                            use_buffers=case["include_buffers"])
    average.update_parameters(net)  # the copy at fit_start
    step = 0

    def after_step():
        nonlocal step
        step += 1
        if step % case["every_n_steps"] == 0:
            average.update_parameters(net)

    for _ in range(case["epochs"]):
        train_epoch(net, optimizer, loader, after_step)
    result = dict(case)
    result["updates"] = int(average.n_averaged) - 1
    result["parameters"] = named_json(average.module.named_parameters())
    result["buffers"] = named_json(average.module.named_buffers()) if case["include_buffers"] else {}
    result["model_parameters"] = named_json(net.named_parameters())
    return result


def run_swa(initial, loader, case):
    net = copy.deepcopy(initial)
    optimizer = torch.optim.SGD(net.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    average = AveragedModel(net)
    scheduler = None
    rates = []
    for epoch in range(case["epochs"]):
        if epoch == case["swa_start"]:
            scheduler = SWALR(optimizer, swa_lr=case["swa_lr"], anneal_epochs=case["anneal_epochs"],
                              anneal_strategy=case["anneal_strategy"])
        rates.append(optimizer.param_groups[0]["lr"])
        train_epoch(net, optimizer, loader)
        if epoch >= case["swa_start"]:
            average.update_parameters(net)
            scheduler.step()
    update_bn(loader, average)
    result = dict(case)
    result["rates"] = rates
    result["updates"] = int(average.n_averaged)
    result["parameters"] = named_json(average.module.named_parameters())
    result["buffers"] = named_json(average.module.named_buffers())
    return result


def main():
    x, y = make_data()
    loader = batches(x, y)
    torch.manual_seed(1)
    initial = Net()
    goldens = {
        "torch_version": torch.__version__,
        "learning_rate": LEARNING_RATE,
        "momentum": MOMENTUM,
        "batch_size": BATCH_SIZE,
        "inputs": tensor_json(x),
        "targets": tensor_json(y),
        "initial": named_json(list(initial.named_parameters()) + list(initial.named_buffers())),
        "ema": [run_ema(initial, loader, case) for case in EMA_CASES],
        "swa": [run_swa(initial, loader, case) for case in SWA_CASES],
    }
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(root, "tests", "data", "weight_averaging_goldens.json")
    with open(path, "w") as out:
        json.dump(goldens, out, indent=1)
        out.write("\n")


if __name__ == "__main__":
    main()
