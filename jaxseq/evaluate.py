"""Evaluate a trained run on a whole split: ``python -m jaxseq.evaluate RUN_DIR [options]``.

Examples::

    python -m jaxseq.evaluate runs/lambda                              # test split, latest step
    python -m jaxseq.evaluate runs/lambda --split valid --step 2000 --examples 3
    python -m jaxseq.evaluate runs/lambda --mode stochastic --repeats 5 --seed 1
    python -m jaxseq.evaluate runs/lambda --fasta ../shared/data/human_chr17_hg19_part.fa

What is scored
    Every window of the split exactly once: the deterministic tiling of :func:`jaxseq.loader.eval_batches`
    with stride ``window_len`` (intervals shorter than a window give none; the last ``< window_len``
    bases of an interval are not covered). ``--fasta OTHER.fa`` scores a genome the model never saw
    with the same rules over all its records, whole length. Positions whose true base is N are
    excluded (and counted). The global batch is twice the training batch; the padded final batch has
    weight 0, so every window counts once. All metrics are sums plus counts accumulated on device and
    fetched once (or once per ``2**24`` scored positions, the range where float32 sums of counts stay
    integer-exact; the host adds the chunks in float64), so they are exact over the split, not
    estimates from a sample.

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
    for ``--fasta``); the same numbers in the run's TensorBoard at step N under ``<split>/...``
    (``test/accuracy``, ``test/loss``, ``test/bits_per_base``, ...) in deterministic mode and
    ``<split>/stochastic/...`` in stochastic mode, plus text ``<split>[/stochastic]/report`` and
    ``.../examples``. Checkpoints are opened read-only and never modified.

Errors (bad run directory, no checkpoint, unknown ``--step``, a config that no longer matches the
checkpoint's architecture, a missing or invalid ``--fasta``, a split without windows) are one line on
stderr with exit status 2, before any compute.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import checkpoint, losses, models, parallel, summary, tokens as tok
from jaxseq import config as config_lib
from jaxseq import train
from jaxseq.config import Config, ConfigError

SPLITS = ("test", "valid", "train")
MODES = ("deterministic", "stochastic")
#: Share of the window at each end reported as "edges" in the position summary.
EDGE_FRACTION = 0.1
# float32 holds every integer up to 2**24 exactly: device totals are flushed to float64 before that.
_EXACT_F32 = 1 << 24
_BASES = "ACGT"


class EvaluateError(ValueError):
    """The run, checkpoint, genome or split cannot be evaluated (one-line message)."""


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


# ----------------------------------------------------------------------------------------------
# The run: config, checkpoint, state


@dataclasses.dataclass
class Run:
    """A run directory opened for evaluation (nothing restored yet)."""

    run_dir: Path
    config: Config
    config_source: str  # "config.yaml" or "checkpoint meta"
    step: int
    steps: list[int]
    manager: Any  # orbax CheckpointManager, read-only

    def close(self) -> None:
        self.manager.close()


def open_run(run_dir: str | Path, step: int | None = None) -> Run:
    """Opens a run directory read-only and checks that its config matches the checkpoint.

    The config is ``RUN_DIR/config.yaml`` (as a user may have edited it) or, without that file, the
    config saved in the checkpoint's metadata. Settings that define the model must equal the
    checkpoint's own.

    Args:
      run_dir: the training run directory.
      step: checkpoint step; None for the latest.

    Returns:
      a :class:`Run`; call ``close()`` when done.

    Raises:
      EvaluateError: no such directory, no checkpoints, no such step (lists the available ones), or
        a config whose model differs from the checkpoint's (names the settings).
    """
    run_dir = Path(run_dir).absolute()
    if not run_dir.is_dir():
        raise EvaluateError(f"run directory {run_dir} does not exist")
    ckpt_dir = checkpoint.checkpoint_dir(run_dir)
    if not ckpt_dir.is_dir():
        raise EvaluateError(f"no checkpoints in {run_dir} ({ckpt_dir} does not exist): train first")
    # orbax announces at WARNING level that a read-only manager will not save: noise on every run.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        manager = checkpoint.create_manager(run_dir, read_only=True)
    finally:
        absl_logger.setLevel(level)
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise EvaluateError(f"no checkpoints in {ckpt_dir}: train first")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise EvaluateError(f"--step {step}: no checkpoint at step {step} in {ckpt_dir}; "
                                f"available: {', '.join(map(str, steps))}")
        meta = checkpoint.read_meta(manager, step)
        saved = config_lib.from_dict(meta["config"]) if meta.get("config") else None
        yaml_path = run_dir / "config.yaml"
        if yaml_path.is_file():
            config, source = config_lib.load_config(yaml_path), "config.yaml"
        elif saved is not None:
            config, source = saved, "checkpoint meta"
        else:
            raise EvaluateError(f"{run_dir} has neither config.yaml nor a config in checkpoint {step}'s metadata")
        if saved is not None:
            changed = config_lib.architecture_changes(saved, config)
            if changed:
                raise EvaluateError(f"checkpoint step {step} in {ckpt_dir} is of another architecture than "
                                    f"{yaml_path} describes: {'; '.join(changed)} (checkpoint -> config.yaml)")
    except BaseException:
        manager.close()
        raise
    return Run(run_dir=run_dir, config=config, config_source=source, step=int(step), steps=steps, manager=manager)


def restore_state(run: Run, mesh) -> train.TrainState:
    """Restores the run's checkpoint onto ``mesh`` (replicated), reading nothing but that step.

    Raises:
      CheckpointError: the stored arrays do not match the config's model (lists what differs).
    """
    abstract = jax.eval_shape(functools.partial(train.create_train_state, run.config))
    sharding = parallel.replicated(mesh)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)
    state, _, _ = checkpoint.restore(run.manager, run.step, abstract)
    return state


def eval_hparams(config: Config, step: int) -> dict[str, float]:
    """Scheduled hyperparameters used by stochastic mode: each schedule's value at ``step``."""
    return {name: float(fn(step)) for name, fn in train.create_hparam_schedules(config).items()}


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
    dropout_key, noise_key = jax.random.split(key)
    # Batch norm on running statistics (train=False), dropout and noise on (deterministic=False).
    logits, _ = model.apply(variables, tokens, train=False, deterministic=False, hparams=hparams,
                            rngs={"dropout": dropout_key, "noise": noise_key})
    return logits


def _variables(state) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}


# The model is a static argument: flax modules hash by their fields, so every evaluation of the same
# architecture reuses one compiled program (the TrainState's optimiser closures would not).
@functools.partial(jax.jit, static_argnames=("model", "stochastic"), donate_argnames=("totals",))
def _accumulate(totals, variables, batch, key, index, hparams, *, model, stochastic):
    logits = apply_model(model, variables, batch["tokens"], stochastic=stochastic, hparams=hparams,
                         key=jax.random.fold_in(key, index))
    return jax.tree.map(jnp.add, totals, compute_eval_sums(logits, batch))


@functools.partial(jax.jit, static_argnames=("model", "stochastic"))
def _predict(variables, batch, key, index, hparams, *, model, stochastic):
    """Probabilities f32 ``(B, L, 4)``; same randomness as :func:`_accumulate` for the same key/index."""
    logits = apply_model(model, variables, batch["tokens"], stochastic=stochastic, hparams=hparams,
                         key=jax.random.fold_in(key, index))
    return jax.nn.softmax(logits, axis=-1)


@functools.partial(jax.jit, static_argnames=("model", "stochastic"))
def _predict_tokens(variables, batch, key, index, hparams, *, model, stochastic):
    logits = apply_model(model, variables, batch["tokens"], stochastic=stochastic, hparams=hparams,
                         key=jax.random.fold_in(key, index))
    return jnp.argmax(logits, axis=-1).astype(jnp.int8)


def _local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded array, in order (the whole array with one process)."""
    shards = {}
    for shard in x.addressable_shards:
        shards.setdefault(shard.index[0].start or 0, shard)
    return np.concatenate([np.asarray(shards[k].data) for k in sorted(shards)])


# ----------------------------------------------------------------------------------------------
# Data


@dataclasses.dataclass
class Target:
    """What is evaluated: a genome and intervals of it, under a split name."""

    name: str  # "test", "valid", "train" or "fasta-<stem>"
    genome: Any
    intervals: list
    fasta: Path


def fasta_split_name(fasta: str | Path) -> str:
    """``fasta-<stem>``, the stem without FASTA/compression suffixes (``chr17.fa.gz`` -> ``fasta-chr17``)."""
    name = Path(fasta).name
    for suffix in (".gz", ".bgz", ".bz2", ".fasta", ".fa", ".fna", ".fas"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return f"fasta-{name}"


def whole_genome_intervals(genome) -> list:
    """One interval per record, its whole length."""
    from jaxseq.splits import Interval

    return [Interval(name, 0, genome.lengths[name]) for name in genome.names]


def open_target(config: Config, split: str = "test", fasta: str | Path | None = None,
                cache_dir: str | Path | None = None) -> Target:
    """Opens the genome and intervals to evaluate; checks there is at least one window.

    Raises:
      GenomeError: ``fasta`` (or the run's genome) missing or invalid.
      SplitError / EvaluateError: no window to score.
    """
    from jaxseq.genome import Genome
    from jaxseq.loader import count_eval_windows

    cache = cache_dir or config.data.cache_dir or None
    window_len = config.data.window_len
    if fasta is not None:
        genome = Genome.open(fasta, cache_dir=cache)
        target = Target(fasta_split_name(fasta), genome, whole_genome_intervals(genome), Path(fasta))
        where = f"{fasta}: no record is at least window_len={window_len} bases long"
    else:
        if split not in SPLITS:
            raise EvaluateError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        if cache_dir:
            config = dataclasses.replace(config, data=dataclasses.replace(config.data, cache_dir=str(cache_dir)))
        data = train.open_data(config)
        target = Target(split, data.genome, list(data.splits[split]), data.fasta)
        where = f"split {split!r} of {data.fasta} has no window of window_len={window_len} bases"
    if count_eval_windows(target.genome.as_mapping(), target.intervals, window_len=window_len) == 0:
        raise EvaluateError(where)
    return target


def _batches(target: Target, window_len: int, batch_size: int, stride: int | None = None,
             with_soft_mask: bool = True) -> Iterator[dict]:
    from jaxseq.loader import eval_batches

    genome = target.genome
    soft = {n: genome.soft_mask(n) for n in genome.names} if with_soft_mask else None
    return eval_batches(genome.as_mapping(), target.intervals, window_len=window_len, batch_size=batch_size,
                        stride=stride, soft_mask=soft, process_index=jax.process_index(),
                        process_count=jax.process_count())


def _device_batch(batch: dict, mesh, soft_mask: bool = True) -> dict:
    keys = ("tokens", "weights", "soft_mask") if soft_mask else ("tokens", "weights")
    return parallel.shard_batch({k: batch[k] for k in keys}, mesh)


# ----------------------------------------------------------------------------------------------
# Evaluation


@dataclasses.dataclass
class _Pass:
    sums: dict  # float64 host sums
    examples: list  # dicts: window, record, start, tokens, soft_mask, probs


def _run_pass(model, variables, target: Target, config: Config, mesh, *, stochastic: bool, hparams: dict,
              key, batch_size: int, example_ids: Sequence[int] = (), progress: bool = False) -> _Pass:
    """One pass over every window of the target: exact sums and the chosen examples' predictions."""
    from tqdm import tqdm

    window_len = config.data.window_len
    local = batch_size // jax.process_count()
    row0 = jax.process_index() * local
    flush_every = max(1, _EXACT_F32 // (batch_size * window_len))
    device_hparams = {k: jnp.float32(v) for k, v in hparams.items()}
    zeros = jax.eval_shape(compute_eval_sums, jax.ShapeDtypeStruct((batch_size, window_len, tok.NUM_BASES),
                                                                   jnp.float32),
                           {"tokens": jax.ShapeDtypeStruct((batch_size, window_len), jnp.int8),
                            "weights": jax.ShapeDtypeStruct((batch_size,), jnp.float32),
                            "soft_mask": jax.ShapeDtypeStruct((batch_size, window_len), jnp.bool_)})

    def fresh():
        return jax.tree.map(lambda s: parallel.replicate(jnp.zeros(s.shape, s.dtype), mesh), zeros)

    host = None
    totals = fresh()
    wanted = set(int(i) for i in example_ids)
    examples = []
    from jaxseq.loader import count_eval_windows

    n_windows = count_eval_windows(target.genome.as_mapping(), target.intervals, window_len=window_len)
    bar = tqdm(total=-(-n_windows // batch_size), desc=f"evaluate {target.name}", unit="batch",
               disable=not progress or not parallel.is_main_process(), dynamic_ncols=True, leave=False)
    for index, batch in enumerate(_batches(target, window_len, batch_size)):
        device_batch = _device_batch(batch, mesh)
        totals = _accumulate(totals, variables, device_batch, key, index, device_hparams,
                             model=model, stochastic=stochastic)
        ids = index * batch_size + row0 + np.arange(local)
        rows = [r for r in range(local) if ids[r] in wanted and batch["weights"][r] > 0]
        if rows:
            probs = _local_rows(_predict(variables, device_batch, key, index, device_hparams,
                                         model=model, stochastic=stochastic))
            for r in rows:
                examples.append({"window": int(ids[r]), "record": target.genome.names[int(batch["record"][r])],
                                 "start": int(batch["start"][r]), "tokens": batch["tokens"][r].astype(np.int64),
                                 "soft_mask": batch["soft_mask"][r].copy(), "probs": probs[r]})
        if (index + 1) % flush_every == 0:
            host = _add_host(host, jax.device_get(totals))
            totals = fresh()
        bar.update(1)
    bar.close()
    host = _add_host(host, jax.device_get(totals))
    return _Pass(sums=host, examples=examples)


def _add_host(a: dict | None, b: Mapping[str, Any]) -> dict:
    b = {k: np.asarray(v, dtype=np.float64) for k, v in b.items()}
    return b if a is None else {k: a[k] + b[k] for k in b}


def choose_examples(n_windows: int, count: int, seed: int) -> list[int]:
    """``count`` distinct window indices in ``[0, n_windows)``, a pure function of the seed, sorted."""
    count = min(max(int(count), 0), n_windows)
    if count == 0:
        return []
    return sorted(int(i) for i in np.random.default_rng(seed).choice(n_windows, size=count, replace=False))


def format_example(example: Mapping[str, Any], window_len: int) -> str:
    """Aligned text of one example: position, accuracy, then target / mismatch / prediction / confidence."""
    target, probs = example["tokens"], example["probs"]
    predicted = probs.argmax(-1)
    scored = target < tok.NUM_BASES
    correct = int(((predicted == target) & scored).sum())
    soft = int(np.asarray(example["soft_mask"]).sum())
    header = (f"window {example['window']}: {example['record']}:{example['start'] + 1}-"
              f"{example['start'] + window_len} (1-based), {correct}/{int(scored.sum())} correct"
              + (f", {soft} soft-masked bases" if soft else ""))
    return header + "\n" + tok.format_reconstruction(target, predicted, probs.max(-1))


def evaluate(run_dir: str | Path, *, split: str = "test", fasta: str | Path | None = None, step: int | None = None,
             mode: str = "deterministic", seed: int = 0, repeats: int = 1, examples: int = 0,
             devices: str | int | None = None, cache_dir: str | Path | None = None, write: bool = True,
             progress: bool = False) -> dict:
    """Evaluates a run's checkpoint on a whole split (or genome); writes JSON and TensorBoard.

    Args:
      run_dir: training run directory.
      split: ``test``, ``valid`` or ``train`` (ignored when ``fasta`` is given).
      fasta: evaluate every window of this genome instead (split name ``fasta-<stem>``).
      step: checkpoint step (default: latest).
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
      the report (what the JSON file holds).

    Raises:
      EvaluateError, CheckpointError, ConfigError, GenomeError, SplitError, ParallelError: before compute.
    """
    if mode not in MODES:
        raise EvaluateError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    if repeats < 1:
        raise EvaluateError(f"--repeats must be >= 1, got {repeats}")
    if repeats > 1 and mode != "stochastic":
        raise EvaluateError("--repeats > 1 needs --mode stochastic (deterministic passes are identical)")
    if examples < 0:
        raise EvaluateError(f"--examples must be >= 0, got {examples}")
    run = open_run(run_dir, step)
    try:
        config = run.config
        mesh = parallel.create_mesh(devices or config.train.devices)
        batch_size = 2 * config.train.batch_size
        parallel.check_batch_size(batch_size, mesh, name="evaluation batch (2 x train.batch_size)")
        target = open_target(config, split, fasta, cache_dir)
        state = restore_state(run, mesh)
    except BaseException:
        run.close()
        raise
    run.close()

    from jaxseq.loader import count_eval_windows

    window_len = config.data.window_len
    n_windows = count_eval_windows(target.genome.as_mapping(), target.intervals, window_len=window_len)
    example_ids = choose_examples(n_windows, examples, seed)
    model = train.create_model(config)
    variables = _variables(state)
    stochastic = mode == "stochastic"
    hparams = eval_hparams(config, run.step) if stochastic else {}
    base_key = jax.random.key(seed)
    passes = []
    for r in range(repeats):
        passes.append(_run_pass(model, variables, target, config, mesh, stochastic=stochastic, hparams=hparams,
                                key=jax.random.fold_in(base_key, r), batch_size=batch_size,
                                example_ids=example_ids if r == 0 else (), progress=progress))
    mean_sums = {k: sum(p.sums[k] for p in passes) / repeats for k in passes[0].sums}
    report = {
        "run_dir": str(run.run_dir), "split": target.name, "mode": mode, "step": run.step,
        "fasta": str(target.fasta), "config_source": run.config_source, "window_len": window_len,
        "stride": window_len, "batch_size": batch_size, "seed": seed, "repeats": repeats,
        "n_intervals": len(target.intervals),
        **summarize_sums(mean_sums),
    }
    if stochastic:
        report["hparams"] = {**hparams, "hidden_dropout": float(config.model.hidden_dropout),
                             "schedule_step": run.step, "batch_norm": "running statistics"}
        per = [summarize_sums(p.sums) for p in passes]
        report["per_repeat"] = [{"accuracy": m["accuracy"], "loss": m["loss"]} for m in per]
        report["spread"] = {key: _spread([m[key] for m in per]) for key in ("accuracy", "loss", "bits_per_base")}
    report["examples"] = [{"window": e["window"], "record": e["record"], "start": e["start"],
                           "text": format_example(e, window_len)} for e in passes[0].examples]
    if write and parallel.is_main_process():
        write_report(report, run.run_dir)
    return report


def _spread(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max())}


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
                    seed: int = 0, devices: str | int | None = None, progress: bool = False) -> dict[str, np.ndarray]:
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

    Returns:
      record name -> float32 ``(length,)``: wrong predictions / times scored; NaN where never scored
      (N bases, records shorter than a window).

    Raises:
      EvaluateError, CheckpointError, GenomeError, ...: as :func:`evaluate`, before compute.
    """
    from tqdm import tqdm

    from jaxseq.genome import Genome, default_fasta
    from jaxseq.loader import count_eval_windows
    from jaxseq.splits import Interval

    if mode not in MODES:
        raise EvaluateError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    if jax.process_count() > 1:
        raise EvaluateError("per-base errors run in a single process")
    run = open_run(run_dir, step)
    try:
        config = run.config
        window_len = config.data.window_len
        stride = int(stride) if stride else max(1, window_len // 4)
        if not 1 <= stride <= window_len:
            raise EvaluateError(f"stride must be in [1, window_len={window_len}], got {stride}")
        mesh = parallel.create_mesh(devices or config.train.devices)
        batch_size = 2 * config.train.batch_size
        parallel.check_batch_size(batch_size, mesh, name="evaluation batch (2 x train.batch_size)")
        fasta = Path(fasta) if fasta else (Path(config.data.fasta) if config.data.fasta else default_fasta())
        genome = Genome.open(fasta, cache_dir=cache_dir or config.data.cache_dir or None)
        intervals = []
        for name in genome.names:
            n = genome.lengths[name]
            if n >= window_len:
                intervals.append(Interval(name, 0, n))
                if (n - window_len) % stride:
                    intervals.append(Interval(name, n - window_len, n))
        if not intervals:
            raise EvaluateError(f"{fasta}: no record is at least window_len={window_len} bases long")
        state = restore_state(run, mesh)
    except BaseException:
        run.close()
        raise
    run.close()

    target = Target(fasta_split_name(fasta), genome, intervals, fasta)
    model = train.create_model(config)
    variables = _variables(state)
    stochastic = mode == "stochastic"
    hparams = {k: jnp.float32(v) for k, v in (eval_hparams(config, run.step) if stochastic else {}).items()}
    key = jax.random.key(seed)
    coverage = -(-window_len // stride) + 1
    dtype = np.uint16 if coverage < np.iinfo(np.uint16).max else np.uint32
    wrong = {n: np.zeros(genome.lengths[n], dtype) for n in genome.names}
    scored = {n: np.zeros(genome.lengths[n], dtype) for n in genome.names}

    def add(batch, predicted):
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

    total = count_eval_windows(genome.as_mapping(), intervals, window_len=window_len, stride=stride)
    bar = tqdm(total=-(-total // batch_size), desc="per-base errors", unit="batch", disable=not progress,
               dynamic_ncols=True, leave=False)
    pending = None  # one batch in flight: the host adds the previous batch while the device computes
    for index, batch in enumerate(_batches(target, window_len, batch_size, stride=stride, with_soft_mask=False)):
        device_batch = _device_batch(batch, mesh, soft_mask=False)
        predicted = _predict_tokens(variables, device_batch, key, index, hparams, model=model, stochastic=stochastic)
        if pending is not None:
            add(pending[0], _local_rows(pending[1]))
        pending = (batch, predicted)
        bar.update(1)
    if pending is not None:
        add(pending[0], _local_rows(pending[1]))
    bar.close()
    out = {}
    for name in genome.names:
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = wrong[name].astype(np.float32) / scored[name].astype(np.float32)
        rate[scored[name] == 0] = np.nan
        out[name] = rate
    return out


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
        report = evaluate(args.run_dir, split=args.split, fasta=args.fasta, step=args.step, mode=args.mode,
                          seed=args.seed, repeats=args.repeats, examples=args.examples, devices=args.devices,
                          cache_dir=args.cache_dir, write=not args.no_write, progress=True)
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
