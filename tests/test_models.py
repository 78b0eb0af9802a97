"""Tests for jaxseq.models and jaxseq.layers: shapes, parameter counts, PyTorch layer semantics (both
``conv_impl`` values), regularisers, jit stability. Kernel gradients: tests/test_kernels.py."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseq import layers, models
from jaxseq import tokens as tok

RNGS = {"dropout": jax.random.key(1), "noise": jax.random.key(2)}


# ---------------------------------------------------------------------------------------------------
# Pure-numpy references with PyTorch semantics (channels first, PyTorch weight layouts).


def conv1d_ref(x, w, b, pad, dilation=1):
    """PyTorch Conv1d: x (B, C, L), w (O, C, k) -> (B, O, L + 2 pad - dilation (k - 1)); cross-correlation."""
    batch, _, length = x.shape
    out_ch, _, k = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad)))
    out_len = length + 2 * pad - dilation * (k - 1)
    out = np.zeros((batch, out_ch, out_len)) + b[None, :, None]
    for i in range(out_len):
        for kk in range(k):
            out[:, :, i] += np.einsum("bc,oc->bo", xp[:, :, i + dilation * kk], w[:, :, kk])
    return out


def conv_transpose1d_ref(x, w, b, pad, stride=1):
    """PyTorch ConvTranspose1d: x (B, C, L), w (C, O, k); out[o, i*stride - pad + kk] += w[c, o, kk] x[c, i]."""
    batch, _, length = x.shape
    _, out_ch, k = w.shape
    out_len = (length - 1) * stride - 2 * pad + k
    out = np.zeros((batch, out_ch, out_len)) + b[None, :, None]
    for i in range(length):
        for kk in range(k):
            j = i * stride - pad + kk
            if 0 <= j < out_len:
                out[:, :, j] += np.einsum("bc,co->bo", x[:, :, i], w[:, :, kk])
    return out


def upsample_linear_ref(x, scale):
    """PyTorch Upsample(mode='linear', align_corners=False), one loop per output position. x (B, C, L)."""
    length = x.shape[-1]
    out = np.zeros(x.shape[:-1] + (length * scale,))
    for j in range(length * scale):
        src = max((j + 0.5) / scale - 0.5, 0.0)
        lo = int(np.floor(src))
        hi = min(lo + 1, length - 1)
        lam = src - lo
        out[..., j] = (1 - lam) * x[..., lo] + lam * x[..., hi]
    return out


def batch_norm_ref(x, scale, bias, mean, var, train, eps=1e-5):
    """PyTorch BatchNorm1d on (B, C) or (B, C, L); train mode uses the biased batch variance."""
    axes = (0,) if x.ndim == 2 else (0, 2)
    shape = (1, -1) if x.ndim == 2 else (1, -1, 1)
    if train:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * scale.reshape(shape) + bias.reshape(shape)


def torch_layout(params):
    """flax params -> numpy arrays in PyTorch layouts (the mapping documented in models.py)."""
    out = {}
    for name, layer in params.items():
        layer = {k: np.asarray(v, np.float64) for k, v in layer.items()}
        if "kernel" in layer:
            kernel = layer["kernel"]
            # Conv (k, C_in, C_out) and ConvTranspose (k, C_out, C_in) both become weight.transpose(2, 1, 0);
            # Dense (n_in, n_out) becomes weight.T.
            weight = kernel.transpose(2, 1, 0) if kernel.ndim == 3 else kernel.T
            out[name] = {"weight": weight, "bias": layer["bias"]}
        else:
            out[name] = {"weight": layer["scale"], "bias": layer["bias"]}
    return out


def multilayer_ref(m: models.MultilayerAutoencoder, variables, tokens, train):
    """The prototype's MultilayerEncoder forward pass in numpy (no dropout/noise)."""
    w = torch_layout(variables["params"])
    stats = {k: {s: np.asarray(v, np.float64) for s, v in d.items()} for k, d in variables["batch_stats"].items()}

    def bn(x, name):
        return batch_norm_ref(x, w[name]["weight"], w[name]["bias"], stats[name]["mean"], stats[name]["var"], train)

    relu = lambda a: np.maximum(a, 0.0)
    pad = m.kernel_len // 2
    x = np.eye(6, 4)[np.asarray(tokens)].transpose(0, 2, 1)  # (B, 4, L); N and MASK -> zeros
    for i in range(m.n_conv_and_pool):
        for j in range(m.n_conv_before_pool):
            x = relu(conv1d_ref(x, w[f"enc_conv_{i}{j}"]["weight"], w[f"enc_conv_{i}{j}"]["bias"], pad))
        b_, c_, l_ = x.shape
        windows = x.reshape(b_, c_, l_ // m.pool_size, m.pool_size)
        x = windows.max(-1) if m.pool == "max" else windows.mean(-1)
        x = bn(x, f"enc_norm_{i}")
    x = x.reshape(x.shape[0], -1)  # PyTorch .view: channels first
    lin = lambda a, name: a @ w[name]["weight"].T + w[name]["bias"]
    x = lin(x, "enc_linear_0")
    for i in range(1, m.n_linear):
        x = lin(bn(relu(x), f"enc_norm_L{i}"), f"enc_linear_{i}")
    latent = x
    for i in reversed(range(1, m.n_linear)):
        x = bn(relu(lin(x, f"dec_linear_{i}")), f"dec_norm_L{i}")
    x = lin(x, "dec_linear_0").reshape(x.shape[0], m.sizes[-1], m.linear_size)
    for i in reversed(range(m.n_conv_and_pool)):
        x = upsample_linear_ref(bn(relu(x), f"dec_norm_{i}"), m.pool_size)
        for j in reversed(range(1, m.n_conv_before_pool)):
            x = relu(conv_transpose1d_ref(x, w[f"dec_conv_{i}{j}"]["weight"], w[f"dec_conv_{i}{j}"]["bias"], pad))
        x = conv_transpose1d_ref(x, w[f"dec_conv_{i}0"]["weight"], w[f"dec_conv_{i}0"]["bias"], pad)
    return x.transpose(0, 2, 1), latent


# ---------------------------------------------------------------------------------------------------
# Parameter counts, from the prototype's layer definitions (independent of flax).


def conv_params(c_in, c_out, k):  # Conv1d and ConvTranspose1d alike
    return c_in * c_out * k + c_out


def linear_params(n_in, n_out):
    return n_in * n_out + n_out


def norm_params(c):
    return 2 * c


def layer_counts(params) -> dict[str, int]:
    return {name: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(layer)) for name, layer in params.items()}


def init_shapes(model, length, batch=2):
    """Variable shapes without running (or compiling) the initialisers."""
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((batch, length), jnp.int8), train=False))


def init_params(model, length, batch=2):
    """Real flax initialisation (slow-ish to compile: one RNG kernel per parameter)."""
    init = jax.jit(lambda key, tokens: model.init({"params": key}, tokens, train=False))
    return init(jax.random.key(0), jnp.zeros((batch, length), jnp.int8))


def random_variables(model, length, seed=0):
    """Variables with the right shapes, filled from numpy: fast, and BatchNorm statistics non-trivial."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path[-1:])
        u = rng.uniform(-1.0, 1.0, leaf.shape)
        if "kernel" in name:
            value = u / np.sqrt(np.prod(leaf.shape[:-1]))
        elif "scale" in name or "var" in name:
            value = 1.0 + 0.5 * u
        else:
            value = 0.5 * u
        return jnp.asarray(value, jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, init_shapes(model, length))


def jit_apply(model, *, train, mutable=True):
    """model.apply(variables, tokens, hparams, rngs) jitted; returns (logits, latent)."""
    def apply(variables, tokens, hparams=None, rngs=None):
        if mutable:
            return model.apply(variables, tokens, train=train, hparams=hparams, rngs=rngs, mutable=["batch_stats"])[0]
        return model.apply(variables, tokens, train=train, hparams=hparams, rngs=rngs)
    return jax.jit(apply)


AEMD = dict(kernel_len=9, latent_len=200, hidden_len=24, pool="max", pool_size=2, n_conv_and_pool=1,
            n_conv_before_pool=2, n_linear=2)


def test_aemd_parameter_count_matches_prototype_layer_by_layer():
    expected = {
        "enc_conv_00": conv_params(4, 24, 9),
        "enc_conv_01": conv_params(24, 24, 9),
        "enc_norm_0": norm_params(24),
        "enc_linear_0": linear_params(24 * 32, 200),
        "enc_norm_L1": norm_params(200),
        "enc_linear_1": linear_params(200, 200),
        "dec_linear_1": linear_params(200, 200),
        "dec_norm_L1": norm_params(200),
        "dec_linear_0": linear_params(200, 24 * 32),
        "dec_norm_0": norm_params(24),
        "dec_conv_01": conv_params(24, 24, 9),
        "dec_conv_00": conv_params(24, 4, 9),
    }
    model = models.create_model("multilayer", 64, **AEMD)
    counts = layer_counts(init_shapes(model, 64)["params"])
    assert counts == expected
    assert expected == {"enc_conv_00": 888, "enc_conv_01": 5208, "enc_norm_0": 48, "enc_linear_0": 153800,
                        "enc_norm_L1": 400, "enc_linear_1": 40200, "dec_linear_1": 40200, "dec_norm_L1": 400,
                        "dec_linear_0": 154368, "dec_norm_0": 48, "dec_conv_01": 5208, "dec_conv_00": 868}
    assert sum(counts.values()) == 401_636


def test_multilayer_two_blocks_three_linear_avg_pool_parameter_count():
    k, latent, hidden, window = 5, 16, 6, 32
    model = models.MultilayerAutoencoder(kernel_len=k, latent_len=latent, window_len=window, hidden_len=hidden,
                                         pool="avg", pool_size=2, n_conv_and_pool=2, n_conv_before_pool=2,
                                         n_linear=3)
    flat = 12 * (window // 4)
    expected = {
        "enc_conv_00": conv_params(4, 6, k), "enc_conv_01": conv_params(6, 6, k), "enc_norm_0": norm_params(6),
        "enc_conv_10": conv_params(6, 12, k), "enc_conv_11": conv_params(12, 12, k), "enc_norm_1": norm_params(12),
        "enc_linear_0": linear_params(flat, latent),
        "enc_norm_L1": norm_params(latent), "enc_linear_1": linear_params(latent, latent),
        "enc_norm_L2": norm_params(latent), "enc_linear_2": linear_params(latent, latent),
        "dec_linear_2": linear_params(latent, latent), "dec_norm_L2": norm_params(latent),
        "dec_linear_1": linear_params(latent, latent), "dec_norm_L1": norm_params(latent),
        "dec_linear_0": linear_params(latent, flat),
        "dec_norm_1": norm_params(12), "dec_conv_11": conv_params(12, 12, k), "dec_conv_10": conv_params(12, 6, k),
        "dec_norm_0": norm_params(6), "dec_conv_01": conv_params(6, 6, k), "dec_conv_00": conv_params(6, 4, k),
    }
    variables = init_shapes(model, window)
    assert layer_counts(variables["params"]) == expected
    # Running statistics exist for every BatchNorm and are not parameters.
    assert set(variables["batch_stats"]) == {n for n in expected if "_norm_" in n}


def test_autoencoder_parameter_count():
    k, latent = 9, 200
    model = models.create_model("autoencoder", 32, kernel_len=k, latent_len=latent)
    counts = layer_counts(init_shapes(model, 32)["params"])
    assert counts == {"enc_conv": conv_params(4, latent, k), "dec_conv": conv_params(latent, 4, k)}
    assert sum(counts.values()) == 4 * latent * k + latent + latent * 4 * k + 4


def test_dilated_parameter_count():
    k, latent, hidden = 3, 5, 8
    model = models.DilatedAutoencoder(kernel_len=k, latent_len=latent, hidden_len=hidden, dilations=(1, 2, 4))
    counts = layer_counts(init_shapes(model, 16)["params"])
    assert counts == {
        "enc_conv_0": conv_params(4, hidden, k), "enc_conv_1": conv_params(hidden, hidden, k),
        "enc_conv_2": conv_params(hidden, hidden, k), "enc_latent": conv_params(hidden, latent, 1),
        "dec_latent": conv_params(latent, hidden, 1), "dec_conv_2": conv_params(hidden, hidden, k),
        "dec_conv_1": conv_params(hidden, hidden, k), "dec_conv_0": conv_params(hidden, 4, k),
    }


def test_real_init_uses_pytorch_default_bounds_and_creates_batch_stats():
    k, latent, hidden, window = 3, 4, 8, 8
    model = models.MultilayerAutoencoder(kernel_len=k, latent_len=latent, window_len=window, hidden_len=hidden,
                                         n_conv_before_pool=1)
    variables = init_params(model, window)
    assert set(variables) == {"params", "batch_stats"}
    params = jax.tree.map(np.asarray, variables["params"])
    # PyTorch: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases; fan_in = C_in * k for Conv1d,
    # C_out * k for ConvTranspose1d (PyTorch computes it from weight.size(1)), n_in for Linear.
    fan_ins = {"enc_conv_00": 4 * k, "dec_conv_00": 4 * k, "enc_linear_0": hidden * window // 2,
               "enc_linear_1": latent, "dec_linear_0": latent}
    for name, fan_in in fan_ins.items():
        for leaf in params[name].values():
            assert np.abs(leaf).max() <= 1 / np.sqrt(fan_in), name
            assert np.abs(leaf).max() > 0.3 / np.sqrt(fan_in), name  # spread over the range, not tiny
    assert params["enc_conv_00"]["kernel"].shape == (k, 4, hidden)  # (k, C_in, C_out)
    assert params["dec_conv_00"]["kernel"].shape == (k, 4, hidden)  # (k, C_out, C_in) with transpose_kernel
    # BatchNorm starts like PyTorch's: scale 1, bias 0, running mean 0, running var 1.
    np.testing.assert_array_equal(params["enc_norm_L1"]["scale"], np.ones(latent))
    np.testing.assert_array_equal(params["enc_norm_L1"]["bias"], np.zeros(latent))
    np.testing.assert_array_equal(variables["batch_stats"]["enc_norm_0"]["mean"], np.zeros(hidden))
    np.testing.assert_array_equal(variables["batch_stats"]["enc_norm_0"]["var"], np.ones(hidden))


# ---------------------------------------------------------------------------------------------------
# Shapes.


@pytest.mark.parametrize(
    "name, fields, length, latent_shape",
    [
        ("autoencoder", dict(kernel_len=5, latent_len=7), 20, (3, 16, 7)),
        ("autoencoder", dict(kernel_len=4, latent_len=7), 20, (3, 17, 7)),
        ("multilayer", dict(AEMD, latent_len=10, hidden_len=6), 64, (3, 10)),
        ("multilayer", dict(kernel_len=3, latent_len=10, hidden_len=4, pool="avg", pool_size=3, n_conv_and_pool=2,
                            n_conv_before_pool=1, n_linear=1), 18, (3, 10)),
        ("dilated", dict(kernel_len=3, latent_len=6, hidden_len=8, dilations=[1, 2, 4]), 20, (3, 20, 6)),
        ("dilated", dict(kernel_len=4, latent_len=6, hidden_len=8, dilations=(1, 3)), 20, (3, 20, 6)),
    ],
)
def test_output_shapes_train_and_eval(name, fields, length, latent_shape):
    model = models.create_model(name, length, **fields)
    tokens = jax.random.randint(jax.random.key(3), (3, length), 0, 6).astype(jnp.int8)
    variables = init_shapes(model, length, batch=3)
    # eval_shape traces without compiling: shapes and dtypes are all this test is about.
    logits, latent = jax.eval_shape(jit_apply(model, train=False, mutable=False), variables, tokens)
    assert logits.shape == (3, length, 4) and logits.dtype == jnp.float32
    assert latent.shape == latent_shape and latent.dtype == jnp.float32
    hparams = {"input_dropout": jnp.float32(0.2), "latent_noise_std": jnp.float32(0.3)}
    logits_t, latent_t = jax.eval_shape(jit_apply(model, train=True), variables, tokens, hparams, RNGS)
    assert (logits_t.shape, logits_t.dtype) == (logits.shape, logits.dtype)
    assert (latent_t.shape, latent_t.dtype) == (latent.shape, latent.dtype)


# ---------------------------------------------------------------------------------------------------
# PyTorch layer semantics.


@pytest.mark.parametrize("impl", ["flax", "cpu"])
@pytest.mark.parametrize("k, pad", [(5, 0), (5, 2), (3, 1), (4, 0), (1, 0)])
def test_conv_and_conv_transpose_match_pytorch_semantics(k, pad, impl):
    rng = np.random.default_rng(0)
    batch, c_in, c_out, length = 2, 3, 5, 9
    x = rng.normal(size=(batch, c_in, length)).astype(np.float32)

    w_conv = rng.normal(size=(c_out, c_in, k)).astype(np.float32)
    b = rng.normal(size=c_out).astype(np.float32)
    conv = layers.conv(c_out, k, c_in, padding=((pad, pad),), impl=impl, name="c")
    got = conv.apply({"params": {"kernel": w_conv.transpose(2, 1, 0), "bias": b}}, x.transpose(0, 2, 1))
    np.testing.assert_allclose(np.asarray(got).transpose(0, 2, 1), conv1d_ref(x, w_conv, b, pad), atol=1e-5)

    w_t = rng.normal(size=(c_in, c_out, k)).astype(np.float32)  # PyTorch ConvTranspose1d (C_in, C_out, k)
    conv_t = layers.conv_transpose(c_out, k, pad, impl=impl, name="t")
    got = conv_t.apply({"params": {"kernel": w_t.transpose(2, 1, 0), "bias": b}}, x.transpose(0, 2, 1))
    want = conv_transpose1d_ref(x, w_t, b, pad)
    assert got.shape == (batch, length - 2 * pad + k - 1, c_out)
    np.testing.assert_allclose(np.asarray(got).transpose(0, 2, 1), want, atol=1e-5)


def test_conv_transpose_reference_is_a_true_transpose():
    # <conv_t(x), y> == <x, conv(y)> with the same weights: pins down the reference's kernel orientation.
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 2, 5))  # ConvTranspose (C_in=3, C_out=2, k) == Conv1d (O=3, C=2, k)
    x, y = rng.normal(size=(1, 3, 7)), rng.normal(size=(1, 2, 11))
    lhs = np.sum(conv_transpose1d_ref(x, w, np.zeros(2), 0) * y)
    rhs = np.sum(x * conv1d_ref(y, w, np.zeros(3), 0))
    assert lhs == pytest.approx(rhs)


def test_autoencoder_layers_match_pytorch_reference():
    model = models.Autoencoder(kernel_len=5, latent_len=6)
    tokens = jax.random.randint(jax.random.key(4), (2, 13), 0, 6)
    variables = random_variables(model, 13)
    logits, latent = jit_apply(model, train=False, mutable=False)(variables, tokens)
    w = torch_layout(variables["params"])
    x = np.eye(6, 4)[np.asarray(tokens)].transpose(0, 2, 1)
    hidden = np.maximum(conv1d_ref(x, w["enc_conv"]["weight"], w["enc_conv"]["bias"], 0), 0)
    want = conv_transpose1d_ref(hidden, w["dec_conv"]["weight"], w["dec_conv"]["bias"], 0)
    np.testing.assert_allclose(np.asarray(latent), hidden.transpose(0, 2, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(logits), want.transpose(0, 2, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize(
    "fields, window",
    [
        (dict(kernel_len=5, latent_len=12, hidden_len=6), 16),
        (dict(kernel_len=3, latent_len=8, hidden_len=4, pool="avg", pool_size=3, n_conv_and_pool=2,
              n_conv_before_pool=3, n_linear=3), 18),
    ],
)
@pytest.mark.parametrize("impl", ["flax", "cpu"])
def test_multilayer_matches_numpy_prototype(fields, window, train, impl):
    model = models.MultilayerAutoencoder(window_len=window, conv_impl=impl, **fields)
    tokens = jax.random.randint(jax.random.key(5), (6, window), 0, 6)
    # Non-trivial BatchNorm parameters and running statistics, so a mix-up would show.
    variables = random_variables(model, window)
    logits, latent = jit_apply(model, train=train)(variables, tokens)
    want_logits, want_latent = multilayer_ref(model, variables, tokens, train)
    scale = np.abs(want_logits).max()
    np.testing.assert_allclose(np.asarray(latent), want_latent, rtol=1e-4, atol=1e-5 * np.abs(want_latent).max())
    np.testing.assert_allclose(np.asarray(logits), want_logits, rtol=1e-4, atol=1e-5 * scale)


def test_upsample_linear_hand_computed_and_reference():
    x = jnp.asarray([0.0, 1.0, 4.0]).reshape(1, 3, 1)
    got = layers.upsample_linear(x, 2)[0, :, 0]
    # src = (j + 0.5) / 2 - 0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25, 1.75, 2.25 (right neighbour clamped)
    np.testing.assert_allclose(got, [0.0, 0.25, 0.75, 1.75, 3.25, 4.0], atol=1e-7)
    rng = np.random.default_rng(2)
    for scale in (2, 3):
        x = rng.normal(size=(2, 5, 3)).astype(np.float32)  # (B, L, C)
        want = upsample_linear_ref(x.transpose(0, 2, 1), scale).transpose(0, 2, 1)
        np.testing.assert_allclose(layers.upsample_linear(jnp.asarray(x), scale), want, atol=1e-6)
        # jax.image.resize's 'linear' (triangle kernel, renormalised at the edges) agrees too.
        resized = jax.image.resize(jnp.asarray(x), (2, 5 * scale, 3), "linear")
        np.testing.assert_allclose(resized, want, atol=1e-5)


@pytest.mark.parametrize("impl", ["flax", "cpu"])
def test_batch_norm_running_statistics_use_pytorch_momentum(impl):
    x = jax.random.normal(jax.random.key(7), (4, 10, 3)) * 2.0 + 1.0
    bn = layers.batch_norm(True, impl=impl, name="bn")
    variables = bn.init(jax.random.key(0), x)
    _, updates = bn.apply(variables, x, mutable=["batch_stats"])
    flat = np.asarray(x).reshape(-1, 3)
    # PyTorch momentum 0.1: running = 0.9 * running + 0.1 * batch (flax keeps the biased variance).
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * flat.var(0), rtol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Regularisers: SeqDropout, GaussianNoise, train/eval behaviour.


def test_seq_dropout_masks_whole_positions_at_rate():
    tokens = jnp.zeros((8, 500), jnp.int8) + 2
    layer = layers.SeqDropout()
    dropped = layer.apply({}, tokens, jnp.float32(0.3), deterministic=False, rngs={"dropout": jax.random.key(0)})
    assert dropped.dtype == tokens.dtype
    assert set(np.unique(np.asarray(dropped))) == {2, tok.MASK}
    assert abs(float(jnp.mean(dropped == tok.MASK)) - 0.3) < 0.02
    embedded = layers.embed(dropped)
    # Dropped positions are all-zero, kept ones exactly one-hot (the prototype's Dropout2d * (1 - p)).
    np.testing.assert_array_equal(embedded.sum(-1), (dropped != tok.MASK).astype(np.float32))
    same = layer.apply({}, tokens, jnp.float32(0.0), deterministic=False, rngs={"dropout": jax.random.key(0)})
    np.testing.assert_array_equal(same, tokens)
    assert layer.apply({}, tokens, jnp.float32(0.9), deterministic=True) is tokens


def test_gaussian_noise_train_only_and_zero_std_is_identity():
    x = jnp.arange(12.0).reshape(3, 4)
    layer = layers.GaussianNoise()
    noisy = layer.apply({}, x, jnp.float32(0.5), deterministic=False, rngs={"noise": jax.random.key(0)})
    assert not np.allclose(noisy, x)
    assert abs(float(jnp.std(noisy - x)) - 0.5) < 0.3
    zero = layer.apply({}, x, jnp.float32(0.0), deterministic=False, rngs={"noise": jax.random.key(0)})
    np.testing.assert_array_equal(zero, x)
    np.testing.assert_array_equal(layer.apply({}, x, jnp.float32(0.5), deterministic=True), x)


def test_embedding_zeroes_n_and_mask():
    emb = layers.embed(jnp.asarray([[0, 1, 2, 3, tok.N, tok.MASK]], jnp.int8))
    np.testing.assert_array_equal(emb[0], np.vstack([np.eye(4), np.zeros((2, 4))]))


@pytest.mark.parametrize("name, fields, length", [
    ("autoencoder", dict(kernel_len=5, latent_len=6), 16),
    ("multilayer", dict(kernel_len=3, latent_len=8, hidden_len=4, hidden_dropout=0.3), 16),
    ("dilated", dict(kernel_len=3, latent_len=6, hidden_len=8, dilations=(1, 2), hidden_dropout=0.3), 16),
])
def test_regularisers_only_in_train_mode(name, fields, length):
    model = models.create_model(name, length, **fields)
    tokens = jax.random.randint(jax.random.key(8), (4, length), 0, 4)
    variables = random_variables(model, length)
    hparams = {"input_dropout": jnp.float32(0.3), "latent_noise_std": jnp.float32(1.0)}
    jitted = {train: jit_apply(model, train=train) for train in (False, True)}
    apply = lambda key, train: jitted[train](variables, tokens, hparams,
                                             {"dropout": key, "noise": jax.random.fold_in(key, 1)})[0]
    # Eval mode ignores rngs and hparams entirely.
    np.testing.assert_array_equal(apply(jax.random.key(0), False), apply(jax.random.key(1), False))
    np.testing.assert_array_equal(apply(jax.random.key(0), False), jitted[False](variables, tokens)[0])
    # Train mode is random: different keys, different outputs; same key, same output.
    assert not np.allclose(apply(jax.random.key(0), True), apply(jax.random.key(1), True))
    np.testing.assert_array_equal(apply(jax.random.key(0), True), apply(jax.random.key(0), True))


def test_autoencoder_zero_rates_in_train_mode_equal_eval_and_latent_is_clean():
    model = models.Autoencoder(kernel_len=5, latent_len=6)
    tokens = jax.random.randint(jax.random.key(9), (3, 20), 0, 6)
    variables = random_variables(model, 20)
    train_apply, eval_apply = jit_apply(model, train=True), jit_apply(model, train=False)
    zeros = {"input_dropout": jnp.float32(0.0), "latent_noise_std": jnp.float32(0.0)}
    train_out = train_apply(variables, tokens, zeros, RNGS)
    eval_out = eval_apply(variables, tokens, zeros, RNGS)
    np.testing.assert_array_equal(train_out[0], eval_out[0])
    np.testing.assert_array_equal(train_out[1], eval_out[1])
    # hparams=None in train mode needs no rngs and is the same as zero rates.
    np.testing.assert_array_equal(model.apply(variables, tokens, train=True)[0], eval_out[0])
    # The latent returned is the one before noise (what the neighbour loss should see).
    noisy = train_apply(variables, tokens, {"input_dropout": jnp.float32(0.0), "latent_noise_std": jnp.float32(5.0)},
                        RNGS)
    np.testing.assert_array_equal(noisy[1], eval_out[1])
    assert not np.allclose(noisy[0], eval_out[0])


@pytest.mark.parametrize("name, fields, length", [
    ("autoencoder", dict(kernel_len=5, latent_len=6), 16),
    ("multilayer", dict(kernel_len=3, latent_len=8, hidden_len=4, hidden_dropout=0.1), 16),
    ("dilated", dict(kernel_len=3, latent_len=6, hidden_len=8, dilations=(1, 2)), 16),
])
def test_hparam_values_do_not_change_the_jaxpr(name, fields, length):
    model = models.create_model(name, length, **fields)
    tokens = jnp.zeros((2, length), jnp.int8)
    variables = random_variables(model, length)

    def step(variables, tokens, hparams):
        return model.apply(variables, tokens, train=True, hparams=hparams, rngs=RNGS, mutable=["batch_stats"])

    first = {"input_dropout": jnp.float32(0.0), "latent_noise_std": jnp.float32(0.0)}
    second = {"input_dropout": jnp.float32(0.25), "latent_noise_std": jnp.float32(0.5)}
    assert str(jax.make_jaxpr(step)(variables, tokens, first)) == str(jax.make_jaxpr(step)(variables, tokens, second))
    if name == "autoencoder":  # compiling is the slow part; one model shows the jit cache stays at one entry
        jitted = jax.jit(step)
        jitted(variables, tokens, first)
        jitted(variables, tokens, second)
        assert jitted._cache_size() == 1


def test_dilated_receptive_field_and_same_padding():
    k, dilations = 3, (1, 2, 4)
    model = models.DilatedAutoencoder(kernel_len=k, latent_len=4, hidden_len=6, dilations=dilations)
    length, where = 64, 32
    tokens = jnp.zeros((1, length), jnp.int32)
    variables = random_variables(model, length)
    apply = jit_apply(model, train=False, mutable=False)
    logits, latent = apply(variables, tokens)
    logits2, latent2 = apply(variables, tokens.at[0, where].set(3))
    radius = (k - 1) // 2 * sum(dilations)  # per half (encoder or decoder)
    changed_latent = np.flatnonzero(np.any(np.asarray(latent != latent2), axis=-1)[0])
    changed_logits = np.flatnonzero(np.any(np.asarray(logits != logits2), axis=-1)[0])
    assert changed_latent.min() >= where - radius and changed_latent.max() <= where + radius
    assert changed_logits.min() >= where - 2 * radius and changed_logits.max() <= where + 2 * radius
    assert changed_logits.max() - changed_logits.min() > 2 * radius  # dilation really widens the field


# ---------------------------------------------------------------------------------------------------
# Registry and validation.


def test_registry_and_create_model_field_filtering():
    assert models.MODELS == {"autoencoder": models.Autoencoder, "multilayer": models.MultilayerAutoencoder,
                             "dilated": models.DilatedAutoencoder}
    config = dict(name="autoencoder", kernel_len=7, latent_len=3, hidden_len=5, pool="avg", dilations=[1, 2],
                  unknown_field=1)
    model = models.create_model("autoencoder", 40, **config)
    assert isinstance(model, models.Autoencoder) and (model.kernel_len, model.latent_len) == (7, 3)
    ml = models.create_model("multilayer", 40, **dict(config, name="multilayer"))
    assert (ml.window_len, ml.pool, ml.hidden_len) == (40, "avg", 5)
    dl = models.create_model("dilated", 40, **dict(config, name="dilated"))
    assert dl.dilations == (1, 2) and hash(dl)


def test_create_model_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="unknown model 'unet'.*autoencoder, dilated, multilayer"):
        models.create_model("unet", 64, kernel_len=3, latent_len=2)


def test_create_model_resolves_conv_impl_and_dtype():
    auto = models.create_model("autoencoder", 40, kernel_len=3, latent_len=2)
    assert auto.conv_impl == ("cpu" if jax.default_backend() == "cpu" else "flax") and auto.dtype == jnp.float32
    bf16 = models.create_model("autoencoder", 40, dtype="bfloat16", kernel_len=3, latent_len=2, conv_impl="flax")
    assert bf16.conv_impl == "flax" and bf16.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="model.conv_impl: unknown implementation 'cudnn'"):
        models.create_model("autoencoder", 40, kernel_len=3, latent_len=2, conv_impl="cudnn")
    with pytest.raises(ValueError, match="train.compute_dtype: unknown dtype 'float16'"):
        models.create_model("autoencoder", 40, dtype="float16", kernel_len=3, latent_len=2)


@pytest.mark.parametrize("fields, message", [
    (dict(kernel_len=9, latent_len=8, window_len=60, pool_size=2, n_conv_and_pool=3), "not divisible by pool_size"),
    (dict(kernel_len=8, latent_len=8, window_len=64), "kernel_len must be odd"),
    (dict(kernel_len=9, latent_len=8, window_len=64, pool="median"), "pool must be 'max' or 'avg'"),
    (dict(kernel_len=9, latent_len=0, window_len=64), "latent_len must be a positive int"),
    (dict(kernel_len=9, latent_len=8, window_len=64, hidden_dropout=1.0), "hidden_dropout"),
])
def test_multilayer_validation(fields, message):
    with pytest.raises(ValueError, match=message):
        models.MultilayerAutoencoder(**fields)


def test_other_validation_errors():
    with pytest.raises(ValueError, match="dilations"):
        models.DilatedAutoencoder(kernel_len=3, latent_len=2, dilations=())
    with pytest.raises(ValueError, match="longer than window_len"):
        models.create_model("autoencoder", 4, kernel_len=9, latent_len=2)
    model = models.MultilayerAutoencoder(kernel_len=3, latent_len=2, window_len=16, hidden_len=2)
    with pytest.raises(ValueError, match="input length 8 != window_len 16"):
        model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int8), train=False)


def test_module_fields_are_the_config_keys():
    # create_model filters by these names; they must stay the model.* config keys in interfaces.md.
    fields = lambda cls: [f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")]
    # conv_impl is model.conv_impl too; dtype comes from train.compute_dtype (create_model's dtype=).
    how = ["conv_impl", "dtype"]
    assert fields(models.Autoencoder) == ["kernel_len", "latent_len"] + how
    assert fields(models.MultilayerAutoencoder) == ["kernel_len", "latent_len", "window_len", "hidden_len", "pool",
                                                    "pool_size", "n_conv_and_pool", "n_conv_before_pool",
                                                    "n_linear", "hidden_dropout"] + how
    assert fields(models.DilatedAutoencoder) == ["kernel_len", "latent_len", "hidden_len", "dilations",
                                                 "hidden_dropout", "residual"] + how
    assert all(issubclass(cls, nn.Module) for cls in models.MODELS.values())
