"""The main job: ``python -m jaxseq.train [--config FILE.yaml] [--workdir DIR] [--set key=value ...] [--resume]``.

Data flows FASTA -> token cache -> leak-free splits -> numpy loader -> sharded device arrays ->
a jitted scan of train steps (one-hot inside the model, masked cross-entropy) -> metric sums read
on the host once per logging interval -> tqdm, tensorboardX, orbax.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
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


# ----------------------------------------------------------------------------------------------
# Model and state


def create_model(config: Config):
    """The Flax module named by ``config.model.name``, with the config's fields."""
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in dataclasses.asdict(config.model).items()}
    name = fields.pop("name")
    return models.create_model(name, config.data.window_len, **fields)


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
            train=True, hparams=hparams, rngs={"dropout": dropout_rng, "noise": noise_rng},
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


def train_steps(state: TrainState, batches: Mapping[str, jax.Array], rng: jax.Array, *,
                hparam_schedules: Mapping[str, Callable], neighbour_loss_weight: float = 0.0) -> tuple[TrainState, dict]:
    """Several train steps in one call (``lax.scan``), so per-call dispatch is amortised.

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
    return jax.device_get(total) if total is not None else None


def format_examples(predict_fn, state, batch: dict, mesh, count: int) -> str:
    """Reconstruction examples of the first ``count`` windows of a batch, as aligned text."""
    device_batch = parallel.shard_batch({"tokens": batch["tokens"], "weights": batch["weights"]}, mesh)
    probs = np.asarray(jax.device_get(predict_fn(state, device_batch)))
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


def _restore_or_init(config: Config, workdir: Path, mesh, manager, require_checkpoint: bool):
    state = create_train_state(config, mesh)
    step = checkpoint.latest_step(manager)
    if step is None:
        if require_checkpoint:
            raise checkpoint.CheckpointError(f"--resume: no checkpoint to resume in {checkpoint.checkpoint_dir(workdir)}")
        return state, None, None
    # Compare configs before touching arrays: the message then names the setting, not a tensor shape.
    saved = config_lib.from_dict(checkpoint.read_meta(manager, step)["config"])
    changed = config_lib.architecture_changes(saved, config)
    if changed:
        raise ConfigError(f"cannot resume {workdir}: settings that define the model changed: {'; '.join(changed)}")
    state, loader_state, meta = checkpoint.restore(manager, step, state)
    return state, loader_state, meta


def train_and_evaluate(config: Config, workdir: str | Path, *, require_checkpoint: bool = False) -> dict:
    """Trains (resuming from the run directory's latest checkpoint, if any), evaluates, saves.

    Args:
      config: a validated config.
      workdir: the run directory: ``config.yaml``, ``checkpoints/``, ``tensorboard/``, ``final_metrics.json``.
      require_checkpoint: fail if there is nothing to resume (``--resume``).

    Returns:
      Final metrics: ``step``, ``valid_loss``, ``valid_accuracy``, ``test_loss``, ``test_accuracy``,
      ``windows_per_sec``.
    """
    workdir = Path(workdir).absolute()
    t = config.train
    mesh = parallel.create_mesh(t.devices)
    parallel.check_batch_size(t.batch_size, mesh)
    main = parallel.is_main_process()
    data = open_data(config)
    workdir.mkdir(parents=True, exist_ok=True)

    manager = checkpoint.create_manager(workdir, t.max_to_keep)
    state, loader_state, meta = _restore_or_init(config, workdir, mesh, manager, require_checkpoint)
    start_step = int(state.step)
    if main:
        config_lib.save_config(config, workdir / "config.yaml")
    writer = summary.create_writer(workdir, enabled=main)
    if start_step == 0 and main:
        summary.write_text(writer, 0, "config", json.dumps(config.to_dict(), indent=2))

    loader = create_train_loader(config, data)
    if loader_state is not None:
        loader.load_state_dict(loader_state)

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

    def save(step: int) -> None:
        checkpoint.save(manager, step, state, loader.state_dict(),
                        {"config": config.to_dict(), "step": step, "time": time.time()})

    step = start_step
    pending = None  # metric sums since the last log, still on device
    skipped_total = 0
    log_time, log_step = time.perf_counter(), step
    windows_per_sec = 0.0
    bar = tqdm(total=t.num_steps, initial=step, disable=not main, desc="train", unit="step", dynamic_ncols=True)
    try:
        while step < t.num_steps:
            events = [e for e in (t.log_every, t.eval_every, t.checkpoint_every, t.histogram_every) if e > 0]
            next_event = min([(step // e + 1) * e for e in events] + [t.num_steps])
            k = min(t.steps_per_call, next_event - step)
            host = _stack([next(loader) for _ in range(k)])
            batches = parallel.shard_batch(host, mesh, leading_axes=1)
            state, metrics = train_fn(state, batches, rng)
            step += k
            pending = add_metrics(pending, metrics)
            bar.update(k)

            if due(step, t.log_every) or step == t.num_steps:
                sums = jax.device_get(pending)
                pending = None
                bad = int(sums["nonfinite_loss"] + sums["nonfinite_grads"])
                if bad:
                    skipped_total += bad
                    what = "loss" if sums["nonfinite_loss"] else "gradients or updated parameters"
                    if skipped_total > t.skip_nonfinite:
                        raise NonFiniteError(
                            f"non-finite {what} at step {int(sums['first_bad_step']) + 1} "
                            f"({skipped_total} bad batch(es), train.skip_nonfinite={t.skip_nonfinite}); "
                            f"the update was not applied and no checkpoint of it is saved")
                    bar.write(f"step {int(sums['first_bad_step']) + 1}: skipped a batch with non-finite {what} "
                              f"({skipped_total}/{t.skip_nonfinite})")
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

            if due(step, t.histogram_every) and main:
                hparams = {name: jnp.float32(fn(step)) for name, fn in schedules.items()}
                one = parallel.shard_batch({"tokens": host["tokens"][-1], "weights": host["weights"][-1]}, mesh)
                summary.write_histograms(writer, step, "params", jax.device_get(state.params))
                summary.write_histograms(writer, step, "grads", jax.device_get(grads_fn(state, one, rng, hparams)))

            if due(step, t.eval_every) or step == t.num_steps:
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
        checkpoint.wait(manager)
    finally:
        bar.close()
        loader.close()
        writer.flush()

    valid = summary.metrics_from_sums(evaluate_sums(eval_fn, state, iterate_eval(config, data, "valid"), mesh))
    test_sums = evaluate_sums(eval_fn, state, iterate_eval(config, data, "test"), mesh)
    test = summary.metrics_from_sums(test_sums)
    result = {"step": step, "valid_loss": valid["loss"], "valid_accuracy": valid["accuracy"],
              "test_loss": test["loss"], "test_accuracy": test["accuracy"], "test_bases": float(test_sums["count"]),
              "windows_per_sec": windows_per_sec}
    if main:
        summary.write_hparams(writer, config.to_dict(), {"test_accuracy": test["accuracy"], "test_loss": test["loss"]})
        (workdir / "final_metrics.json").write_text(json.dumps(result, indent=2))
    writer.close()
    manager.close()
    return result


# ----------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jaxseq.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config (configs/*.yaml); default: built-in defaults, or the run "
                                         "directory's saved config when resuming")
    parser.add_argument("--workdir", help="run directory (default: runs/<timestamp>); an existing one with "
                                          "checkpoints is resumed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.num_steps=500 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="require a checkpoint in --workdir and resume from it")
    parser.add_argument("--devices", help="'all' (default) or a number of local devices; same as --set train.devices=")
    parser.add_argument("--distributed", action="store_true",
                        help="join a multi-process run with jax.distributed (see README: Scaling out)")
    parser.add_argument("--coordinator", help="coordinator address host:port for --distributed")
    parser.add_argument("--num-processes", type=int, help="number of processes for --distributed")
    parser.add_argument("--process-id", type=int, help="this process's index for --distributed")
    return parser


def resolve_config(args) -> tuple[Config, Path]:
    """Config and run directory from the command line: the saved config is the base when resuming."""
    overrides = list(args.overrides) + ([f"train.devices={args.devices}"] if args.devices else [])
    workdir = Path(args.workdir) if args.workdir else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    saved = workdir / "config.yaml"
    if args.config is None and saved.is_file():
        return config_lib.load_config(saved, overrides), workdir
    if args.resume and not saved.is_file():
        raise checkpoint.CheckpointError(f"--resume: {workdir} has no config.yaml or checkpoint to resume")
    return config_lib.load_config(args.config, overrides), workdir


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.distributed:
            parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
        config, workdir = resolve_config(args)
        result = train_and_evaluate(config, workdir, require_checkpoint=args.resume)
    except (ConfigError, checkpoint.CheckpointError, parallel.ParallelError, NonFiniteError, ValueError,
            FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if parallel.is_main_process():
        print(f"run directory: {workdir.absolute()}")
        print(f"held-out (test split) accuracy {result['test_accuracy']:.4f}, cross-entropy "
              f"{result['test_loss']:.4f} nats/base over {int(result['test_bases']):,} bases (step {result['step']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
