"""Golden part sizes for tests/split_test.cpp, from scikit-learn's train_test_split.

For each (n, test_fraction) the size of the test part that
sklearn.model_selection.train_test_split gives, and for each stratified case
(class sizes, test_fraction) the number of test examples per class that it
gives with stratify=y. scikit-learn breaks ties between classes at random; the
cases are chosen without ties, which the script checks by splitting with
twenty random states and requiring the same counts from each.

Run from the repository root:
    /usr/bin/python3 tests/python/make_split_goldens.py
It writes tests/data/split_goldens.json.
"""

import json
import pathlib

import numpy as np
import sklearn
from sklearn.model_selection import train_test_split

OUTPUT = pathlib.Path(__file__).resolve().parents[1] / "data" / "split_goldens.json"

SIZES = [(178, 0.2), (569, 0.2), (150, 0.2), (10, 0.25), (5, 0.5), (3, 0.1), (1000, 0.333),
         (7, 0.8), (1797, 0.15)]
# wine, breast_cancer, iris, and imbalanced ones.
STRATIFIED = [([59, 71, 48], 0.2), ([212, 357], 0.2), ([50, 50, 50], 0.2), ([90, 7, 3], 0.3),
              ([5, 13, 2, 40], 0.25), ([30, 45, 25], 0.35), ([2, 2, 3], 0.4)]


def main():
    sizes = []
    for n, fraction in SIZES:
        _, test = train_test_split(np.arange(n), test_size=fraction, random_state=0)
        sizes.append({"n": n, "test_fraction": fraction, "test_size": len(test)})
    stratified = []
    for class_sizes, fraction in STRATIFIED:
        y = np.repeat(np.arange(len(class_sizes)), class_sizes)
        counts = set()
        for state in range(20):
            _, y_test = train_test_split(y, y, test_size=fraction, random_state=state,
                                         stratify=y)[2:]
            counts.add(tuple(np.bincount(y_test, minlength=len(class_sizes)).tolist()))
        assert len(counts) == 1, f"{class_sizes} {fraction}: ties, scikit-learn varies: {counts}"
        stratified.append({"class_sizes": class_sizes, "test_fraction": fraction,
                           "test_per_class": list(counts.pop())})
    OUTPUT.write_text(json.dumps({"sklearn_version": sklearn.__version__, "sizes": sizes,
                                  "stratified": stratified}, indent=1) + "\n")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
