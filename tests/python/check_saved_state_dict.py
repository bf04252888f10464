"""Loads a state dict that trainloop wrote with torch.load's defaults
(weights_only=True since PyTorch 2.6) and compares it with what the C++ side
says it holds.

Usage: check_saved_state_dict.py WEIGHTS.pt EXPECTED.json [sequential]

EXPECTED.json: {"names": [...in order...], "entries": {name: {"shape": [...],
"dtype": "float32", "values": [...]}}}, the values flattened as float64 (a
complex tensor's as torch.view_as_real gives them). With "sequential", the
dict is also loaded, strictly, into
Sequential(Linear(3, 4), BatchNorm1d(4), ReLU(), Linear(4, 2)).
Exit 0 when everything matches, else 1 with the differences printed.
"""
import collections
import json
import sys

import torch


def flat_values(tensor):
    if tensor.is_complex():
        tensor = torch.view_as_real(tensor)
    return tensor.to(torch.float64).flatten().tolist()


def main(weights_path, expected_path, module=None):
    # torch.load's defaults: no weights_only=False, as a user would load it.
    state = torch.load(weights_path)
    with open(expected_path) as f:
        expected = json.load(f)
    problems = []
    if type(state) is not collections.OrderedDict:
        problems.append(f"torch.load returned a {type(state).__name__}, expected an OrderedDict")
    if list(state.keys()) != expected["names"]:
        problems.append(f"names {list(state.keys())}, expected {expected['names']}")
    for name, want in expected["entries"].items():
        tensor = state.get(name)
        if not isinstance(tensor, torch.Tensor):
            problems.append(f"{name}: not a tensor: {type(tensor).__name__}")
            continue
        dtype = str(tensor.dtype).replace("torch.", "")
        if dtype != want["dtype"]:
            problems.append(f"{name}: dtype {dtype}, expected {want['dtype']}")
        if list(tensor.shape) != want["shape"]:
            problems.append(f"{name}: shape {list(tensor.shape)}, expected {want['shape']}")
        elif flat_values(tensor) != want["values"]:
            problems.append(f"{name}: values {flat_values(tensor)}, expected {want['values']}")
        if tensor.requires_grad:
            problems.append(f"{name}: requires grad")
    if module == "sequential":
        net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4),
                                  torch.nn.ReLU(), torch.nn.Linear(4, 2))
        # strict: every name and shape must match, none may be left over.
        net.load_state_dict(state, strict=True)
        for name, tensor in net.state_dict().items():
            if flat_values(tensor) != expected["entries"][name]["values"]:
                problems.append(f"{name}: differs once loaded into the module")
    for problem in problems:
        print(problem)
    print(f"torch {torch.__version__}: {len(state)} tensors loaded, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
