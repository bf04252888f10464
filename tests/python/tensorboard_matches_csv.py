"""Checks with TensorBoard's own reader that a run's event files hold the
scalars its CSV log holds.

Usage: python tensorboard_matches_csv.py RUN_DIR
RUN_DIR is a demo's --out: log.csv (a row per batch) and
tensorboard/stats/<run>/{train,validation}/. Needs the tensorboard package.

Training: every scalar TensorBoard shows (each metric and "learning_rate",
written every n steps and at each epoch's last batch) equals the CSV's
training row of the same step. Validation: each epoch's scalar equals the
CSV's last validation row of that epoch. Values are compared at float32,
the precision of a TensorBoard scalar. Exit 0 when all agree, else 1.
"""

import csv
import math
import pathlib
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_scalars(run_dir):
    """{tag: {step: value}} of one TensorBoard run, read by TensorBoard itself."""
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    scalars = {}
    for tag in accumulator.Tags()["scalars"]:
        events = accumulator.Scalars(tag)
        steps = [event.step for event in events]
        if len(set(steps)) != len(steps):
            raise SystemExit(f"{run_dir}: tag {tag!r} has a step more than once: {steps}")
        scalars[tag] = {event.step: event.value for event in events}
    return scalars


def float32(value):
    import struct

    return struct.unpack("<f", struct.pack("<f", value))[0]


def same(csv_value, tensorboard_value):
    expected = float32(float(csv_value))
    if math.isnan(expected):
        return math.isnan(tensorboard_value)
    return expected == tensorboard_value


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    out = pathlib.Path(sys.argv[1])
    with open(out / "log.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    metric_columns = [c for c in rows[0] if c not in ("epoch", "batch", "phase", "step", "lr")]
    train_rows = {int(r["step"]): r for r in rows if r["phase"] == "train"}
    validation_rows = {}  # step -> the epoch's last validation row
    for r in rows:
        if r["phase"] == "validation":
            validation_rows[int(r["step"])] = r

    runs = sorted(p for p in (out / "tensorboard" / "stats").iterdir() if p.is_dir())
    if len(runs) != 1:
        raise SystemExit(f"{out}: expected one TensorBoard run, found {[p.name for p in runs]}")
    train = read_scalars(runs[0] / "train")
    validation = read_scalars(runs[0] / "validation")

    problems = []
    checked = 0
    expected_train_tags = set(metric_columns) | {"learning_rate"}
    if set(train) != expected_train_tags:
        problems.append(f"train tags {sorted(train)}, CSV columns give {sorted(expected_train_tags)}")
    if set(validation) != set(metric_columns):
        problems.append(f"validation tags {sorted(validation)}, CSV columns give {sorted(metric_columns)}")
    for tag, values in train.items():
        column = "lr" if tag == "learning_rate" else tag
        for step, value in values.items():
            row = train_rows.get(step)
            if row is None:
                problems.append(f"train {tag} step {step}: no CSV training row of that step")
            elif not same(row[column], value):
                problems.append(f"train {tag} step {step}: TensorBoard {value!r}, CSV {row[column]}")
            checked += 1
    for tag, values in validation.items():
        if sorted(values) != sorted(validation_rows):
            problems.append(f"validation {tag}: steps {sorted(values)}, CSV epochs end at {sorted(validation_rows)}")
        for step, value in values.items():
            row = validation_rows.get(step)
            if row is not None and not same(row[tag], value):
                problems.append(f"validation {tag} step {step}: TensorBoard {value!r}, CSV {row[tag]}")
            checked += 1
    # Training scalars are due every n steps and at each epoch's last batch:
    # at least one per epoch.
    epochs = {r["epoch"] for r in train_rows.values()}
    if any(len(values) < len(epochs) for values in train.values()):
        problems.append(f"fewer training scalars than the {len(epochs)} epochs")
    for problem in problems[:20]:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{out}: {len(problems)} disagreements in {checked} scalars", file=sys.stderr)
        return 1
    print(f"{out}: TensorBoard's EventAccumulator reads {checked} scalars "
          f"({sum(len(v) for v in train.values())} train, "
          f"{sum(len(v) for v in validation.values())} validation), each equal to the CSV log's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
