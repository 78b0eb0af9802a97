"""What do a run's representations know? Linear probes on windows of an annotated genome.

``python -m jaxseq.probe RUN --annotations FILE.gff3[.gz] [--fasta FASTA] --task coding|strand|feature``

1. Sequence: ``--fasta``, else the GFF3's own ``##FASTA`` section (written once to a temporary FASTA
   and opened as a :class:`jaxseq.genome.Genome`, so its token cache is reused next time).
2. Windows: the evaluation tiling (non-overlapping windows of the run's ``data.window_len``) of a
   block split (``jaxseq.splits.compute_splits``, strategy ``blocks``): the probe is fitted on the train
   and valid blocks and scored on the test blocks, so no base of a scored window was seen in fitting.
   Windows holding N are left out.
3. Labels, from the feature covering the window centre (``start + window_len // 2``):
   ``coding``: inside a CDS or not; ``strand``: the CDS's strand (windows centred in a CDS; both strands
   at once is ambiguous and left out); ``feature``: CDS / tRNA / rRNA / intergenic (centre in none of
   them and in no other feature but ``gene``; centres in two of them, or in another feature type such as
   tmRNA, are left out).
4. Features: the run's latent for each window, flattened (a model whose latent is per position keeps
   where along the window each value sits, which a centre label needs; mean-pooling would lose it),
   against (a) k-mer frequencies, k = 1..4 (340 values), (b) the latent of a randomly initialised model
   of the same config (``train.seed`` + 1 + ``--seed``), and (c) the run's latent with the fitting labels
   shuffled (a control that must score near chance).
5. Probe: multinomial logistic regression in JAX, full-batch L-BFGS (optax, backtracking line search),
   standardised features, class-balanced weights, L2. Scores on the test blocks: balanced accuracy and
   AUROC (one-vs-rest macro average for ``feature``).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from jaxseq.splits import compute_splits

TASKS = {"coding": ("noncoding", "coding"), "strand": ("+", "-"), "feature": ("intergenic", "CDS", "tRNA", "rRNA")}
KMER_KS = (1, 2, 3, 4)
#: Types that never make a base non-intergenic: they span whole sequences or only group other features.
_CONTAINER_TYPES = frozenset({"gene", "region", "chromosome", "contig", "supercontig", "scaffold",
                              "databank_entry", "source"})


class ProbeError(ValueError):
    """Bad probe input (annotations, sequence, too few labelled windows); the message is one line."""


# ----------------------------------------------------------------------------------------------
# Labels


def _coverage(annotations, seqid: str, length: int, keep: Callable[[object], bool]) -> np.ndarray:
    """int32 ``(length,)``: features of ``seqid`` passing ``keep`` covering each base (circular wraps)."""
    from jaxseq.visualize.annotations import feature_overlaps

    features = [f for f in annotations.features if f.seqid == seqid and keep(f)]
    return feature_overlaps(features, length, circular=seqid in annotations.circular)


def label_track(annotations, seqid: str, length: int, task: str) -> np.ndarray:
    """The class of every base of one sequence for ``task``.

    Args:
      annotations: a :class:`jaxseq.visualize.gff3.Annotations`.
      seqid: the sequence (a FASTA record name).
      length: its length in bases.
      task: ``"coding"``, ``"strand"`` or ``"feature"``.

    Returns:
      int8 ``(length,)``: an index into ``TASKS[task]``, or -1 where the base gets no label.
    """
    cds = _coverage(annotations, seqid, length, lambda f: f.type == "CDS")
    if task == "coding":
        return (cds > 0).astype(np.int8)
    track = np.full(length, -1, np.int8)
    if task == "strand":
        plus = _coverage(annotations, seqid, length, lambda f: f.type == "CDS" and f.strand == "+")
        minus = _coverage(annotations, seqid, length, lambda f: f.type == "CDS" and f.strand == "-")
        track[(plus > 0) & (minus == 0)] = 0
        track[(minus > 0) & (plus == 0)] = 1
        return track
    if task != "feature":
        raise ProbeError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    names = TASKS["feature"]
    counts = [cds] + [_coverage(annotations, seqid, length, lambda f, t=t: f.type == t) for t in names[2:]]
    kinds = sum((c > 0).astype(np.int8) for c in counts)
    for index, c in enumerate(counts, start=1):
        track[(c > 0) & (kinds == 1)] = index
    anything = _coverage(annotations, seqid, length, lambda f: f.type not in _CONTAINER_TYPES)
    track[anything == 0] = 0
    return track


def probe_windows(genome_tokens: Mapping[str, np.ndarray], annotations, window_len: int, task: str, *,
                  block_len: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Labelled, N-free evaluation windows of the fitting (train + valid) and test blocks.

    Args:
      genome_tokens: record name -> uint8 tokens ``(length,)``.
      annotations: the GFF3 annotations; their seqids must be records of the genome.
      window_len: window length ``L``.
      task: a key of ``TASKS``.
      block_len: block size of the split (strategy ``blocks``, proportions 0.8/0.1/0.1).
      seed: split seed.

    Returns:
      ``{"fit": ..., "test": ...}``, each with ``tokens`` uint8 ``(n, L)``, ``labels`` int64 ``(n,)``,
      ``record`` (names) and ``start`` int64 ``(n,)``.
    """
    lengths = {name: len(t) for name, t in genome_tokens.items()}
    splits = compute_splits(lengths, strategy="blocks", block_len=block_len, seed=seed)
    tracks = {name: label_track(annotations, name, lengths[name], task) for name in lengths
              if name in annotations.seqids}
    out = {}
    for part, names in (("fit", ("train", "valid")), ("test", ("test",))):
        rows, labels, records, starts = [], [], [], []
        for interval in (i for split in names for i in splits[split]):
            if interval.record not in tracks:
                continue
            starts_here = np.arange(interval.start, interval.end - window_len + 1, window_len)
            windows = np.asarray(genome_tokens[interval.record][interval.start:starts_here[-1] + window_len]
                                 ).reshape(-1, window_len) if len(starts_here) else np.zeros((0, window_len), np.uint8)
            label = tracks[interval.record][starts_here + window_len // 2]
            keep = (label >= 0) & ~(windows >= 4).any(axis=1)
            rows.append(windows[keep])
            labels.append(label[keep].astype(np.int64))
            records.extend([interval.record] * int(keep.sum()))
            starts.append(starts_here[keep])
        out[part] = dict(tokens=np.concatenate(rows) if rows else np.zeros((0, window_len), np.uint8),
                         labels=np.concatenate(labels) if labels else np.zeros(0, np.int64),
                         record=np.array(records), start=np.concatenate(starts) if starts else np.zeros(0, np.int64))
    return out


# ----------------------------------------------------------------------------------------------
# Features


def kmer_features(tokens: np.ndarray, ks: Sequence[int] = KMER_KS) -> np.ndarray:
    """k-mer frequencies of each window: float32 ``(n, sum(4**k))``, each k's block summing to 1.

    Args:
      tokens: uint8 ``(n, L)`` windows; k-mers spanning N are not counted.
      ks: the word lengths.
    """
    from jaxseq.visualize.kmers import kmer_indices

    n, length = tokens.shape
    blocks = []
    for k in ks:
        index, valid = kmer_indices(tokens.reshape(-1), k)
        # Words across two windows are dropped: pad to n * L and keep the first L - k + 1 of each row.
        index = np.concatenate([index, np.zeros(k - 1, index.dtype)]).reshape(n, length)[:, :length - k + 1]
        valid = np.concatenate([valid, np.zeros(k - 1, bool)]).reshape(n, length)[:, :length - k + 1]
        rows = np.broadcast_to(np.arange(n)[:, None], valid.shape)[valid]
        counts = np.bincount(rows * 4**k + index[valid], minlength=n * 4**k).reshape(n, 4**k)
        blocks.append(counts / np.maximum(counts.sum(axis=1, keepdims=True), 1))
    return np.concatenate(blocks, axis=1).astype(np.float32)


def open_encoder(run_dir: str | Path, init_seed: int | None = None):
    """The run's config and a function embedding windows with its model (the one place that knows how).

    Args:
      run_dir: the training run directory.
      init_seed: None for the trained parameters; else a random initialisation of the same config with
        ``train.seed = init_seed``.

    Returns:
      ``(config, encode)``; ``encode(tokens uint8 (n, L)) -> float32 (n, D)`` flattened latents.
    """
    from jaxseq.trained import TrainedModel, load_run

    model = load_run(run_dir)
    if init_seed is not None:
        model = TrainedModel.from_config(model.config, seed=int(init_seed))

    def encode(tokens: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        latent = model.encode(np.asarray(tokens, np.int8), batch_size=batch_size)
        return latent.reshape(len(latent), -1).astype(np.float32)

    return model.config, encode


# ----------------------------------------------------------------------------------------------
# The probe and its scores


@functools.lru_cache(maxsize=None)
def _solver(n_classes: int, steps: int):
    """The jitted L-BFGS fit, built once per (classes, steps): repeated probes reuse its compilation."""
    import jax
    import jax.numpy as jnp
    import optax

    def objective(params, xs, labels, weights, l2):
        logp = jax.nn.log_softmax(xs @ params["w"] + params["b"])
        ce = -jnp.sum(weights * jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]) / jnp.sum(weights)
        return ce + l2 * jnp.sum(params["w"] ** 2)

    @jax.jit
    def solve(xs, labels, weights, l2):
        loss = functools.partial(objective, xs=xs, labels=labels, weights=weights, l2=l2)
        # Backtracking, not the default zoom line search: the same optimum here, a third of the compile time.
        opt = optax.lbfgs(linesearch=optax.scale_by_backtracking_linesearch(max_backtracking_steps=20, store_grad=True))
        value_and_grad = optax.value_and_grad_from_state(loss)
        params = {"w": jnp.zeros((xs.shape[1], n_classes)), "b": jnp.zeros(n_classes)}

        def step(carry, _):
            params, state = carry
            value, grad = value_and_grad(params, state=state)
            updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
            return (optax.apply_updates(params, updates), state), value

        (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
        return params, loss(params)

    return solve


def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, *, l2: float = 1e-3, steps: int = 100) -> dict:
    """Multinomial logistic regression, full-batch L-BFGS, standardised features, class-balanced weights.

    Args:
      x: float ``(n, d)`` features.
      y: int ``(n,)`` class indices in ``0..n_classes-1``.
      n_classes: number of classes ``C``.
      l2: penalty ``l2 * sum(w ** 2)`` added to the weighted mean cross-entropy.
      steps: L-BFGS iterations (each with a backtracking line search).

    Returns:
      ``{"mean", "std"}`` float32 ``(d,)``, ``"w"`` float32 ``(d, C)``, ``"b"`` float32 ``(C,)`` and
      ``"loss"`` (the final objective, a float).
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1.0  # constant features carry nothing; dividing by 1 keeps them at 0
    counts = np.bincount(y, minlength=n_classes)
    # Every present class weighs the same in total, however rare it is.
    class_weight = np.where(counts > 0, len(y) / (np.count_nonzero(counts) * np.maximum(counts, 1)), 0.0)
    params, final = _solver(int(n_classes), int(steps))((x - mean) / std, y, class_weight[y].astype(np.float32),
                                                        np.float32(l2))
    return dict(mean=mean, std=std, w=np.asarray(params["w"]), b=np.asarray(params["b"]), loss=float(final))


def predict_proba(model: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Class probabilities float64 ``(n, C)`` of a :func:`fit_logistic` model for features ``(n, d)``."""
    logits = ((np.asarray(x, np.float32) - model["mean"]) / model["std"]) @ model["w"] + model["b"]
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits.astype(np.float64))
    return p / p.sum(axis=1, keepdims=True)


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Mean over the classes present in ``labels`` (int ``(n,)``) of the fraction predicted right."""
    classes = np.unique(labels)
    return float(np.mean([np.mean(predicted[labels == c] == c) for c in classes]))


def auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting 1/2.

    Args:
      positive: bool ``(n,)``, with at least one positive and one negative.
      score: float ``(n,)``.
    """
    positive = np.asarray(positive, bool)
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2.0)[inverse]  # 1-based ranks, ties share their mean rank
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_auroc(labels: np.ndarray, proba: np.ndarray) -> float:
    """AUROC of ``proba[:, 1]`` for two classes; else the mean one-vs-rest AUROC over classes present."""
    if proba.shape[1] == 2:
        return auroc(labels == 1, proba[:, 1])
    classes = [c for c in range(proba.shape[1]) if 0 < np.sum(labels == c) < len(labels)]
    return float(np.mean([auroc(labels == c, proba[:, c]) for c in classes]))


def score_probe(x_fit: np.ndarray, y_fit: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, n_classes: int,
                **fit_kwargs) -> dict:
    """Fits on one set of windows and scores on another: balanced accuracy and (macro) AUROC."""
    model = fit_logistic(x_fit, y_fit, n_classes, **fit_kwargs)
    proba = predict_proba(model, x_test)
    return dict(balanced_accuracy=balanced_accuracy(y_test, proba.argmax(axis=1)),
                auroc=macro_auroc(y_test, proba), features=int(np.shape(x_fit)[1]), fit_loss=model["loss"])


# ----------------------------------------------------------------------------------------------
# The job


def open_genome(annotations_path: Path, fasta: str | Path | None, cache_dir: str | None):
    """The genome to probe: ``fasta``, else the GFF3's ``##FASTA`` section written to a temporary FASTA."""
    from jaxseq.genome import Genome
    from jaxseq.visualize.gff3 import write_fasta_section

    if fasta is not None:
        return Genome.open(fasta, cache_dir=cache_dir or None)
    with tempfile.TemporaryDirectory() as tmp:
        # Named after the GFF3 so messages about the sequence point at the file the user gave.
        out = Path(tmp) / (annotations_path.name.removesuffix(".gz") + ".fa")
        if not write_fasta_section(annotations_path, out):
            raise ProbeError(f"{annotations_path} has no ##FASTA section: pass the sequence with --fasta")
        return Genome.open(out, cache_dir=cache_dir or None)


def _subsample(part: dict, limit: int, rng: np.random.Generator) -> dict:
    if len(part["labels"]) <= limit:
        return part
    keep = np.sort(rng.choice(len(part["labels"]), limit, replace=False))
    return {key: value[keep] for key, value in part.items()}


def _check_classes(windows: dict, classes: Sequence[str], where: str) -> None:
    for part in ("fit", "test"):
        counts = np.bincount(windows[part]["labels"], minlength=len(classes))
        if np.count_nonzero(counts) < 2 or (part == "fit" and counts.min() < 2):
            shown = ", ".join(f"{c}={n}" for c, n in zip(classes, counts.tolist()))
            raise ProbeError(f"{where}: too few labelled windows in the {part} blocks ({shown}); "
                             f"every class needs 2 to fit and the test blocks 2 classes")


def run_probe(run_dir: str | Path, annotations: str | Path, task: str, *, fasta: str | Path | None = None,
              seed: int = 0, block_len: int = 10_000, max_windows: int = 20_000, l2: float = 1e-3,
              steps: int = 100) -> dict:
    """Probes a run's latents for ``task`` against k-mer, random-model and random-label baselines.

    Args:
      run_dir: the training run directory.
      annotations: GFF3 file (plain or gzip).
      task: ``"coding"``, ``"strand"`` or ``"feature"``.
      fasta: the sequence; None to read the GFF3's ``##FASTA`` section.
      seed: seeds the block split, the window subsample, the label shuffle and the random model.
      block_len: block size of the split.
      max_windows: at most this many fitting and this many test windows (a seeded subsample).
      l2, steps: see :func:`fit_logistic`.

    Returns:
      a JSON-ready report: the settings, ``classes``, ``windows`` (fit/test counts per class) and
      ``results``: ``model``, ``random_init``, ``kmer``, ``random_labels`` -> ``balanced_accuracy``,
      ``auroc``, ``features`` (dimension), ``fit_loss``.

    Raises:
      ProbeError, GFF3Error, GenomeError, EvaluateError: bad input, one line, before the probe is fitted.
    """
    from jaxseq.visualize.gff3 import read_gff3

    if task not in TASKS:
        raise ProbeError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    annotations = Path(annotations)
    notes = read_gff3(annotations)
    config, encode = open_encoder(run_dir)
    genome = open_genome(annotations, fasta, config.data.cache_dir)
    if not set(genome.names) & set(notes.seqids):
        raise ProbeError(f"{annotations}: no seqid matches a record of {genome.path} "
                         f"(seqids {notes.seqids[:3]}, records {genome.names[:3]})")
    window_len = config.data.window_len
    windows = probe_windows(genome.as_mapping(), notes, window_len, task, block_len=block_len, seed=seed)
    rng = np.random.default_rng(seed)
    windows = {part: _subsample(windows[part], max_windows, rng) for part in ("fit", "test")}
    classes = TASKS[task]
    _check_classes(windows, classes, str(annotations))
    fit, test = windows["fit"], windows["test"]
    _, random_encode = open_encoder(run_dir, init_seed=config.train.seed + 1 + seed)
    latent_fit, latent_test = encode(fit["tokens"]), encode(test["tokens"])
    features = {
        "model": (latent_fit, fit["labels"], latent_test),
        "random_init": (random_encode(fit["tokens"]), fit["labels"], random_encode(test["tokens"])),
        "kmer": (kmer_features(fit["tokens"]), fit["labels"], kmer_features(test["tokens"])),
        "random_labels": (latent_fit, rng.permutation(fit["labels"]), latent_test),
    }
    results = {name: score_probe(xf, yf, xt, test["labels"], len(classes), l2=l2, steps=steps)
               for name, (xf, yf, xt) in features.items()}
    counts = {part: dict(zip(classes, np.bincount(windows[part]["labels"], minlength=len(classes)).tolist()))
              for part in ("fit", "test")}
    return dict(run=str(Path(run_dir).absolute()), annotations=str(annotations), fasta=str(genome.path), task=task,
                classes=list(classes), window_len=window_len, block_len=block_len, seed=seed, l2=l2, steps=steps,
                windows=counts, results=results)


def format_report(report: Mapping) -> str:
    """The probe scores as a text table."""
    counts = "; ".join(f"{part}: " + ", ".join(f"{c} {n:,}" for c, n in per.items())
                       for part, per in report["windows"].items())
    lines = [f"probe '{report['task']}' on {report['annotations']} (windows of {report['window_len']}, "
             f"blocks of {report['block_len']:,}, seed {report['seed']})", f"windows {counts}",
             f"{'features':<14} {'dim':>6} {'balanced acc':>13} {'AUROC':>7}"]
    for name, r in report["results"].items():
        lines.append(f"{name:<14} {r['features']:>6} {r['balanced_accuracy']:>13.4f} {r['auroc']:>7.4f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jaxseq.probe", description=__doc__.splitlines()[0])
    parser.add_argument("run", metavar="RUN", help="training run directory")
    parser.add_argument("--annotations", required=True, help="GFF3 file (.gff3 or .gff3.gz)")
    parser.add_argument("--fasta", help="the sequence (default: the GFF3's ##FASTA section)")
    parser.add_argument("--task", required=True, choices=list(TASKS))
    parser.add_argument("--seed", type=int, default=0, help="split, subsample, label shuffle, random model")
    parser.add_argument("--block-len", type=int, default=10_000, help="block size of the split (default 10000)")
    parser.add_argument("--max-windows", type=int, default=20_000, help="fitting / test windows at most each")
    parser.add_argument("--l2", type=float, default=1e-3, help="L2 penalty on the probe weights")
    parser.add_argument("--steps", type=int, default=100, help="L-BFGS iterations")
    parser.add_argument("--json", help="write the report as JSON to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code (2 with one ``error:`` line for bad input)."""
    args = build_parser().parse_args(argv)
    try:
        for name in ("block_len", "max_windows", "steps"):
            if getattr(args, name) < 1:
                raise ProbeError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        if args.l2 < 0:
            raise ProbeError(f"--l2 must be >= 0, got {args.l2}")
        report = run_probe(args.run, args.annotations, args.task, fasta=args.fasta, seed=args.seed,
                           block_len=args.block_len, max_windows=args.max_windows, l2=args.l2, steps=args.steps)
        print(format_report(report))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report, indent=2))
    except (ValueError, OSError) as err:  # ProbeError, GFF3Error, GenomeError, EvaluateError, SplitError, ...
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
