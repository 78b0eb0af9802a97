"""Tests for jaxseq.losses: hand-computed values, N masking, weights, extreme logits, metrics."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseq import losses
from jaxseq import tokens as tok

A, C, G, T, N, MASK = tok.A, tok.C, tok.G, tok.T, tok.N, tok.MASK


def batch_of(tokens, weights=None):
    tokens = jnp.asarray(tokens, jnp.int8)
    if weights is None:
        weights = np.ones(tokens.shape[0])
    return {"tokens": tokens, "weights": jnp.asarray(weights, jnp.float32)}


# Row 0: uniform (CE = log 4 whatever the target). Row 1: probabilities (1, 1, 1, 5) / 8.
# Row 2: confident, wrong for its target. Row 3: anything (its target is N).
LOGITS = jnp.log(jnp.asarray([[[1.0, 1, 1, 1], [1, 1, 1, 5], [1, 8, 1, 1], [100, 1, 1, 1]]]))
TOKENS = [[A, T, G, N]]


def test_cross_entropy_hand_values_with_n_masked():
    got = losses.reconstruction(LOGITS, batch_of(TOKENS))
    # G in row 2 has probability 1 / 11.
    want = (math.log(4) + math.log(8 / 5) + math.log(11)) / 3
    assert float(got) == pytest.approx(want, rel=1e-6)
    assert got.dtype == jnp.float32 and got.shape == ()


def test_mask_token_target_is_ignored_like_n():
    with_n = losses.reconstruction(LOGITS, batch_of(TOKENS))
    with_mask = losses.reconstruction(LOGITS, batch_of([[A, T, G, MASK]]))
    assert float(with_n) == float(with_mask)


def test_window_weights_multiply_in():
    logits = jnp.concatenate([LOGITS, jnp.zeros_like(LOGITS)])  # second window uniform: CE log 4 per base
    tokens = TOKENS + [[C, C, C, C]]
    ce0 = math.log(4) + math.log(8 / 5) + math.log(11)  # sum over window 0's three bases
    ce1 = 4 * math.log(4)
    for weights in ([1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.5, 2.0]):
        want = (weights[0] * ce0 + weights[1] * ce1) / max(3 * weights[0] + 4 * weights[1], 1.0)
        got = losses.reconstruction(logits, batch_of(tokens, weights))
        assert float(got) == pytest.approx(want, rel=1e-6), weights


def test_zero_weight_everywhere_gives_zero_not_nan():
    assert float(losses.reconstruction(LOGITS, batch_of(TOKENS, [0.0]))) == 0.0
    assert float(losses.reconstruction(LOGITS, batch_of([[N, N, MASK, N]]))) == 0.0
    sums = losses.metric_sums(LOGITS, batch_of([[N, N, N, N]]))
    assert {k: float(jnp.sum(v)) for k, v in sums.items()} == {"loss_sum": 0, "correct": 0, "count": 0, "confusion": 0}


def test_missing_weights_means_ones():
    batch = {"tokens": jnp.asarray(TOKENS, jnp.int8)}
    assert float(losses.reconstruction(LOGITS, batch)) == float(losses.reconstruction(LOGITS, batch_of(TOKENS)))


@pytest.mark.parametrize("big", [1e4, 1e30])
def test_extreme_logits_stay_finite(big):
    # Each row puts +big on one class and -big on the others; targets hit and miss.
    predicted = jnp.asarray([[A, C, G, T, A, C]])
    logits = jnp.where(jax.nn.one_hot(predicted, 4) > 0, big, -big).astype(jnp.float32)
    batch = batch_of([[A, C, T, T, N, MASK]])
    loss = losses.reconstruction(logits, batch)
    assert bool(jnp.isfinite(loss))
    # Hits cost 0, the miss costs 2 * big; 4 base positions.
    assert float(loss) == pytest.approx(2 * big / 4, rel=1e-5)
    grads = jax.grad(losses.reconstruction)(logits, batch)
    assert bool(jnp.all(jnp.isfinite(grads)))
    sums = losses.metric_sums(logits, batch)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in sums.values())
    assert float(sums["correct"]) == 3 and float(sums["count"]) == 4


def test_overflowing_masked_position_does_not_poison_the_loss():
    # A masked position whose CE overflows to inf must not turn the sum into NaN (0 * inf).
    logits = jnp.asarray([[[0.0, 0, 0, 0], [3e38, 3e38, 3e38, -3e38]]], jnp.float32)
    assert not bool(jnp.isfinite(losses.cross_entropy(logits, jnp.asarray([[A, N]]))[0, 1]))
    loss = losses.reconstruction(logits, batch_of([[A, N]]))
    assert float(loss) == pytest.approx(math.log(4), rel=1e-6)


def test_neighbour_loss_hand_value():
    latent = jnp.asarray([0.0, 1.0, 3.0]).reshape(1, 3, 1)
    assert float(losses.neighbour(latent)) == pytest.approx((1 + 4) / 2)
    two = jnp.concatenate([latent, jnp.zeros_like(latent)])  # second window constant: 0
    assert float(losses.neighbour(two)) == pytest.approx(2.5 / 2)
    assert float(losses.neighbour(two, jnp.asarray([1.0, 0.0]))) == pytest.approx(2.5)
    multi = jnp.asarray([[[0.0, 1.0], [2.0, 1.0]]])  # channel diffs 2 and 0
    assert float(losses.neighbour(multi)) == pytest.approx(2.0)


def test_reconstruction_mixes_neighbour_term_like_the_prototype():
    latent = jnp.asarray([0.0, 1.0, 3.0]).reshape(1, 3, 1)
    ce = float(losses.reconstruction(LOGITS, batch_of(TOKENS)))
    for w in (0.25, 1.0):
        got = losses.reconstruction(LOGITS, batch_of(TOKENS), latent, neighbour_loss_weight=w)
        assert float(got) == pytest.approx((1 - w) * ce + w * 2.5, rel=1e-6)
    assert float(losses.reconstruction(LOGITS, batch_of(TOKENS), latent, 0.0)) == ce
    # A traced weight works under jit.
    mixed = jax.jit(losses.reconstruction)(LOGITS, batch_of(TOKENS), latent, jnp.float32(0.25))
    assert float(mixed) == pytest.approx(0.75 * ce + 0.25 * 2.5, rel=1e-6)


def test_neighbour_errors():
    with pytest.raises(ValueError, match="per-position latent"):
        losses.reconstruction(LOGITS, batch_of(TOKENS), jnp.zeros((1, 8)), neighbour_loss_weight=0.1)
    with pytest.raises(ValueError, match="per-position latent"):
        losses.reconstruction(LOGITS, batch_of(TOKENS), None, neighbour_loss_weight=0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        losses.reconstruction(LOGITS, batch_of(TOKENS), jnp.zeros((1, 4, 2)), neighbour_loss_weight=1.5)
    with pytest.raises(ValueError, match="at least 2"):
        losses.neighbour(jnp.zeros((1, 1, 3)))
    # A 2-D latent is fine when the neighbour term is off.
    assert bool(jnp.isfinite(losses.reconstruction(LOGITS, batch_of(TOKENS), jnp.zeros((1, 8)), 0.0)))


def test_metric_sums_hand_values_and_confusion():
    second = jnp.log(jnp.asarray([[[1.0, 2, 1, 1], [1, 1, 2, 1], [1, 1, 1, 2], [2, 1, 1, 1]]]))
    logits = jnp.concatenate([LOGITS, second])
    # argmax: window 0 -> A (tie, first), T, C, A; window 1 -> C, G, T, A.
    tokens = TOKENS + [[C, G, A, N]]
    weights = [1.0, 2.0]
    sums = losses.metric_sums(logits, batch_of(tokens, weights))
    assert set(sums) == {"loss_sum", "correct", "count", "confusion"}
    assert all(v.dtype == jnp.float32 for v in sums.values())
    # Window 0: A->A ok, T->T ok, G->C wrong; window 1 (weight 2): C->C ok, G->G ok, A->T wrong.
    assert float(sums["count"]) == 3 + 2 * 3
    assert float(sums["correct"]) == 2 + 2 * 2
    confusion = np.zeros((4, 4))
    for true, pred, w in [(A, A, 1), (T, T, 1), (G, C, 1), (C, C, 2), (G, G, 2), (A, T, 2)]:
        confusion[true, pred] += w
    np.testing.assert_array_equal(sums["confusion"], confusion)
    assert float(sums["confusion"].sum()) == float(sums["count"])
    ce1 = math.log(5 / 2) + math.log(5 / 2) + math.log(5)
    want_loss = math.log(4) + math.log(8 / 5) + math.log(11) + 2 * ce1
    assert float(sums["loss_sum"]) == pytest.approx(want_loss, rel=1e-6)
    # loss_sum / count is the mean reconstruction loss.
    mean = losses.reconstruction(logits, batch_of(tokens, weights))
    assert float(sums["loss_sum"] / sums["count"]) == pytest.approx(float(mean), rel=1e-6)


def test_metric_sums_with_given_loss_reproduces_it():
    batch = batch_of(TOKENS)
    sums = losses.metric_sums(LOGITS, batch, loss=jnp.float32(0.7))
    assert float(sums["loss_sum"]) == pytest.approx(0.7 * 3)
    plain = losses.metric_sums(LOGITS, batch)
    given = losses.metric_sums(LOGITS, batch, losses.reconstruction(LOGITS, batch))
    assert float(given["loss_sum"]) == pytest.approx(float(plain["loss_sum"]), rel=1e-6)


def test_everything_jits_without_host_syncs():
    batch = batch_of(TOKENS)
    step = jax.jit(lambda logits, batch: losses.metric_sums(logits, batch, losses.reconstruction(logits, batch)))
    sums = step(LOGITS, batch)
    assert float(sums["count"]) == 3
    jaxpr = str(jax.make_jaxpr(lambda l, b: losses.metric_sums(l, b))(LOGITS, batch))
    assert "callback" not in jaxpr


def test_bce_softmax_is_the_prototypes_loss_with_n_masked():
    got = losses.reconstruction(LOGITS, batch_of(TOKENS), objective="bce_softmax")
    # Per position: -mean over the 4 bases of y log p + (1 - y) log(1 - p).
    row0 = -(math.log(1 / 4) + 3 * math.log(3 / 4)) / 4
    row1 = -(math.log(5 / 8) + 3 * math.log(7 / 8)) / 4
    row2 = -(math.log(1 / 11) + math.log(3 / 11) + 2 * math.log(10 / 11)) / 4  # target G, p(C) = 8 / 11
    assert float(got) == pytest.approx((row0 + row1 + row2) / 3, rel=1e-5)
    # Saturated wrong logits hit torch.nn.BCELoss's -100 floor instead of overflowing.
    extreme = losses.bce_softmax(jnp.asarray([[[0.0, 1e4, 0.0, 0.0]]]), jnp.asarray([[A]], jnp.int8))
    assert float(extreme[0, 0]) == pytest.approx((100 + 100) / 4, rel=1e-4)
    # Evaluation metrics stay cross-entropy whatever the training objective.
    sums = losses.metric_sums(LOGITS, batch_of(TOKENS))
    assert float(sums["loss_sum"] / sums["count"]) == pytest.approx(float(losses.reconstruction(LOGITS, batch_of(TOKENS))))
    with pytest.raises(ValueError, match="model.objective"):
        losses.reconstruction(LOGITS, batch_of(TOKENS), objective="bce")


def test_bce_softmax_reaches_the_train_step_and_is_checked_by_config():
    from jaxseq import steps
    from jaxseq.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="model.objective: unknown objective 'bce'"):
        load_config(None, ["model.objective=bce"])
    config = load_config(None, ["model.name=autoencoder", "model.latent_len=2", "model.kernel_len=3",
                                "data.window_len=16", "model.objective=bce_softmax"])
    state = steps.create_train_state(config)
    tokens = np.random.default_rng(0).integers(0, 4, (8, 16)).astype(np.int8)
    batch = {"tokens": tokens, "weights": np.ones(8, np.float32)}
    hparams = {"input_dropout": jnp.float32(0.0), "latent_noise_std": jnp.float32(0.0)}
    # One step of a tiny model; no dropout or noise, so the step's loss is a function of the batch.
    step = jax.jit(functools.partial(steps.train_step, neighbour_loss_weight=0.0, objective=config.model.objective))
    _, metrics = step(state, batch, jax.random.key(0), hparams)
    (logits, _), _ = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, tokens, train=True,
                                    mutable=["batch_stats"])
    trained_on = float(metrics["loss_sum"] / metrics["count"])
    assert trained_on == pytest.approx(float(losses.reconstruction(logits, batch, objective="bce_softmax")), rel=1e-5)
    assert trained_on != pytest.approx(float(losses.reconstruction(logits, batch)), rel=1e-3)
