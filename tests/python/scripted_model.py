"""TorchScript interop for tests/model_test.cpp, run with /usr/bin/python3.

  scripted_model.py make PATH   scripts a small MLP (4 -> 8 -> 3) and saves it
  scripted_model.py run PATH    loads a (trained) module and prints, as JSON,
                                its outputs on the fixed inputs of fixed_inputs()
"""
import json
import sys

import torch


class SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(4, 8)
        self.out = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


def fixed_inputs():
    # The C++ test builds the same tensor: torch::linspace(-1, 1, 20).reshape({5, 4}).
    return torch.linspace(-1, 1, 20).reshape(5, 4)


def main():
    command, path = sys.argv[1], sys.argv[2]
    if command == "make":
        torch.manual_seed(0)
        torch.jit.save(torch.jit.script(SmallNet()), path)
    elif command == "run":
        module = torch.jit.load(path)
        module.eval()
        with torch.no_grad():
            print(json.dumps(module(fixed_inputs()).tolist()))
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
