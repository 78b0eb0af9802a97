"""The step: train state, the pure train step, and the jitted functions built once.

The data a run trains on (:func:`open_data`, :func:`create_train_loader`) and everything the step
needs. The step functions are pure functions of their arguments. :func:`build` makes the jitted set a run (and
every benchmark in ``experiments/``) uses, so the jit options live in one place. Scheduled values
(learning rate, latent noise, input dropout) are functions of the traced step: a new value never
recompiles.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from jaxseq import layers, losses, models, optim, parallel
from jaxseq.config import Config


class TrainState(train_state.TrainState):
    """Params, optimiser state and ``step`` (batches trained, including skipped ones), plus batch norm statistics."""

    batch_stats: Any = None


# ----------------------------------------------------------------------------------------------
# Data


@dataclasses.dataclass
class Data:
    """The opened genome and its splits."""

    genome: Any
    splits: dict
    fasta: Path


def open_data(config: Config) -> Data:
    """Opens the genome (building its token cache once) and computes leak-free splits.

    With ``data.dedup`` other than ``none``, the stretches covered by canonical k-mers (``data.dedup_k``)
    shared across the train/eval boundary are then cut out of train (``drop_train``) or valid and test
    (``drop_eval``), so :func:`jaxseq.shared_kmers.audit_splits` of the result finds nothing shared.

    Raises:
      GenomeError, SplitError, RegionError: bad FASTA, BED or alias file, or splits that cannot hold
        a window (also after deduplication); before any compute.
    """
    from jaxseq import shared_kmers
    from jaxseq.genome import Genome, default_fasta
    from jaxseq.splits import SplitError, check_splits, split_genome

    d = config.data
    fasta = Path(d.fasta) if d.fasta else default_fasta()
    genome = Genome.open(fasta, cache_dir=d.cache_dir or None)
    splits = split_genome(genome, d)
    if d.dedup != "none":
        shared = shared_kmers.shared_intervals(genome.as_mapping(), splits, d.dedup_k)
        splits = shared_kmers.dedup_splits(splits, shared, d.dedup)
        try:
            check_splits(splits, d.window_len)
        except SplitError as err:
            raise SplitError(f"after data.dedup={d.dedup} (k={d.dedup_k}): {err}") from None
    return Data(genome=genome, splits=splits, fasta=fasta)


def create_train_loader(config: Config, data: Data):
    """The training batch stream of this process (its rows of each global batch)."""
    from jaxseq.loader import TrainLoader

    d = config.data
    return TrainLoader(data.genome.as_mapping(), data.splits["train"], window_len=d.window_len,
                       batch_size=config.train.batch_size, seed=config.train.seed, augment=tuple(d.augment),
                       max_n_fraction=d.max_n_fraction, stride=d.stride or None, prefetch=d.prefetch,
                       process_index=jax.process_index(), process_count=jax.process_count())


# ----------------------------------------------------------------------------------------------
# Model and state


def create_model(config: Config):
    """The Flax module named by ``config.model.name``, with the config's fields."""
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in dataclasses.asdict(config.model).items()}
    name = fields.pop("name")
    return models.create_model(name, config.data.window_len, dtype=config.train.compute_dtype, **fields)


def _init(model, window_len: int, rng: jax.Array) -> dict:
    variables = model.init({"params": rng}, jnp.zeros((1, window_len), jnp.int8), train=False)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def init_variables(config: Config, seed: int) -> dict:
    """Freshly initialised variables of the config's model, exactly as training with ``train.seed=seed`` starts.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` (float32 arrays on the default device).
    """
    rng = jax.random.fold_in(jax.random.key(seed), 0)
    return jax.jit(functools.partial(_init, create_model(config), config.data.window_len))(rng)


def create_train_state(config: Config, mesh=None) -> TrainState:
    """Initialises parameters from ``train.seed`` and the optimiser, replicated over ``mesh``.

    Args:
      config: the run config.
      mesh: a device mesh (from :mod:`jaxseq.parallel`); None for the default device.

    Returns:
      A :class:`TrainState` with ``step == 0``.
    """
    model = create_model(config)
    tx = optim.create_optimizer(config.optim, config.train.num_steps)

    def init(rng):
        variables = _init(model, config.data.window_len, rng)
        return TrainState.create(apply_fn=model.apply, tx=tx, **variables)

    rng = jax.random.fold_in(jax.random.key(config.train.seed), 0)
    out_shardings = parallel.replicated(mesh) if mesh is not None else None
    return jax.jit(init, out_shardings=out_shardings)(rng)


def create_hparam_schedules(config: Config) -> dict[str, Callable]:
    """Schedules of the hyperparameters changed during training (latent noise, input dropout)."""
    return optim.create_hparam_schedules(config.model, config.train.num_steps)


def _loss_fn(state: TrainState, batch, rng, hparams, neighbour_loss_weight: float, objective: str = "ce"):
    dropout_rng, noise_rng = jax.random.split(layers.unrolled_threefry(jax.random.fold_in(rng, state.step)))

    def loss_fn(params):
        (logits, latent), updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, batch["tokens"],
            train=True, deterministic=False, hparams=hparams, rngs={"dropout": dropout_rng, "noise": noise_rng},
            mutable=["batch_stats"])
        loss = losses.reconstruction(logits, batch, latent, neighbour_loss_weight, objective)
        return loss, (logits, updates)

    return loss_fn


def train_step(state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array, hparams: Mapping[str, jax.Array],
               neighbour_loss_weight: float = 0.0, objective: str = "ce") -> tuple[TrainState, dict]:
    """One optimisation step on one batch.

    A step whose loss or gradients are not finite changes nothing but the step counter, and is counted
    in the metrics (``nonfinite_loss``/``nonfinite_grads``, ``first_bad_step``) so the host can stop or
    skip without a sync per step. The gradient check is one ``isfinite`` of the global gradient norm:
    a NaN or inf anywhere makes it non-finite, and so does a norm beyond float32 (gradients above
    ~1e19), the kind whose update could overflow the parameters. Deciding before the update (rather
    than checking the updated parameters, a second pass over the state) lets XLA fuse the skip into
    the optimiser's elementwise update.

    Args:
      state: the train state.
      batch: ``tokens`` int8 ``(B, L)``, ``weights`` f32 ``(B,)``.
      rng: base key; folded with ``state.step`` so each step draws fresh, reproducible noise.
      hparams: ``input_dropout`` and ``latent_noise_std`` f32 scalars (traced: changing them never recompiles).
      neighbour_loss_weight: weight of the neighbour loss (static).
      objective: ``model.objective`` (static): ``ce`` or the prototype's ``bce_softmax``.

    Returns:
      ``(new_state, metrics)``: metric sums (``loss_sum``, ``correct``, ``count``, ``confusion`` (4, 4)).
    """
    loss_fn = _loss_fn(state, batch, rng, hparams, neighbour_loss_weight, objective)
    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
    loss_ok = jnp.isfinite(loss)
    grads_ok = jnp.isfinite(optax.tree.norm(grads))
    ok = loss_ok & grads_ok
    skipped = state.replace(step=state.step + 1)
    new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, skipped)
    sums = losses.metric_sums(logits, batch, loss)
    metrics = {k: jnp.where(ok, v, jnp.zeros_like(v)) for k, v in sums.items()}
    metrics["nonfinite_loss"] = (~loss_ok).astype(jnp.float32)
    metrics["nonfinite_grads"] = (loss_ok & ~grads_ok).astype(jnp.float32)
    metrics["first_bad_step"] = jnp.where(ok, jnp.iinfo(jnp.int32).max, state.step).astype(jnp.int32)
    return new_state, metrics


def train_steps(state: TrainState, batches: Mapping[str, jax.Array], rng: jax.Array, active: jax.Array | None = None,
                *, hparam_schedules: Mapping[str, Callable], neighbour_loss_weight: float = 0.0,
                objective: str = "ce") -> tuple[TrainState, dict]:
    """K train steps in one call (a ``lax.scan``), so per-call dispatch is amortised.

    Always a scan, whatever K: compile time does not grow with K. On CPU the convolutions are the
    hand-written kernels (``model.conv_impl: auto``), which run as fast inside the scan as unrolled
    (aemd at K=4 and 10, single layer at K=4 and 10: equal within noise; experiments/RESULTS.md,
    "Scan or unroll"). flax's own convolutions on CPU are the exception (their gradients are slow in a
    while loop, jax-ml/jax#12868), which is why ``auto`` never picks them there.

    A call shorter than K (the training loop stops at every log, evaluation or save) keeps the shape
    ``(K, ...)``: its batches are padded and ``active`` marks the real ones, so a run compiles at most two
    programs (with and without ``active``) instead of one per distinct call length.

    Args:
      state: the train state.
      batches: ``tokens`` int8 ``(K, B, L)``, ``weights`` f32 ``(K, B)``: K steps' batches.
      rng: base key.
      active: optional bool ``(K,)``: steps marked False are skipped (state, step counter and metrics
        unchanged; their batches are never read).
      hparam_schedules: step -> value functions (optax schedules), evaluated on the traced step.
      neighbour_loss_weight, objective: static, see :func:`train_step`.

    Returns:
      ``(state, metrics)`` with metrics summed over the K steps (``first_bad_step``: the minimum).
    """
    def body(state, batch):
        hparams = {name: jnp.asarray(fn(state.step), jnp.float32) for name, fn in hparam_schedules.items()}
        return train_step(state, batch, rng, hparams, neighbour_loss_weight, objective)

    def body_if_active(state, inputs):
        batch, on = inputs
        shapes = jax.eval_shape(body, state, batch)[1]
        nothing = {k: jnp.full(v.shape, jnp.iinfo(jnp.int32).max if k == "first_bad_step" else 0, v.dtype)
                   for k, v in shapes.items()}
        return jax.lax.cond(on, body, lambda s, b: (s, nothing), state, batch)

    if active is None:
        state, stacked = jax.lax.scan(body, state, batches)
    else:
        state, stacked = jax.lax.scan(body_if_active, state, (batches, active))
    metrics = {k: (v.min(0) if k == "first_bad_step" else v.sum(0)) for k, v in stacked.items()}
    return state, metrics


def compute_grads(state: TrainState, batch, rng, hparams, neighbour_loss_weight: float = 0.0, objective: str = "ce"):
    """Gradients of one batch's loss (for histograms); the same loss and randomness as :func:`train_step`."""
    loss_fn = _loss_fn(state, batch, rng, hparams, neighbour_loss_weight, objective)
    return jax.grad(lambda p: loss_fn(p)[0])(state.params)


def add_metrics(a: dict | None, b: dict) -> dict:
    """Accumulates metric sums (``first_bad_step`` by minimum)."""
    if a is None:
        return b
    return {k: (jnp.minimum(a[k], b[k]) if k == "first_bad_step" else a[k] + b[k]) for k in b}


def stack_batches(batches: list[dict], size: int | None = None) -> dict:
    """Host batches stacked for :func:`train_steps`: ``tokens`` int8 ``(K, B, L)``, ``weights`` f32 ``(K, B)``.

    With ``size`` > ``len(batches)``, padded with zero batches to ``K = size`` (for a call with ``active``).
    """
    pad = [{k: np.zeros_like(v) for k, v in batches[0].items()}] * ((size or 0) - len(batches))
    return {k: np.stack([b[k] for b in batches + pad]) for k in ("tokens", "weights")}


@dataclasses.dataclass(frozen=True)
class Steps:
    """The jitted functions of a run, built once by :func:`build`.

    Attributes:
      train: ``(state, batches, rng, active=None) -> (state, metrics)``: :func:`train_steps`, the state donated.
      grads: ``(state, batch, rng, hparams) -> grads``: :func:`compute_grads`.
      hparam_schedules: name -> step -> value (``input_dropout``, ``latent_noise_std``).
      learning_rate: step -> learning rate.
    """

    train: Callable
    grads: Callable
    hparam_schedules: Mapping[str, Callable]
    learning_rate: Callable

    def hparams(self, step: int) -> dict[str, float]:
        """Every scheduled value at ``step`` (``learning_rate`` included), as Python floats."""
        return {"learning_rate": float(self.learning_rate(step)),
                **{name: float(fn(step)) for name, fn in self.hparam_schedules.items()}}


def build(config: Config) -> Steps:
    """The jitted train and gradient functions of ``config`` (compiled at their first call)."""
    schedules = create_hparam_schedules(config)
    loss = dict(neighbour_loss_weight=config.model.neighbour_loss_weight, objective=config.model.objective)
    train = jax.jit(functools.partial(train_steps, hparam_schedules=schedules, **loss), donate_argnums=(0,))
    grads = jax.jit(functools.partial(compute_grads, **loss))
    return Steps(train=train, grads=grads, hparam_schedules=schedules,
                 learning_rate=optim.create_learning_rate_schedule(config.optim, config.train.num_steps))
