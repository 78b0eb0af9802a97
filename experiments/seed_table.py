"""Mean +- sd over seeds of a sweep's results: ``python experiments/seed_table.py OUT/results.csv [--json OUT.json]``.

The sweep runner (``python -m jaxseq.sweep``) writes one row per run; a study with ``train.seed`` in its grid
has one row per seed. This groups the rows by every other varied setting and prints a Markdown table of
the mean and sample standard deviation (n - 1) of test accuracy, bits/base, steps and wall time, with the
number of seeds that finished (failed runs have empty cells and are left out of the counts).
``--curve 500 1000``: also the training accuracy (TensorBoard ``train/accuracy``, dropout and noise on)
logged at those steps, a coarse learning curve (``OUT/<run>/tensorboard``).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

SEED_COLUMNS = ("train.seed", "seed")
VALUES = ("test_accuracy", "test_bits_per_base", "steps", "wall_time_s")
SKIP = ("run", "valid_accuracy", "windows_per_sec", "note", "test_accuracy_stochastic",
        "test_bits_per_base_stochastic", "steps_to_target", "seconds_to_target")


def add_curve(rows: list[dict], out: Path, steps: list[int]) -> list[str]:
    """Adds ``train_acc@STEP`` to each row from its run's TensorBoard events; returns the new column names."""
    from jaxseq.summary import read_scalars

    columns = [f"train_acc@{s}" for s in steps]
    for row in rows:
        logged = {step: value for step, _, value in read_scalars(out / row["run"] / "tensorboard", "train/accuracy")}
        row.update({c: logged.get(s, "") for c, s in zip(columns, steps)})
    return columns


def group_rows(rows: list[dict], extra: tuple[str, ...] = ()) -> list[dict]:
    """Rows grouped by their non-seed settings, in first-seen order, with mean/sd/n per value column."""
    values = VALUES + tuple(extra)
    keys = [c for c in rows[0] if c not in SEED_COLUMNS + values + SKIP] if rows else []
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for setting, members in groups.items():
        entry = dict(zip(keys, setting))
        for column in values:
            got = [float(m[column]) for m in members if m.get(column) not in (None, "")]
            entry[column] = {"mean": statistics.fmean(got) if got else None,
                             "sd": statistics.stdev(got) if len(got) > 1 else None, "n": len(got), "values": got}
        out.append(entry)
    return out


def _cell(stat: dict, digits: int) -> str:
    if stat["mean"] is None:
        return "-"
    sd = f" ± {stat['sd']:.{digits}f}" if stat["sd"] is not None else ""
    return f"{stat['mean']:.{digits}f}{sd}"


def format_table(groups: list[dict], extra: tuple[str, ...] = ()) -> str:
    """Markdown: one row per setting, mean ± sd (n seeds)."""
    if not groups:
        return "(no rows)"
    keys = [k for k in groups[0] if k not in VALUES + tuple(extra)]
    header = keys + ["seeds", "test accuracy", "bits/base", "steps", "wall s", *extra]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for g in groups:
        cells = [str(g[k]) for k in keys] + [str(g["test_accuracy"]["n"]), _cell(g["test_accuracy"], 4),
                                             _cell(g["test_bits_per_base"], 3), _cell(g["steps"], 0),
                                             _cell(g["wall_time_s"], 0)] + [_cell(g[c], 3) for c in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="results.csv files of sweeps (rows are concatenated)")
    parser.add_argument("--json", help="write the grouped numbers here")
    parser.add_argument("--curve", nargs="*", type=int, default=[], help="steps of train/accuracy to add")
    args = parser.parse_args()
    rows, extra = [], []
    for path in args.results:
        with open(path, newline="") as f:
            mine = list(csv.DictReader(f))
        extra = add_curve(mine, Path(path).parent, args.curve) if args.curve else []
        rows.extend(mine)
    groups = group_rows(rows, tuple(extra))
    print(format_table(groups, tuple(extra)))
    if args.json:
        Path(args.json).write_text(json.dumps(groups, indent=2))


if __name__ == "__main__":
    main()
