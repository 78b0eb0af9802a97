"""The hand-written CPU kernels (jaxseq.cpu_kernels) against autodiff of flax's layers, and the two
``model.conv_impl`` values (and both ``train.compute_dtype`` values) training the bundled genome.

Layer cases: every convolution the configs (configs/*.yaml, configs/sweeps/*.yaml) build, plus odd
ones (kernel 1, dilation 4, one channel, even kernel). Each case is jitted once: forward values,
gradients with respect to the input and the parameters, outside and inside ``lax.scan``, for both
implementations, compared to <= 1e-5 relative (max abs difference / max abs value).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseq import checkpoint, config as config_lib, layers, losses, steps

RTOL = 1e-5


def assert_close(got, want, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, what
    scale = max(np.abs(want).max(), 1e-30)
    error = np.abs(got - want).max() / scale
    assert error <= RTOL, f"{what}: relative error {error:.2e}"


def compare(make, x, variables_of=None):
    """Values and gradients of both implementations' layers, outside and inside lax.scan, one jit.

    ``make(impl)`` builds the layer; the loss is ``sum(layer(x) * weights)`` so that every output
    element gets a distinct cotangent. Returns the two implementations' results and the variables.
    """
    modules = {impl: make(impl) for impl in ("flax", "cpu")}
    # Variables and cotangent weights from numpy: eager flax init would compile one kernel per op.
    rng = np.random.default_rng(0)
    fill = lambda leaf: jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape) * rng.choice([-1, 1], leaf.shape), jnp.float32)
    variables = jax.tree.map(fill, jax.eval_shape(lambda: modules["flax"].init(jax.random.key(0), x)))
    out_shape = jax.eval_shape(lambda: modules["flax"].apply(variables, x, mutable=["batch_stats"])[0])
    weights = jnp.asarray(rng.standard_normal(out_shape.shape), jnp.float32)

    def results(module):
        def loss(params, x):
            y, updates = module.apply({**variables, "params": params}, x, mutable=["batch_stats"])
            return jnp.sum(y * weights), (y, updates)

        grad = jax.grad(loss, argnums=(0, 1), has_aux=True)

        def body(carry, x_i):
            (dparams, dx), (y, updates) = grad(variables["params"], x_i)
            return carry + jnp.sum(y), (y, dparams, dx, updates)

        xs = jnp.stack([x, 2.0 * x - 0.5])
        _, scanned = jax.lax.scan(body, jnp.float32(0.0), xs)
        (dparams, dx), (y, updates) = grad(variables["params"], x)
        return {"plain": (y, dparams, dx, updates), "scan": scanned}

    out = jax.jit(lambda: {impl: results(m) for impl, m in modules.items()})()
    for mode in ("plain", "scan"):
        names = ("values", "param grads", "input grads", "batch_stats")
        for name, got, want in zip(names, out["cpu"][mode], out["flax"][mode]):
            jax.tree.map(lambda g, w: assert_close(g, w, f"{mode} {name}"), got, want)
    return out, variables


# (k, C_in, C_out, padding, dilation): configs' convolutions, then odd cases.
CONV_CASES = [
    (9, 4, 18, "VALID", 1),      # autoencoder.yaml, ae_*.yaml enc_conv
    (3, 4, 6, "VALID", 1),       # the single-layer setup
    (9, 4, 27, "VALID", 1),      # sweeps: latent 27
    (3, 4, 1, "VALID", 1),       # sweeps: latent 1 (one channel)
    (9, 4, 24, ((4, 4),), 1),    # multilayer_aemd enc_conv_00
    (9, 24, 24, ((4, 4),), 1),   # multilayer_aemd enc_conv_01
    (9, 4, 16, ((4, 4),), 1),    # multilayer_pooling enc_conv_00
    (3, 4, 64, "SAME", 1),       # dilated enc_conv_0 (sweep)
    (3, 64, 64, "SAME", 2),      # dilated hidden layers
    (3, 64, 64, "SAME", 8),
    (3, 64, 4, "SAME", 1),       # dilated dec_conv_0
    (1, 64, 1, "VALID", 1),      # dilated enc_latent (kernel 1, one channel)
    (1, 1, 64, "VALID", 1),      # dilated dec_latent
    (5, 1, 1, "SAME", 4),        # odd: dilation 4, one channel
    (4, 3, 12, "SAME", 1),       # odd: even kernel, asymmetric padding
    (5, 12, 10, ((1, 3),), 1),   # odd: partial asymmetric padding
]


@pytest.mark.parametrize("k, c_in, c_out, padding, dilation", CONV_CASES)
def test_conv_kernels_match_flax_autodiff(k, c_in, c_out, padding, dilation):
    x = jnp.asarray(np.random.default_rng(2).standard_normal((3, 20, c_in)), jnp.float32)
    out, _ = compare(lambda impl: layers.conv(c_out, k, c_in, padding=padding, dilation=dilation, impl=impl,
                                           name="c"), x)
    span = dilation * (k - 1)
    length = {"SAME": 20, "VALID": 20 - span}.get(padding) if isinstance(padding, str) else 20 + sum(padding[0]) - span
    assert out["flax"]["plain"][0].shape == (3, length, c_out)


# (k, C_in, C_out, PyTorch padding p).
CONV_TRANSPOSE_CASES = [
    (9, 18, 4, 0),    # autoencoder dec_conv
    (3, 6, 4, 0),     # single-layer dec_conv
    (3, 1, 4, 0),     # sweeps: latent 1
    (9, 27, 4, 0),    # sweeps: latent 27
    (9, 24, 24, 4),   # multilayer_aemd dec_conv_01
    (9, 24, 4, 4),    # multilayer_aemd dec_conv_00
    (9, 16, 4, 4),    # multilayer_pooling dec_conv_00
    (1, 3, 5, 0),     # odd: kernel 1
    (5, 12, 10, 1),   # odd: partial crop, many channels
]


@pytest.mark.parametrize("k, c_in, c_out, pad", CONV_TRANSPOSE_CASES)
def test_conv_transpose_kernels_match_flax_autodiff(k, c_in, c_out, pad):
    x = jnp.asarray(np.random.default_rng(3).standard_normal((3, 16, c_in)), jnp.float32)
    out, _ = compare(lambda impl: layers.conv_transpose(c_out, k, pad, impl=impl, name="t"), x)
    assert out["flax"]["plain"][0].shape == (3, 16 + k - 1 - 2 * pad, c_out)


@pytest.mark.parametrize("shape", [(4, 16, 24), (16, 200), (6, 8, 1)])
def test_batch_norm_kernel_matches_flax_in_train_mode(shape):
    # Shifted and scaled, so the two-pass variance matters; running statistics must update alike.
    x = jnp.asarray(3.0 + 2.0 * np.random.default_rng(4).standard_normal(shape), jnp.float32)
    out, variables = compare(lambda impl: layers.batch_norm(True, impl=impl, name="bn"), x)
    updates, before = out["cpu"]["plain"][3]["batch_stats"], variables["batch_stats"]
    flat = np.asarray(x, np.float64).reshape(-1, shape[-1])
    # PyTorch momentum 0.1, biased variance (flax's convention, see jaxseq.layers).
    np.testing.assert_allclose(updates["mean"], 0.9 * before["mean"] + 0.1 * flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(updates["var"], 0.9 * before["var"] + 0.1 * flat.var(0), rtol=1e-5)


def test_batch_norm_kernel_matches_flax_in_eval_mode():
    x = jax.random.normal(jax.random.key(5), (4, 16, 8), jnp.float32)
    stats = {"mean": jnp.linspace(-1.0, 1.0, 8), "var": jnp.linspace(0.5, 2.0, 8)}
    params = {"scale": jnp.linspace(0.5, 1.5, 8), "bias": jnp.linspace(-0.2, 0.2, 8)}
    got = jax.jit(lambda: {impl: layers.batch_norm(False, impl=impl, name="bn").apply(
        {"params": params, "batch_stats": stats}, x) for impl in ("flax", "cpu")})()
    assert_close(got["cpu"], got["flax"], "eval values")
    want = (np.asarray(x) - stats["mean"]) / np.sqrt(np.asarray(stats["var"]) + 1e-5) * params["scale"] + params["bias"]
    assert_close(got["cpu"], want, "eval vs formula")


@pytest.mark.parametrize("impl", ["flax", "cpu"])
def test_bfloat16_layers_compute_in_bfloat16_with_float32_parameters(impl):
    x = jax.random.normal(jax.random.key(6), (2, 12, 24), jnp.float32)
    conv = layers.conv(24, 9, 24, padding=((4, 4),), impl=impl, dtype=jnp.bfloat16, name="c")
    variables = jax.jit(conv.init)(jax.random.key(0), x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    y = jax.jit(conv.apply)(variables, x)
    assert y.dtype == jnp.bfloat16
    full = jax.jit(layers.conv(24, 9, 24, padding=((4, 4),), impl=impl, name="c").apply)(variables, x)
    assert_close_loose = np.abs(np.asarray(y, np.float32) - full).max() / np.abs(full).max()
    assert 0 < assert_close_loose < 2e-2  # bfloat16 rounding: different from float32, but close
    grads = jax.jit(jax.grad(lambda p: jnp.sum(conv.apply({"params": p}, x).astype(jnp.float32))))(variables["params"])
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(grads))


# ---------------------------------------------------------------------------------------------------
# Whole models: training on the bundled lambda genome.

TINY = ["model.name=multilayer", "model.kernel_len=5", "model.latent_len=8", "model.hidden_len=8",
        "model.n_linear=1", "model.n_conv_before_pool=1", "model.input_dropout=0.05", "model.latent_noise_std=0.1",
        "data.window_len=16", "train.batch_size=16", "optim.optimizer=adam", "optim.learning_rate=0.01",
        "optim.schedule=constant"]
STEPS = 30
HELD_OUT = 16  # batches scored after training


@pytest.fixture(scope="module")
def batches():
    config = config_lib.load_config(None, TINY)
    data = steps.open_data(config)
    loader = steps.create_train_loader(config, data)
    try:
        stack = [next(loader) for _ in range(STEPS + HELD_OUT)]
    finally:
        loader.close()
    tokens = np.stack([b["tokens"] for b in stack])
    weights = np.stack([b["weights"] for b in stack])
    return ({"tokens": tokens[:STEPS], "weights": weights[:STEPS]},
            {"tokens": tokens[STEPS:].reshape(-1, tokens.shape[-1]), "weights": weights[STEPS:].reshape(-1)})


def eval_sums(state, batch):
    """Deterministic metric sums of one batch (running batch statistics, no dropout or noise)."""
    logits, _ = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, batch["tokens"],
                               train=False)
    return losses.metric_sums(logits, batch)


def run_training(overrides, batches):
    config = config_lib.load_config(None, TINY + overrides)
    state = steps.create_train_state(config)
    step = jax.jit(lambda s, b, r: steps.train_steps(s, b, r, hparam_schedules=steps.create_hparam_schedules(config)))
    state, metrics = step(state, batches[0], jax.random.key(1))  # 30 steps: the lax.scan path
    held_out = jax.jit(eval_sums)(state, batches[1])
    return config, state, jax.device_get(metrics), jax.device_get(held_out)


@pytest.fixture(scope="module")
def trained(batches):
    return {impl: run_training([f"model.conv_impl={impl}"], batches) for impl in ("flax", "cpu")}


def test_flax_and_cpu_layers_train_to_the_same_loss(trained):
    (_, flax_state, flax_metrics, flax_eval), (_, cpu_state, cpu_metrics, cpu_eval) = trained["flax"], trained["cpu"]
    assert int(flax_state.step) == int(cpu_state.step) == STEPS
    assert flax_metrics["loss_sum"] > 0
    np.testing.assert_allclose(cpu_metrics["loss_sum"], flax_metrics["loss_sum"], rtol=1e-4)
    np.testing.assert_allclose(cpu_eval["loss_sum"], flax_eval["loss_sum"], rtol=1e-4)
    assert jax.tree.structure(flax_state.params) == jax.tree.structure(cpu_state.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5), cpu_state.params,
                 flax_state.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5), cpu_state.batch_stats,
                 flax_state.batch_stats)


@pytest.mark.parametrize("saved, restored", [("flax", "cpu"), ("cpu", "flax")])
def test_checkpoint_saved_under_one_impl_restores_under_the_other(trained, batches, tmp_path, saved, restored):
    _, state, _, _ = trained[saved]
    template = trained[restored][1]  # a state built under the other impl (its values are overwritten)
    manager = checkpoint.create_manager(tmp_path)
    checkpoint.save(manager, STEPS, state, {}, {})
    checkpoint.wait(manager)
    back, _, _ = checkpoint.restore(manager, STEPS, template)
    manager.close()
    assert back.apply_fn is template.apply_fn
    jax.tree.map(np.testing.assert_array_equal, (back.params, back.batch_stats), (state.params, state.batch_stats))

    def logits(s):
        return jax.jit(s.apply_fn, static_argnames="train")(
            {"params": s.params, "batch_stats": s.batch_stats}, batches[1]["tokens"], train=False)[0]

    assert_close(logits(back), logits(state), f"logits saved under {saved}, run under {restored}")


def test_bfloat16_trains_to_float32_accuracy(trained, batches):
    config, state, _, bf16_eval = run_training(["train.compute_dtype=bfloat16"], batches)
    assert jax.tree.all(jax.tree.map(lambda a: a.dtype == jnp.float32, state.params))
    floats = [a for a in jax.tree.leaves(state.opt_state) if jnp.issubdtype(a.dtype, jnp.floating)]
    assert floats and all(a.dtype == jnp.float32 for a in floats)  # Adam's moments stay float32
    logits, latent = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                                    batches[1]["tokens"][:2], train=False)
    assert logits.dtype == latent.dtype == jnp.float32
    f32_eval = trained[layers.resolve_conv_impl(config.model.conv_impl)][3]
    accuracy = {name: 100 * e["correct"] / e["count"] for name, e in [("f32", f32_eval), ("bf16", bf16_eval)]}
    assert accuracy["f32"] > 30  # learnt something: chance is ~25%
    assert abs(accuracy["bf16"] - accuracy["f32"]) <= 1.0, accuracy
    # Same checkpoint layout (tree, shapes, dtypes) as a float32 run.
    layout = lambda s: jax.tree.map(lambda a: (a.shape, a.dtype), (s.step, s.params, s.batch_stats, s.opt_state))
    assert layout(state) == layout(trained["flax"][1])


@pytest.mark.parametrize("keep", [0.0, 0.03, 0.5, 0.95, 1.0])
def test_keep_mask_has_bernoulli_statistics(keep):
    # 16 bits per element (layers.keep_mask): the mean is keep to sampling error, odd sizes included.
    mask = np.asarray(jax.jit(layers.keep_mask, static_argnums=2)(jax.random.key(0), keep, (7, 301, 97)))
    assert mask.shape == (7, 301, 97) and mask.dtype == bool
    assert abs(mask.mean() - keep) <= 5 * np.sqrt(keep * (1 - keep) / mask.size) + 1e-5
    if 0.0 < keep < 1.0:  # elements i and i + n/2 share a 32-bit word: they agree only as often as chance says
        flat = mask.ravel()
        half = (flat.size + 1) // 2
        agree = (flat[:flat.size - half] == flat[half:]).mean()
        assert abs(agree - (keep ** 2 + (1 - keep) ** 2)) < 0.01


def test_dropout_scales_kept_values_and_is_off_when_deterministic():
    x = jnp.ones((64, 128), jnp.float32)
    y = np.asarray(layers.Dropout(0.25).apply({}, x, rngs={"dropout": jax.random.key(1)}))
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.02
    np.testing.assert_array_equal(layers.Dropout(0.25, deterministic=True).apply({}, x), x)


@pytest.mark.parametrize("shape", [(1,), (7,), (5, 301, 97), (200, 200)])
def test_unrolled_threefry_draws_exactly_what_jax_threefry_draws(shape):
    """Same key, same bits, uniforms, normals, masks and splits: only the lowering differs."""
    key = jax.random.fold_in(jax.random.key(11), 3)
    fast = layers.unrolled_threefry(key)
    assert str(jax.random.key_impl(fast)) == "fry_unrolled" and str(jax.random.key_impl(key)) == "threefry2x32"
    draws = [lambda k: jax.random.bits(k, shape, jnp.uint32), lambda k: jax.random.bits(k, shape, jnp.uint16),
             lambda k: jax.random.normal(k, shape), lambda k: jax.random.uniform(k, shape),
             lambda k: layers.keep_mask(k, 0.95, shape), lambda k: jax.random.normal(jax.random.split(k)[1], shape),
             lambda k: jax.random.bits(jax.random.fold_in(k, 7), shape, jnp.uint32)]
    for draw in draws:
        a, b = np.asarray(jax.jit(draw)(key)), np.asarray(jax.jit(draw)(fast))
        assert a.shape == b.shape and np.array_equal(a, b)
    assert np.unique(np.asarray(jax.random.bits(fast, shape, jnp.uint32))).size > 0.99 * np.prod(shape)
    rbg = jax.random.key(0, impl="rbg")
    assert layers.unrolled_threefry(rbg) is rbg  # other generators are left alone


def test_a_train_step_draws_its_dropout_and_noise_from_the_unrolled_threefry(monkeypatch):
    """The step's masks and noise use the unrolled generator, and the result equals the rolled one's."""
    config = config_lib.load_config(None, ["model.name=multilayer", "model.kernel_len=3", "model.latent_len=8",
                                           "data.window_len=16", "model.hidden_len=4", "model.hidden_dropout=0.2",
                                           "model.input_dropout=0.1", "model.latent_noise_std=0.3",
                                           "train.batch_size=4", "model.conv_impl=cpu"])
    tokens = jax.random.randint(jax.random.key(2), (4, 16), 0, 4).astype(jnp.int8)
    batch = {"tokens": tokens, "weights": jnp.ones((4,), jnp.float32)}
    hparams = {"input_dropout": jnp.float32(0.1), "latent_noise_std": jnp.float32(0.3)}
    seen = []
    real = layers.unrolled_threefry
    monkeypatch.setattr(layers, "unrolled_threefry", lambda k: seen.append(1) or real(k))
    fast, _ = jax.jit(lambda *a: steps.train_step(*a))(steps.create_train_state(config), batch, jax.random.key(5),
                                                      hparams)
    assert seen
    monkeypatch.setattr(layers, "unrolled_threefry", lambda k: seen.clear() or k)
    rolled, _ = jax.jit(lambda *a: steps.train_step(*a))(steps.create_train_state(config), batch, jax.random.key(5),
                                                        hparams)  # a new function: traced again, rolled
    assert not seen
    for a, b in zip(jax.tree.leaves(fast.params), jax.tree.leaves(rolled.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
