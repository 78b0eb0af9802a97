"""Leak audit by content: ``python -m jaxseq.audit [--config FILE | --run RUN] [options]``.

Splitting by coordinates is leak-free by position, not by content. This command counts the k-mers of
the valid and test splits that also occur in train (both strands, exact:
:mod:`jaxseq.shared_kmers`), and with ``--run RUN`` scores that run's model separately on the test
windows that hold a shared k-mer and on those that do not (:func:`accuracy_by_shared`): how much a
leak flatters held-out accuracy.

Examples::

    python -m jaxseq.audit --config configs/multilayer_aemd.yaml --set data.fasta=genome.fa.gz
    python -m jaxseq.audit --run runs/aemd --k 32 --json audit.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from jaxseq import evaluator, parallel, shared_kmers, steps
from jaxseq.checkpoint import CheckpointError
from jaxseq.config import ConfigError, load_config
from jaxseq.genome import GenomeError
from jaxseq.shared_kmers import DEFAULT_MAX_KMERS_PER_PASS, EVAL_SPLITS, AuditError, check_k
from jaxseq.splits import DEFAULT_K, MAX_K, SplitError
from jaxseq.trained import load_run


def accuracy_by_shared(model, split: str = "test", k: int = DEFAULT_K, *, data: steps.Data | None = None,
                       marks: Mapping | None = None) -> dict:
    """Test accuracy of a trained model on the windows that share a k-mer with train vs those that do not.

    The split's windows (the evaluation tiling of the run's own config) are grouped by the audit's
    marks and each group is scored by the one evaluator (deterministic mode, exact sums).

    Args:
      model: a :class:`jaxseq.TrainedModel` (``jaxseq.load_run(run_dir)``).
      split: ``valid`` or ``test``.
      k: k-mer length, ``1 <= k <= min(32, window_len)``.
      data: ``jaxseq.steps.open_data(model.config)`` if already opened.
      marks: :func:`jaxseq.shared_kmers.shared_kmer_marks` of that data at ``k`` if already computed.

    Returns:
      ``{"split", "k", "shared": {...}, "clean": {...}}``, each group with ``windows``, ``accuracy``,
      ``bits_per_base`` and ``n_bases`` (an empty group has ``windows`` 0 and nothing else); plus
      ``difference`` (clean accuracy - shared accuracy) when both groups hold windows.
    """
    window_len = model.config.data.window_len
    check_k(k, window_len)
    if split not in EVAL_SPLITS:
        raise AuditError(f"split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    data = data if data is not None else steps.open_data(model.config)
    if marks is None:
        marks = shared_kmers.shared_kmer_marks(data.genome.as_mapping(), data.splits, k)
    mesh = model.mesh if model.mesh is not None else parallel.create_mesh(1)
    out: dict = {"split": split, "k": k}
    groups = shared_kmers.windows_by_shared(marks, data.splits[split], k, window_len)
    for group, intervals in groups.items():
        if not intervals:
            out[group] = {"windows": 0}
            continue
        target = evaluator.Evaluator(data.genome, intervals, window_len, 2 * model.config.train.batch_size,
                                     f"{split}-{group}", data.fasta)
        report = target.run(model.model, model.variables, mesh)
        out[group] = {"windows": report["n_windows"], "accuracy": report["accuracy"],
                      "bits_per_base": report["bits_per_base"], "n_bases": report["n_bases"]}
    if out["shared"]["windows"] and out["clean"]["windows"]:
        out["difference"] = out["clean"]["accuracy"] - out["shared"]["accuracy"]
    return out


def format_report(report: Mapping) -> str:
    """The audit's tables (:func:`jaxseq.shared_kmers.format_report`) plus the run's accuracy by group."""
    lines = [shared_kmers.format_report(report)]
    if "accuracy" in report:
        a = report["accuracy"]
        lines += ["", f"{a['split']} accuracy of run {report.get('run', '?')} by windows holding a shared k-mer"
                  f"\n{'windows':<8} {'count':>10} {'accuracy':>9} {'bits/base':>9}"]
        for group in ("shared", "clean"):
            g = a[group]
            lines.append(f"{group:<8} {g['windows']:>10,} " + (f"{g['accuracy']:>9.4f} {g['bits_per_base']:>9.4f}"
                                                                if g["windows"] else f"{'-':>9} {'-':>9}"))
        if "difference" in a:
            lines.append(f"clean - shared accuracy: {a['difference']:+.4f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jaxseq.audit",
                                     description="k-mers of valid/test shared with train (leak audit by content)")
    parser.add_argument("--config", help="YAML config (default: built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set data.block_len=10000 (repeatable)")
    parser.add_argument("--k", type=int, default=DEFAULT_K, help=f"k-mer length, 1..{MAX_K} (default {DEFAULT_K})")
    parser.add_argument("--top", type=int, default=10, help="largest shared regions to list (default 10)")
    parser.add_argument("--bins", type=int, default=10, help="histogram bins (default 10)")
    parser.add_argument("--max-kmers-per-pass", type=int, default=DEFAULT_MAX_KMERS_PER_PASS,
                        help="k-mers held in memory at once, 8 bytes each (default %(default)s)")
    parser.add_argument("--json", help="write the report as JSON to this file")
    parser.add_argument("--run", help="a run directory: audit its config's splits and add its test accuracy on "
                                      "windows with and without a shared k-mer (instead of --config/--set)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jaxseq.audit ...``; returns the exit code (2 with one ``error:`` line)."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        for name in ("top", "bins", "max_kmers_per_pass"):
            if getattr(args, name) < 1:
                raise AuditError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        if args.json and Path(args.json).is_dir():
            raise AuditError(f"--json {args.json} is a directory")
        if args.run and (args.config or args.overrides):
            raise AuditError("--run audits the run's own config; drop --config/--set")
        model = load_run(args.run) if args.run else None
        config = model.config if model is not None else load_config(args.config, args.overrides)
        check_k(args.k, config.data.window_len)
        data = steps.open_data(config)
        tokens = data.genome.as_mapping()
        # The marks are the expensive part: computed once, under --max-kmers-per-pass, for both reports.
        marks = shared_kmers.shared_kmer_marks(tokens, data.splits, args.k, max_kmers_per_pass=args.max_kmers_per_pass)
        report = shared_kmers.audit_splits(tokens, data.splits, k=args.k, window_len=config.data.window_len,
                                           top=args.top, bins=args.bins, marks=marks)
        if model is not None:
            report["run"] = str(args.run)
            report["accuracy"] = accuracy_by_shared(model, "test", args.k, data=data, marks=marks)
        print(format_report(report))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report, indent=2))
    except (AuditError, ConfigError, GenomeError, SplitError, evaluator.EvaluateError, CheckpointError,
            OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
