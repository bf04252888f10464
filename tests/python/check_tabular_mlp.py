"""Checks tabular_mlp's test accuracy against scikit-learn's MLPClassifier on the same split.

    /usr/bin/python3 tests/python/check_tabular_mlp.py --csv wine_data.csv \
        --split run-tabular/split.csv --accuracy 0.9722 --hidden 32 16

Reads the table with NumPy, in the format of scikit-learn's bundled tables (a
first line n_samples,n_features,class names, then rows of features and the
class index), independently of trainloop's CSV reader. Takes the training and
test rows from split.csv, which tabular_mlp wrote (row, line, part), fits
StandardScaler on the training rows, and trains MLPClassifier with what
tabular_mlp uses: the same hidden widths with ReLU, softmax cross-entropy,
Adam (betas 0.9/0.999, eps 1e-8) at the same learning rate, one full batch
per epoch, the same number of epochs, no L2 penalty and no early stop. Only
the weight initialisation differs (Glorot-uniform against LibTorch's
Kaiming-uniform), so the script trains with --seeds seeds and takes the range
of their test accuracies as what this recipe reaches on this split.

Prints one line and exits 0 when --accuracy lies within [min, max] of those
accuracies, 1 when it does not (2 for bad input).
"""

import argparse
import sys
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler


def read_split(path, rows):
    train, test = [], []
    with open(path) as f:
        if f.readline().strip() != "row,line,part":
            sys.exit(f"{path}: expected the header row,line,part")
        for line in f:
            row, _, part = line.strip().split(",")
            (train if part == "train" else test).append(int(row))
    if sorted(train + test) != list(range(rows)):
        sys.exit(f"{path}: the parts do not cover the table's {rows} rows exactly once")
    return np.array(train), np.array(test)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--accuracy", type=float, required=True)
    parser.add_argument("--hidden", type=int, nargs="+", required=True)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()

    with open(args.csv) as f:
        n_samples, n_features = (int(v) for v in f.readline().split(",")[:2])
    data = np.loadtxt(args.csv, delimiter=",", skiprows=1)
    if data.shape != (n_samples, n_features + 1):
        sys.exit(f"{args.csv}: {data.shape}, expected ({n_samples}, {n_features + 1})")
    x, y = data[:, :-1], data[:, -1].astype(int)
    train, test = read_split(args.split, n_samples)
    scaler = StandardScaler().fit(x[train])
    x_train, x_test = scaler.transform(x[train]), scaler.transform(x[test])

    accuracies = []
    for seed in range(args.seeds):
        model = MLPClassifier(hidden_layer_sizes=tuple(args.hidden), activation="relu",
                              solver="adam", alpha=0.0, batch_size=len(train),
                              learning_rate_init=args.lr, max_iter=args.epochs, shuffle=False,
                              n_iter_no_change=args.epochs + 1, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x_train, y[train])
        accuracies.append(model.score(x_test, y[test]))
    low, high = min(accuracies), max(accuracies)
    # tabular_mlp prints 4 decimals: allow for that rounding only.
    slack = 0.5e-4
    inside = low - slack <= args.accuracy <= high + slack
    print(f"trainloop {args.accuracy:.4f} {'within' if inside else 'OUTSIDE'} scikit-learn "
          f"MLPClassifier [{low:.4f}, {high:.4f}] over {args.seeds} seeds on the same "
          f"{len(train)}/{len(test)} split (mean {np.mean(accuracies):.4f})")
    return 0 if inside else 1


if __name__ == "__main__":
    sys.exit(main())
