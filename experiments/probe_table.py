"""Probe scores over tasks and probe seeds, mean +- sd: the probe table of RESULTS.md.

    python experiments/probe_table.py RUN [RUN ...] --annotations ../shared/data/prokka_bacterium_annotated.gff3.gz \
        [--tasks coding strand feature] [--seeds 0 1 2] [--max-windows 10000] [--json OUT.json]

For each run, task and seed it calls :func:`jaxseq.probe.run_probe` (the run's latent, a randomly initialised
model of the same config, k-mer frequencies k = 1..4, and the run's latent with shuffled labels), then prints
one Markdown row per (run, features, task): balanced accuracy and AUROC on the held-out blocks, mean ± sd over
the probe seeds (the seed changes the block split, the window subsample, the random model and the shuffle).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from jaxseq.probe import run_probe


def _cell(values: list[float]) -> str:
    sd = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.3f}{sd}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--annotations", required=True)
    parser.add_argument("--tasks", nargs="+", default=["coding", "strand", "feature"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--max-windows", type=int, default=10_000)
    parser.add_argument("--json", help="write every report here")
    args = parser.parse_args()
    reports = []
    for run in args.runs:
        for task in args.tasks:
            for seed in args.seeds:
                report = run_probe(run, args.annotations, task, seed=seed, max_windows=args.max_windows)
                reports.append(report)
                scores = ", ".join(f"{k} {v['balanced_accuracy']:.3f}" for k, v in report["results"].items())
                print(f"# {Path(run).name} {task} seed {seed}: {scores}", flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps(reports, indent=2))
    print("| run | features | task | seeds | balanced accuracy | AUROC |\n|---|---|---|---|---|---|")
    for run in args.runs:
        for features in ("model", "random_init", "kmer", "random_labels"):
            for task in args.tasks:
                mine = [r["results"][features] for r in reports if r["task"] == task and r["run"].endswith(Path(run).name)]
                print(f"| {Path(run).name} | {features} | {task} | {len(mine)} | "
                      f"{_cell([m['balanced_accuracy'] for m in mine])} | {_cell([m['auroc'] for m in mine])} |")


if __name__ == "__main__":
    main()
