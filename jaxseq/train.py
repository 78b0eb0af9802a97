"""The main job: ``python -m jaxseq.train [--config FILE.yaml] [--workdir DIR] [--set key=value ...] [--resume]``.

Data flows FASTA -> token cache -> leak-free splits -> numpy loader -> sharded device arrays ->
a jitted scan of train steps (one-hot inside the model, masked cross-entropy) -> metric sums read
on the host once per logging interval -> tqdm, tensorboardX, orbax.

Interruptions and faults (exit codes in :func:`main`; tested in tests/test_faults.py):

* Bad input (config, FASTA, splits, no usable window, nothing to resume, a model or data change on
  resume) is one line ``error: ...`` on stderr and exit code 2, before the run directory is created
  or changed.
* SIGTERM/SIGINT: the current call finishes, a checkpoint of that step is committed, TensorBoard is
  closed, exit code 143/130. A second signal aborts at once; committed checkpoints stay intact.
* SIGKILL, OOM, power loss: rerunning (``--resume``, or the same command) continues from the last
  committed checkpoint; orbax writes a save into ``<step>.orbax-checkpoint-tmp`` and renames it when
  complete, so half-written saves are never resumed from and are deleted by the next run. At most
  ``train.checkpoint_every`` steps are lost.
* A non-finite loss or gradient is never applied nor saved (checked before every save): the run
  stops naming the step and quantity, or skips up to ``train.skip_nonfinite`` (``--skip-nonfinite``)
  such batches.
* A failed save (disk full, unwritable directory) stops with the step that failed and the latest
  committed checkpoint, which is intact.
* One training process per run directory: ``<workdir>/.lock`` is held with ``flock`` while training,
  and a second process refuses to start. The kernel releases the lock when its holder dies (even
  by SIGKILL), so there is never a stale lock to break and no ``--force`` option.
* Resuming with changed settings: architecture keys (``config.ARCHITECTURE_KEYS``) are refused with
  the list of changes; anything else (schedules, number of steps, ...) is allowed, printed as
  ``key: old -> new`` and written to TensorBoard (``config/changes``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax.training import train_state
from tqdm import tqdm

from jaxseq import checkpoint, losses, models, optim, parallel, summary, tokens
from jaxseq import config as config_lib
from jaxseq.config import Config, ConfigError


class TrainState(train_state.TrainState):
    """Params, optimiser state and ``step`` (batches trained, including skipped ones), plus batch norm statistics."""

    batch_stats: Any = None


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient."""


class TrainingInterrupted(BaseException):
    """SIGTERM or SIGINT stopped training at a step boundary, after committing a checkpoint of that step.

    A ``BaseException`` like ``KeyboardInterrupt``: a request to stop, which ``except Exception``
    handlers (e.g. a sweep that carries on after a failed run) must not swallow.

    Attributes:
      signum: the signal received.
      step: the step training stopped at.
      exit_code: the conventional ``128 + signum`` (143 for SIGTERM, 130 for SIGINT).
    """

    def __init__(self, message: str, signum: int, step: int):
        super().__init__(message)
        self.signum = signum
        self.step = step
        self.exit_code = 128 + signum


class RunDirectoryError(OSError):
    """The run directory (or its TensorBoard log) cannot be written."""


# ----------------------------------------------------------------------------------------------
# Model and state


def create_model(config: Config):
    """The Flax module named by ``config.model.name``, with the config's fields."""
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in dataclasses.asdict(config.model).items()}
    name = fields.pop("name")
    return models.create_model(name, config.data.window_len, dtype=config.train.compute_dtype, **fields)


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
        dummy = jnp.zeros((1, config.data.window_len), jnp.int8)
        variables = model.init({"params": rng}, dummy, train=False)
        return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                                 batch_stats=variables.get("batch_stats", {}))

    rng = jax.random.fold_in(jax.random.key(config.train.seed), 0)
    out_shardings = parallel.replicated(mesh) if mesh is not None else None
    return jax.jit(init, out_shardings=out_shardings)(rng)


def create_hparam_schedules(config: Config) -> dict[str, Callable]:
    """Schedules of the hyperparameters changed during training (latent noise, input dropout)."""
    return optim.create_hparam_schedules(config.model, config.train.num_steps)


# ----------------------------------------------------------------------------------------------
# The step


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def train_step(state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array, hparams: Mapping[str, jax.Array],
               neighbour_loss_weight: float = 0.0) -> tuple[TrainState, dict]:
    """One optimisation step on one batch.

    A step whose loss, gradients or updated parameters are not finite changes nothing but the step
    counter, and is counted in the metrics (``nonfinite_loss``/``nonfinite_grads``, ``first_bad_step``)
    so the host can stop or skip without a sync per step.

    Args:
      state: the train state.
      batch: ``tokens`` int8 ``(B, L)``, ``weights`` f32 ``(B,)``.
      rng: base key; folded with ``state.step`` so each step draws fresh, reproducible noise.
      hparams: ``input_dropout`` and ``latent_noise_std`` f32 scalars (traced: changing them never recompiles).
      neighbour_loss_weight: weight of the neighbour loss (static).

    Returns:
      ``(new_state, metrics)``: metric sums (``loss_sum``, ``correct``, ``count``, ``confusion`` (4, 4)).
    """
    rng = jax.random.fold_in(rng, state.step)
    dropout_rng, noise_rng = jax.random.split(rng)

    def loss_fn(params):
        (logits, latent), updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, batch["tokens"],
            train=True, deterministic=False, hparams=hparams, rngs={"dropout": dropout_rng, "noise": noise_rng},
            mutable=["batch_stats"])
        loss = losses.reconstruction(logits, batch, latent, neighbour_loss_weight)
        return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
    loss_ok = jnp.isfinite(loss)
    grads_ok = _all_finite(grads) & _all_finite(new_state.params)
    ok = loss_ok & grads_ok
    skipped = state.replace(step=state.step + 1)
    new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, skipped)
    sums = losses.metric_sums(logits, batch, loss)
    metrics = {k: jnp.where(ok, v, jnp.zeros_like(v)) for k, v in sums.items()}
    metrics["nonfinite_loss"] = (~loss_ok).astype(jnp.float32)
    metrics["nonfinite_grads"] = (loss_ok & ~grads_ok).astype(jnp.float32)
    metrics["first_bad_step"] = jnp.where(ok, jnp.iinfo(jnp.int32).max, state.step).astype(jnp.int32)
    return new_state, metrics


#: Up to this many steps per call are unrolled in Python instead of scanned (see :func:`train_steps`).
MAX_UNROLLED_STEPS = 4


def train_steps(state: TrainState, batches: Mapping[str, jax.Array], rng: jax.Array, *,
                hparam_schedules: Mapping[str, Callable], neighbour_loss_weight: float = 0.0) -> tuple[TrainState, dict]:
    """Several train steps in one call, so per-call dispatch is amortised.

    Up to :data:`MAX_UNROLLED_STEPS` steps are unrolled; more are a ``lax.scan``. XLA:CPU runs
    convolution gradients inside a while loop many times slower than outside one (jax-ml/jax#12868:
    the aemd model takes ~380 ms per step in a scan, ~17 ms unrolled), while small models need long
    sequences of steps per call to hide dispatch, which only a scan compiles quickly.

    Args:
      state: the train state.
      batches: ``tokens`` int8 ``(K, B, L)``, ``weights`` f32 ``(K, B)``: K steps' batches.
      rng: base key.
      hparam_schedules: step -> value functions (optax schedules), evaluated on the traced step.
      neighbour_loss_weight: static.

    Returns:
      ``(state, metrics)`` with metrics summed over the K steps (``first_bad_step``: the minimum).
    """
    def body(state, batch):
        hparams = {name: jnp.asarray(fn(state.step), jnp.float32) for name, fn in hparam_schedules.items()}
        return train_step(state, batch, rng, hparams, neighbour_loss_weight)

    num_steps = batches["tokens"].shape[0]
    if num_steps <= MAX_UNROLLED_STEPS:
        metrics = None
        for i in range(num_steps):
            state, step_metrics = body(state, jax.tree.map(lambda x: x[i], batches))
            metrics = add_metrics(metrics, step_metrics)
        return state, metrics
    state, stacked = jax.lax.scan(body, state, batches)
    metrics = {k: (v.min(0) if k == "first_bad_step" else v.sum(0)) for k, v in stacked.items()}
    return state, metrics


def eval_step(state: TrainState, batch: Mapping[str, jax.Array]) -> dict:
    """Metric sums of one batch in deterministic mode (no dropout, no noise, running batch statistics)."""
    logits, _ = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, batch["tokens"],
                               train=False)
    return losses.metric_sums(logits, batch)


def predict_step(state: TrainState, batch: Mapping[str, jax.Array]) -> jax.Array:
    """Deterministic-mode probabilities f32 ``(B, L, 4)``."""
    logits, _ = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, batch["tokens"],
                               train=False)
    return jax.nn.softmax(logits, axis=-1)


def compute_grads(state: TrainState, batch, rng, hparams, neighbour_loss_weight: float = 0.0):
    """Gradients of one batch's loss (for histograms); same loss as :func:`train_step`."""
    rng = jax.random.fold_in(rng, state.step)
    dropout_rng, noise_rng = jax.random.split(rng)

    def loss_fn(params):
        (logits, latent), _ = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, batch["tokens"], train=True, hparams=hparams,
            rngs={"dropout": dropout_rng, "noise": noise_rng}, mutable=["batch_stats"])
        return losses.reconstruction(logits, batch, latent, neighbour_loss_weight)

    return jax.grad(loss_fn)(state.params)


def add_metrics(a: dict | None, b: dict) -> dict:
    """Accumulates metric sums (``first_bad_step`` by minimum)."""
    if a is None:
        return b
    return {k: (jnp.minimum(a[k], b[k]) if k == "first_bad_step" else a[k] + b[k]) for k in b}


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

    Raises:
      GenomeError, SplitError: bad FASTA or splits that cannot hold a window; before any compute.
    """
    from jaxseq.genome import Genome, default_fasta
    from jaxseq.splits import check_splits, compute_splits

    d = config.data
    fasta = Path(d.fasta) if d.fasta else default_fasta()
    genome = Genome.open(fasta, cache_dir=d.cache_dir or None)
    splits = compute_splits(genome.lengths, strategy=d.split, block_len=d.block_len,
                            proportions=tuple(d.proportions), valid_records=d.valid_records,
                            test_records=d.test_records, seed=d.split_seed)
    check_splits(splits, d.window_len)
    return Data(genome=genome, splits=splits, fasta=fasta)


def create_train_loader(config: Config, data: Data):
    """The training batch stream of this process (its rows of each global batch)."""
    from jaxseq.loader import TrainLoader

    d = config.data
    return TrainLoader(data.genome.as_mapping(), data.splits["train"], window_len=d.window_len,
                       batch_size=config.train.batch_size, seed=config.train.seed, augment=tuple(d.augment),
                       max_n_fraction=d.max_n_fraction, stride=d.stride or None, prefetch=d.prefetch,
                       process_index=jax.process_index(), process_count=jax.process_count())


def iterate_eval(config: Config, data: Data, split: str, genome=None, intervals=None,
                 max_windows: int = 0, with_soft_mask: bool = False) -> Iterator[dict]:
    """Deterministic tiling batches (this process's rows), global batch size twice the train batch."""
    from jaxseq.loader import eval_batches

    genome = genome if genome is not None else data.genome
    intervals = intervals if intervals is not None else data.splits[split]
    soft = {n: genome.soft_mask(n) for n in genome.names} if with_soft_mask else None
    batch_size = 2 * config.train.batch_size
    seen = 0
    for batch in eval_batches(genome.as_mapping(), intervals, window_len=config.data.window_len,
                              batch_size=batch_size, soft_mask=soft, process_index=jax.process_index(),
                              process_count=jax.process_count()):
        yield batch
        seen += batch_size
        if max_windows and seen >= max_windows:
            return


def evaluate_sums(eval_fn, state, batches: Iterator[dict], mesh) -> dict:
    """Sums of :func:`eval_step` metrics over batches (exact over the split: padding has weight 0)."""
    total = None
    for batch in batches:
        device_batch = parallel.shard_batch({"tokens": batch["tokens"], "weights": batch["weights"]}, mesh)
        total = add_metrics(total, eval_fn(state, device_batch))
    return parallel.fetch(total) if total is not None else None


def format_examples(predict_fn, state, batch: dict, mesh, count: int) -> str:
    """Reconstruction examples of the first ``count`` windows of a batch, as aligned text."""
    device_batch = parallel.shard_batch({"tokens": batch["tokens"], "weights": batch["weights"]}, mesh)
    probs = parallel.fetch(predict_fn(state, device_batch))  # all processes call: a gather across hosts
    texts = []
    for i in range(min(count, int((batch["weights"] > 0).sum()))):
        target = batch["tokens"][i].astype(np.int64)
        predicted = probs[i].argmax(-1)
        texts.append(f"window {i}:\n" + tokens.format_reconstruction(target, predicted, probs[i].max(-1)))
    return "\n\n".join(texts)


# ----------------------------------------------------------------------------------------------
# The loop


def _stack(batches: list[dict]) -> dict:
    return {"tokens": np.stack([b["tokens"] for b in batches]), "weights": np.stack([b["weights"] for b in batches])}


class _StopSignals:
    """SIGTERM/SIGINT during training: the first asks the loop to stop at the next step boundary (after
    a checkpoint); a second one ends the process at once with ``128 + signum``, even while the main
    thread is busy in a long XLA call (committed checkpoints are untouched: orbax renames a save into
    place only when it is complete, and a half-written one is deleted by the next run).

    Python runs signal handlers only in the main thread and only between bytecodes, and it merges
    signals that arrive before its handler runs. The C-level handler, however, writes one byte per
    signal to the wakeup fd (``signal.set_wakeup_fd``): a watcher thread reads those, so every signal
    is counted the moment it arrives. Installed only in the main thread (Python allows no other);
    the previous handlers and wakeup fd are restored on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}
        self._previous_fd = None
        self._pipe: tuple[int, int] | None = None
        self._watcher: threading.Thread | None = None

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._pipe = (read_fd, write_fd)
        self._previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for signum in self.SIGNALS:
            # A Python handler must be set for the C handler to run; the watcher does the work.
            self._previous[signum] = signal.signal(signum, lambda *_: None)
        self._watcher = threading.Thread(target=self._watch, name="jaxseq-signals", daemon=True)
        self._watcher.start()
        return self

    def _watch(self) -> None:
        read_fd = self._pipe[0]
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:  # write end closed: __exit__
                return
            for signum in data:
                if signum not in self.SIGNALS:
                    continue
                name = signal.Signals(signum).name
                if self.signum is None:
                    self.signum = signum
                    os.write(2, f"\nreceived {name}: stopping after the current step and saving a checkpoint "
                                f"(send it again to abort at once; committed checkpoints stay intact)\n".encode())
                else:
                    os.write(2, f"\nreceived {name} again: aborting now; the checkpoints committed so far are "
                                f"intact (a half-written one is ignored and deleted by the next run)\n".encode())
                    os._exit(128 + signum)

    def __exit__(self, *exc_info) -> None:
        if self._pipe is None:
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_fd if self._previous_fd is not None else -1)
        os.close(self._pipe[1])  # the watcher reads end-of-file and returns
        self._watcher.join(timeout=5)
        os.close(self._pipe[0])
        self._previous, self._pipe, self._watcher = {}, None, None


def _changed_settings(old: Config, new: Config) -> list[str]:
    """``"group.key: old -> new"`` for every setting that differs."""
    a, b = old.to_dict(), new.to_dict()
    return [f"{group}.{key}: {a[group][key]!r} -> {b[group][key]!r}"
            for group in b for key in b[group] if a.get(group, {}).get(key) != b[group][key]]


def _restore_or_init(config: Config, workdir: Path, mesh, manager, require_checkpoint: bool):
    """The latest checkpoint's state, or a fresh one.

    Returns:
      ``(state, loader_state, meta, changes)``; ``loader_state``/``meta`` are None for a fresh state,
      ``changes`` lists the settings (none of them architectural) that differ from the checkpoint's.

    Raises:
      CheckpointError: ``require_checkpoint`` and nothing to resume; ConfigError: the model changed.
    """
    step = checkpoint.latest_step(manager)
    if step is None:
        if require_checkpoint:
            raise checkpoint.CheckpointError(f"--resume: no checkpoint to resume in {checkpoint.checkpoint_dir(workdir)}")
        return create_train_state(config, mesh), None, None, []
    # Compare configs before touching arrays: the message then names the setting, not a tensor shape.
    saved = config_lib.from_dict(checkpoint.read_meta(manager, step)["config"])
    changed = config_lib.architecture_changes(saved, config)
    if changed:
        raise ConfigError(f"cannot resume {workdir} (checkpoint step {step}): settings that define the model "
                          f"changed: {'; '.join(changed)}; undo them or train into a new --workdir")
    state, loader_state, meta = checkpoint.restore(manager, step, create_train_state(config, mesh))
    return state, loader_state, meta, _changed_settings(saved, config)


def _latest_checkpoint_text(workdir: Path) -> str:
    try:
        steps = checkpoint.committed_steps(workdir)
    except Exception:  # reporting must not hide the error being reported
        return f"see {checkpoint.checkpoint_dir(workdir)} for the committed checkpoints"
    if not steps:
        return f"no checkpoint is committed in {checkpoint.checkpoint_dir(workdir)}"
    return (f"the latest committed checkpoint is step {steps[-1]} in {checkpoint.checkpoint_dir(workdir)} "
            f"(a rerun with --resume continues from it)")


def _close_quietly(manager) -> None:
    # Saves were already waited for (and their errors reported); closing must not mask an error.
    with contextlib.suppress(Exception):
        manager.close()


def train_and_evaluate(config: Config, workdir: str | Path, *, require_checkpoint: bool = False) -> dict:
    """Trains (resuming from the run directory's latest checkpoint, if any), evaluates, saves.

    Faults (module docstring, "Interruptions and faults"):

    * config, FASTA, splits and loader are checked before the run directory is created or touched:
      bad input never leaves a half-made run directory or changes an existing one;
    * the run directory is locked (``.lock``, ``flock``) against a second training process;
    * SIGTERM/SIGINT stop training at the next step boundary: a checkpoint of that step is committed,
      TensorBoard closed, and :class:`TrainingInterrupted` raised; a second signal terminates at once;
    * a step with a non-finite loss or gradient is never applied; the check runs at every log point
      and before every save, so no unchecked state is saved; beyond ``train.skip_nonfinite`` such
      steps, :class:`NonFiniteError` names the step and the quantity;
    * a failed save (disk full, ...) raises ``CheckpointError`` naming the step and the latest
      committed checkpoint, which is intact.

    Args:
      config: a validated config.
      workdir: the run directory: ``config.yaml``, ``checkpoints/``, ``tensorboard/``, ``final_metrics.json``.
      require_checkpoint: fail if there is nothing to resume (``--resume``).

    Returns:
      Final metrics: ``step``, ``valid_loss``, ``valid_accuracy``, ``test_loss``, ``test_accuracy``,
      ``windows_per_sec``.

    Raises:
      ConfigError, GenomeError, SplitError, LoaderError, ParallelError: bad input (nothing written).
      CheckpointError: nothing to resume, run directory in use or unwritable, or a save failed.
      NonFiniteError, TrainingInterrupted, RunDirectoryError: see above.
    """
    workdir = Path(workdir).absolute()
    t = config.train
    mesh = parallel.create_mesh(t.devices)
    parallel.check_batch_size(t.batch_size, mesh)
    main = parallel.is_main_process()
    from jaxseq.loader import LoaderError
    from jaxseq.splits import SplitError

    try:
        data = open_data(config)
        # The loader rejects data with no usable window (all N, ...): built before touching the run directory.
        loader = create_train_loader(config, data)
    except (SplitError, LoaderError) as err:  # name the file, as genome errors do
        raise type(err)(f"{config.data.fasta or 'the bundled lambda phage genome'}: {err}") from None
    if require_checkpoint and not checkpoint.committed_steps(workdir):
        loader.close()
        raise checkpoint.CheckpointError(f"--resume: no checkpoint to resume in {checkpoint.checkpoint_dir(workdir)}")

    with contextlib.ExitStack() as cleanup:  # unwinds in reverse: writer, manager, lock, signals, loader
        cleanup.callback(loader.close)
        stop = cleanup.enter_context(_StopSignals())
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunDirectoryError(f"cannot create run directory {workdir}: "
                                    f"{checkpoint.describe_os_error(err)}") from None
        if main:
            cleanup.enter_context(checkpoint.lock_run_directory(workdir))
        manager = checkpoint.create_manager(workdir, t.max_to_keep)
        cleanup.callback(_close_quietly, manager)
        state, loader_state, meta, changes = _restore_or_init(config, workdir, mesh, manager, require_checkpoint)
        start_step = int(state.step)
        saved_step = start_step if meta is not None else None  # newest checkpoint saved or being saved
        skipped_total = int((meta or {}).get("skipped_nonfinite", 0))
        if loader_state is not None:
            try:
                loader.load_state_dict(loader_state)
            except ValueError as err:  # before anything is written: the run directory stays as it was
                raise ConfigError(f"cannot resume {workdir} (checkpoint step {start_step}): its training data "
                                  f"differs ({'; '.join(changes) or 'same settings: the FASTA content changed'}): "
                                  f"{err}") from None
        if main:
            config_lib.save_config(config, workdir / "config.yaml")
        writer = summary.create_writer(workdir, enabled=main)
        cleanup.callback(summary.close_writer, writer)
        if start_step == 0 and main:
            summary.write_text(writer, 0, "config", json.dumps(config.to_dict(), indent=2))
        if changes and main:
            print(f"resuming {workdir} at step {start_step} with changed settings: {'; '.join(changes)}", flush=True)
            summary.write_text(writer, start_step, "config/changes", "\n".join(changes))

        schedules = create_hparam_schedules(config)
        lr_schedule = optim.create_learning_rate_schedule(config.optim, t.num_steps)
        nlw = config.model.neighbour_loss_weight
        train_fn = jax.jit(functools.partial(train_steps, hparam_schedules=schedules, neighbour_loss_weight=nlw),
                           donate_argnums=(0,))
        eval_fn = jax.jit(eval_step)
        predict_fn = jax.jit(predict_step)
        grads_fn = jax.jit(functools.partial(compute_grads, neighbour_loss_weight=nlw))
        rng = jax.random.fold_in(jax.random.key(t.seed), 1)

        def due(step: int, every: int) -> bool:
            return every > 0 and step % every == 0

        def check_writer() -> None:
            # Agreed across processes: one process raising alone would leave the others in a collective.
            if parallel.any_process(main and not summary.writer_alive(writer)):
                raise RunDirectoryError(f"the TensorBoard writer for {workdir / 'tensorboard'} stopped "
                                        f"(disk full or directory unwritable?)")

        bad = None  # non-finite step counters since the last check, still on device

        def check_finite() -> None:
            """Counts bad steps since the last check; raises beyond train.skip_nonfinite."""
            nonlocal bad, skipped_total
            if bad is None:
                return
            sums, bad = jax.device_get(bad), None
            count = int(sums["nonfinite_loss"] + sums["nonfinite_grads"])
            if not count:
                return
            skipped_total += count
            what = "loss" if sums["nonfinite_loss"] else "gradients or updated parameters"
            first = int(sums["first_bad_step"]) + 1
            if skipped_total > t.skip_nonfinite:
                raise NonFiniteError(
                    f"non-finite {what} at step {first} ({skipped_total} bad batch(es), "
                    f"train.skip_nonfinite={t.skip_nonfinite}); the update was not applied and no checkpoint "
                    f"of it is saved (--skip-nonfinite N skips up to N such batches)")
            if main:
                bar.write(f"step {first}: skipped {count} batch(es) with non-finite {what} "
                          f"({skipped_total} of at most {t.skip_nonfinite})")

        def save(step: int) -> None:
            nonlocal saved_step
            check_finite()  # never save a state whose steps were not checked
            checkpoint.save(manager, step, state, loader.state_dict(),
                            {"config": config.to_dict(), "step": step, "time": time.time(),
                             "skipped_nonfinite": skipped_total})
            saved_step = step

        step = start_step
        pending = None  # metric sums since the last log, still on device
        log_time, log_step = time.perf_counter(), step
        windows_per_sec = 0.0
        # Not on a terminal (logs, CI) a line per refresh floods the file: refresh every 30 s there.
        bar = tqdm(total=t.num_steps, initial=step, disable=not main, desc="train", unit="step", dynamic_ncols=True,
                   mininterval=0.1 if sys.stderr.isatty() else 30.0)
        try:
            while step < t.num_steps and not parallel.any_process(stop.signum is not None):
                events = [e for e in (t.log_every, t.eval_every, t.checkpoint_every, t.histogram_every) if e > 0]
                next_event = min([(step // e + 1) * e for e in events] + [t.num_steps])
                k = min(t.steps_per_call, next_event - step)
                host = _stack([next(loader) for _ in range(k)])
                batches = parallel.shard_batch(host, mesh, leading_axes=1)
                state, metrics = train_fn(state, batches, rng)
                step += k
                pending = add_metrics(pending, metrics)
                bad = add_metrics(bad, {key: metrics[key] for key in ("nonfinite_loss", "nonfinite_grads",
                                                                       "first_bad_step")})
                bar.update(k)

                if due(step, t.log_every) or step == t.num_steps:
                    check_finite()
                    check_writer()
                    sums = jax.device_get(pending)
                    pending = None
                    now = time.perf_counter()
                    windows_per_sec = (step - log_step) * t.batch_size / max(now - log_time, 1e-9)
                    log_time, log_step = now, step
                    means = summary.metrics_from_sums(sums)
                    hp = {"hparams/learning_rate": float(lr_schedule(step)),
                          **{f"hparams/{name}": float(fn(step)) for name, fn in schedules.items()}}
                    summary.write_scalars(writer, step, {"train/loss": means["loss"], "train/accuracy": means["accuracy"],
                                                         "perf/windows_per_sec": windows_per_sec, **hp})
                    bar.set_postfix(loss=f"{means['loss']:.4f}", acc=f"{means['accuracy']:.4f}",
                                    win_s=f"{windows_per_sec:,.0f}")

                if due(step, t.histogram_every):
                    check_writer()
                    hparams = {name: jnp.float32(fn(step)) for name, fn in schedules.items()}
                    one = parallel.shard_batch({"tokens": host["tokens"][-1], "weights": host["weights"][-1]}, mesh)
                    # grads_fn spans every process's devices: all processes run it, only process 0 writes.
                    grads = parallel.fetch(grads_fn(state, one, rng, hparams))
                    if main:
                        summary.write_histograms(writer, step, "params", jax.device_get(state.params))
                        summary.write_histograms(writer, step, "grads", grads)

                if due(step, t.eval_every) or step == t.num_steps:
                    check_writer()
                    sums = evaluate_sums(eval_fn, state, iterate_eval(config, data, "valid", max_windows=t.eval_max_windows),
                                         mesh)
                    means = summary.metrics_from_sums(sums)
                    summary.write_scalars(writer, step, {"eval/loss": means["loss"], "eval/accuracy": means["accuracy"]})
                    if t.examples:
                        first = next(iterate_eval(config, data, "valid"))
                        text = format_examples(predict_fn, state, first, mesh, t.examples)
                        summary.write_text(writer, step, "eval/examples", text)
                        if main:
                            bar.write(f"step {step}: valid loss {means['loss']:.4f}, accuracy {means['accuracy']:.4f}\n{text}")
                    elif main:
                        bar.write(f"step {step}: valid loss {means['loss']:.4f}, accuracy {means['accuracy']:.4f}")

                if due(step, t.checkpoint_every) or step == t.num_steps:
                    save(step)
            if stop.signum is not None and step > 0 and saved_step != step:
                save(step)  # the step the signal interrupted, so no progress is lost
            checkpoint.wait(manager)
            check_finite()
        except BaseException as err:
            # Commit the save in flight (it passed the checks, so it is a good one), then report.
            with contextlib.suppress(Exception):
                checkpoint.wait(manager)
            if isinstance(err, (NonFiniteError, checkpoint.CheckpointError, RunDirectoryError)):
                raise type(err)(f"{err}; {_latest_checkpoint_text(workdir)}") from err
            raise
        finally:
            bar.close()

        def interrupted(where: str) -> TrainingInterrupted:
            name = signal.Signals(stop.signum).name
            return TrainingInterrupted(f"stopped by {name} {where}; resume with: python -m jaxseq.train "
                                       f"--workdir {workdir}{' --resume' if step > 0 else ''}", stop.signum, step)

        if stop.signum is not None:
            saved = (f"checkpoint step {step} is committed in {checkpoint.checkpoint_dir(workdir)}" if step > 0
                     else "nothing was trained, so nothing was saved")
            raise interrupted(f"at step {step}: {saved}")

        def unless_stopped(batches: Iterator[dict]) -> Iterator[dict]:
            for batch in batches:
                if stop.signum is not None:
                    raise interrupted(f"during the final evaluation (checkpoint step {step} is committed; "
                                      f"a rerun only evaluates)")
                yield batch

        valid = summary.metrics_from_sums(evaluate_sums(eval_fn, state, unless_stopped(iterate_eval(config, data, "valid")),
                                                        mesh))
        test_sums = evaluate_sums(eval_fn, state, unless_stopped(iterate_eval(config, data, "test")), mesh)
        test = summary.metrics_from_sums(test_sums)
        result = {"step": step, "valid_loss": valid["loss"], "valid_accuracy": valid["accuracy"],
                  "test_loss": test["loss"], "test_accuracy": test["accuracy"], "test_bases": float(test_sums["count"]),
                  "windows_per_sec": windows_per_sec}
        check_writer()  # a collective: every process calls it
        if main:
            summary.write_hparams(writer, config.to_dict(), {"test_accuracy": test["accuracy"], "test_loss": test["loss"]})
            # Atomic: a process killed here leaves the old file or none, never half of one.
            final = workdir / "final_metrics.json"
            final.with_suffix(".json.tmp").write_text(json.dumps(result, indent=2))
            final.with_suffix(".json.tmp").replace(final)
        return result


# ----------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jaxseq.train", description=__doc__.splitlines()[0],
        epilog="Exit codes: 0 done; 2 error (one line on stderr); 143/130 stopped by SIGTERM/SIGINT after saving a "
               "checkpoint (rerun with --resume). One process per --workdir (locked while training).")
    parser.add_argument("--config", help="YAML config (configs/*.yaml); default: built-in defaults, or the run "
                                         "directory's saved config when resuming")
    parser.add_argument("--workdir", help="run directory (default: runs/<timestamp>); an existing one with "
                                          "checkpoints is resumed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.num_steps=500 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="require a checkpoint in --workdir and resume from it")
    parser.add_argument("--skip-nonfinite", type=int, metavar="N",
                        help="skip up to N batches whose loss or gradients are not finite instead of stopping "
                             "at the first (same as --set train.skip_nonfinite=N)")
    parser.add_argument("--devices", help="'all' (default) or a number of local devices; same as --set train.devices=")
    parser.add_argument("--distributed", action="store_true",
                        help="join a multi-process run with jax.distributed (see README: Scaling out)")
    parser.add_argument("--coordinator", help="coordinator address host:port for --distributed")
    parser.add_argument("--num-processes", type=int, help="number of processes for --distributed")
    parser.add_argument("--process-id", type=int, help="this process's index for --distributed")
    return parser


def resolve_config(args) -> tuple[Config, Path]:
    """Config and run directory from the command line: the saved config is the base when resuming."""
    # Quoted: YAML would read "4" as an int, which train.devices (a string) rejects.
    overrides = list(args.overrides) + ([f"train.devices='{args.devices}'"] if args.devices else [])
    if getattr(args, "skip_nonfinite", None) is not None:
        overrides.append(f"train.skip_nonfinite={args.skip_nonfinite}")
    workdir = Path(args.workdir) if args.workdir else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    saved = workdir / "config.yaml"
    if args.config is None and saved.is_file():
        return config_lib.load_config(saved, overrides), workdir
    if args.resume and not saved.is_file():
        raise checkpoint.CheckpointError(f"--resume: {workdir} has no config.yaml or checkpoint to resume")
    return config_lib.load_config(args.config, overrides), workdir


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit code.

    Exit codes: 0 done; 2 an error, reported as one line ``error: ...`` on stderr (bad config or
    FASTA, nothing to resume, run directory locked or unwritable, non-finite training, failed save);
    ``128 + signum`` stopped by a signal after committing a checkpoint (143 SIGTERM, 130 SIGINT).
    A second SIGTERM/SIGINT terminates the process by that signal at once.
    """
    args = build_parser().parse_args(argv)
    try:
        if args.distributed or parallel.distributed_requested():
            parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
        config, workdir = resolve_config(args)
        result = train_and_evaluate(config, workdir, require_checkpoint=args.resume)
    except TrainingInterrupted as err:
        print(str(err), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:  # Ctrl-C before training set up its handlers: nothing to save yet
        print("error: interrupted (SIGINT) before training started; nothing was saved", file=sys.stderr)
        return 128 + signal.SIGINT
    except (ConfigError, checkpoint.CheckpointError, parallel.ParallelError, NonFiniteError, ValueError,
            OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if parallel.is_main_process():
        print(f"run directory: {workdir.absolute()}")
        print(f"held-out (test split) accuracy {result['test_accuracy']:.4f}, cross-entropy "
              f"{result['test_loss']:.4f} nats/base over {int(result['test_bases']):,} bases (step {result['step']})")
    return 0


if __name__ == "__main__":
    exit_code = main()
    if exit_code:
        # The error is reported. Background save tasks that failed with it (orbax/asyncio) would be
        # logged again at interpreter exit ("exception was never retrieved"), after the message.
        import logging

        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    sys.exit(exit_code)
