"""Writes state dicts as Python's torch.save does, for tests/state_dict_test.cpp.

Usage: write_state_dicts.py DIR

Each NAME.pt goes with NAME.json, what its entries hold as Python reads them
back: {entry: {"shape": [...], "dtype": "float32", "values": [...]}}. The
hostile files (a call of os.system, a list, non-string keys) and the file in
the legacy (pre-1.6) format have no JSON.
"""
import collections
import json
import os
import sys

import torch


def expected(state):
    out = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        out[name] = {
            "shape": list(tensor.shape),
            "dtype": str(tensor.dtype).replace("torch.", ""),
            "values": tensor.to(torch.float64).flatten().tolist(),
        }
    return out


class CallsSystem:
    """Pickles as a call of os.system, as a hostile file would."""

    def __reduce__(self):
        return (os.system, ("echo state_dict_test should never run this",))


def main():
    directory = sys.argv[1]
    torch.manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(),
                                torch.nn.Linear(4, 2))
    model(torch.randn(8, 3))  # moves the batch-norm statistics off their defaults
    base = torch.arange(20.0)
    files = {
        # An OrderedDict with _metadata, int64 num_batches_tracked.
        "module_state_dict": model.state_dict(),
        # A one-entry dict is pickled with SETITEM, not SETITEMS.
        "one_entry": {"weight": torch.randn(2, 3)},
        # Parameters are pickled through torch._utils._rebuild_parameter.
        "parameters": collections.OrderedDict(model[0].named_parameters()),
        # Views: a transpose, a strided slice, two views of one storage.
        "views": {"transposed": torch.randn(3, 5).t(), "strided": torch.randn(12)[1::3],
                  "first": base[2:8].view(2, 3), "second": base[10:14]},
        "dtypes": {"float64": torch.randn(3, dtype=torch.float64),
                   "float16": torch.randn(3).half(), "bfloat16": torch.randn(3).bfloat16(),
                   "int64": torch.tensor([-5, 0, 2 ** 40]), "int8": torch.tensor([-3, 4], dtype=torch.int8),
                   "uint8": torch.tensor([0, 255], dtype=torch.uint8),
                   "bool": torch.tensor([True, False, True]), "scalar": torch.tensor(2.5),
                   "empty": torch.zeros(0, 4)},
    }
    for name, state in files.items():
        torch.save(state, os.path.join(directory, name + ".pt"))
        with open(os.path.join(directory, name + ".json"), "w") as out:
            json.dump(expected(state), out)
    torch.save({"weight": CallsSystem()}, os.path.join(directory, "calls_system.pt"))
    torch.save([torch.zeros(2)], os.path.join(directory, "a_list.pt"))
    torch.save({1: torch.zeros(2)}, os.path.join(directory, "integer_keys.pt"))
    torch.save({"weight": torch.zeros(2), "epoch": 3}, os.path.join(directory, "an_integer.pt"))
    # PyTorch's format before 1.6: pickles, no zip archive.
    torch.save({"weight": torch.zeros(2)}, os.path.join(directory, "legacy_format.pt"),
               _use_new_zipfile_serialization=False)


if __name__ == "__main__":
    main()
