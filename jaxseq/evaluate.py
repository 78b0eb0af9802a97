"""Evaluate a trained run on a whole split: ``python -m jaxseq.evaluate RUN_DIR [options]``.

Examples::

    python -m jaxseq.evaluate runs/lambda                              # test split, latest step
    python -m jaxseq.evaluate runs/lambda --split valid --step 2000 --examples 3
    python -m jaxseq.evaluate runs/lambda --mode stochastic --repeats 5 --seed 1
    python -m jaxseq.evaluate runs/lambda --fasta ../shared/data/human_chr17_hg19_part.fa
    python -m jaxseq.evaluate runs/lambda --bed regions.bed              # reported as bed-regions

What is scored
    Every window of the split exactly once: the deterministic tiling of :func:`jaxseq.loader.eval_batches`
    with stride ``window_len`` (intervals shorter than a window give none; the last ``< window_len``
    bases of an interval are not covered). ``--fasta OTHER.fa`` scores a genome the model never saw
    with the same rules over all its records, whole length. ``--bed REGIONS.bed`` scores the windows
    inside those regions of the run's genome with the same rules, whatever split they lie in (regions
    in training blocks are not held out); overlapping regions are merged, so each base counts once.
    Positions whose true base is N are excluded (and counted). The global batch is twice the training
    batch; the padded final batch has weight 0, so every window counts once. All metrics are sums plus
    counts accumulated on device and fetched once (or once per ``2**24`` scored positions, the range
    where float32 sums of counts stay integer-exact; the host adds the chunks in float64), so they are
    exact over the split, not estimates from a sample.

Modes
    ``deterministic`` (default): no input dropout, no hidden dropout, no latent noise: the model's true
    accuracy. ``stochastic``: input dropout and latent noise on at their schedule values **at the
    checkpoint's step** (``schedule(step)``, the value the next training step would have used; for a
    finished run with a linear/cosine ramp this is the ramp's end value), hidden dropout at
    ``model.hidden_dropout``, all drawn from ``--seed``: pass ``r`` of ``--repeats K`` folds ``r`` into
    the seed, batch ``i`` folds in ``i``. Batch normalisation uses its running statistics in **both**
    modes (so stochastic mode measures the effect of the noise alone, not of batch composition).

Metrics
    accuracy (argmax == true base), cross-entropy in nats and bits per base (the reconstruction term
    only: a run's neighbour loss is not included), accuracy per true base A/C/G/T, the 4x4 confusion
    matrix (rows true, columns predicted), accuracy by position in the window (a vector of length
    ``window_len``; summary: first 10%, middle, last 10%), accuracy on soft-masked (lowercase) vs
    unmasked bases, and counts of windows, scored bases and excluded N positions. With ``--repeats``
    the top-level numbers are the mean over passes (counts are per pass) and ``spread`` holds the
    mean, sample std, min and max of accuracy and loss.

Output
    A table on stdout; ``RUN_DIR/eval_<split>_<mode>_step<N>.json`` (``<split>`` is ``fasta-<stem>``
    for ``--fasta``, ``bed-<stem>`` for ``--bed``); the same numbers in the run's TensorBoard at step N
    under ``<split>/...`` (``test/accuracy``, ``test/loss``, ``test/bits_per_base``, ...) in deterministic mode and
    ``<split>/stochastic/...`` in stochastic mode, plus text ``<split>[/stochastic]/report`` and
    ``.../examples``. Checkpoints are opened read-only and never modified.

Errors (bad run directory, no checkpoint, unknown ``--step``, a config that no longer matches the
checkpoint's architecture, a missing or invalid ``--fasta``, a split without windows) are one line on
stderr with exit status 2, before any compute. So are a checkpoint step whose files fail their checksums
(the line names the step, the file, what failed and the intact steps to pass as ``--step N``) and a
``--split`` of a genome whose content (or region/alias files) differs from the one the run was trained
on (both fingerprints named; ``--fasta OTHER`` scores another genome on purpose).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from jaxseq import checkpoint, parallel, summary, trained
from jaxseq import tokens as tok
from jaxseq.config import ConfigError
from jaxseq.evaluator import _BASES, MODES, SPLITS, EvaluateError, Evaluator, eval_hparams, is_bed


def evaluate(run_dir: str | Path, *, split: str = "test", fasta: str | Path | None = None, step: int | None = None,
             mode: str = "deterministic", seed: int = 0, repeats: int = 1, examples: int = 0,
             devices: str | int | None = None, cache_dir: str | Path | None = None, write: bool = True,
             progress: bool = False, bed: str | Path | None = None) -> dict:
    """Evaluates a run's checkpoint on a whole split (or genome); writes JSON and TensorBoard.

    Args:
      run_dir: training run directory.
      split: ``test``, ``valid`` or ``train`` (ignored when ``fasta`` is given).
      fasta: evaluate every window of this genome instead (split name ``fasta-<stem>``).
      step: checkpoint step (default: latest).
      bed: evaluate the windows inside this BED file's regions of the run's genome instead, in any split
        (split name ``bed-<stem>``; overlapping regions merged; tiled like a split).
      mode: ``deterministic`` or ``stochastic`` (see the module docstring).
      seed: stochastic mode's noise seed, and the choice of examples.
      repeats: stochastic passes to average (each folds its index into the seed).
      examples: number of reconstruction examples (chosen among all windows of the split by ``seed``;
        predicted in the evaluated mode, with the first pass's noise).
      devices: ``"all"`` or a number of local devices (default: the run's ``train.devices``).
      cache_dir: token cache root (default: the run's ``data.cache_dir``).
      write: write ``eval_<split>_<mode>_step<N>.json`` and TensorBoard entries into the run directory.
      progress: show a progress bar on stderr.

    Returns:
      the report (what the JSON file holds; :meth:`jaxseq.TrainedModel.evaluate` returns the same).

    Raises:
      EvaluateError, CheckpointError, ConfigError, GenomeError, SplitError, ParallelError: before compute.
    """
    if mode not in MODES:
        raise EvaluateError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    if split not in SPLITS:
        raise EvaluateError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if bed is not None and (fasta is not None or not is_bed(bed)):
        raise EvaluateError(f"--bed {bed}: " + ("regions are of the run's genome, not with --fasta" if fasta
                                                else "a BED file's name ends in .bed or .bed.gz"))
    with contextlib.closing(trained.open_run(run_dir, step)) as run:
        mesh = _mesh(run.config, devices)
        model = trained.restore(run, mesh)
    if run.data is None and fasta is None and parallel.is_main_process():
        print(f"note: checkpoint step {run.step} of {run.run_dir} was saved without a data fingerprint (earlier "
              f"release): the genome cannot be checked against the one it was trained on", file=sys.stderr)
    # A .bed path takes the FASTA's place: open_evaluator scores its regions of the run's genome.
    report = model.evaluate(bed or (fasta if fasta is not None else split), mode, seed=seed, repeats=repeats,
                            examples=examples, cache_dir=cache_dir, progress=progress)
    if write and parallel.is_main_process():
        write_report(report, run.run_dir)
    return report


def _mesh(config, devices):
    mesh = parallel.create_mesh(devices or config.train.devices)
    parallel.check_batch_size(2 * config.train.batch_size, mesh, name="evaluation batch (2 x train.batch_size)")
    return mesh


def report_path(run_dir: str | Path, split: str, mode: str, step: int) -> Path:
    """``RUN_DIR/eval_<split>_<mode>_step<N>.json``."""
    return Path(run_dir) / f"eval_{split}_{mode}_step{step}.json"


def tensorboard_prefix(split: str, mode: str) -> str:
    """``<split>`` in deterministic mode, ``<split>/stochastic`` in stochastic mode."""
    return split if mode == "deterministic" else f"{split}/stochastic"


def write_report(report: Mapping[str, Any], run_dir: str | Path) -> Path:
    """Writes the JSON report and the TensorBoard scalars/text; returns the JSON path."""
    path = report_path(run_dir, report["split"], report["mode"], report["step"])
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_json_safe(report), indent=2) + "\n")
    tmp.replace(path)

    prefix, step = tensorboard_prefix(report["split"], report["mode"]), report["step"]
    scalars = {"accuracy": report["accuracy"], "loss": report["loss"], "bits_per_base": report["bits_per_base"],
               "n_bases": report["n_bases"], "n_windows": report["n_windows"],
               **{f"accuracy_{b}": v for b, v in report["accuracy_by_base"].items()},
               **{f"accuracy_position_{k}": report["position_summary"][k] for k in ("first", "middle", "last", "edges")},
               "accuracy_soft_masked": report["soft_masked"]["accuracy"],
               "accuracy_unmasked": report["unmasked"]["accuracy"]}
    if "spread" in report:
        scalars.update({f"{k}_std": report["spread"][k]["std"] for k in ("accuracy", "loss")})
    scalars = {f"{prefix}/{k}": v for k, v in scalars.items() if v is not None and np.isfinite(v)}
    writer = summary.create_writer(run_dir)
    try:
        summary.write_scalars(writer, step, scalars)
        summary.write_text(writer, step, f"{prefix}/report", format_report(report, examples=False))
        if report["examples"]:
            summary.write_text(writer, step, f"{prefix}/examples", "\n\n".join(e["text"] for e in report["examples"]))
    finally:
        writer.close()
    return path


def _json_safe(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _pct(x) -> str:
    return "   n/a" if x is None or not math.isfinite(x) else f"{100 * x:6.2f}%"


def format_report(report: Mapping[str, Any], examples: bool = True) -> str:
    """The report as a readable table."""
    r = report
    lines = [f"{r['run_dir']}  step {r['step']}  {r['split']} ({r['fasta']})  mode {r['mode']}"]
    if r["mode"] == "stochastic":
        h = r["hparams"]
        lines.append(f"  noise at step {h['schedule_step']}: input_dropout {h['input_dropout']:.4g}, latent_noise_std "
                     f"{h['latent_noise_std']:.4g}, hidden_dropout {h['hidden_dropout']:.4g}; batch norm: running "
                     f"statistics; seed {r['seed']}, {r['repeats']} pass(es)")
    lines += [
        f"  accuracy        {_pct(r['accuracy'])}",
        f"  cross-entropy   {r['loss']:.4f} nats/base = {r['bits_per_base']:.4f} bits/base",
        f"  scored          {int(r['n_bases']):,} bases in {int(r['n_windows']):,} windows "
        f"(window {r['window_len']}, stride {r['stride']}); {int(r['n_excluded_n']):,} N positions excluded",
    ]
    if not r["n_bases"]:
        lines.append("  no base was scored: every position of these windows is N (accuracy and loss undefined)")
    if "spread" in r:
        for key in ("accuracy", "loss"):
            s = r["spread"][key]
            lines.append(f"  {key:<15} over {r['repeats']} passes: mean {s['mean']:.4f}, std {s['std']:.4f}, "
                         f"min {s['min']:.4f}, max {s['max']:.4f}")
    lines += ["", "  by true base          A        C        G        T",
              "  accuracy      " + " ".join(f"{_pct(r['accuracy_by_base'][b]):>8}" for b in _BASES),
              "  bases         " + " ".join(f"{int(r['n_bases_by_base'][b]):>8,}" for b in _BASES),
              "", "  confusion (rows true, columns predicted)",
              "            " + " ".join(f"{b:>9}" for b in _BASES)]
    for b, row in zip(_BASES, r["confusion"]):
        lines.append(f"         {b}  " + " ".join(f"{int(round(v)):>9,}" for v in row))
    p = r["position_summary"]
    lines += ["", f"  position in window: first {p['edge_len']} {_pct(p['first'])}, middle {_pct(p['middle'])}, "
                  f"last {p['edge_len']} {_pct(p['last'])}  (edges {_pct(p['edges'])})"]
    by_pos = np.asarray([np.nan if v is None else v for v in r["accuracy_by_position"]], dtype=np.float64)
    bins = np.array_split(np.arange(by_pos.shape[0]), min(10, by_pos.shape[0]))
    lines.append("  profile (10 bins, mean of positions): "
                 + " ".join(_pct(np.nanmean(by_pos[b]) if np.isfinite(by_pos[b]).any() else float("nan")).strip()
                            for b in bins))
    sm, um = r["soft_masked"], r["unmasked"]
    lines.append(f"  soft-masked     {_pct(sm['accuracy'])} over {int(sm['n_bases']):,} bases; "
                 f"unmasked {_pct(um['accuracy'])} over {int(um['n_bases']):,} bases")
    if examples and r["examples"]:
        lines += ["", f"  reconstruction examples (seed {r['seed']}):", ""]
        lines += ["\n\n".join(e["text"] for e in r["examples"])]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Per-base errors (for ``python -m jaxseq.visualize errors``)


def per_base_errors(run_dir: str | Path, fasta: str | Path | None = None, step: int | None = None, *,
                    stride: int | None = None, cache_dir: str | Path | None = None, mode: str = "deterministic",
                    seed: int = 0, devices: str | int | None = None, progress: bool = False,
                    bed: str | Path | None = None) -> dict[str, np.ndarray]:
    """Per-base error rate of a run's model over a whole genome, every base scored by every window covering it.

    Windows tile every record with ``stride`` (default ``window_len // 4``, so each base is scored by
    about 4 windows at different offsets: stride 1 would cost ``window_len`` times the compute of a
    plain tiling); a last window flush with the record's end is added so the tail is covered too.
    Training, validation and test bases alike are scored: compare with the run's splits when reading
    the map.

    Args:
      run_dir: training run directory.
      fasta: genome (default: the run's ``data.fasta``, else the bundled lambda phage).
      step: checkpoint step (default: latest).
      stride: distance between window starts (``1 <= stride <= window_len``).
      cache_dir: token cache root (default: the run's ``data.cache_dir``).
      mode: ``deterministic`` (default) or ``stochastic`` (see :func:`evaluate`).
      seed: stochastic mode's seed.
      devices: as in :func:`evaluate`.
      progress: show a progress bar.
      bed: score only these regions (BED; of ``fasta``'s genome when given), each tiled like a record
        (overlapping regions merged); bases outside them stay unscored.

    Returns:
      record name -> float32 ``(length,)``: wrong predictions / times scored; NaN where never scored
      (N bases, records or regions shorter than a window, bases outside ``bed``).

    Raises:
      EvaluateError, CheckpointError, GenomeError, ...: as :func:`evaluate`, before compute.
    """
    if mode not in MODES:
        raise EvaluateError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    if jax.process_count() > 1:
        raise EvaluateError("per-base errors run in a single process")
    with contextlib.closing(trained.open_run(run_dir, step)) as run:
        window_len = run.config.data.window_len
        stride = int(stride) if stride else max(1, window_len // 4)
        if not 1 <= stride <= window_len:
            raise EvaluateError(f"stride must be in [1, window_len={window_len}], got {stride}")
        mesh = _mesh(run.config, devices)
        target = _tiling(run.config, fasta, cache_dir, stride, bed)
        model = trained.restore(run, mesh)
    genome = target.genome
    coverage = -(-window_len // stride) + 1
    dtype = np.uint16 if coverage < np.iinfo(np.uint16).max else np.uint32
    wrong = {n: np.zeros(genome.lengths[n], dtype) for n in genome.names}
    scored = {n: np.zeros(genome.lengths[n], dtype) for n in genome.names}
    hparams = eval_hparams(run.config, run.step) if mode == "stochastic" else {}
    for batch, predicted in target.predictions(model.model, model.variables, mesh, mode=mode, hparams=hparams,
                                               seed=seed, progress=progress):
        real = batch["weights"] > 0
        for r in np.unique(batch["record"][real]):
            rows = real & (batch["record"] == r)
            starts = batch["start"][rows]
            lo, hi = int(starts.min()), int(starts.max()) + window_len
            index = (starts[:, None] - lo + np.arange(window_len)).ravel()
            valid = (batch["tokens"][rows] < tok.NUM_BASES).ravel()
            miss = valid & (predicted[rows].ravel() != batch["tokens"][rows].ravel())
            name = genome.names[int(r)]
            scored[name][lo:hi] += np.bincount(index, weights=valid, minlength=hi - lo).astype(dtype)
            wrong[name][lo:hi] += np.bincount(index, weights=miss, minlength=hi - lo).astype(dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {n: np.where(scored[n] > 0, wrong[n].astype(np.float32) / scored[n].astype(np.float32),
                            np.float32(np.nan)).astype(np.float32) for n in genome.names}


def _tiling(config, fasta, cache_dir, stride: int, bed=None) -> Evaluator:
    """Every record (or merged ``bed`` region) tiled at ``stride``, plus a last window flush with its end."""
    from jaxseq.evaluator import bed_split_name, fasta_split_name, read_bed_regions
    from jaxseq.genome import Genome, default_fasta
    from jaxseq.splits import Interval, intersect_intervals

    window_len = config.data.window_len
    if bed is not None:
        genome, regions = read_bed_regions(config, bed, fasta, cache_dir)
        fasta, name, what = genome.path, bed_split_name(bed), f"{bed}: no region (overlapping ones merged)"
    else:
        fasta = Path(fasta) if fasta else (Path(config.data.fasta) if config.data.fasta else default_fasta())
        genome = Genome.open(fasta, cache_dir=cache_dir or config.data.cache_dir or None)
        name, what = fasta_split_name(fasta), f"{fasta}: no record"
    spans = [Interval(n, 0, genome.lengths[n]) for n in genome.names]
    intervals = []
    for span in (intersect_intervals(spans, regions) if bed is not None else spans):
        if span.end - span.start >= window_len:
            intervals.append(span)
            if (span.end - span.start - window_len) % stride:
                intervals.append(Interval(span.record, span.end - window_len, span.end))
    if not intervals:
        raise EvaluateError(f"{what} is at least window_len={window_len} bases long")
    return Evaluator(genome, intervals, window_len, 2 * config.train.batch_size, name, fasta, stride=stride)


# ----------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jaxseq.evaluate",
                                     description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("run_dir", help="training run directory (config.yaml + checkpoints/)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--split", choices=SPLITS, default="test", help="split to evaluate (default: test)")
    what.add_argument("--fasta", help="evaluate every window of this genome instead (reported as fasta-<stem>)")
    what.add_argument("--bed", help="evaluate only the windows inside these regions of the run's genome, in any "
                                    "split (BED, .bed or .bed.gz; reported as bed-<stem>)")
    parser.add_argument("--mode", choices=MODES, default="deterministic",
                        help="deterministic: no dropout/noise (default); stochastic: dropout and latent noise at "
                             "the schedule values of the checkpoint's step. Batch norm: running statistics in both")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (stochastic) and choice of examples")
    parser.add_argument("--repeats", type=int, default=1, metavar="K",
                        help="stochastic passes to average, reporting mean and spread (default 1)")
    parser.add_argument("--examples", type=int, default=0, metavar="K",
                        help="print K reconstruction examples chosen among all windows by --seed")
    parser.add_argument("--devices", help="'all' or a number of local devices (default: the run's train.devices)")
    parser.add_argument("--cache-dir", help="token cache root (default: the run's data.cache_dir)")
    parser.add_argument("--no-write", action="store_true",
                        help="print only: write neither the JSON report nor TensorBoard entries")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (2 with a one-line error before compute)."""
    from jaxseq.loader import LoaderError

    args = build_parser().parse_args(argv)
    try:
        report = evaluate(args.run_dir, split=args.split, fasta=args.fasta, bed=args.bed, step=args.step,
                          mode=args.mode, seed=args.seed, repeats=args.repeats, examples=args.examples,
                          devices=args.devices, cache_dir=args.cache_dir, write=not args.no_write, progress=True)
    except (EvaluateError, ConfigError, checkpoint.CheckpointError, parallel.ParallelError, LoaderError,
            ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if parallel.is_main_process():
        print(format_report(report))
        if not args.no_write:
            print(f"\nwrote {report_path(report['run_dir'], report['split'], report['mode'], report['step'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
