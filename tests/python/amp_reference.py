"""Trains a small MLP under Python's torch.autocast (with loss scaling if
asked) on the batches a trainloop test wrote, as reference for that test.

Usage: amp_reference.py IN.pt OUT.pt --dtype bf16|fp16 [--scaling]
           [--init-scale S] [--growth-interval N] [--lr L] [--momentum M]

IN.pt (from trainloop::save_tensors): "0.weight", "0.bias", "2.weight",
"2.bias" of Sequential(Linear, ReLU, Linear), "inputs" [steps, batch,
features], "targets" [steps, batch]. OUT.pt: the final parameters under the
same names, "scales" (the scale each step's backward used; float64) and
"skipped" (1 where the step's update was skipped), and "reference": 1 when
torch.amp.GradScaler made them, 0 when this torch has no GradScaler for the
CPU (before 2.3) and the scaler below did.

The scaler below follows GradScaler's documented rule. Where this torch has
GradScaler for the CPU, both run and must agree exactly, so the rule is
checked against PyTorch's own wherever it can be.
"""
import argparse
import sys

import torch
import torch.nn.functional as F


class RuleScaler:
    """torch.amp.GradScaler's algorithm with plain operations."""

    def __init__(self, init_scale, growth_interval):
        self.scale = torch.tensor(init_scale, dtype=torch.float32)
        self.growth_interval = growth_interval
        self.tracker = 0

    def get_scale(self):
        return self.scale.item()

    def backward_and_step(self, loss, optimizer, parameters):
        (loss * self.scale).backward()
        inverse = self.scale.double().reciprocal().float()
        found = False
        for p in parameters:
            if p.grad is None:
                continue
            found = found or not bool(torch.isfinite(p.grad).all())
            p.grad.mul_(inverse)
        if not found:
            optimizer.step()
        if found:
            self.scale = self.scale * 0.5
            self.tracker = 0
        else:
            self.tracker += 1
            if self.tracker == self.growth_interval:
                grown = self.scale * 2.0
                if bool(torch.isfinite(grown)):
                    self.scale = grown
                self.tracker = 0


def cpu_grad_scaler(init_scale, growth_interval):
    amp = getattr(torch, "amp", None)
    if amp is None or not hasattr(amp, "GradScaler"):
        return None
    try:
        return amp.GradScaler("cpu", init_scale=init_scale, growth_interval=growth_interval)
    except (TypeError, RuntimeError, AssertionError):
        return None


def train(data, args, scaler):
    model = torch.nn.Sequential(
        torch.nn.Linear(data["0.weight"].shape[1], data["0.weight"].shape[0]),
        torch.nn.ReLU(),
        torch.nn.Linear(data["2.weight"].shape[1], data["2.weight"].shape[0]))
    model.load_state_dict({k: data[k] for k in ("0.weight", "0.bias", "2.weight", "2.bias")})
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    scales, skipped = [], []
    for x, y in zip(data["inputs"], data["targets"]):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            loss = F.cross_entropy(model(x), y)
        if scaler is None:
            loss.backward()
            optimizer.step()
            scales.append(1.0)
            skipped.append(0)
            continue
        before = scaler.get_scale()
        if isinstance(scaler, RuleScaler):
            scaler.backward_and_step(loss, optimizer, list(model.parameters()))
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        scales.append(before)
        # Only an update with an inf or nan gradient lowers the scale.
        skipped.append(int(scaler.get_scale() < before))
    out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out["scales"] = torch.tensor(scales, dtype=torch.float64)
    out["skipped"] = torch.tensor(skipped, dtype=torch.int64)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--dtype", choices=["bf16", "fp16"], required=True)
    parser.add_argument("--scaling", action="store_true")
    parser.add_argument("--init-scale", type=float, default=65536.0)
    parser.add_argument("--growth-interval", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = torch.load(args.input)
    reference = 1
    if not args.scaling:
        result = train(data, args, None)
    else:
        by_rule = train(data, args, RuleScaler(args.init_scale, args.growth_interval))
        pytorch = cpu_grad_scaler(args.init_scale, args.growth_interval)
        if pytorch is None:
            result, reference = by_rule, 0
        else:
            result = train(data, args, pytorch)
            for key, value in result.items():
                if not torch.equal(value, by_rule[key]):
                    sys.exit(f"the rule scaler differs from torch.amp.GradScaler in {key}: "
                             f"{by_rule[key]} vs {value}")
    result["reference"] = torch.tensor(reference)
    torch.save(result, args.output)


if __name__ == "__main__":
    main()
