"""The PyTorch baseline (experiments/torch_baseline) computes the same function, loss and schedules as jaxseq."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch baseline needs the torch extra: pip install -e '.[torch]'")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

# experiments/ is a folder of scripts at the repository root, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.compare_runs import read_run  # noqa: E402
from experiments.torch_baseline import convert  # noqa: E402
from experiments.torch_baseline import models as torch_models  # noqa: E402
from experiments.torch_baseline import train as baseline  # noqa: E402
from jaxseq import losses, optim  # noqa: E402
from jaxseq import steps as jaxseq_steps  # noqa: E402
from jaxseq.config import load_config  # noqa: E402

AUTOENCODER = ["model.name=autoencoder", "model.kernel_len=3", "model.latent_len=6", "data.window_len=40"]
AEMD = ["model.name=multilayer", "model.kernel_len=9", "model.latent_len=200", "data.window_len=64",
        "model.hidden_len=24", "model.pool_size=2", "model.n_conv_and_pool=1", "model.n_conv_before_pool=2",
        "model.n_linear=2"]


def small_multilayer(pool="max", blocks=1, convs=2, linear=2):
    return ["model.name=multilayer", "model.kernel_len=5", "model.latent_len=12", "data.window_len=24",
            "model.hidden_len=6", f"model.pool={pool}", "model.pool_size=2", f"model.n_conv_and_pool={blocks}",
            f"model.n_conv_before_pool={convs}", f"model.n_linear={linear}"]


MULTILAYERS = {
    "max-1block": small_multilayer("max"),
    "avg-1block": small_multilayer("avg"),
    "max-2blocks-3linear": small_multilayer("max", blocks=2, linear=3),
    "avg-2blocks-1conv-1linear": small_multilayer("avg", blocks=2, convs=1, linear=1),
}
# The forward comparisons compile a jax model each: three configs cover max/avg and one/two blocks.
FORWARD = ["max-1block", "avg-1block", "max-2blocks-3linear"]


def tokens_for(config, batch=6, seed=0):
    """Random tokens including N (4) and MASK (5)."""
    return np.random.default_rng(seed).integers(0, 6, (batch, config.data.window_len)).astype(np.int8)


def jaxseq_variables(config, seed=1):
    """A jaxseq model and random variables of its shapes (``eval_shape``: no init compile, keeps tests fast),
    BatchNorm scale/bias/statistics included so the test sees them."""
    model = jaxseq_steps.create_model(config)
    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)},
                                               jnp.zeros((1, config.data.window_len), jnp.int8), train=False))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        if name in ("bias", "mean"):
            return rng.normal(0, 0.3, leaf.shape).astype(np.float32)
        bound = np.sqrt(3.0 / np.prod(leaf.shape[:-1]))  # kernels: unit-variance outputs
        return rng.uniform(-bound, bound, leaf.shape).astype(np.float32)

    return model, jax.tree_util.tree_map_with_path(draw, dict(shapes))


def torch_copy(config, variables):
    model = torch_models.create_model(config)
    convert.load_flax_weights(model, variables["params"], variables.get("batch_stats"))
    return model


def test_autoencoder_logits_equal_jaxseq_with_copied_weights():
    config = load_config(None, AUTOENCODER)
    model, variables = jaxseq_variables(config)
    tokens = tokens_for(config)
    expected, expected_latent = jax.jit(lambda v, t: model.apply(v, t, train=False))(variables, tokens)
    torch_model = torch_copy(config, variables).eval()
    with torch.no_grad():
        logits, latent = torch_model(torch.from_numpy(tokens))
    assert logits.shape == expected.shape == (6, 40, 4)
    np.testing.assert_allclose(logits.numpy(), np.asarray(expected), atol=1e-5, rtol=0)
    # The torch latent is channels first.
    np.testing.assert_allclose(latent.numpy().transpose(0, 2, 1), np.asarray(expected_latent), atol=1e-5, rtol=0)


@pytest.mark.parametrize("overrides", [MULTILAYERS[k] for k in FORWARD], ids=FORWARD)
def test_multilayer_logits_equal_jaxseq_in_eval_mode(overrides):
    config = load_config(None, overrides)
    model, variables = jaxseq_variables(config)
    tokens = tokens_for(config)
    expected, expected_latent = jax.jit(lambda v, t: model.apply(v, t, train=False))(variables, tokens)
    torch_model = torch_copy(config, variables).eval()
    with torch.no_grad():
        logits, latent = torch_model(torch.from_numpy(tokens))
    assert logits.shape == expected.shape == (6, 24, 4)
    assert np.abs(np.asarray(expected)).max() > 0.1  # a real signal, not all zeros
    np.testing.assert_allclose(logits.numpy(), np.asarray(expected), atol=1e-5, rtol=0)
    np.testing.assert_allclose(latent.numpy(), np.asarray(expected_latent), atol=1e-5, rtol=0)


def test_multilayer_train_mode_uses_batch_statistics_like_jaxseq():
    # One block: batch statistics of 8 windows after three ReLU'd dense layers (the 2-block, 3-linear config)
    # are ill-conditioned enough that float32 rounding alone moves logits by ~1e-4 (float64 torch agrees).
    config = load_config(None, MULTILAYERS["max-1block"])
    model, variables = jaxseq_variables(config)
    tokens = tokens_for(config, batch=8)
    expected, updates = jax.jit(lambda v, t: model.apply(v, t, train=True, mutable=["batch_stats"]))(variables, tokens)
    torch_model = torch_copy(config, variables).train()
    with torch.no_grad():
        logits, _ = torch_model(torch.from_numpy(tokens))
    np.testing.assert_allclose(logits.numpy(), np.asarray(expected[0]), atol=1e-5, rtol=0)
    # Running means agree; running variances differ only by PyTorch's unbiased update (jaxseq/layers.py docstring).
    batch, window = tokens.shape
    # Elements per channel each norm sees: positions after pooling times batch; dense norms see the batch.
    elements = {"enc_norm_0": batch * window // 2, "dec_norm_0": batch * window // 2,
                "enc_norm_L1": batch, "dec_norm_L1": batch}
    assert set(updates["batch_stats"]) == set(elements)
    for name, stats in updates["batch_stats"].items():
        norm = torch_model.layers[name]
        old_var = variables["batch_stats"][name]["var"]
        np.testing.assert_allclose(norm.running_mean.numpy(), np.asarray(stats["mean"]), atol=1e-5)
        n = elements[name]
        biased = (np.asarray(stats["var"]) - 0.9 * old_var) / 0.1
        np.testing.assert_allclose(norm.running_var.numpy(), 0.9 * old_var + 0.1 * biased * n / (n - 1), rtol=1e-4)


def test_weights_round_trip_torch_to_flax():
    config = load_config(None, MULTILAYERS["avg-1block"])
    _, variables = jaxseq_variables(config)
    params, batch_stats = convert.torch_to_flax(torch_copy(config, variables))
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(variables["params"])[0], jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b, err_msg=str(path))
    for a, b in zip(jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(batch_stats)):
        np.testing.assert_array_equal(a, b)


def flax_parameter_counts(config) -> dict[str, int]:
    model = jaxseq_steps.create_model(config)
    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)},
                                               jnp.zeros((1, config.data.window_len), jnp.int8), train=False))
    return {name: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree)) for name, tree in shapes["params"].items()}


@pytest.mark.parametrize("overrides", [AUTOENCODER, AEMD, *MULTILAYERS.values()],
                         ids=["autoencoder", "aemd", *MULTILAYERS.keys()])
def test_parameter_counts_per_layer_equal_jaxseq(overrides):
    config = load_config(None, overrides)
    torch_counts = convert.parameter_counts(torch_models.create_model(config))
    assert torch_counts == flax_parameter_counts(config)
    total = sum(p.numel() for p in torch_models.create_model(config).parameters())
    assert sum(torch_counts.values()) == total  # no parameter outside the mapped layers


def test_aemd_parameter_counts_match_the_prototype_hand_count():
    counts = convert.parameter_counts(torch_models.create_model(load_config(None, AEMD)))
    assert counts == {"enc_conv_00": 888, "enc_conv_01": 5208, "enc_norm_0": 48, "enc_linear_0": 153_800,
                      "enc_norm_L1": 400, "enc_linear_1": 40_200, "dec_linear_1": 40_200, "dec_norm_L1": 400,
                      "dec_linear_0": 154_368, "dec_norm_0": 48, "dec_conv_01": 5208, "dec_conv_00": 868}
    assert sum(counts.values()) == 401_636


def random_batch(seed=0, batch=5, length=16):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 6, (batch, length)).astype(np.int8)
    weights = np.ones(batch, np.float32)
    weights[-1] = 0.0  # an eval padding row
    logits = rng.normal(0, 3, (batch, length, 4)).astype(np.float32)
    latent = rng.normal(0, 1, (batch, length - 2, 7)).astype(np.float32)  # (B, L', C) as jaxseq
    return tokens, weights, logits, latent


@pytest.mark.parametrize("neighbour_weight", [0.0, 0.3])
def test_loss_equals_jaxseq_reconstruction(neighbour_weight):
    tokens, weights, logits, latent = random_batch()
    expected = losses.reconstruction(jnp.asarray(logits), {"tokens": tokens, "weights": weights},
                                     jnp.asarray(latent), neighbour_weight)
    batch = {"tokens": torch.from_numpy(tokens), "weights": torch.from_numpy(weights)}
    got = baseline.reconstruction(torch.from_numpy(logits), batch, torch.from_numpy(latent.transpose(0, 2, 1).copy()),
                                  neighbour_weight)
    assert abs(float(got) - float(expected)) <= 1e-6
    assert float(expected) > 0.5


def test_metric_sums_equal_jaxseq():
    tokens, weights, logits, _ = random_batch(seed=3)
    expected = losses.metric_sums(jnp.asarray(logits), {"tokens": tokens, "weights": weights})
    got = baseline.metric_sums(torch.from_numpy(logits), {"tokens": torch.from_numpy(tokens),
                                                          "weights": torch.from_numpy(weights)})
    assert float(got["count"]) == float(expected["count"]) == float(((tokens < 4) * weights[:, None]).sum())
    assert float(got["correct"]) == float(expected["correct"])
    assert abs(float(got["loss_sum"]) - float(expected["loss_sum"])) <= 1e-4


@pytest.mark.parametrize("optim_overrides", [
    ["optim.schedule=warmup_cosine", "optim.warmup_steps=4", "optim.end_value=0.001"],
    ["optim.schedule=exponential", "optim.decay_rate=0.5", "optim.transition_steps=5", "optim.staircase=true"],
    ["optim.schedule=piecewise", "optim.boundaries=[4, 9]", "optim.scales=[0.5, 0.1]", "optim.warmup_steps=3"],
    ["optim.schedule=cosine"],
], ids=["warmup_cosine", "exponential", "piecewise", "cosine"])
def test_lambda_lr_follows_the_optax_schedule(optim_overrides):
    config = load_config(None, AUTOENCODER + ["train.num_steps=12", "optim.optimizer=momentum",
                                              "optim.learning_rate=0.2", *optim_overrides])
    schedule = optim.create_learning_rate_schedule(config.optim, config.train.num_steps)
    model = torch_models.create_model(config)
    optimizer, scheduler, table = baseline.create_optimizer(model, config)
    seen = []
    for _ in range(config.train.num_steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    reference = jax.jit(schedule)  # one scalar step per call, unlike the vectorised table
    expected = [float(reference(np.int32(s))) for s in range(config.train.num_steps)]
    # float32 rounding: the table comes from one vectorised call, the reference from scalar calls.
    np.testing.assert_allclose(seen, expected, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(table[:-1], expected, rtol=1e-5, atol=1e-9)


def test_hparam_tables_follow_jaxseq_schedules():
    config = load_config(None, AUTOENCODER + [
        "train.num_steps=30", "model.input_dropout={schedule: linear, value: 0.2, end_value: 0.0}",
        "model.latent_noise_std={schedule: piecewise, boundaries: [10, 20], values: [0.5, 0.25, 0.0]}"])
    tables = baseline.create_hparam_tables(config)
    schedules = optim.create_hparam_schedules(config.model, 30)
    for name, table in tables.items():
        assert table.shape == (31,)
        reference = jax.jit(schedules[name])  # one scalar step per call, unlike the vectorised table
        np.testing.assert_allclose(table, [float(reference(np.int32(s))) for s in range(31)], rtol=1e-5, atol=1e-7)


def test_two_train_steps_match_jaxseq():
    """Same weights, same batches, no dropout/noise: same parameters after two optimiser steps.

    Adam only: compiling jaxseq's step is the slow part, and Adam's state is the most to get wrong.
    """
    config = load_config(None, AUTOENCODER + ["optim.optimizer=adam", "optim.learning_rate=0.05",
                                              "optim.schedule=cosine", "train.num_steps=10", "train.batch_size=6"])
    model, variables = jaxseq_variables(config)
    state = jaxseq_steps.TrainState.create(apply_fn=model.apply, params=variables["params"], batch_stats={},
                                           tx=optim.create_optimizer(config.optim, config.train.num_steps))
    torch_model = torch_copy(config, variables).train()
    optimizer, scheduler, _ = baseline.create_optimizer(torch_model, config)
    hparams = {"input_dropout": jnp.float32(0), "latent_noise_std": jnp.float32(0)}
    step = jax.jit(jaxseq_steps.train_step)
    for seed in range(2):
        tokens = tokens_for(config, seed=seed)
        batch = {"tokens": tokens, "weights": np.ones(6, np.float32)}
        state, _ = step(state, batch, jax.random.key(0), hparams)
        baseline.train_step(torch_model, optimizer, scheduler, baseline.to_torch(batch),
                            {"input_dropout": 0.0, "latent_noise_std": 0.0})
    params, _ = convert.torch_to_flax(torch_model)
    moved = 0.0
    for (path, a), b, a0 in zip(jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0],
                                jax.tree.leaves(params), jax.tree.leaves(variables["params"])):
        np.testing.assert_allclose(b, a, atol=2e-6, rtol=1e-5, err_msg=str(path))
        moved = max(moved, float(np.abs(a - a0).max()))
    assert moved > 1e-3  # the steps did change the weights


def test_tiny_run_writes_jaxseq_tags_and_files(tmp_path):
    workdir = tmp_path / "run"
    code = baseline.main(["--workdir", str(workdir), "--threads", "1", "--set", "train.num_steps=4",
                          *(f"--set={o}" for o in AUTOENCODER),
                          "--set", "train.batch_size=8", "--set", "train.log_every=2", "--set", "train.eval_every=2",
                          "--set", "train.histogram_every=2", "--set", "train.eval_max_windows=32",
                          "--set", "train.examples=1", "--set", f"data.cache_dir={tmp_path / 'cache'}"])
    assert code == 0
    assert (workdir / "config.yaml").is_file()
    assert load_config(workdir / "config.yaml").model.name == "autoencoder"
    metrics = json.loads((workdir / "final_metrics.json").read_text())
    # The keys of jaxseq.train.train_and_evaluate's result.
    assert set(metrics) == {"step", "valid_loss", "valid_accuracy", "test_loss", "test_accuracy", "test_bases",
                            "windows_per_sec"}
    assert metrics["step"] == 4 and 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["test_bases"] > 0
    run = read_run(workdir)
    assert run.implementation == "torch"
    for tag in ("train/loss", "train/accuracy", "eval/loss", "eval/accuracy", "hparams/learning_rate",
                "perf/windows_per_sec"):
        assert [s.step for s in run.scalars[tag]] == [2, 4], tag
    assert all(np.isfinite(s.value) and s.value > 0 for s in run.scalars["train/loss"])
    checkpoint = torch.load(workdir / "model.pt", weights_only=False)
    assert checkpoint["step"] == 4 and checkpoint["loader"]["batch_index"] == 4
    model = torch_models.create_model(load_config(workdir / "config.yaml"))
    model.load_state_dict(checkpoint["model"])


def test_a_model_the_prototype_lacks_fails_before_writing(tmp_path, capsys):
    code = baseline.main(["--workdir", str(tmp_path / "run"), "--set", "model.name=dilated"])
    assert code == 2
    assert "dilated" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
