"""Compares training runs (jaxseq or the PyTorch baseline) from their TensorBoard event files.

Run::

    python experiments/compare_runs.py runs/jax runs/torch [--target-accuracy 0.9] [--out compare.png]
        [--json compare.json] [--labels jaxseq,torch] [--check-crc]

Each RUN_DIR is a run directory (its ``tensorboard/`` folder is read) or a folder holding event files.
Prints one table row per run:

* ``final acc`` / ``best acc`` / ``final loss``: the last and the best ``eval/accuracy``, the last
  ``eval/loss``;
* ``steps``: the largest step logged;
* ``wall s``: wall-clock seconds from the first event of the run (written when the run opened its
  writer, i.e. after data loading and model creation, before the first step) to the last one;
* ``win/s``: the mean of ``perf/windows_per_sec`` over the logging intervals *after the first* (the
  first interval holds start-up and, for jaxseq, compilation; with a single interval it is used);
* ``t→target`` / ``step→target``: seconds (same origin as ``wall s``) and step of the first
  evaluation whose ``eval/accuracy`` reached ``--target-accuracy``; ``-`` if never reached.

and writes a PNG (2x2 panels: eval accuracy and eval loss against step and against wall-clock time,
one labelled line per run) and optionally JSON (rows plus the plotted series).

Event files are read with jaxseq's one event reader (``jaxseq.summary.read_events``: TFRecord framing
and tensorboardX's protobufs), so only the project's own dependencies are needed. A run directory resumed
several times has several event files; they are merged in file-name (creation) order.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from jaxseq import summary

EVAL_ACCURACY, EVAL_LOSS, WINDOWS_PER_SEC = "eval/accuracy", "eval/loss", "perf/windows_per_sec"


@dataclass
class Scalar:
    step: int
    wall_time: float
    value: float


@dataclass
class Run:
    """A run's scalars by tag, and the wall time of its first event (the origin of all times)."""

    label: str
    path: Path
    implementation: str
    start_time: float = math.nan
    end_time: float = math.nan
    scalars: dict[str, list[Scalar]] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Reading


def event_files(run_dir: Path) -> list[Path]:
    """Event files of a run directory (its ``tensorboard/`` folder) or of an event-file folder, oldest first.

    Sub-folders (``tensorboard/hparams``, written once at the end) are not read.
    """
    folder = run_dir / "tensorboard" if (run_dir / "tensorboard").is_dir() else run_dir
    files = summary.event_files(folder)
    if not files:
        raise FileNotFoundError(f"{run_dir}: no TensorBoard event files (looked in {folder})")
    return files


def _implementation(run_dir: Path) -> str:
    if (run_dir / "model.pt").is_file():
        return "torch"
    if (run_dir / "checkpoints").is_dir():
        return "jaxseq"
    return "?"


def read_run(run_dir: str | Path, label: str | None = None, check_crc: bool = False) -> Run:
    """Reads one run; ``label`` defaults to the directory name; ``check_crc``: verify data CRCs too.

    Raises:
      FileNotFoundError: no event files; ``summary.EventFileError``: a corrupt record.
    """
    run_dir = _run_dir(run_dir)
    run = Run(label=label or run_dir.name, path=run_dir, implementation=_implementation(run_dir))
    events = summary.read_events(event_files(run_dir)[0].parent, check_crc=check_crc)
    for tag, values in summary.event_scalars(events).items():
        run.scalars[tag] = [Scalar(*value) for value in values]
    if events:
        run.start_time, run.end_time = min(e.wall_time for e in events), max(e.wall_time for e in events)
    return run


def _run_dir(path: str | Path) -> Path:
    """A run's ``tensorboard/`` folder stands for the run directory itself."""
    path = Path(path)
    return path.parent if path.name == "tensorboard" and path.is_dir() else path


# ----------------------------------------------------------------------------------------------
# Summaries


def _series(run: Run, tag: str) -> list[Scalar]:
    # Sorted by step; a step logged twice (a resumed run re-logging) keeps the latest write.
    by_step = {}
    for s in sorted(run.scalars.get(tag, []), key=lambda s: s.wall_time):
        by_step[s.step] = s
    return [by_step[k] for k in sorted(by_step)]


def summarize(run: Run, target_accuracy: float) -> dict:
    """One table row (see the module docstring for each field); missing values are None."""
    acc, loss, speed = _series(run, EVAL_ACCURACY), _series(run, EVAL_LOSS), _series(run, WINDOWS_PER_SEC)
    steps = [s.step for values in run.scalars.values() for s in values]
    reached = next((s for s in acc if s.value >= target_accuracy), None)
    speeds = [s.value for s in (speed[1:] if len(speed) > 1 else speed)]
    return {
        "label": run.label,
        "implementation": run.implementation,
        "path": str(run.path),
        "final_accuracy": acc[-1].value if acc else None,
        "best_accuracy": max(s.value for s in acc) if acc else None,
        "final_loss": loss[-1].value if loss else None,
        "steps": max(steps) if steps else 0,
        "wall_time": run.end_time - run.start_time if math.isfinite(run.start_time) else None,
        "windows_per_sec": sum(speeds) / len(speeds) if speeds else None,
        "target_accuracy": target_accuracy,
        "time_to_target": reached.wall_time - run.start_time if reached else None,
        "step_to_target": reached.step if reached else None,
    }


def format_table(rows: list[dict]) -> str:
    """A plain-text table of :func:`summarize` rows."""
    target = rows[0]["target_accuracy"] if rows else 0.0
    headers = ["run", "impl", "final acc", "best acc", "final loss", "steps", "wall s", "win/s",
               f"t→{target:g} s", f"step→{target:g}"]

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    table = [[r["label"], r["implementation"], fmt(r["final_accuracy"], ".4f"), fmt(r["best_accuracy"], ".4f"),
              fmt(r["final_loss"], ".4f"), str(r["steps"]), fmt(r["wall_time"], ".1f"),
              fmt(r["windows_per_sec"], ",.0f"), fmt(r["time_to_target"], ".1f"), fmt(r["step_to_target"], "d")]
             for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in table:
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def plot(runs: list[Run], out: str | Path, target_accuracy: float | None = None) -> Path:
    """2x2 PNG: eval accuracy and eval loss (rows) against step and wall-clock seconds (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    for run in runs:
        for row, tag in enumerate((EVAL_ACCURACY, EVAL_LOSS)):
            series = _series(run, tag)
            if not series:
                continue
            steps = [s.step for s in series]
            seconds = [s.wall_time - run.start_time for s in series]
            values = [s.value for s in series]
            axes[row, 0].plot(steps, values, marker=".", label=run.label)
            axes[row, 1].plot(seconds, values, marker=".", label=run.label)
    for col, xlabel in enumerate(("step", "wall-clock time (s)")):
        axes[0, col].set_ylabel("eval accuracy")
        axes[1, col].set_ylabel("eval loss (nats/base)")
        for row in range(2):
            axes[row, col].set_xlabel(xlabel)
            axes[row, col].grid(True, alpha=0.3)
        if target_accuracy is not None:
            axes[0, col].axhline(target_accuracy, color="grey", linestyle="--", linewidth=0.8)
    axes[0, 0].legend()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def default_labels(run_dirs: list[str | Path]) -> list[str]:
    """Directory names, with as many parent folders as needed to tell the runs apart."""
    paths = [_run_dir(d).absolute() for d in run_dirs]
    for depth in range(1, max(len(p.parts) for p in paths) + 1):
        labels = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def compare(run_dirs: list[str | Path], *, target_accuracy: float = 0.9, out: str | Path | None = "compare.png",
            json_out: str | Path | None = None, labels: list[str] | None = None,
            check_crc: bool = False) -> list[dict]:
    """Reads the runs, returns the table rows, writes the PNG (``out``) and JSON (``json_out``) if given."""
    if labels is None:
        labels = default_labels(run_dirs)
    if len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    runs = [read_run(d, label, check_crc) for d, label in zip(run_dirs, labels)]
    rows = [summarize(run, target_accuracy) for run in runs]
    if out:
        plot(runs, out, target_accuracy)
    if json_out:
        series = {run.label: {tag: [[s.step, s.wall_time - run.start_time, s.value] for s in _series(run, tag)]
                               for tag in (EVAL_ACCURACY, EVAL_LOSS, WINDOWS_PER_SEC)} for run in runs}
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps({"runs": rows, "series_step_seconds_value": series}, indent=2))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (or folders of event files)")
    parser.add_argument("--target-accuracy", type=float, default=0.9,
                        help="report time and step to reach this eval accuracy (default 0.9)")
    parser.add_argument("--out", default="compare.png", help="PNG to write (default compare.png; '' for none)")
    parser.add_argument("--json", dest="json_out", help="also write the table and the series as JSON")
    parser.add_argument("--labels", help="comma-separated run labels (default: directory names)")
    parser.add_argument("--check-crc", action="store_true",
                        help="verify every record's data CRC (pure Python, about 0.2 s per MB of events)")
    args = parser.parse_args(argv)
    labels = args.labels.split(",") if args.labels else None
    try:
        rows = compare(args.runs, target_accuracy=args.target_accuracy, out=args.out or None,
                       json_out=args.json_out, labels=labels, check_crc=args.check_crc)
    except (FileNotFoundError, ValueError) as err:  # summary.EventFileError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if args.out:
        print(f"plot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
