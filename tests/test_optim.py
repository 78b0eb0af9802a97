"""Tests for jaxseq.optim: schedule values, optimiser updates, clipping, hyperparameter schedules, errors."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseq import config as config_lib
from jaxseq import optim


def OptimConfig(**fields) -> config_lib.OptimConfig:
    """config.py's OptimConfig (the one set of defaults) with plain SGD at 0.1 unless told otherwise."""
    return dataclasses.replace(config_lib.OptimConfig(optimizer="sgd", learning_rate=0.1, schedule="constant"),
                               **fields)


def ModelConfig(**fields) -> config_lib.ModelConfig:
    return config_lib.ModelConfig(**fields)


def values(schedule, steps):
    return [float(schedule(s)) for s in steps]


def test_constant_schedule():
    schedule = optim.create_learning_rate_schedule(OptimConfig(learning_rate=0.5), 100)
    assert values(schedule, [0, 50, 1000]) == [0.5, 0.5, 0.5]
    assert schedule(3).dtype == jnp.float32


def test_cosine_schedule():
    cfg = OptimConfig(learning_rate=1.0, schedule="cosine", end_value=0.1)
    schedule = optim.create_learning_rate_schedule(cfg, 100)
    want = [1.0, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)), 0.55, 0.1, 0.1]
    np.testing.assert_allclose(values(schedule, [0, 25, 50, 100, 150]), want, rtol=1e-6)


def test_warmup_cosine_schedule():
    cfg = OptimConfig(learning_rate=2.0, schedule="warmup_cosine", warmup_steps=10, end_value=0.0)
    schedule = optim.create_learning_rate_schedule(cfg, 110)
    # Linear 0 -> 2 over 10 steps, then half cosine over the remaining 100 to 0.
    np.testing.assert_allclose(values(schedule, [0, 5, 10, 60, 110]), [0.0, 1.0, 2.0, 1.0, 0.0], atol=1e-6)


def test_exponential_schedule():
    cfg = OptimConfig(learning_rate=1.0, schedule="exponential", decay_rate=0.5, transition_steps=10)
    schedule = optim.create_learning_rate_schedule(cfg, 100)
    np.testing.assert_allclose(values(schedule, [0, 10, 15, 30]), [1.0, 0.5, 0.5 ** 1.5, 0.125], rtol=1e-6)
    stairs = optim.create_learning_rate_schedule(dataclasses.replace(cfg, staircase=True), 100)
    np.testing.assert_allclose(values(stairs, [9, 10, 19, 20]), [1.0, 0.5, 0.5, 0.25], rtol=1e-6)
    floored = optim.create_learning_rate_schedule(dataclasses.replace(cfg, end_value=0.2), 100)
    np.testing.assert_allclose(values(floored, [10, 50]), [0.5, 0.2], rtol=1e-6)
    # transition_steps 0 means "over the whole run".
    whole = optim.create_learning_rate_schedule(dataclasses.replace(cfg, transition_steps=0, decay_rate=0.1), 100)
    np.testing.assert_allclose(values(whole, [100]), [0.1], rtol=1e-5)


def test_piecewise_schedule_scales_multiply_from_each_boundary():
    cfg = OptimConfig(learning_rate=1.0, schedule="piecewise", boundaries=[10, 20], scales=[0.1, 0.5])
    schedule = optim.create_learning_rate_schedule(cfg, 100)
    np.testing.assert_allclose(values(schedule, [0, 9, 10, 19, 20, 99]), [1, 1, 0.1, 0.1, 0.05, 0.05], rtol=1e-6)


def test_warmup_ramps_any_schedule():
    cfg = OptimConfig(learning_rate=1.0, schedule="constant", warmup_steps=4)
    np.testing.assert_allclose(values(optim.create_learning_rate_schedule(cfg, 100), [0, 1, 2, 4, 50]),
                               [0.0, 0.25, 0.5, 1.0, 1.0])
    cfg = OptimConfig(learning_rate=1.0, schedule="piecewise", warmup_steps=4, boundaries=[2], scales=[0.5])
    np.testing.assert_allclose(values(optim.create_learning_rate_schedule(cfg, 100), [1, 2, 3, 4, 10]),
                               [0.25, 0.25, 0.375, 0.5, 0.5])


def test_schedule_works_on_traced_steps():
    schedule = optim.create_learning_rate_schedule(OptimConfig(learning_rate=1.0, schedule="cosine"), 10)
    np.testing.assert_allclose(jax.jit(schedule)(jnp.int32(5)), 0.5, rtol=1e-6)


def test_learning_rate_is_readable_from_opt_state():
    cfg = OptimConfig(learning_rate=1.0, schedule="cosine", grad_clip_norm=5.0)
    tx = optim.create_optimizer(cfg, 10)
    schedule = optim.create_learning_rate_schedule(cfg, 10)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    assert float(optim.current_learning_rate(state)) == 1.0
    update = jax.jit(tx.update)
    for step in range(4):
        _, state = update(params, state, params)
        # The state holds the rate used by the update just made, schedule(step).
        assert float(optim.current_learning_rate(state)) == pytest.approx(float(schedule(step)), rel=1e-6)
    # Also found when nested inside another structure (e.g. a caller's tuple).
    assert float(optim.current_learning_rate((None, [state]))) == pytest.approx(float(schedule(3)))
    with pytest.raises(ValueError, match="no injected learning_rate"):
        optim.current_learning_rate(({}, ()))


def first_updates(cfg, grads, params, n=1):
    tx = optim.create_optimizer(cfg, 100)
    state = tx.init(params)
    out = []
    for _ in range(n):
        updates, state = tx.update(grads, state, params)
        out.append(np.asarray(updates["w"]))
    return out


def test_optimizer_update_rules():
    params, grads = {"w": jnp.asarray([1.0, 2.0])}, {"w": jnp.asarray([0.5, 0.25])}
    g = np.asarray([0.5, 0.25])
    (sgd,) = first_updates(OptimConfig(optimizer="sgd", learning_rate=0.1), grads, params)
    np.testing.assert_allclose(sgd, -0.1 * g, rtol=1e-6)
    momentum = first_updates(OptimConfig(optimizer="momentum", learning_rate=0.1, momentum=0.5), grads, params, n=2)
    np.testing.assert_allclose(momentum[1], -0.1 * (g + 0.5 * g), rtol=1e-6)
    (adam,) = first_updates(OptimConfig(optimizer="adam", learning_rate=0.1), grads, params)
    np.testing.assert_allclose(adam, -0.1 * np.sign(g), rtol=1e-4)  # bias-corrected first step ~ sign
    (adamw,) = first_updates(OptimConfig(optimizer="adamw", learning_rate=0.1, weight_decay=0.5), grads, params)
    np.testing.assert_allclose(adamw, -0.1 * (np.sign(g) + 0.5 * np.asarray([1.0, 2.0])), rtol=1e-4)


def test_gradient_clipping():
    params, grads = {"w": jnp.zeros(2)}, {"w": jnp.asarray([6.0, 8.0])}  # global norm 10
    (clipped,) = first_updates(OptimConfig(learning_rate=1.0, grad_clip_norm=1.0), grads, params)
    np.testing.assert_allclose(clipped, [-0.6, -0.8], rtol=1e-6)
    (loose,) = first_updates(OptimConfig(learning_rate=1.0, grad_clip_norm=100.0), grads, params)
    np.testing.assert_allclose(loose, [-6.0, -8.0], rtol=1e-6)
    (off,) = first_updates(OptimConfig(learning_rate=1.0, grad_clip_norm=0.0), grads, params)
    np.testing.assert_allclose(off, [-6.0, -8.0], rtol=1e-6)


def test_hparam_schedules():
    cfg = ModelConfig(
        input_dropout={"schedule": "piecewise", "boundaries": [10, 20], "values": [0.0, 0.1, 0.2]},
        latent_noise_std={"schedule": "linear", "value": 1.0, "end_value": 0.0, "transition_begin": 10,
                          "transition_steps": 20},
    )
    schedules = optim.create_hparam_schedules(cfg, 100)
    assert set(schedules) == {"input_dropout", "latent_noise_std"}
    np.testing.assert_allclose(values(schedules["input_dropout"], [0, 9, 10, 19, 20, 500]), [0, 0, 0.1, 0.1, 0.2, 0.2],
                               rtol=1e-6)
    np.testing.assert_allclose(values(schedules["latent_noise_std"], [0, 10, 15, 30, 99]), [1, 1, 0.75, 0, 0])
    for schedule in schedules.values():
        value = schedule(5)
        assert value.dtype == jnp.float32 and value.shape == () and not value.weak_type
        np.testing.assert_allclose(jax.jit(schedule)(jnp.int32(15)), schedule(15))


def test_hparam_schedule_shorthands_and_cosine():
    schedules = optim.create_hparam_schedules(ModelConfig(latent_noise_std=0.3), 100)
    assert values(schedules["latent_noise_std"], [0, 99]) == pytest.approx([0.3, 0.3])
    assert values(schedules["input_dropout"], [0, 99]) == [0.0, 0.0]  # the default, 0
    constant = optim.create_hparam_schedules(ModelConfig(input_dropout={"schedule": "constant", "value": 0.05}), 10)
    assert float(constant["input_dropout"](7)) == pytest.approx(0.05)
    spec = {"schedule": "cosine", "value": 0.0, "end_value": 1.0}
    cosine = optim.create_hparam_schedules(ModelConfig(latent_noise_std=spec), 100)
    np.testing.assert_allclose(values(cosine["latent_noise_std"], [0, 25, 50, 100, 200]),
                               [0.0, 0.5 * (1 - math.cos(math.pi / 4)), 0.5, 1.0, 1.0], atol=1e-6)


@pytest.mark.parametrize("fields, message", [
    ({"optimizer": "rmsprop"}, "^optimizer: unknown optimizer 'rmsprop'; choices: sgd, momentum, adam, adamw$"),
    ({"optimizer": "adamm"}, r"unknown optimizer 'adamm' \(did you mean adam"),
    ({"schedule": "linear"}, "choices: constant, cosine, warmup_cosine, exponential, piecewise"),
    ({"learning_rate": 0.0}, r"^learning_rate must be > 0, got 0$"),
    ({"learning_rate": float("nan")}, "^learning_rate must be a finite number, got nan$"),
    ({"learning_rate": float("inf")}, "^learning_rate must be a finite number, got inf$"),
    ({"b1": 1.0}, r"^b1 must be in \[0, 1\), got 1$"),
    ({"b2": float("-inf")}, "^b2 must be a finite number"),
    ({"momentum": -0.1}, r"^momentum must be in \[0, 1\)"),
    ({"weight_decay": -1e-4}, "^weight_decay must be >= 0"),
    ({"grad_clip_norm": -1.0}, "^grad_clip_norm must be >= 0"),
    ({"end_value": float("nan")}, "^end_value must be a finite number"),
    ({"decay_rate": 0.0}, "^decay_rate must be > 0"),
    ({"warmup_steps": 200}, r"^warmup_steps \(200\) must be smaller than the number of training steps \(100\)"),
    ({"schedule": "piecewise", "boundaries": [10, 5], "scales": [1.0, 1.0]}, "strictly increasing"),
    ({"schedule": "piecewise", "boundaries": [10], "scales": []}, "^boundaries: .*expected 1"),
    ({"schedule": "piecewise", "boundaries": [10], "scales": [float("inf")]}, r"^scales\[0\] must be a finite number"),
])
def test_optimizer_config_errors_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        optim.create_optimizer(OptimConfig(**fields), 100)
    with pytest.raises(ValueError, match=message):  # the same check, without building anything
        optim.check_optim(OptimConfig(**fields), 100)


@pytest.mark.parametrize("fields, message", [
    ({"input_dropout": {"schedule": "step", "value": 0.1}}, "choices: constant, linear, cosine, piecewise"),
    ({"input_dropout": 1.0}, r"^input_dropout: value must be in \[0, 1\), got 1$"),
    ({"input_dropout": float("nan")}, "^input_dropout: value must be a finite number, got nan"),
    ({"latent_noise_std": -0.1}, "^latent_noise_std: value must be >= 0"),
    ({"latent_noise_std": float("inf")}, "^latent_noise_std: value must be a finite number, got inf"),
    ({"latent_noise_std": {"schedule": "linear", "value": 0.1, "end_value": -1.0}}, "end_value must be >= 0"),
    ({"latent_noise_std": {"schedule": "linear", "value": 0.1, "end_value": float("nan")}}, "end_value must be a finite"),
    ({"input_dropout": {"schedule": "piecewise", "boundaries": [5], "values": [0.1, float("inf")]}},
     r"input_dropout: values\[1\] must be a finite number"),
    ({"input_dropout": {"schedule": "piecewise", "boundaries": [5], "values": [0.1]}}, "expected 2"),
    ({"input_dropout": {"schedule": "linear"}}, "input_dropout schedule is missing 'value'"),
    ({"input_dropout": {"schedule": "linear", "value": 0.1, "transition_step": 3}},
     r"input_dropout: unknown schedule field 'transition_step' \(did you mean transition_steps"),
    ({"input_dropout": "high"}, "input_dropout: expected a number or a schedule mapping"),
])
def test_hparam_schedule_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        optim.create_hparam_schedules(ModelConfig(**fields), 100)
    with pytest.raises(ValueError, match=message):
        optim.check_hparams(ModelConfig(**fields))
