"""Golden values for tests/csv_test.cpp, from Python's csv module and scikit-learn.

1. tests/data/quoted.csv and quoted.csv.gz: a table written by Python's csv
   module with every cell quoted where RFC 4180 needs it (commas, doubled
   quotes, LF and CRLF inside quotes), CRLF record ends, a column to drop and
   text labels; the expected features, label texts and classes are what
   Python's csv.reader reads back and NumPy's np.unique sorts (as
   scikit-learn's LabelEncoder does).
2. scikit-learn's bundled tables (iris, wine, breast_cancer and the
   headerless digits.csv.gz) as scikit-learn's own loaders read them: shape,
   class names, column sums, first and last rows, and the count per class.

Deterministic. Run from the repository root:
    /usr/bin/python3 tests/python/make_csv_goldens.py
It writes tests/data/quoted.csv, tests/data/quoted.csv.gz and
tests/data/csv_goldens.json.
"""

import csv
import gzip
import io
import json
import pathlib

import numpy as np
import sklearn
import sklearn.datasets as skd

DATA = pathlib.Path(__file__).resolve().parents[1] / "data"
SKLEARN_DATA = pathlib.Path(skd.__file__).resolve().parent / "data"

LABELS = ['plain', 'with, comma', 'say "hi"', 'two\nlines', 'crlf\r\ninside', 'Zebra',
          'émigré']


def quoted_table():
    rows = []
    for i in range(14):
        label = LABELS[i % len(LABELS)]
        rows.append([f"id{i}", f"{(i - 6) * 0.125:g}", f"{1e3 * i + 0.5:.1f}", label,
                     f"{-1.5e-3 * i:.4g}"])
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(["Id", "x, first", 'y "second"', "label", "z"])
    writer.writerows(rows)
    text = out.getvalue()
    # Read back with Python's csv module: the independent expectation.
    read = list(csv.reader(io.StringIO(text, newline="")))
    header, body = read[0], read[1:]
    features = [[float(r[1]), float(r[2]), float(r[4])] for r in body]
    labels = [r[3] for r in body]
    classes = np.unique(np.array(labels, dtype=object)).tolist()
    return text, {
        "header": header,
        "feature_names": [header[1], header[2], header[4]],
        "features": features,
        "labels": labels,
        "classes": sorted(classes, key=lambda s: s.encode("utf-8")),
        "targets": [sorted(classes, key=lambda s: s.encode("utf-8")).index(l) for l in labels],
        # Physical line each record starts on (1-based): the header is line 1,
        # and each record ends one line after its last cell's line breaks.
        "lines": [2 + i + sum(line_breaks(c) for r in rows[:i] for c in r)
                  for i in range(len(rows))],
    }


def line_breaks(cell):
    """Line breaks in a cell: CRLF, LF and CR each count one."""
    return cell.count("\r\n") + cell.replace("\r\n", "").count("\n") \
        + cell.replace("\r\n", "").count("\r")


def sklearn_tables():
    tables = {}
    loaders = {"iris.csv": skd.load_iris, "wine_data.csv": skd.load_wine,
               "breast_cancer.csv": skd.load_breast_cancer, "digits.csv.gz": skd.load_digits}
    for name, load in loaders.items():
        bunch = load()
        x, y = bunch.data, bunch.target
        tables[name] = {
            "path": str(SKLEARN_DATA / name),
            "rows": int(x.shape[0]),
            "features": int(x.shape[1]),
            "class_names": [str(c) for c in bunch.target_names],
            "column_sums": x.sum(axis=0).tolist(),
            # As float32, the reader's type.
            "first_row": x[0].astype(np.float32).astype(np.float64).tolist(),
            "last_row": x[-1].astype(np.float32).astype(np.float64).tolist(),
            "class_counts": np.bincount(y).tolist(),
        }
    return tables


def main():
    text, expected = quoted_table()
    (DATA / "quoted.csv").write_bytes(text.encode("utf-8"))
    # mtime=0: the same bytes on every run.
    (DATA / "quoted.csv.gz").write_bytes(gzip.compress(text.encode("utf-8"), mtime=0))
    goldens = {"sklearn_version": sklearn.__version__, "quoted": expected,
               "sklearn_tables": sklearn_tables()}
    (DATA / "csv_goldens.json").write_text(json.dumps(goldens, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {DATA / 'quoted.csv'}, {DATA / 'quoted.csv.gz'}, {DATA / 'csv_goldens.json'}")


if __name__ == "__main__":
    main()
