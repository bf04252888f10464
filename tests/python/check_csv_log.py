"""Reads a trainloop CSV log with Python's csv module and prints it as JSON.

Usage: check_csv_log.py LOG.csv

Prints {"header": [...], "rows": [{"fields": [...], "epoch": int, "batch": int,
"phase": str, "step": int, "lr": hex-or-null, "metrics": [hex, ...]}, ...]}.
Numbers are parsed with Python's float() and written as float.hex() (or
"nan", "inf", "-inf"), so the C++ test compares the exact doubles without
depending on JSON's float syntax, which has no NaN or infinity.
"""
import csv
import json
import sys

FIXED = ["epoch", "batch", "phase", "step", "lr"]


def number(text):
    value = float(text)  # raises on anything Python would not read back
    return value.hex()


def main(path):
    with open(path, newline="", encoding="utf-8") as f:
        records = list(csv.reader(f, strict=True))
    if not records:
        raise SystemExit(f"{path}: empty")
    header, body = records[0], records[1:]
    if header[: len(FIXED)] != FIXED:
        raise SystemExit(f"{path}: header {header}, expected it to start with {FIXED}")
    rows = []
    for line, fields in enumerate(body, start=2):
        if len(fields) != len(header):
            raise SystemExit(f"{path}:{line}: {len(fields)} fields, expected {len(header)}")
        if fields[2] not in ("train", "validation"):
            raise SystemExit(f"{path}:{line}: phase {fields[2]!r}")
        rows.append({
            "fields": fields,
            "epoch": int(fields[0]),
            "batch": int(fields[1]),
            "phase": fields[2],
            "step": int(fields[3]),
            "lr": number(fields[4]) if fields[4] else None,
            "metrics": [number(v) for v in fields[len(FIXED):]],
        })
    json.dump({"header": header, "rows": rows}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
