"""Layers every model is built from, and the one place that picks their implementation.

The convolution, transposed convolution, dense and batch-norm factories (:func:`conv`,
:func:`conv_transpose`, :func:`dense`, :func:`batch_norm`) return flax's ``nn.Conv``,
``nn.ConvTranspose``, ``nn.Dense`` and ``nn.BatchNorm`` (cuDNN on GPUs) for ``impl="flax"``, and the
hand-written equivalents of :mod:`jaxseq.cpu_kernels` for ``impl="cpu"``; both build exactly the same
variables, so a checkpoint restores under either. ``model.conv_impl: auto`` is resolved by
:func:`resolve_conv_impl` alone: ``cpu`` when ``jax.default_backend() == "cpu"``, else ``flax``.

Also here: the one-hot :func:`embed`, input dropout :class:`SeqDropout`, latent noise
:class:`GaussianNoise`, pooling :func:`pool` and :func:`upsample_linear`, with PyTorch semantics, and
:func:`unrolled_threefry`, the key the train step draws its dropout masks and noise from.

Compute dtype (``train.compute_dtype``): parameters are always float32; with ``dtype=bfloat16`` the
convolutions and dense layers cast their inputs and weights to bfloat16 and return bfloat16 (flax's
``dtype=`` / ``param_dtype=float32``; the CPU kernels cast the same way), batch norm computes in
float32. Models return float32 logits and latents.

Initialisation follows PyTorch's defaults (weights and biases uniform in ``±1/sqrt(fan_in)``, BatchNorm
scale 1 and bias 0), so learning rates tuned on the 2020 PyTorch prototype carry over.

Mapping to PyTorch weights (the ``experiments/`` baseline copies weights both ways; shapes below
use PyTorch's names ``C_in``, ``C_out``, ``k``):

===========================  =====================================  ===============================
PyTorch layer                PyTorch tensor                         flax variable
===========================  =====================================  ===============================
``Conv1d(C_in, C_out, k,     ``weight (C_out, C_in, k)``            ``kernel (k, C_in, C_out)`` =
padding=p)``                                                        ``weight.transpose(2, 1, 0)``
                             ``bias (C_out,)``                      ``bias``
``ConvTranspose1d(C_in,      ``weight (C_in, C_out, k)``            ``kernel (k, C_out, C_in)`` =
C_out, k, padding=p)``                                              ``weight.transpose(2, 1, 0)``
                                                                    (``transpose_kernel=True``: no
                                                                    flip, the layer flips itself)
                             ``bias (C_out,)``                      ``bias``
``Linear(n_in, n_out)``      ``weight (n_out, n_in)``               ``kernel (n_in, n_out)`` =
                                                                    ``weight.T``
``BatchNorm1d(C)``           ``weight``, ``bias``                   ``params`` ``scale``, ``bias``
                             ``running_mean``, ``running_var``      ``batch_stats`` ``mean``, ``var``
===========================  =====================================  ===============================

Convolutions use explicit padding so the correspondence is exact: PyTorch ``Conv1d`` padding ``p`` is
flax ``padding=((p, p),)``; PyTorch ``ConvTranspose1d`` padding ``p`` (which *crops* ``p`` from each
end of the full transposed convolution) is flax ``ConvTranspose(padding=((k - 1 - p, k - 1 - p),))``.

BatchNorm: flax ``momentum=0.9`` is PyTorch ``momentum=0.1``; both use ``epsilon=1e-5`` and the
biased batch variance, computed in two passes (``use_fast_variance=False``), to normalise. One known
difference: PyTorch updates ``running_var`` with the *unbiased* batch variance, flax with the biased
one, so running variances drift apart by a factor ``n / (n - 1)`` per update (``n = B * L`` elements
per channel); eval-mode outputs agree exactly once the running statistics are copied.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxseq import cpu_kernels
from jaxseq import tokens as tok

__all__ = [
    "COMPUTE_DTYPES", "CONV_IMPLS", "GaussianNoise", "SeqDropout", "batch_norm", "conv", "conv_transpose",
    "dense", "embed", "hparam", "pool", "resolve_conv_impl", "upsample_linear",
]

#: ``model.conv_impl`` choices.
CONV_IMPLS = ("auto", "flax", "cpu")
#: ``train.compute_dtype`` choices: the dtype convolutions and dense layers compute in.
COMPUTE_DTYPES = ("float32", "bfloat16")


def resolve_conv_impl(impl: str) -> str:
    """The layer implementation to build: ``"flax"`` or ``"cpu"``.

    Args:
      impl: one of :data:`CONV_IMPLS`; ``"auto"`` means ``"cpu"`` on the CPU backend, ``"flax"``
        elsewhere (GPUs: cuDNN). ``"flax"`` on CPU is correct but slow to train: XLA:CPU runs its
        convolution gradients inside the scanned train step ~15x slower (aemd: 553 vs 9,470
        windows/s at K=4, experiments/RESULTS.md "Scan or unroll"; jax-ml/jax#12868).

    Returns:
      ``"flax"`` or ``"cpu"``.

    Raises:
      ValueError: an unknown name.
    """
    if impl not in CONV_IMPLS:
        raise ValueError(f"model.conv_impl: unknown implementation {impl!r}; choose one of {', '.join(CONV_IMPLS)}")
    if impl == "auto":
        return "cpu" if jax.default_backend() == "cpu" else "flax"
    return impl


# PyTorch's default kaiming_uniform(a=sqrt(5)) reduces to U(-1/sqrt(fan_in), 1/sqrt(fan_in)), which is
# variance_scaling(1/3, fan_in, uniform). flax computes fan_in the way PyTorch does for all three layer
# types here (Conv: k*C_in; Dense: n_in; ConvTranspose with transpose_kernel: k*C_out, PyTorch's quirk).
_torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _torch_bias_init(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# ---------------------------------------------------------------------------------------------------
# Factories: flax layers or the CPU kernels, PyTorch initialisation, float32 parameters.


def conv(features: int, kernel_len: int, in_features: int, *, padding, dilation: int = 1, impl: str,
         dtype: Any = jnp.float32, name: str) -> nn.Module:
    """A PyTorch ``Conv1d(in_features, features, kernel_len)`` (cross-correlation, PyTorch init).

    Args:
      features: output channels.
      kernel_len: kernel width.
      in_features: input channels (for the bias initialiser's fan-in).
      padding: ``"VALID"``, ``"SAME"`` (lax's, dilation-aware) or ``((before, after),)``.
      dilation: kernel dilation.
      impl: ``"flax"``, ``"cpu"`` or ``"auto"`` (see :func:`resolve_conv_impl`).
      dtype: computation dtype; parameters are float32.
      name: flax module name.

    Returns:
      A module mapping ``(B, L, in_features)`` to ``(B, L', features)`` in ``dtype`` with params
      ``kernel (kernel_len, in_features, features)`` and ``bias (features,)``.
    """
    if isinstance(padding, str):
        padding = ((0, 0),) if padding == "VALID" else (cpu_kernels.same_padding(kernel_len, dilation),)
    inits = dict(kernel_init=_torch_kernel_init, bias_init=_torch_bias_init(in_features * kernel_len))
    if resolve_conv_impl(impl) == "cpu":
        return cpu_kernels.Conv1d(features, kernel_len, padding=padding, dilation=dilation, dtype=dtype,
                                  name=name, **inits)
    return nn.Conv(features, (kernel_len,), padding=padding, kernel_dilation=(dilation,), dtype=dtype,
                   param_dtype=jnp.float32, name=name, **inits)


def conv_transpose(features: int, kernel_len: int, torch_padding: int, *, impl: str, dtype: Any = jnp.float32,
                   name: str) -> nn.Module:
    """A PyTorch ``ConvTranspose1d(C_in, features, kernel_len, padding=torch_padding)`` (stride 1).

    Args:
      features: output channels.
      kernel_len: kernel width.
      torch_padding: PyTorch's padding ``p`` (crops ``p`` from each end of the full transposed
        convolution), at most ``kernel_len - 1``.
      impl: ``"flax"``, ``"cpu"`` or ``"auto"``.
      dtype: computation dtype; parameters are float32.
      name: flax module name.

    Returns:
      A module mapping ``(B, L, C_in)`` to ``(B, L + kernel_len - 1 - 2 p, features)`` in ``dtype``
      with params ``kernel (kernel_len, features, C_in)`` (``transpose_kernel=True`` layout) and
      ``bias (features,)``.
    """
    crop = kernel_len - 1 - torch_padding
    inits = dict(kernel_init=_torch_kernel_init, bias_init=_torch_bias_init(features * kernel_len))
    if resolve_conv_impl(impl) == "cpu":
        return cpu_kernels.ConvTranspose1d(features, kernel_len, padding=((crop, crop),), dtype=dtype,
                                           name=name, **inits)
    return nn.ConvTranspose(features, (kernel_len,), padding=((crop, crop),), transpose_kernel=True, dtype=dtype,
                            param_dtype=jnp.float32, name=name, **inits)


def dense(features: int, in_features: int, *, dtype: Any = jnp.float32, name: str) -> nn.Dense:
    """A PyTorch ``Linear(in_features, features)``: flax ``nn.Dense`` on every backend (matmuls are fast).

    Returns:
      ``nn.Dense`` mapping ``(..., in_features)`` to ``(..., features)`` in ``dtype``; float32 params.
    """
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=_torch_kernel_init,
                    bias_init=_torch_bias_init(in_features), name=name)


def batch_norm(train: bool, *, impl: str, name: str) -> nn.Module:
    """PyTorch ``BatchNorm1d`` over the last axis: momentum 0.1 (flax 0.9), epsilon 1e-5, two-pass variance.

    Args:
      train: normalise with the batch's statistics and update the running ones; else use the running ones.
      impl: ``"flax"``, ``"cpu"`` or ``"auto"``.
      name: flax module name.

    Returns:
      A module mapping ``(..., C)`` to float32 ``(..., C)`` with params ``scale``, ``bias`` and
      ``batch_stats`` ``mean``, ``var`` (all ``(C,)`` float32).
    """
    if resolve_conv_impl(impl) == "cpu":
        return cpu_kernels.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)
    # Two-pass variance so outputs match PyTorch to float32 rounding.
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, use_fast_variance=False,
                        name=name)


# ---------------------------------------------------------------------------------------------------
# Embedding, pooling, upsampling, regularisers: the same code for every implementation.


def hparam(hparams: Mapping[str, Any] | None, key: str) -> jax.Array | None:
    """``hparams[key]`` as a float32 scalar, or None when missing or a concrete zero (the layer is skipped).

    Args:
      hparams: scheduled regularisers (float32 scalars, possibly traced), or None.
      key: ``"input_dropout"`` or ``"latent_noise_std"``.

    Returns:
      float32 ``()`` array, or None.
    """
    if hparams is None or hparams.get(key) is None:
        return None
    value = jnp.asarray(hparams[key], jnp.float32)
    # A value known at trace time to be zero (a constant schedule, closed over by the jitted step)
    # skips the layer: the result is the same and the step saves drawing random numbers it would
    # multiply by zero. A traced value (a real schedule) always keeps the layer.
    if not isinstance(value, jax.core.Tracer) and value.ndim == 0 and float(value) == 0.0:
        return None
    return value


def embed(tokens: jax.Array) -> jax.Array:
    """One-hot embedding.

    Args:
      tokens: integer ``(B, L)`` tokens in ``0..5``.

    Returns:
      float32 ``(B, L, 4)``; N and MASK positions are all zeros.
    """
    return jax.nn.one_hot(tokens, tok.NUM_BASES, dtype=jnp.float32)


def upsample_linear(x: jax.Array, scale: int) -> jax.Array:
    """PyTorch ``Upsample(scale_factor=scale, mode="linear", align_corners=False)`` along axis 1.

    Output position ``j`` samples the input at ``src = (j + 0.5) / scale - 0.5`` clamped below at 0,
    interpolating between ``floor(src)`` and ``min(floor(src) + 1, L - 1)``.

    Args:
      x: float ``(B, L, C)``.
      scale: integer upsampling factor.

    Returns:
      ``(B, L * scale, C)``, same dtype.
    """
    if scale == 1:
        return x
    # Output j = i * scale + r samples src = i + d_r with d_r = (r + 0.5) / scale - 0.5 in (-0.5, 0.5):
    # between x[i - 1] and x[i] when d_r < 0, between x[i] and x[i + 1] otherwise (the clamped ends
    # repeat the edge value). Static slices instead of a gather keep the backward pass free of
    # scatter-adds, which are slow on CPU.
    prev = jnp.concatenate([x[:, :1], x[:, :-1]], axis=1)
    following = jnp.concatenate([x[:, 1:], x[:, -1:]], axis=1)
    phases = []
    for r in range(scale):
        d = (r + 0.5) / scale - 0.5
        if d < 0:
            frac = np.float32(1.0 + d)
            phases.append(prev * (np.float32(1.0) - frac) + x * frac)
        else:
            frac = np.float32(d)
            phases.append(x * (np.float32(1.0) - frac) + following * frac)
    batch, length, channels = x.shape
    return jnp.stack(phases, axis=2).reshape(batch, length * scale, channels)


def pool(x: jax.Array, size: int, kind: str) -> jax.Array:
    """PyTorch ``MaxPool1d(size)`` / ``AvgPool1d(size)`` (window = stride = size, no padding) along axis 1.

    Written as a reshape and elementwise ops so the backward pass is a select, not XLA's
    select-and-scatter. Max pooling passes the gradient to the first maximum of each window and
    propagates NaN, as PyTorch (and ``nn.max_pool``) do.

    Args:
      x: float ``(B, L, C)``.
      size: window and stride.
      kind: ``"max"`` or ``"avg"``.

    Returns:
      ``(B, L // size, C)``.
    """
    batch, length, channels = x.shape
    n = length // size
    windows = x[:, : n * size].reshape(batch, n, size, channels)
    out = windows[:, :, 0]
    for j in range(1, size):
        value = windows[:, :, j]
        out = jnp.where((out >= value) | jnp.isnan(out), out, value) if kind == "max" else out + value
    return out if kind == "max" else out / size


_THREEFRY = jax.extend.random.threefry_prng_impl
_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _threefry2x32(k1: jax.Array, k2: jax.Array, x0: jax.Array, x1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011), the hash of ``jax.random``, unrolled into plain ops."""
    def rotl(x, r):
        return (x << np.uint32(r)) | (x >> np.uint32(32 - r))

    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _THREEFRY_ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = x0 ^ rotl(x1, r)
        x0, x1 = x0 + ks[(i + 1) % 3], x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def _unrolled_random_bits(key_data: jax.Array, bit_width: int, shape: tuple[int, ...]) -> jax.Array:
    """``jax.random.bits`` of a threefry key, bit for bit; 32-bit draws computed by :func:`_threefry2x32`."""
    if bit_width != 32 or not jax.config.jax_threefry_partitionable or math.prod(shape) >= 2 ** 32:
        return _THREEFRY.random_bits(key_data, bit_width, shape)
    # jax's partitionable stream: element i hashes the 64-bit counter (0, i) and xors the two words.
    counts = lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    hi, lo = _threefry2x32(key_data[0], key_data[1], jnp.zeros_like(counts), counts)
    return hi ^ lo


#: ``jax.random``'s threefry with its 32-bit draws unrolled. jax lowers threefry on CPU as a rolled
#: 5-iteration while loop that runs apart from everything else; unrolled, the hash fuses into the ops
#: that use it (the aemd step with dropout and noise: 4.9% less time, experiments/RESULTS.md). Same
#: seed, split, fold-in and bits as ``"threefry2x32"``, so results do not change (tests/test_kernels.py).
UNROLLED_THREEFRY = jax.extend.random.define_prng_impl(
    key_shape=_THREEFRY.key_shape, seed=_THREEFRY.seed, split=_THREEFRY.split, fold_in=_THREEFRY.fold_in,
    random_bits=_unrolled_random_bits, name="threefry2x32_unrolled", tag="fry_unrolled")


def unrolled_threefry(key: jax.Array) -> jax.Array:
    """The same key drawing the same numbers faster (:data:`UNROLLED_THREEFRY`); other key types unchanged."""
    if str(jax.random.key_impl(key)) != "threefry2x32":
        return key
    return jax.random.wrap_key_data(jax.random.key_data(key), impl=UNROLLED_THREEFRY)


def keep_mask(key: jax.Array, keep: jax.Array | float, shape: tuple[int, ...]) -> jax.Array:
    """Bernoulli(``keep``) booleans drawn from 16 random bits per element.

    ``jax.random.bernoulli`` spends 32 threefry bits on each element; half of them serve: on XLA:CPU
    the masks of aemd's hidden dropout cost half as much (measured ~6.1 -> 3.3 CPU ms per (200, 32, 96)
    mask). ``keep`` is rounded to a multiple of 2^-16 (error below 8e-6); 0 keeps nothing, 1 everything.

    Args:
      key: a PRNG key.
      keep: probability of True, float scalar in ``[0, 1]`` (may be traced).
      shape: the mask's shape.

    Returns:
      bool array of ``shape``.
    """
    n = math.prod(shape)
    bits = jax.random.bits(key, ((n + 1) // 2,), jnp.uint32)
    uniform16 = jnp.concatenate([bits & 0xFFFF, bits >> 16])[:n].reshape(shape)
    return uniform16 < jnp.round(jnp.asarray(keep, jnp.float32) * 65536.0).astype(jnp.uint32)


class Dropout(nn.Module):
    """``flax.linen.Dropout`` (kept values scaled by ``1 / (1 - rate)``) with masks from :func:`keep_mask`."""

    rate: float
    deterministic: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x: float array, any shape. Returns: same shape and dtype; uses the ``"dropout"`` rng."""
        if self.deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = keep_mask(self.make_rng("dropout"), keep, x.shape)
        return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


class SeqDropout(nn.Module):
    """Input position dropout: replaces whole positions by MASK (train only).

    After :func:`embed` a dropped position is all zeros and a kept one stays exactly one-hot, which is
    the prototype's ``Dropout2d`` followed by rescaling with ``1 - p``.
    """

    @nn.compact
    def __call__(self, tokens: jax.Array, rate: jax.Array | None, *, deterministic: bool) -> jax.Array:
        """Drops input positions.

        Args:
          tokens: integer ``(B, L)``.
          rate: float32 scalar in ``[0, 1)`` (may be traced) or None (no dropout).
          deterministic: no dropout when True; otherwise uses the ``"dropout"`` rng.

        Returns:
          tokens, same shape and dtype, with dropped positions set to ``tokens.MASK``. Rate 0 returns
          the input unchanged (uniform samples are never below 0).
        """
        if deterministic or rate is None:
            return tokens
        dropped = ~keep_mask(self.make_rng("dropout"), 1.0 - rate, tokens.shape)
        return jnp.where(dropped, jnp.asarray(tok.MASK, tokens.dtype), tokens)


class GaussianNoise(nn.Module):
    """Adds ``std * N(0, 1)`` to its input (train only), using the ``"noise"`` rng."""

    @nn.compact
    def __call__(self, x: jax.Array, std: jax.Array | None, *, deterministic: bool) -> jax.Array:
        """Adds latent noise.

        Args:
          x: float array, any shape.
          std: float32 scalar (may be traced) or None (no noise). Std 0 returns ``x`` unchanged.
          deterministic: no noise when True; otherwise uses the ``"noise"`` rng.

        Returns:
          same shape and dtype as ``x``.
        """
        if deterministic or std is None:
            return x
        noise = jax.random.normal(self.make_rng("noise"), x.shape, x.dtype)
        return x + std.astype(x.dtype) * noise

