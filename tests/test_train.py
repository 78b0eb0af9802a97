import json
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseq import checkpoint, steps, train
from jaxseq.config import load_config

SMALL = ["model.name=autoencoder", "model.kernel_len=3", "model.latent_len=6", "data.window_len=40",
         "train.batch_size=8", "train.log_every=2", "train.eval_every=2", "train.checkpoint_every=2",
         "train.histogram_every=2", "train.steps_per_call=2", "train.examples=1", "train.eval_max_windows=64"]


def small_config(tmp_path, *extra):
    return load_config(None, SMALL + [f"data.cache_dir={tmp_path / 'cache'}", *extra])


def params_of(state):
    return jax.tree.map(np.asarray, jax.device_get(state.params))


def restore_latest(workdir, config):
    manager = checkpoint.create_manager(workdir, read_only=True)
    step = checkpoint.latest_step(manager)
    state, loader_state, meta = checkpoint.restore(manager, step, steps.create_train_state(config))
    manager.close()
    return step, state, loader_state, meta


def test_two_step_run_writes_checkpoint_logs_and_metrics(tmp_path):
    config = small_config(tmp_path, "train.num_steps=2")
    result = train.train_and_evaluate(config, tmp_path / "run")
    assert result["step"] == 2
    assert 0.0 <= result["test_accuracy"] <= 1.0 and np.isfinite(result["test_loss"])
    step, state, loader_state, meta = restore_latest(tmp_path / "run", config)
    assert step == 2 and int(state.step) == 2
    assert meta["config"]["train"]["num_steps"] == 2
    assert loader_state  # the loader's position is saved with the model
    assert json.loads((tmp_path / "run" / "final_metrics.json").read_text())["step"] == 2
    assert (tmp_path / "run" / "config.yaml").is_file()
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_resume_with_unchanged_config_matches_exactly(tmp_path):
    extra = ["model.input_dropout=0.1", "model.latent_noise_std=0.2", "train.num_steps=6"]
    config = small_config(tmp_path, *extra)
    train.train_and_evaluate(config, tmp_path / "straight")
    _, reference, _, _ = restore_latest(tmp_path / "straight", config)

    # Interrupt after the checkpoint at step 2 by deleting later checkpoints of an identical run.
    train.train_and_evaluate(config, tmp_path / "resumed")
    manager = checkpoint.create_manager(tmp_path / "resumed")
    for step in manager.all_steps():
        if step > 2:
            manager.delete(step)
    manager.close()
    train.train_and_evaluate(config, tmp_path / "resumed", require_checkpoint=True)
    _, resumed, _, _ = restore_latest(tmp_path / "resumed", config)
    for a, b in zip(jax.tree.leaves(params_of(reference)), jax.tree.leaves(params_of(resumed))):
        np.testing.assert_array_equal(a, b)


def test_same_seed_same_result_other_seed_differs(tmp_path):
    results = [train.train_and_evaluate(small_config(tmp_path, "train.num_steps=4", f"train.seed={s}"),
                                        tmp_path / f"run{i}") for i, s in enumerate([0, 0, 1])]
    assert results[0]["test_loss"] == results[1]["test_loss"]
    assert results[0]["test_loss"] != results[2]["test_loss"]


def test_changing_hyperparameters_never_recompiles(tmp_path):
    config = small_config(tmp_path, "train.num_steps=100",
                          "model.latent_noise_std={schedule: linear, value: 0.5, end_value: 0.0}",
                          "model.input_dropout={schedule: linear, value: 0.2, end_value: 0.0}")
    state = steps.create_train_state(config)
    fn = jax.jit(lambda s, b, r: steps.train_steps(s, b, r, hparam_schedules=steps.create_hparam_schedules(config)))
    batch = {"tokens": jnp.zeros((2, 8, 40), jnp.int8), "weights": jnp.ones((2, 8), jnp.float32)}
    rng = jax.random.key(0)
    for _ in range(3):
        state, metrics = fn(state, batch, rng)
    assert int(state.step) == 6
    assert fn._cache_size() == 1


def test_nonfinite_step_is_not_applied(tmp_path):
    config = small_config(tmp_path, "train.num_steps=4", "optim.optimizer=sgd", "optim.schedule=constant")
    state = steps.create_train_state(config)
    batch = {"tokens": jnp.zeros((8, 40), jnp.int8), "weights": jnp.full((8,), jnp.nan, jnp.float32)}
    hparams = {"input_dropout": jnp.float32(0), "latent_noise_std": jnp.float32(0)}
    new_state, metrics = jax.jit(steps.train_step)(state, batch, jax.random.key(0), hparams)
    assert int(new_state.step) == 1
    assert float(metrics["nonfinite_loss"]) == 1.0 and int(metrics["first_bad_step"]) == 0
    for a, b in zip(jax.tree.leaves(params_of(state)), jax.tree.leaves(params_of(new_state))):
        np.testing.assert_array_equal(a, b)


def test_cli_bad_setting_fails_before_compute(tmp_path, capsys):
    code = train.main(["--workdir", str(tmp_path / "run"), "--set", "train.batch_sise=3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown config key 'train.batch_sise'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_cli_resume_without_checkpoint_is_an_error(tmp_path, capsys):
    code = train.main(["--workdir", str(tmp_path / "empty"), "--resume"])
    assert code == 2
    assert "--resume" in capsys.readouterr().err


def test_resume_refuses_architecture_change(tmp_path):
    config = small_config(tmp_path, "train.num_steps=2")
    train.train_and_evaluate(config, tmp_path / "run")
    changed = small_config(tmp_path, "train.num_steps=4", "model.latent_len=7")
    with pytest.raises(Exception, match="model.latent_len: 6 -> 7"):
        train.train_and_evaluate(changed, tmp_path / "run")


def test_a_scanned_call_equals_its_steps_one_by_one(tmp_path):
    """train_steps scans K steps in one call; the same K steps as single train_step calls give the same
    state and metrics (step-keyed randomness and scheduled hparams included)."""
    config = small_config(tmp_path, "train.num_steps=100", "model.latent_noise_std=0.3", "model.input_dropout=0.1")
    schedules = steps.create_hparam_schedules(config)
    fn = jax.jit(lambda s, b, r: steps.train_steps(s, b, r, hparam_schedules=schedules))
    one = jax.jit(lambda s, b, r: steps.train_step(
        s, b, r, {name: jnp.asarray(f(s.step), jnp.float32) for name, f in schedules.items()}))
    rng = jax.random.key(3)
    tokens = jax.random.randint(jax.random.key(1), (6, 8, 40), 0, 4).astype(jnp.int8)
    batches = {"tokens": tokens, "weights": jnp.ones((6, 8), jnp.float32)}
    scanned, m_scan = fn(steps.create_train_state(config), batches, rng)
    state, m_single = steps.create_train_state(config), None
    for i in range(6):
        state, m = one(state, jax.tree.map(lambda x: x[i], batches), rng)
        m_single = steps.add_metrics(m_single, m)
    assert int(scanned.step) == int(state.step) == 6
    for a, b in zip(jax.tree.leaves(params_of(scanned)), jax.tree.leaves(params_of(state))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(m_scan["loss_sum"]), float(m_single["loss_sum"]), rtol=1e-5)
    assert float(m_scan["count"]) == float(m_single["count"]) == 6 * 8 * 40


def test_a_short_call_keeps_its_shape_and_skips_the_padded_steps(tmp_path):
    """A call of k < K steps is padded to K with ``active`` marking the real steps: the same state and
    metrics as an unpadded call of k steps; the padding changes nothing, not even the step counter."""
    config = small_config(tmp_path, "train.num_steps=100", "model.latent_noise_std=0.3", "model.input_dropout=0.1")
    schedules = steps.create_hparam_schedules(config)
    fn = jax.jit(lambda s, b, r, a=None: steps.train_steps(s, b, r, a, hparam_schedules=schedules))
    rng = jax.random.key(3)
    tokens = np.asarray(jax.random.randint(jax.random.key(1), (2, 8, 40), 0, 4), np.int8)
    real = [{"tokens": t, "weights": np.ones(8, np.float32)} for t in tokens]
    padded = steps.stack_batches(real, size=4)
    assert padded["tokens"].shape == (4, 8, 40) and not padded["tokens"][2:].any()
    short, m_short = fn(steps.create_train_state(config), padded, rng, np.array([True, True, False, False]))
    plain, m_plain = fn(steps.create_train_state(config), steps.stack_batches(real), rng)
    assert int(short.step) == int(plain.step) == 2
    for a, b in zip(jax.tree.leaves(params_of(short)), jax.tree.leaves(params_of(plain))):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(float(m_short["loss_sum"]), float(m_plain["loss_sum"]), rtol=1e-6)
    assert float(m_short["count"]) == float(m_plain["count"]) == 2 * 8 * 40
    assert int(m_short["first_bad_step"]) == int(m_plain["first_bad_step"]) == np.iinfo(np.int32).max
    idle, m_idle = fn(plain, padded, rng, np.zeros(4, bool))  # nothing active: nothing changes
    assert int(idle.step) == 2 and float(m_idle["count"]) == 0.0
    for a, b in zip(jax.tree.leaves(params_of(idle)), jax.tree.leaves(params_of(plain))):
        np.testing.assert_array_equal(a, b)


def test_calls_cut_at_odd_events_compile_two_programs_and_train_the_same(tmp_path, monkeypatch):
    """Logs every 6 and evaluations every 5 steps with K = 4 cut calls to lengths 4, 1, 1, 4, 1, 1, 1: one
    program for full calls and one for short ones, and the same parameters as training one step per call."""
    built = []
    real_build = steps.build
    monkeypatch.setattr(steps, "build", lambda config: built.append(real_build(config)) or built[-1])
    odd = ["train.num_steps=13", "train.log_every=6", "train.eval_every=5", "train.checkpoint_every=13",
           "train.histogram_every=0", "train.examples=0"]
    train.train_and_evaluate(small_config(tmp_path, *odd, "train.steps_per_call=4"), tmp_path / "k4")
    assert built[-1].train._cache_size() == 2
    train.train_and_evaluate(small_config(tmp_path, *odd, "train.steps_per_call=1"), tmp_path / "k1")
    assert built[-1].train._cache_size() == 1
    config = small_config(tmp_path, *odd)
    _, k4, _, _ = restore_latest(tmp_path / "k4", config)
    _, k1, _, _ = restore_latest(tmp_path / "k1", config)
    assert int(k4.step) == int(k1.step) == 13
    for a, b in zip(jax.tree.leaves(params_of(k4)), jax.tree.leaves(params_of(k1))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_histogram_and_evaluation_programs_compile_in_the_background(tmp_path, caplog):
    """The first train call compiles while a background thread compiles the histogram-gradient, evaluation
    and example programs; the run's histograms and evaluations (periodic and final) reuse them."""
    caplog.set_level(logging.DEBUG, logger="jax._src.dispatch")  # JAX logs every XLA compilation there
    # A latent size no other test uses, so none of these programs is cached in this process yet.
    train.train_and_evaluate(small_config(tmp_path, "train.num_steps=4", "model.latent_len=7"), tmp_path / "run")
    compiled = [(r.threadName, re.search(r"compilation of (\S+)", r.getMessage()).group(1)) for r in caplog.records
                if "Finished XLA compilation" in r.getMessage()]
    background = sorted(name for thread, name in compiled if thread == "jaxseq-precompile")
    assert background == ["jit(_accumulate)", "jit(_predict)", "jit(compute_grads)"]
    assert not [name for thread, name in compiled if thread != "jaxseq-precompile" and name in background]
    assert ("MainThread", "jit(train_steps)") in compiled
