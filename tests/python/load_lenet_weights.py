"""Loads weights that trainloop::save_weights wrote into a LeNet-5 defined
here in Python, as examples/lenet.h defines it, and compares its outputs
with the C++ outputs saved beside them.

Usage: load_lenet_weights.py WEIGHTS.pt IO.pt   (IO.pt: {"inputs", "outputs"})
Exit 0 when the largest difference is within 1e-5, else 1.
"""
import sys

import torch
from torch import nn
import torch.nn.functional as F


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def main(weights_path, io_path):
    state = torch.load(weights_path)
    model = LeNet()
    # strict: every name and shape must match, none may be left over.
    model.load_state_dict(state, strict=True)
    model.eval()
    io = torch.load(io_path)
    with torch.no_grad():
        outputs = model(io["inputs"])
    difference = (outputs - io["outputs"]).abs().max().item()
    print(f"{len(state)} tensors loaded; max abs difference {difference:.3g}")
    return 0 if difference <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
