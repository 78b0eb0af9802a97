"""Mean +- sd over seeds of a sweep's results: ``python experiments/seed_table.py OUT/results.csv [--json OUT.json]``.

The sweep runner (``python -m jaxseq.sweep``) writes one row per run; a study with ``train.seed`` in its grid
has one row per seed. This groups the rows by every other varied setting and prints a Markdown table of
the mean and sample standard deviation (n - 1) of test accuracy, bits/base, steps and wall time, with the
number of seeds that finished (failed runs have empty cells and are left out of the counts).
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


def group_rows(rows: list[dict]) -> list[dict]:
    """Rows grouped by their non-seed settings, in first-seen order, with mean/sd/n per value column."""
    keys = [c for c in rows[0] if c not in SEED_COLUMNS + VALUES + SKIP] if rows else []
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for setting, members in groups.items():
        entry = dict(zip(keys, setting))
        for column in VALUES:
            values = [float(m[column]) for m in members if m.get(column) not in (None, "")]
            entry[column] = {"mean": statistics.fmean(values) if values else None,
                             "sd": statistics.stdev(values) if len(values) > 1 else None,
                             "n": len(values), "values": values}
        out.append(entry)
    return out


def _cell(stat: dict, digits: int) -> str:
    if stat["mean"] is None:
        return "-"
    sd = f" ± {stat['sd']:.{digits}f}" if stat["sd"] is not None else ""
    return f"{stat['mean']:.{digits}f}{sd}"


def format_table(groups: list[dict]) -> str:
    """Markdown: one row per setting, mean ± sd (n seeds)."""
    if not groups:
        return "(no rows)"
    keys = [k for k in groups[0] if k not in VALUES]
    header = keys + ["seeds", "test accuracy", "bits/base", "steps", "wall s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for g in groups:
        cells = [str(g[k]) for k in keys] + [str(g["test_accuracy"]["n"]), _cell(g["test_accuracy"], 4),
                                             _cell(g["test_bits_per_base"], 3), _cell(g["steps"], 0),
                                             _cell(g["wall_time_s"], 0)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="results.csv files of sweeps (rows are concatenated)")
    parser.add_argument("--json", help="write the grouped numbers here")
    args = parser.parse_args()
    rows = []
    for path in args.results:
        with open(path, newline="") as f:
            rows.extend(csv.DictReader(f))
    groups = group_rows(rows)
    print(format_table(groups))
    if args.json:
        Path(args.json).write_text(json.dumps(groups, indent=2))


if __name__ == "__main__":
    main()
