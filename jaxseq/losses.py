"""Reconstruction losses and metrics from logits, with N positions masked out.

A batch is a dict with ``"tokens"`` integer ``(B, L)`` (the clean targets; input dropout happens inside
the model) and ``"weights"`` float32 ``(B,)`` (1 for real windows, 0 for eval padding; taken as ones if
absent). The weight of position ``(b, i)`` is ``weights[b] * (tokens[b, i] < 4)``: N (4) and MASK (5)
targets never count.

Everything here is jit-safe and free of host syncs. Metrics are sums plus a count, so a whole split's
mean is ``sum(loss_sum) / sum(count)`` exactly.

Objective: the prototype trained on ``(1 - w) * BCE(softmax, one_hot) + w * MSE(neighbouring latents)``
with ``w = neighbour_loss_prop``. We keep its mixing but by default use the categorical cross-entropy
from logits (numerically stable, and the usual likelihood for a 4-way choice):
``(1 - w) * CE + w * neighbour(latent)`` when ``w > 0``, plain ``CE`` when ``w == 0``. The prototype's
term is kept as a training option (``model.objective: bce_softmax``, :func:`bce_softmax`) so the two
can be compared; evaluation and :func:`metric_sums` always report CE.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxseq import tokens as tok

#: Training objectives (``model.objective``): log-softmax cross-entropy, or the prototype's BCE on softmax.
OBJECTIVES = ("ce", "bce_softmax")
#: torch.nn.BCELoss clamps its logs at -100; the prototype's loss had this floor, so ours does too.
_BCE_LOG_FLOOR = -100.0

__all__ = ["OBJECTIVES", "bce_softmax", "cross_entropy", "metric_sums", "neighbour", "position_weights", "reconstruction"]


def position_weights(batch: Mapping[str, Any]) -> jax.Array:
    """Per-position weights.

    Args:
      batch: ``"tokens"`` integer ``(B, L)``, optional ``"weights"`` float ``(B,)``.

    Returns:
      float32 ``(B, L)``: ``weights[:, None] * (tokens < 4)``.
    """
    targets = batch["tokens"]
    is_base = (targets >= 0) & (targets < tok.NUM_BASES)
    weights = batch.get("weights")
    if weights is None:
        return is_base.astype(jnp.float32)
    return jnp.asarray(weights, jnp.float32)[:, None] * is_base


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-position cross-entropy ``-log_softmax(logits)[target]``.

    Args:
      logits: float ``(B, L, 4)``.
      targets: integer ``(B, L)``; values outside ``0..3`` (N, MASK) give an arbitrary finite value,
        to be weighted out by the caller.

    Returns:
      float32 ``(B, L)``.
    """
    # Clipping keeps the label gather in range for N/MASK; their weight is zero anyway.
    labels = jnp.clip(targets.astype(jnp.int32), 0, tok.NUM_BASES - 1)
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def bce_softmax(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-position binary cross-entropy of ``softmax(logits)`` against the one-hot target (the prototype's loss).

    ``-mean_c [y_c log p_c + (1 - y_c) log(1 - p_c)]`` over the 4 bases, each log floored at -100 as
    ``torch.nn.BCELoss`` does, so its mean over positions equals the prototype's ``BCELoss(softmax(x), y)``.

    Args:
      logits: float ``(B, L, 4)``.
      targets: integer ``(B, L)``; values outside ``0..3`` give an arbitrary finite value (weight them out).

    Returns:
      float32 ``(B, L)``.
    """
    logits = logits.astype(jnp.float32)
    labels = jnp.clip(targets.astype(jnp.int32), 0, tok.NUM_BASES - 1)
    one_hot = jax.nn.one_hot(labels, tok.NUM_BASES, dtype=jnp.float32)
    total = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    log_p = jnp.maximum(logits - total, _BCE_LOG_FLOOR)
    # log(1 - p_c) = logsumexp of the other logits - logsumexp of all: exact even where p_c rounds to 1.
    others = jnp.where(jnp.eye(tok.NUM_BASES, dtype=bool), -jnp.inf, 0.0)
    log_not_p = jnp.maximum(jax.nn.logsumexp(logits[..., None, :] + others, axis=-1) - total, _BCE_LOG_FLOOR)
    return -jnp.mean(one_hot * log_p + (1.0 - one_hot) * log_not_p, axis=-1)


def _weighted_ce_sum(logits: jax.Array, batch: Mapping[str, Any],
                     objective: str = "ce") -> tuple[jax.Array, jax.Array]:
    weights = position_weights(batch)
    ce = (bce_softmax if objective == "bce_softmax" else cross_entropy)(logits, batch["tokens"])
    # where(), not a product: 0 * inf would be NaN if a masked position overflowed.
    return jnp.sum(jnp.where(weights > 0, weights * ce, 0.0)), jnp.sum(weights)


def neighbour(latent: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean squared difference between latents at adjacent positions (the prototype's smoothness term).

    Args:
      latent: float ``(B, L', C)`` per-position latent, ``L' >= 2``.
      weights: optional float ``(B,)`` window weights; None means all ones, which is the prototype's
        plain mean over ``(B, L' - 1, C)``.

    Returns:
      float32 scalar.

    Raises:
      ValueError: latent is not 3-D or has fewer than two positions.
    """
    if latent.ndim != 3:
        raise ValueError(f"neighbour loss needs a per-position latent (B, L, C), got shape {latent.shape}")
    if latent.shape[1] < 2:
        raise ValueError(f"neighbour loss needs at least 2 latent positions, got shape {latent.shape}")
    latent = latent.astype(jnp.float32)
    per_window = jnp.mean(jnp.square(latent[:, 1:] - latent[:, :-1]), axis=(1, 2))
    if weights is None:
        return jnp.mean(per_window)
    weights = jnp.asarray(weights, jnp.float32)
    return jnp.sum(weights * per_window) / jnp.maximum(jnp.sum(weights), 1.0)


def reconstruction(logits: jax.Array, batch: Mapping[str, Any], latent: jax.Array | None = None,
                   neighbour_loss_weight: float | jax.Array = 0.0, objective: str = "ce") -> jax.Array:
    """The training objective: masked, weighted mean cross-entropy, optionally mixed with the neighbour loss.

    ``CE = sum(w * ce) / max(sum(w), 1)`` with ``w = position_weights(batch)`` (``ce`` per position is
    :func:`cross_entropy`, or :func:`bce_softmax` when ``objective == "bce_softmax"``); if
    ``neighbour_loss_weight`` (``p``) is non-zero the result is ``(1 - p) * CE + p * neighbour(latent)``
    (the neighbour term weighted by ``batch["weights"]``).

    Args:
      logits: float ``(B, L, 4)``.
      batch: ``"tokens"`` integer ``(B, L)``, ``"weights"`` float ``(B,)``.
      latent: the model's latent; must be per-position ``(B, L', C)`` when the neighbour term is used.
      neighbour_loss_weight: ``p`` in ``[0, 1]``; a Python number 0 skips the term statically.
      objective: one of :data:`OBJECTIVES` (static).

    Returns:
      float32 scalar.

    Raises:
      ValueError: a non-zero neighbour weight without a per-position latent, a weight outside [0, 1],
        or an unknown objective.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"model.objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    ce_sum, count = _weighted_ce_sum(logits, batch, objective)
    ce = ce_sum / jnp.maximum(count, 1.0)
    static = isinstance(neighbour_loss_weight, numbers.Real)
    if static:
        if not 0.0 <= neighbour_loss_weight <= 1.0:
            raise ValueError(f"neighbour_loss_weight must be in [0, 1], got {neighbour_loss_weight}")
        if neighbour_loss_weight == 0:
            return ce
    if latent is None or latent.ndim != 3:
        shape = None if latent is None else latent.shape
        raise ValueError("neighbour_loss_weight > 0 needs a per-position latent (B, L, C) "
                         f"(autoencoder or dilated model); got latent shape {shape}")
    p = jnp.asarray(neighbour_loss_weight, jnp.float32)
    return (1.0 - p) * ce + p * neighbour(latent, batch.get("weights"))


def metric_sums(logits: jax.Array, batch: Mapping[str, Any], loss: jax.Array | None = None) -> dict[str, jax.Array]:
    """Sums for exact split-wide metrics (accuracy = correct / count, loss = loss_sum / count).

    Args:
      logits: float ``(B, L, 4)``.
      batch: ``"tokens"`` integer ``(B, L)``, ``"weights"`` float ``(B,)``.
      loss: optional scalar mean objective of this batch (as returned by :func:`reconstruction`). If
        given, ``loss_sum = loss * count`` so that ``loss_sum / count`` reproduces it (it includes the
        neighbour term, if any); otherwise ``loss_sum`` is the weighted cross-entropy sum. With no
        neighbour term the two agree up to float rounding.

    Returns:
      dict of float32: ``"loss_sum"``, ``"correct"`` (weighted count of argmax == target), ``"count"``
      (sum of position weights), all scalars, and ``"confusion"`` ``(4, 4)`` weighted counts indexed
      ``[true base, predicted base]``.
    """
    weights = position_weights(batch)
    targets = batch["tokens"]
    predicted = jnp.argmax(logits, axis=-1)
    count = jnp.sum(weights)
    if loss is None:
        loss_sum, _ = _weighted_ce_sum(logits, batch)
    else:
        loss_sum = jnp.asarray(loss, jnp.float32) * count
    correct = jnp.sum(weights * (predicted == targets))
    # N/MASK targets one-hot to all zeros, so they drop out of the confusion matrix on their own too.
    true_onehot = jax.nn.one_hot(targets, tok.NUM_BASES, dtype=jnp.float32) * weights[..., None]
    pred_onehot = jax.nn.one_hot(predicted, tok.NUM_BASES, dtype=jnp.float32)
    confusion = jnp.einsum("bli,blj->ij", true_onehot, pred_onehot)
    return {"loss_sum": loss_sum.astype(jnp.float32), "correct": correct.astype(jnp.float32),
            "count": count.astype(jnp.float32), "confusion": confusion}
