"""The PyTorch baseline's training: ``python -m experiments.torch_baseline [--config FILE.yaml] [--workdir DIR] [--set key=value ...]``.

Same config files and ``--set`` overrides as ``python -m jaxseq.train`` (:func:`jaxseq.config.load_config`),
same genome, splits and batches (:func:`jaxseq.steps.open_data`, :func:`~jaxseq.steps.create_train_loader`,
:class:`~jaxseq.evaluator.Evaluator`: numpy batches, one-hot inside the torch model), same objective
(masked log-softmax cross-entropy, :func:`reconstruction` equals :func:`jaxseq.losses.reconstruction`),
same TensorBoard tags through :mod:`jaxseq.summary`, and an equivalent run directory: ``config.yaml``,
``tensorboard/``, ``final_metrics.json`` (the keys of :func:`jaxseq.train.train_and_evaluate`'s result)
and ``model.pt`` (a torch checkpoint; running again on the directory resumes from it).

The optimiser is ``torch.optim`` (``optim.optimizer``: sgd, momentum, adam, adamw; ``optim.grad_clip_norm``
through ``clip_grad_norm_``). The learning rate follows the config's optax schedule: jaxseq's own schedule
function is evaluated once on the host for every step (one vectorised call) and ``LambdaLR`` reads that
table, so step ``s`` uses ``schedule(s)`` as optax's ``inject_hyperparams`` does (to float32 rounding). Input dropout
and latent noise follow jaxseq's hyperparameter schedules the same way.

Known differences from jaxseq (none changes the function being learned):

* random numbers (init, dropout, noise) come from torch's generator seeded with ``train.seed``, so a
  baseline run and a jaxseq run with the same seed start from different weights;
* BatchNorm's running variance is updated with the unbiased batch variance (PyTorch) rather than the
  biased one (flax); see ``jaxseq/layers.py``;
* a step with a non-finite loss is skipped (counted against ``train.skip_nonfinite``); unlike jaxseq,
  gradients and updated parameters are not checked separately;
* ``train.steps_per_call`` and ``train.devices`` mean nothing here (eager PyTorch, one process).

Devices (``--device cpu|cuda``, ``--precision float32|bfloat16``): on CUDA, cuDNN benchmark mode is on
(``torch.backends.cudnn.benchmark``: the fastest convolution algorithm for the fixed shapes is chosen
once) and ``bfloat16`` runs the forward pass under ``torch.autocast`` (convolutions and linear layers in
bf16, parameters, optimiser state and the loss in float32, as jaxseq's ``train.compute_dtype``).
Metric sums stay on the device between log intervals; the non-finite check reads the loss on the
host every step (one sync per step, the baseline's semantics).

This package imports jaxseq (numpy side and the schedule functions), never the reverse.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from jaxseq import optim as jaxseq_optim
from jaxseq import summary, tokens
from jaxseq import config as config_lib
from jaxseq import steps as jaxseq_steps
from jaxseq.config import Config, ConfigError
from jaxseq.evaluator import format_example, open_evaluator

from experiments.torch_baseline.models import create_model

CHECKPOINT = "model.pt"


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss more often than ``train.skip_nonfinite`` allows."""


# ----------------------------------------------------------------------------------------------
# Loss and metrics (the torch twins of jaxseq.losses)


def position_weights(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """float32 ``(B, L)``: ``weights[:, None] * (tokens < 4)``; N and MASK targets never count."""
    targets = batch["tokens"]
    is_base = ((targets >= 0) & (targets < tokens.NUM_BASES)).float()
    weights = batch.get("weights")
    return is_base if weights is None else weights.float()[:, None] * is_base


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-position ``-log_softmax(logits)[target]`` float32 ``(B, L)``; N/MASK targets give a finite dummy."""
    labels = targets.long().clamp(0, tokens.NUM_BASES - 1)
    ce = F.cross_entropy(logits.float().reshape(-1, tokens.NUM_BASES), labels.reshape(-1), reduction="none")
    return ce.reshape(labels.shape)


def _weighted_ce_sum(logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    weights = position_weights(batch)
    ce = cross_entropy(logits, batch["tokens"])
    return torch.where(weights > 0, weights * ce, torch.zeros_like(ce)).sum(), weights.sum()


def neighbour(latent: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The prototype's smoothness term on a channels-first latent ``(B, C, L')``: mean squared difference of
    adjacent positions, per window, then the (``weights``-weighted) mean over windows."""
    if latent.dim() != 3 or latent.shape[2] < 2:
        raise ValueError(f"neighbour loss needs a per-position latent (B, C, L >= 2), got shape {tuple(latent.shape)}")
    per_window = (latent[:, :, 1:] - latent[:, :, :-1]).float().square().mean(dim=(1, 2))
    if weights is None:
        return per_window.mean()
    weights = weights.float()
    return (weights * per_window).sum() / weights.sum().clamp(min=1.0)


def reconstruction(logits: torch.Tensor, batch: Mapping[str, torch.Tensor], latent: torch.Tensor | None = None,
                   neighbour_loss_weight: float = 0.0) -> torch.Tensor:
    """The objective of :func:`jaxseq.losses.reconstruction`, in torch.

    Args:
      logits: float ``(B, L, 4)``.
      batch: ``"tokens"`` integer ``(B, L)``, optional ``"weights"`` float ``(B,)``.
      latent: the model's latent, channels first ``(B, C, L')``; needed when ``neighbour_loss_weight > 0``.
      neighbour_loss_weight: ``p``: ``(1 - p) * CE + p * neighbour(latent)``.

    Returns:
      float32 scalar: ``sum(w * ce) / max(sum(w), 1)`` (mixed with the neighbour term when ``p > 0``).
    """
    ce_sum, count = _weighted_ce_sum(logits, batch)
    ce = ce_sum / count.clamp(min=1.0)
    if neighbour_loss_weight == 0:
        return ce
    if latent is None or latent.dim() != 3:
        raise ValueError("neighbour_loss_weight > 0 needs a per-position latent (autoencoder model)")
    p = float(neighbour_loss_weight)
    return (1.0 - p) * ce + p * neighbour(latent, batch.get("weights"))


@torch.no_grad()
def metric_sums(logits: torch.Tensor, batch: Mapping[str, torch.Tensor], loss: torch.Tensor | None = None) -> dict:
    """``loss_sum``, ``correct``, ``count`` float32 scalars, as :func:`jaxseq.losses.metric_sums` (no confusion)."""
    weights = position_weights(batch)
    count = weights.sum()
    loss_sum = _weighted_ce_sum(logits, batch)[0] if loss is None else loss.detach().float() * count
    correct = (weights * (logits.argmax(-1) == batch["tokens"].long())).sum()
    return {"loss_sum": loss_sum, "correct": correct, "count": count}


def to_torch(batch: Mapping[str, np.ndarray], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A loader batch (numpy ``tokens`` int8 ``(B, L)``, ``weights`` float32 ``(B,)``) as tensors on ``device``.

    On the CPU no copy is made; on CUDA the copy is asynchronous.
    """
    out = {"tokens": torch.from_numpy(np.ascontiguousarray(batch["tokens"])),
           "weights": torch.from_numpy(np.ascontiguousarray(batch["weights"], dtype=np.float32))}
    return out if str(device) == "cpu" else {k: v.to(device, non_blocking=True) for k, v in out.items()}


PRECISIONS = ("float32", "bfloat16")


def setup_device(device: str, threads: int | None = None) -> torch.device:
    """Checks and prepares ``device`` (``cpu`` or ``cuda``): thread count on the CPU, cuDNN benchmark mode on CUDA.

    Raises:
      ConfigError: ``cuda`` without a CUDA device, or an unknown device.
    """
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: this PyTorch sees no CUDA device")
    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.backends.cudnn.benchmark = device == "cuda"
    return torch.device(device)


def autocast(device: torch.device, precision: str):
    """The forward pass's precision context: ``torch.autocast`` to bfloat16, or nothing for float32."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")


# ----------------------------------------------------------------------------------------------
# Optimiser and schedules


def schedule_table(schedule, num_steps: int) -> np.ndarray:
    """Values of a jaxseq/optax schedule at steps ``0 .. num_steps`` (one vectorised host call).

    Returns:
      float64 ``(num_steps + 1,)``.
    """
    steps = np.arange(num_steps + 1, dtype=np.int32)
    values = np.asarray(schedule(steps), dtype=np.float64)
    return np.broadcast_to(values, steps.shape).copy()  # constant schedules return a scalar


def create_optimizer(model: torch.nn.Module, config: Config):
    """``torch.optim`` optimiser for ``optim.optimizer`` and a ``LambdaLR`` following jaxseq's lr schedule.

    Returns:
      ``(optimizer, scheduler, lr_table)``; ``lr_table[s]`` is the learning rate of step ``s``.
    """
    o, n = config.optim, config.train.num_steps
    lr_table = schedule_table(jaxseq_optim.create_learning_rate_schedule(o, n), n)
    params = model.parameters()
    # Base lr 1: LambdaLR multiplies it by the table value, so the lr of step s is exactly lr_table[s].
    if o.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=1.0)
    elif o.optimizer == "momentum":
        optimizer = torch.optim.SGD(params, lr=1.0, momentum=o.momentum)
    elif o.optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=1.0, betas=(o.b1, o.b2), eps=1e-8)
    elif o.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=1.0, betas=(o.b1, o.b2), eps=1e-8, weight_decay=o.weight_decay)
    else:
        raise ConfigError(f"optim.optimizer={o.optimizer!r} has no torch equivalent here")
    last = len(lr_table) - 1
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: float(lr_table[min(step, last)]))
    return optimizer, scheduler, lr_table


def create_hparam_tables(config: Config) -> dict[str, np.ndarray]:
    """``input_dropout`` and ``latent_noise_std`` per step ``0 .. num_steps`` from jaxseq's schedules."""
    n = config.train.num_steps
    return {name: schedule_table(fn, n) for name, fn in jaxseq_optim.create_hparam_schedules(config.model, n).items()}


# ----------------------------------------------------------------------------------------------
# Steps


def train_step(model, optimizer, scheduler, batch: Mapping[str, torch.Tensor], hparams: Mapping[str, float], *,
               neighbour_loss_weight: float = 0.0, grad_clip_norm: float = 0.0,
               precision: str = "float32") -> tuple[dict, bool]:
    """One optimisation step (model in train mode).

    Args:
      model, optimizer, scheduler: from :func:`create_model` and :func:`create_optimizer`.
      batch: ``tokens`` integer ``(B, L)``, ``weights`` float32 ``(B,)`` tensors.
      hparams: ``input_dropout``, ``latent_noise_std`` floats for this step.
      neighbour_loss_weight: the prototype's neighbour-loss mix.
      grad_clip_norm: clip gradients to this global norm; 0 = off.
      precision: ``float32``, or ``bfloat16`` (forward under ``torch.autocast``; the loss in float32).

    Returns:
      ``(metric sums, finite)``: float32 scalar tensors on the batch's device; a non-finite loss applies
      no update (the schedule still advances).
    """
    with autocast(batch["tokens"].device, precision):
        logits, latent = model(batch["tokens"], hparams.get("input_dropout", 0.0),
                               hparams.get("latent_noise_std", 0.0))
    logits, latent = logits.float(), latent.float()
    loss = reconstruction(logits, batch, latent, neighbour_loss_weight)
    optimizer.zero_grad(set_to_none=True)
    finite = bool(torch.isfinite(loss))
    if finite:
        loss.backward()
        if grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
        optimizer.step()
        sums = metric_sums(logits, batch, loss)
    else:
        sums = {key: torch.zeros((), device=loss.device) for key in ("loss_sum", "correct", "count")}
    scheduler.step()
    return sums, finite


@torch.no_grad()
def evaluate_sums(model, batches: Iterable[Mapping[str, np.ndarray]]) -> dict[str, float] | None:
    """Metric sums over batches in eval mode (running BatchNorm statistics, no dropout, no noise), float32."""
    was_training = model.training
    model.eval()
    total = None
    device = next(model.parameters()).device
    for batch in batches:
        tb = to_torch(batch, device)
        logits, _ = model(tb["tokens"])
        sums = {k: float(v) for k, v in metric_sums(logits, tb).items()}
        total = sums if total is None else {k: total[k] + sums[k] for k in total}
    model.train(was_training)
    return total


@torch.no_grad()
def format_examples(model, batch: Mapping[str, np.ndarray], count: int, names: list[str]) -> str:
    """Reconstruction examples of a batch's first windows, formatted by jaxseq's evaluator (``eval/examples``)."""
    was_training = model.training
    model.eval()
    logits, _ = model(to_torch(batch, next(model.parameters()).device)["tokens"])
    model.train(was_training)
    probs = torch.softmax(logits, -1).cpu().numpy()
    window_len = batch["tokens"].shape[1]
    return "\n\n".join(
        format_example({"window": i, "record": names[int(batch["record"][i])], "start": int(batch["start"][i]),
                        "tokens": batch["tokens"][i].astype(np.int64), "probs": probs[i]}, window_len)
        for i in range(min(count, int((batch["weights"] > 0).sum()))))


# ----------------------------------------------------------------------------------------------
# The loop


def _save(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".pt.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def train_and_evaluate(config: Config, workdir: str | Path, *, threads: int | None = None, device: str = "cpu",
                       precision: str = "float32") -> dict:
    """Trains the baseline (resuming from ``workdir/model.pt`` if present), evaluates, saves.

    Args:
      config: a validated jaxseq config (``model.name`` autoencoder or multilayer).
      workdir: the run directory.
      threads: torch intra-op threads; None: ``os.cpu_count()``.
      device: ``cpu`` or ``cuda`` (cuDNN benchmark mode).
      precision: ``float32`` or ``bfloat16`` (``torch.autocast`` forward).

    Returns:
      Final metrics with the keys of :func:`jaxseq.train.train_and_evaluate`: ``step``, ``valid_loss``,
      ``valid_accuracy``, ``test_loss``, ``test_accuracy``, ``test_bases``, ``windows_per_sec``.
    """
    dev = setup_device(device, threads)
    autocast(dev, precision)  # checks the name before anything is written
    workdir = Path(workdir).absolute()
    t = config.train
    torch.manual_seed(t.seed)
    model = create_model(config).to(dev)  # before any file is written: a model the baseline lacks fails here
    data = jaxseq_steps.open_data(config)
    workdir.mkdir(parents=True, exist_ok=True)

    optimizer, scheduler, lr_table = create_optimizer(model, config)
    hparam_tables = create_hparam_tables(config)
    loader = jaxseq_steps.create_train_loader(config, data)
    step = 0
    checkpoint_path = workdir / CHECKPOINT
    if checkpoint_path.is_file():
        saved = torch.load(checkpoint_path, map_location=dev, weights_only=False)
        changed = config_lib.architecture_changes(config_lib.from_dict(saved["config"]), config)
        if changed:
            raise ConfigError(f"cannot resume {workdir}: settings that define the model changed: {'; '.join(changed)}")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        loader.load_state_dict(saved["loader"])
        torch.set_rng_state(saved["rng"].cpu())
        step = int(saved["step"])
    config_lib.save_config(config, workdir / "config.yaml")
    writer = summary.create_writer(workdir)
    if step == 0:
        summary.write_text(writer, 0, "config", json.dumps(config.to_dict(), indent=2))

    def save(step: int) -> None:
        _save(checkpoint_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(), "loader": loader.state_dict(),
                                "rng": torch.get_rng_state(), "step": step, "config": config.to_dict(),
                                "time": time.time()})

    def due(step: int, every: int) -> bool:
        return every > 0 and step % every == 0

    nlw, clip = config.model.neighbour_loss_weight, config.optim.grad_clip_norm
    last = t.num_steps
    model.train()
    pending = None
    skipped = 0
    log_time, log_step = time.perf_counter(), step
    windows_per_sec = 0.0
    bar = tqdm(total=t.num_steps, initial=step, desc="train (torch)", unit="step", dynamic_ncols=True)
    try:
        while step < t.num_steps:
            hparams = {name: float(table[min(step, last)]) for name, table in hparam_tables.items()}
            sums, finite = train_step(model, optimizer, scheduler, to_torch(next(loader), dev), hparams,
                                      neighbour_loss_weight=nlw, grad_clip_norm=clip, precision=precision)
            if not finite:
                skipped += 1
                if skipped > t.skip_nonfinite:
                    raise NonFiniteError(f"non-finite loss at step {step + 1} ({skipped} bad batch(es), "
                                         f"train.skip_nonfinite={t.skip_nonfinite}); the update was not applied")
                bar.write(f"step {step + 1}: skipped a batch with non-finite loss ({skipped}/{t.skip_nonfinite})")
            step += 1
            pending = sums if pending is None else {k: pending[k] + sums[k] for k in sums}
            bar.update(1)

            if due(step, t.log_every) or step == t.num_steps:
                means = summary.metrics_from_sums({k: float(v) for k, v in pending.items()})
                pending = None
                now = time.perf_counter()
                windows_per_sec = (step - log_step) * t.batch_size / max(now - log_time, 1e-9)
                log_time, log_step = now, step
                hp = {"hparams/learning_rate": float(lr_table[min(step, last)]),
                      **{f"hparams/{name}": float(table[min(step, last)]) for name, table in hparam_tables.items()}}
                summary.write_scalars(writer, step, {"train/loss": means["loss"], "train/accuracy": means["accuracy"],
                                                     "perf/windows_per_sec": windows_per_sec, **hp})
                bar.set_postfix(loss=f"{means['loss']:.4f}", acc=f"{means['accuracy']:.4f}",
                                win_s=f"{windows_per_sec:,.0f}")

            if due(step, t.histogram_every):
                for name, p in model.named_parameters():
                    writer.add_histogram(f"params/{name.removeprefix('layers.').replace('.', '/')}",
                                         p.detach().cpu().numpy().ravel(), step)
                    if p.grad is not None:
                        writer.add_histogram(f"grads/{name.removeprefix('layers.').replace('.', '/')}",
                                             p.grad.cpu().numpy().ravel(), step)

            if due(step, t.eval_every) or step == t.num_steps:
                sums = evaluate_sums(model, open_evaluator(config, "valid", data=data,
                                                           max_windows=t.eval_max_windows).batches())
                means = summary.metrics_from_sums(sums)
                summary.write_scalars(writer, step, {"eval/loss": means["loss"], "eval/accuracy": means["accuracy"]})
                message = f"step {step}: valid loss {means['loss']:.4f}, accuracy {means['accuracy']:.4f}"
                if t.examples:
                    first = next(open_evaluator(config, "valid", data=data).batches())
                    text = format_examples(model, first, t.examples, data.genome.names)
                    summary.write_text(writer, step, "eval/examples", text)
                    message += "\n" + text
                bar.write(message)

            if due(step, t.checkpoint_every) or step == t.num_steps:
                save(step)
    finally:
        bar.close()
        loader.close()
        writer.flush()

    valid = summary.metrics_from_sums(evaluate_sums(model, open_evaluator(config, "valid", data=data).batches()))
    test_sums = evaluate_sums(model, open_evaluator(config, "test", data=data).batches())
    test = summary.metrics_from_sums(test_sums)
    result = {"step": step, "valid_loss": valid["loss"], "valid_accuracy": valid["accuracy"],
              "test_loss": test["loss"], "test_accuracy": test["accuracy"], "test_bases": float(test_sums["count"]),
              "windows_per_sec": windows_per_sec}
    summary.write_hparams(writer, config.to_dict(), {"test_accuracy": test["accuracy"], "test_loss": test["loss"]})
    (workdir / "final_metrics.json").write_text(json.dumps(result, indent=2))
    writer.close()
    return result


# ----------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.torch_baseline",
                                     description="Train the 2020 prototype's models in PyTorch on jaxseq's data "
                                                 "pipeline, for comparison with python -m jaxseq.train.")
    parser.add_argument("--config", help="YAML config (configs/*.yaml), as for jaxseq.train; default: built-in "
                                         "defaults, or the run directory's saved config when resuming")
    parser.add_argument("--workdir", help="run directory (default: runs/torch-<timestamp>); one holding model.pt "
                                          "is resumed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.num_steps=500 (repeatable)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: os.cpu_count())")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda (cuDNN benchmark mode)")
    parser.add_argument("--precision", default="float32",
                        help="float32 (default) or bfloat16 (torch.autocast forward; parameters stay float32)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    workdir = Path(args.workdir) if args.workdir else Path("runs") / time.strftime("torch-%Y%m%d-%H%M%S")
    try:
        saved = workdir / "config.yaml"
        path = args.config if args.config is not None or not saved.is_file() else saved
        config = config_lib.load_config(path, args.overrides)
        result = train_and_evaluate(config, workdir, threads=args.threads, device=args.device,
                                    precision=args.precision)
    except (ConfigError, NonFiniteError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"run directory: {workdir.absolute()}")
    print(f"held-out (test split) accuracy {result['test_accuracy']:.4f}, cross-entropy "
          f"{result['test_loss']:.4f} nats/base over {int(result['test_bases']):,} bases (step {result['step']})")
    return 0
