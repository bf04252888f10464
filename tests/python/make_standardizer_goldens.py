"""Golden values for tests/standardizer_test.cpp, from scikit-learn's StandardScaler.

Each fixture is a small training matrix (fitted on) and a test matrix
(transformed with the training statistics), with scikit-learn's mean_, scale_
and both transforms, in float64 and, for the same numbers rounded to float32,
the float32 transforms. The fixtures cover columns of very different scales
and offsets, exactly constant columns, a column whose values differ by one
rounding step (its variance, about 1e-16, is below scikit-learn's rounding
error bound, so it still gets scale 1, where a test of var == 0 would divide
by 1e-8), a column with a large offset and a small but real spread (not
constant), and a single training row.

Deterministic (a fixed NumPy seed; JSON numbers round-trip float64 exactly).
Run from the repository root:
    /usr/bin/python3 tests/python/make_standardizer_goldens.py
It writes tests/data/standardizer_goldens.json.
"""

import json
import pathlib

import numpy as np
import sklearn
from sklearn.preprocessing import StandardScaler

OUTPUT = pathlib.Path(__file__).resolve().parents[1] / "data" / "standardizer_goldens.json"


def fixtures():
    rng = np.random.default_rng(20240611)
    n = 40
    mixed = np.column_stack([
        rng.standard_normal(n),                      # already standard
        1000.0 + 250.0 * rng.standard_normal(n),     # large offset and spread
        -5.0 + 1e-3 * rng.standard_normal(n),        # tiny spread
        rng.integers(0, 3, n).astype(np.float64),    # a few levels
        rng.exponential(3.0, n),                     # skewed, positive
    ])
    constants = np.column_stack([
        np.full(n, 7.0),                             # exactly constant
        np.full(n, 0.1),                             # constant, 0.1 not exact in binary
        # 1e8 and the next double, alternating: a spread of one rounding step,
        # which scikit-learn's error bound counts as constant.
        np.where(np.arange(n) % 2 == 0, 1e8, np.nextafter(1e8, np.inf)),
        1e6 + 1e-2 * rng.standard_normal(n),         # large offset, real spread
        rng.uniform(-1.0, 1.0, n),
    ])
    single = rng.uniform(-3.0, 3.0, (1, 3))
    return [
        ("mixed_scales", mixed, mixed[:10] * 1.1 + 0.5),
        ("constant_columns", constants, constants[:8] + 0.25),
        ("single_row", single, rng.uniform(-3.0, 3.0, (4, 3))),
    ]


def main():
    cases = []
    for name, train, test in fixtures():
        scaler = StandardScaler().fit(train)
        train32 = train.astype(np.float32)
        test32 = test.astype(np.float32)
        scaler32 = StandardScaler().fit(train32)
        cases.append({
            "name": name,
            "train": train.tolist(),
            "test": test.tolist(),
            "mean": scaler.mean_.tolist(),
            "scale": scaler.scale_.tolist(),
            "constant": (scaler.scale_ == 1.0).tolist(),
            "train_transformed": scaler.transform(train).tolist(),
            "test_transformed": scaler.transform(test).tolist(),
            # float32 inputs: scikit-learn accumulates in float64 and returns float32.
            "mean_float32_input": scaler32.mean_.astype(np.float64).tolist(),
            "scale_float32_input": scaler32.scale_.astype(np.float64).tolist(),
            "train_transformed_float32": scaler32.transform(train32).astype(np.float64).tolist(),
            "test_transformed_float32": scaler32.transform(test32).astype(np.float64).tolist(),
        })
    OUTPUT.write_text(json.dumps({"sklearn_version": sklearn.__version__, "cases": cases},
                                 indent=1) + "\n")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
