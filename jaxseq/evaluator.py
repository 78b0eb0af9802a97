"""The one evaluation pass: every window of a split scored once, exact sums, two modes, examples.

An :class:`Evaluator` owns its data (a genome and intervals, tiled by :func:`jaxseq.loader.eval_batches`),
its jitted functions and its aggregation; it is called with a model and its variables. Training's
periodic and final evaluation, ``python -m jaxseq.evaluate``, :meth:`jaxseq.TrainedModel.evaluate`,
sweeps and the per-base error map all go through it.

Exactness: metrics are sums plus counts accumulated on device in float32 and fetched once per
``2**24`` scored positions (the range where float32 sums of counts stay integer-exact); the host
adds the chunks in float64. The padded final batch has weight 0, so every window counts once.

Modes: ``deterministic`` (no dropout, no noise) and ``stochastic`` (input dropout and latent noise
at the given schedule values, hidden dropout at ``model.hidden_dropout``, drawn from the seed: pass
``r`` folds ``r`` into it, batch ``i`` folds in ``i``). Batch normalisation uses its running
statistics in both modes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import layers, losses, parallel, steps
from jaxseq import tokens as tok
from jaxseq.config import Config

SPLITS = ("test", "valid", "train")
MODES = ("deterministic", "stochastic")
#: Share of the window at each end reported as "edges" in the position summary.
EDGE_FRACTION = 0.1
# float32 holds every integer up to 2**24 exactly: device totals are flushed to float64 before that.
_EXACT_F32 = 1 << 24
_BASES = "ACGT"


class EvaluateError(ValueError):
    """The run, checkpoint, genome or split cannot be evaluated (one-line message)."""


class EvaluationStopped(RuntimeError):
    """``should_stop`` asked an evaluation to stop (a signal during training's final evaluation)."""


# ----------------------------------------------------------------------------------------------
# Metric sums


@jax.jit
def compute_eval_sums(logits: jax.Array, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Sums and counts of one batch for exact split-wide evaluation metrics.

    Pure and jitted. Positions count with weight ``weights[b] * (tokens[b, i] < 4)``: N targets and
    padding rows (weight 0) never count; N positions of real windows are counted in ``excluded_n``.

    Args:
      logits: float ``(B, L, 4)``.
      batch: ``"tokens"`` integer ``(B, L)`` (true bases), ``"weights"`` float32 ``(B,)`` (0 for padding),
        optional ``"soft_mask"`` bool ``(B, L)`` (True where the FASTA was lowercase; absent = all
        unmasked).

    Returns:
      dict of float32 arrays: ``loss_sum`` (cross-entropy, nats), ``correct``, ``count`` (scalars, as
      :func:`jaxseq.losses.metric_sums`); ``confusion`` ``(4, 4)`` [true, predicted]; ``windows``
      (sum of window weights); ``excluded_n`` (weighted N positions); ``position_correct`` and
      ``position_count`` ``(L,)``; ``soft_correct``, ``soft_count``, ``soft_loss_sum`` (the
      soft-masked part of ``correct``, ``count``, ``loss_sum``).
    """
    sums = losses.metric_sums(logits, batch)
    targets = batch["tokens"]
    weights = losses.position_weights(batch)
    window_weights = jnp.asarray(batch["weights"], jnp.float32)
    hit = weights * (jnp.argmax(logits, axis=-1) == targets)
    ce = jnp.where(weights > 0, weights * losses.cross_entropy(logits, targets), 0.0)
    soft = batch.get("soft_mask")
    soft = jnp.zeros(targets.shape, jnp.float32) if soft is None else jnp.asarray(soft, jnp.float32)
    sums.update(
        windows=jnp.sum(window_weights),
        excluded_n=jnp.sum(window_weights[:, None] * (targets >= tok.NUM_BASES)),
        position_correct=jnp.sum(hit, axis=0),
        position_count=jnp.sum(weights, axis=0),
        soft_correct=jnp.sum(hit * soft),
        soft_count=jnp.sum(weights * soft),
        soft_loss_sum=jnp.sum(ce * soft),
    )
    return {k: v.astype(jnp.float32) for k, v in sums.items()}


def summarize_sums(sums: Mapping[str, Any]) -> dict[str, Any]:
    """Means and breakdowns from (host) metric sums of :func:`compute_eval_sums`.

    Args:
      sums: the sums, possibly added over batches, as numpy arrays or floats.

    Returns:
      JSON-ready dict: ``accuracy``, ``loss`` (nats/base), ``bits_per_base``, ``n_bases``, ``n_windows``,
      ``n_excluded_n``, ``accuracy_by_base`` / ``n_bases_by_base`` (keys A C G T), ``confusion``
      (4x4 list, rows true, columns predicted), ``accuracy_by_position`` (list of ``L``),
      ``position_summary`` (``first``, ``middle``, ``last``, ``edges``: accuracy over the first / last
      ``ceil(EDGE_FRACTION * L)`` positions, the rest, and both ends together, plus ``edge_len``),
      ``soft_masked`` and ``unmasked`` (``accuracy``, ``loss``, ``n_bases``). Undefined ratios (no
      bases) are NaN.
    """
    s = {k: np.asarray(v, dtype=np.float64) for k, v in sums.items()}
    count = float(s["count"])
    loss = _ratio(s["loss_sum"], count)
    confusion = s["confusion"]
    by_base = confusion.sum(1)
    position_correct, position_count = s["position_correct"], s["position_count"]
    length = position_count.shape[0]
    edge = min(max(1, math.ceil(EDGE_FRACTION * length)), length // 2)
    first, last = slice(0, edge), slice(length - edge, length)
    middle = slice(edge, length - edge)

    def acc(sl):
        return _ratio(position_correct[sl].sum(), position_count[sl].sum())

    edges = _ratio(position_correct[first].sum() + position_correct[last].sum(),
                   position_count[first].sum() + position_count[last].sum())
    soft_count, soft_correct, soft_loss = float(s["soft_count"]), float(s["soft_correct"]), float(s["soft_loss_sum"])
    return {
        "accuracy": _ratio(s["correct"], count),
        "loss": loss,
        "bits_per_base": loss / math.log(2.0),
        "n_bases": _count(count),
        "n_windows": _count(s["windows"]),
        "n_excluded_n": _count(s["excluded_n"]),
        "accuracy_by_base": {b: _ratio(confusion[i, i], by_base[i]) for i, b in enumerate(_BASES)},
        "n_bases_by_base": {b: _count(by_base[i]) for i, b in enumerate(_BASES)},
        "confusion": [[_count(v) for v in row] for row in confusion],
        "accuracy_by_position": [_ratio(c, n) for c, n in zip(position_correct, position_count)],
        "position_summary": {"edge_len": edge, "first": acc(first), "middle": acc(middle), "last": acc(last),
                             "edges": edges},
        "soft_masked": {"accuracy": _ratio(soft_correct, soft_count), "loss": _ratio(soft_loss, soft_count),
                        "n_bases": _count(soft_count)},
        "unmasked": {"accuracy": _ratio(float(s["correct"]) - soft_correct, count - soft_count),
                     "loss": _ratio(float(s["loss_sum"]) - soft_loss, count - soft_count),
                     "n_bases": _count(count - soft_count)},
    }


def _count(x) -> int | float:
    """A count as an int when it is whole (always, except means over stochastic passes)."""
    x = float(x)
    return int(x) if x.is_integer() else x


def _ratio(a, b) -> float:
    a, b = float(a), float(b)
    return a / b if b > 0 else float("nan")


def _spread(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max())}


# ----------------------------------------------------------------------------------------------
# The model in either mode


def apply_model(model: nn.Module, variables: Mapping[str, Any], tokens: jax.Array, *, stochastic: bool,
                hparams: Mapping[str, jax.Array] | None = None, key: jax.Array | None = None) -> jax.Array:
    """Logits f32 ``(B, L, 4)`` in deterministic or stochastic mode (batch norm: running statistics).

    Args:
      model: the flax module.
      variables: ``{"params": ..., "batch_stats": ...}``.
      tokens: integer ``(B, L)``.
      stochastic: dropout and latent noise on (``hparams``, drawn from ``key``).
      hparams: ``input_dropout``, ``latent_noise_std`` f32 scalars (stochastic only).
      key: PRNG key (stochastic only).
    """
    if not stochastic:
        logits, _ = model.apply(variables, tokens, train=False)
        return logits
    dropout_key, noise_key = jax.random.split(layers.unrolled_threefry(key))
    # Batch norm on running statistics (train=False), dropout and noise on (deterministic=False).
    logits, _ = model.apply(variables, tokens, train=False, deterministic=False, hparams=hparams,
                            rngs={"dropout": dropout_key, "noise": noise_key})
    return logits


# The model is a static argument: flax modules hash by their fields, so every evaluation of the same
# architecture reuses one compiled program (a TrainState's optimiser closures would not).
@functools.partial(jax.jit, static_argnames=("model", "stochastic"), donate_argnames=("totals",))
def _accumulate(totals, variables, batch, key, index, hparams, *, model, stochastic):
    logits = apply_model(model, variables, batch["tokens"], stochastic=stochastic, hparams=hparams,
                         key=jax.random.fold_in(key, index))
    return jax.tree.map(jnp.add, totals, compute_eval_sums(logits, batch))


@functools.partial(jax.jit, static_argnames=("model", "stochastic", "argmax"))
def _predict(variables, batch, key, index, hparams, *, model, stochastic, argmax=False):
    """Probabilities f32 ``(B, L, 4)`` (``argmax``: predicted tokens int8 ``(B, L)``); same randomness as
    :func:`_accumulate` for the same key/index."""
    logits = apply_model(model, variables, batch["tokens"], stochastic=stochastic, hparams=hparams,
                         key=jax.random.fold_in(key, index))
    return jnp.argmax(logits, axis=-1).astype(jnp.int8) if argmax else jax.nn.softmax(logits, axis=-1)


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded array, in order (the whole array with one process)."""
    shards = {}
    for shard in x.addressable_shards:
        shards.setdefault(shard.index[0].start or 0, shard)
    return np.concatenate([np.asarray(shards[k].data) for k in sorted(shards)])


def eval_hparams(config: Config, step: int) -> dict[str, float]:
    """Scheduled hyperparameters used by stochastic mode: each schedule's value at ``step``."""
    return {name: float(fn(step)) for name, fn in steps.create_hparam_schedules(config).items()}


# ----------------------------------------------------------------------------------------------
# Examples


def choose_examples(n_windows: int, count: int, seed: int) -> list[int]:
    """``count`` distinct window indices in ``[0, n_windows)``, a pure function of the seed, sorted."""
    count = min(max(int(count), 0), n_windows)
    if count == 0:
        return []
    return sorted(int(i) for i in np.random.default_rng(seed).choice(n_windows, size=count, replace=False))


def format_example(example: Mapping[str, Any], window_len: int) -> str:
    """Aligned text of one example: position, accuracy, then target / mismatch / prediction / confidence.

    Args:
      example: ``tokens`` int ``(L,)`` (true bases), ``probs`` float ``(L, 4)``, ``window`` (index),
        ``record``, ``start`` (0-based), optional ``soft_mask`` bool ``(L,)``.
      window_len: ``L``.
    """
    target, probs = np.asarray(example["tokens"]), np.asarray(example["probs"])
    predicted = probs.argmax(-1)
    scored = target < tok.NUM_BASES
    correct = int(((predicted == target) & scored).sum())
    soft = int(np.asarray(example.get("soft_mask", np.zeros(0, bool))).sum())
    header = (f"window {example['window']}: {example['record']}:{example['start'] + 1}-"
              f"{example['start'] + window_len} (1-based), {correct}/{int(scored.sum())} correct"
              + (f", {soft} soft-masked bases" if soft else ""))
    return header + "\n" + tok.format_reconstruction(target, predicted, probs.max(-1))


# ----------------------------------------------------------------------------------------------
# The evaluator


@dataclasses.dataclass
class Evaluator:
    """Scores a model on every window of a genome's intervals (see the module docstring).

    Attributes:
      genome: a :class:`jaxseq.genome.Genome`.
      intervals: the intervals to tile (``splits.Interval``).
      window_len: window length ``L``.
      batch_size: global batch size (training: twice its batch size).
      name: ``test``, ``valid``, ``train`` or ``fasta-<stem>`` (reports and TensorBoard tags).
      fasta: the genome's file (reported).
      stride: distance between window starts (default ``window_len``).
      max_windows: stop after the batch that reaches this many windows (0: all; training's periodic
        evaluation).
    """

    genome: Any
    intervals: list
    window_len: int
    batch_size: int
    name: str = "test"
    fasta: Path | None = None
    stride: int | None = None
    max_windows: int = 0

    @functools.cached_property
    def n_windows(self) -> int:
        """Real windows one pass scores (``max_windows`` rounded up to whole batches)."""
        from jaxseq.loader import count_eval_windows

        n = count_eval_windows(self.genome.as_mapping(), self.intervals, window_len=self.window_len, stride=self.stride)
        if self.max_windows:
            n = min(n, -(-self.max_windows // self.batch_size) * self.batch_size)
        return n

    def batches(self) -> Iterator[dict]:
        """This process's rows of each global batch, with ``soft_mask`` (see :func:`jaxseq.loader.eval_batches`)."""
        from jaxseq.loader import eval_batches

        g = self.genome
        soft = {n: g.soft_mask(n) for n in g.names}
        seen = 0
        for batch in eval_batches(g.as_mapping(), self.intervals, window_len=self.window_len,
                                  batch_size=self.batch_size, stride=self.stride, soft_mask=soft,
                                  process_index=jax.process_index(), process_count=jax.process_count()):
            yield batch
            seen += self.batch_size
            if self.max_windows and seen >= self.max_windows:
                return

    def _device_batches(self, mesh, should_stop, progress: bool, desc: str):
        from tqdm import tqdm

        bar = tqdm(total=-(-self.n_windows // self.batch_size), desc=desc, unit="batch", leave=False,
                   disable=not progress or not parallel.is_main_process(), dynamic_ncols=True)
        try:
            for index, batch in enumerate(self.batches()):
                if should_stop is not None and should_stop():
                    raise EvaluationStopped(f"evaluation of {self.name} stopped at batch {index}")
                device = parallel.shard_batch({k: batch[k] for k in ("tokens", "weights", "soft_mask")}, mesh)
                yield index, batch, device
                bar.update(1)
        finally:
            bar.close()

    def sums(self, model, variables, mesh, *, stochastic: bool = False, hparams: Mapping[str, float] | None = None,
             key: jax.Array | None = None, example_ids: Sequence[int] = (), should_stop: Callable[[], bool] | None = None,
             progress: bool = False) -> tuple[dict, list]:
        """One pass: exact float64 host sums of :func:`compute_eval_sums` and the chosen examples.

        Args:
          model, variables: the flax module and its ``{"params", "batch_stats"}`` (replicated on ``mesh``).
          mesh: the device mesh batches are sharded over.
          stochastic, hparams, key: the mode (see :func:`apply_model`).
          example_ids: window indices whose predictions are returned (dicts for :func:`format_example`).
          should_stop: called before each batch; True raises :class:`EvaluationStopped`.
          progress: show a progress bar.
        """
        key = jax.random.key(0) if key is None else key
        local = self.batch_size // jax.process_count()
        row0 = jax.process_index() * local
        flush_every = max(1, _EXACT_F32 // (self.batch_size * self.window_len))
        hp = {k: jnp.float32(v) for k, v in (hparams or {}).items()}

        def fresh():
            return jax.tree.map(lambda s: parallel.replicate(jnp.zeros(s.shape, s.dtype), mesh), self._totals_shape())

        host, totals, wanted, examples = None, fresh(), {int(i) for i in example_ids}, []
        for index, batch, device in self._device_batches(mesh, should_stop, progress, f"evaluate {self.name}"):
            totals = _accumulate(totals, variables, device, key, index, hp, model=model, stochastic=stochastic)
            ids = index * self.batch_size + row0 + np.arange(local)
            rows = [r for r in range(local) if ids[r] in wanted and batch["weights"][r] > 0]
            # Decided from global ids, so every process joins the (collective) prediction.
            if any(index * self.batch_size <= i < (index + 1) * self.batch_size for i in wanted):
                probs = local_rows(_predict(variables, device, key, index, hp, model=model, stochastic=stochastic))
                examples += [{"window": int(ids[r]), "record": self.genome.names[int(batch["record"][r])],
                              "start": int(batch["start"][r]), "tokens": batch["tokens"][r].astype(np.int64),
                              "soft_mask": batch["soft_mask"][r].copy(), "probs": probs[r]} for r in rows]
            if (index + 1) % flush_every == 0:
                host, totals = _add_host(host, jax.device_get(totals)), fresh()
        return _add_host(host, jax.device_get(totals)), examples

    def _totals_shape(self) -> dict:
        shapes = {"tokens": jax.ShapeDtypeStruct((self.batch_size, self.window_len), jnp.int8),
                  "weights": jax.ShapeDtypeStruct((self.batch_size,), jnp.float32),
                  "soft_mask": jax.ShapeDtypeStruct((self.batch_size, self.window_len), jnp.bool_)}
        logits = jax.ShapeDtypeStruct((self.batch_size, self.window_len, tok.NUM_BASES), jnp.float32)
        return jax.eval_shape(compute_eval_sums, logits, shapes)

    def precompile(self, model, variables, mesh, *, examples: bool = False) -> None:
        """Compiles the programs a deterministic :meth:`run` calls, so its first batch does not wait for them.

        Training calls it in a background thread while its first train call compiles. Nothing runs and
        nothing is communicated between processes: only shapes, dtypes and shardings matter, so
        ``variables`` may be abstract (``jax.ShapeDtypeStruct`` leaves carrying their shardings and weak
        types), e.g. of a state the caller is about to donate.

        Args:
          model: the flax module.
          variables: ``{"params", "batch_stats"}`` as :meth:`sums` will get them (arrays or abstract).
          mesh: the device mesh.
          examples: also compile the prediction program (``run(..., examples=N > 0)``).
        """
        local = self.batch_size // jax.process_count()
        batch = parallel.shard_batch({"tokens": np.zeros((local, self.window_len), np.int8),
                                      "weights": np.zeros((local,), np.float32),
                                      "soft_mask": np.zeros((local, self.window_len), bool)}, mesh)
        totals = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=parallel.replicated(mesh)),
                              self._totals_shape())
        # The key and index as run() makes them (uncommitted): an abstract stand-in would compile another program.
        args = (variables, batch, jax.random.fold_in(jax.random.key(0), 0), 0, {})
        _accumulate.lower(totals, *args, model=model, stochastic=False).compile()
        if examples:
            _predict.lower(*args, model=model, stochastic=False).compile()

    def run(self, model, variables, mesh, *, mode: str = "deterministic", hparams: Mapping[str, float] | None = None,
            seed: int = 0, repeats: int = 1, examples: int | Sequence[int] = 0,
            should_stop: Callable[[], bool] | None = None, progress: bool = False) -> dict:
        """Evaluates in ``mode`` with ``repeats`` passes; returns the report's metrics.

        Args:
          model, variables, mesh: as :meth:`sums`.
          mode: ``deterministic`` or ``stochastic``.
          hparams: ``input_dropout`` and ``latent_noise_std`` (stochastic mode).
          seed: noise seed (pass ``r`` folds in ``r``) and, with ``examples`` an int, the choice of examples.
          repeats: passes to average (stochastic mode).
          examples: a number of examples chosen among all windows by ``seed``, or the window indices.
          should_stop, progress: as :meth:`sums`.

        Returns:
          :func:`summarize_sums` of the mean sums, plus ``split``, ``fasta``, ``mode``, ``window_len``,
          ``stride``, ``batch_size``, ``seed``, ``repeats``, ``n_intervals``, ``examples`` (list of
          ``window``, ``record``, ``start``, ``text``) and, in stochastic mode, ``per_repeat``
          (accuracy, loss) and ``spread`` (mean, std, min, max of accuracy, loss, bits_per_base).
        """
        if mode not in MODES:
            raise EvaluateError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        ids = choose_examples(self.n_windows, examples, seed) if isinstance(examples, int) else list(examples)
        passes = [self.sums(model, variables, mesh, stochastic=mode == "stochastic", hparams=hparams,
                            key=jax.random.fold_in(jax.random.key(seed), r), example_ids=ids if r == 0 else (),
                            should_stop=should_stop, progress=progress) for r in range(repeats)]
        mean = {k: sum(p[0][k] for p in passes) / repeats for k in passes[0][0]}
        report = {"split": self.name, "fasta": str(self.fasta), "mode": mode, "window_len": self.window_len,
                  "stride": self.stride or self.window_len, "batch_size": self.batch_size, "seed": seed,
                  "repeats": repeats, "n_intervals": len(self.intervals), **summarize_sums(mean)}
        if mode == "stochastic":
            per = [summarize_sums(p[0]) for p in passes]
            report["per_repeat"] = [{"accuracy": m["accuracy"], "loss": m["loss"]} for m in per]
            report["spread"] = {k: _spread([m[k] for m in per]) for k in ("accuracy", "loss", "bits_per_base")}
        report["examples"] = [{"window": e["window"], "record": e["record"], "start": e["start"],
                               "text": format_example(e, self.window_len)} for e in passes[0][1]]
        return report

    def predictions(self, model, variables, mesh, *, mode: str = "deterministic",
                    hparams: Mapping[str, float] | None = None, seed: int = 0,
                    progress: bool = False) -> Iterator[tuple[dict, np.ndarray]]:
        """``(host batch, predicted tokens int8 (B/P, L))`` per batch; one batch stays in flight on the device."""
        hp = {k: jnp.float32(v) for k, v in (hparams or {}).items()}
        key, pending = jax.random.key(seed), None
        for index, batch, device in self._device_batches(mesh, None, progress, f"predict {self.name}"):
            predicted = _predict(variables, device, key, index, hp, model=model, stochastic=mode == "stochastic",
                                 argmax=True)
            if pending is not None:
                yield pending[0], local_rows(pending[1])
            pending = (batch, predicted)
        if pending is not None:
            yield pending[0], local_rows(pending[1])


def _add_host(a: dict | None, b: Mapping[str, Any]) -> dict:
    b = {k: np.asarray(v, dtype=np.float64) for k, v in b.items()}
    return b if a is None else {k: a[k] + b[k] for k in b}


def fasta_split_name(fasta: str | Path) -> str:
    """``fasta-<stem>``, the stem without FASTA/compression suffixes (``chr17.fa.gz`` -> ``fasta-chr17``)."""
    name = Path(fasta).name
    for suffix in (".gz", ".bgz", ".bz2", ".fasta", ".fa", ".fna", ".fas"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return f"fasta-{name}"


def is_bed(path: str | Path) -> bool:
    """Whether a path names a BED file (``.bed`` or ``.bed.gz``), not a FASTA."""
    return str(path).lower().endswith((".bed", ".bed.gz"))


def bed_split_name(bed: str | Path) -> str:
    """``bed-<stem>`` (``peaks.bed.gz`` -> ``bed-peaks``): the split name of a BED file's regions."""
    name = Path(bed).name
    for suffix in (".gz", ".bed"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return f"bed-{name}"


def read_bed_regions(config: Config, bed: str | Path, fasta: str | Path | None = None,
                     cache_dir: str | Path | None = None) -> tuple[Any, list]:
    """The genome (``fasta``, else the run's) and a BED file's regions on it.

    Record names go through the run's ``data.aliases`` when the genome is the run's own.

    Returns:
      ``(genome, regions)``: a :class:`jaxseq.genome.Genome` and :class:`jaxseq.regions.Region` s in file order.

    Raises:
      GenomeError, RegionError: a missing or invalid genome, aliases file or BED line (file and line named).
    """
    from jaxseq.genome import Genome, default_fasta
    from jaxseq.regions import read_aliases, read_bed

    d = config.data
    path = Path(fasta) if fasta else (Path(d.fasta) if d.fasta else default_fasta())
    genome = Genome.open(path, cache_dir=cache_dir or d.cache_dir or None)
    aliases = read_aliases(d.aliases, genome.names) if d.aliases and not fasta else None
    return genome, read_bed(bed, genome.sizes(), aliases)


def open_evaluator(config: Config, split: str = "test", fasta: str | Path | None = None,
                   cache_dir: str | Path | None = None, *, data=None, max_windows: int = 0) -> Evaluator:
    """The evaluator of a run's split, of every window of another genome, or of a BED file's regions.

    Args:
      config: the run config (window length, batch size, data settings).
      split: ``test``, ``valid`` or ``train`` (ignored with ``fasta``).
      fasta: score every record of this genome, whole length (split name ``fasta-<stem>``); or a BED
        file (``.bed``/``.bed.gz``): score the windows inside its regions of the run's genome, whatever
        split they lie in (split name ``bed-<stem>``; overlapping regions are merged, so each base is
        scored once; tiled like a split).
      cache_dir: token cache root (default: ``data.cache_dir``).
      data: an opened :class:`jaxseq.steps.Data` to reuse (training); default: opened from ``config``.
      max_windows: see :class:`Evaluator`.

    Raises:
      GenomeError: ``fasta`` (or the run's genome) missing or invalid.
      RegionError: a bad BED line.
      EvaluateError, SplitError: unknown split, or no window to score.
    """
    from jaxseq.splits import Interval, intersect_intervals

    window_len, batch_size = config.data.window_len, 2 * config.train.batch_size
    if fasta is not None and is_bed(fasta):
        genome, regions = read_bed_regions(config, fasta, None, cache_dir)
        whole = [Interval(n, 0, genome.lengths[n]) for n in genome.names]
        evaluator = Evaluator(genome, intersect_intervals(whole, regions), window_len, batch_size,
                              bed_split_name(fasta), genome.path)
        where = f"{fasta}: no region (overlapping ones merged) is at least window_len={window_len} bases long"
    elif fasta is not None:
        from jaxseq.genome import Genome

        genome = Genome.open(fasta, cache_dir=cache_dir or config.data.cache_dir or None)
        intervals = [Interval(n, 0, genome.lengths[n]) for n in genome.names]
        evaluator = Evaluator(genome, intervals, window_len, batch_size, fasta_split_name(fasta), Path(fasta))
        where = f"{fasta}: no record is at least window_len={window_len} bases long"
    else:
        if split not in SPLITS:
            raise EvaluateError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        if data is None:
            if cache_dir:
                config = dataclasses.replace(config, data=dataclasses.replace(config.data, cache_dir=str(cache_dir)))
            data = steps.open_data(config)
        evaluator = Evaluator(data.genome, list(data.splits[split]), window_len, batch_size, split, data.fasta,
                              max_windows=max_windows)
        where = f"split {split!r} of {data.fasta} has no window of window_len={window_len} bases"
    if evaluator.n_windows == 0:
        raise EvaluateError(where)
    return evaluator
