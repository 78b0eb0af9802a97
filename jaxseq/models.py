"""Flax Linen autoencoders over one-hot DNA, channels last (NLC).

Every model maps integer tokens ``(B, L)`` to per-position logits ``(B, L, 4)`` float32 and also
returns its latent code::

    logits, latent = model.apply(variables, tokens, train=True, deterministic=False, hparams=hparams,
                                 rngs={"dropout": k1, "noise": k2}, mutable=["batch_stats"])

``train`` switches batch norm to batch statistics (and updates the running ones); ``deterministic``
(default ``not train``) switches input dropout, hidden dropout and latent noise off. They are
independent: stochastic evaluation is ``train=False, deterministic=False``.

The embedding is ``one_hot(tokens, 4)``, so N (4) and MASK (5) positions are all-zero inputs.

``hparams`` holds the *scheduled* regularisers as float32 scalars, which may be traced so that a new
value never recompiles the step:

* ``"input_dropout"``: rate at which :class:`SeqDropout` replaces input tokens by MASK (train only).
* ``"latent_noise_std"``: std of the Gaussian noise :class:`GaussianNoise` adds to the latent
  (train only).

A missing ``hparams`` (or a missing key) means rate/std zero and skips the layer altogether, so it
needs no rng; so does a value that is a concrete zero at trace time (e.g. a constant schedule closed
over by the jitted step), which gives the same result without drawing random numbers. Rng
collections: ``"dropout"`` (input dropout and hidden dropout), ``"noise"`` (latent noise). Mutable
collection ``"batch_stats"`` (BatchNorm running statistics, multilayer model only). The latent returned
is the clean one (before latent noise), the one the neighbour loss sees.

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
The layers here are :class:`Conv1d` and :class:`ConvTranspose1d`, which hold exactly the parameters of
flax's ``nn.Conv`` and ``nn.ConvTranspose(transpose_kernel=True)`` (same names, shapes, layouts and
initialisation) but compute them in a form that is fast on CPU inside ``lax.scan`` (see :func:`conv1d`).

BatchNorm: flax ``momentum=0.9`` is PyTorch ``momentum=0.1`` and both use ``epsilon=1e-5`` and the
biased batch variance to normalise. One known difference: PyTorch updates ``running_var`` with the
*unbiased* batch variance, flax with the biased one, so running variances drift apart by a factor
``n / (n - 1)`` per update (``n = B * L`` elements per channel); eval-mode outputs agree exactly
once the running statistics are copied.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxseq import tokens as tok

__all__ = [
    "MODELS",
    "Autoencoder",
    "BatchNorm",
    "Conv1d",
    "ConvTranspose1d",
    "DilatedAutoencoder",
    "GaussianNoise",
    "MultilayerAutoencoder",
    "SeqDropout",
    "conv1d",
    "create_model",
    "embed",
    "upsample_linear",
]

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
# 1-D convolution, fast forward and backward on CPU.
#
# XLA's CPU backend runs a convolution fast only in its canonical form (batch, spatial, feature) x
# (spatial, in, out). The gradients autodiff derives from ``lax.conv_general_dilated`` are convolutions
# in other dimension orders; outside loops XLA rewrites them, but inside the ``lax.scan`` of train steps
# it does not and falls back to a naive loop (measured: the aemd step ran at ~500 windows/s instead of
# ~15,000). So convolutions here have a hand-written backward pass made of canonical convolutions (the
# input gradient convolves with the flipped kernel, the kernel gradient treats channels as the batch).
# Convolutions with few channels (the one-hot input, the 4 logits) run as one block-Toeplitz matmul
# instead, whose autodiff is matmuls, pads and slices: faster than XLA's convolution for so few
# channels. Parameters (names, shapes, initialisation) are those of flax's ``nn.Conv`` /
# ``nn.ConvTranspose``; results equal ``lax.conv_general_dilated`` up to float32 rounding.

_CONV_DIMS = ("NWC", "WIO", "NWC")
# A convolution with at most this many input or output channels runs as a block-Toeplitz matmul.
_FEW_CHANNELS = 8
# Output positions per block of that matmul. Each block reads _BLOCK + span inputs, so the matmul does
# (_BLOCK + span) / kernel_len times the convolution's multiply-adds (1.8x for k = 9), in exchange for
# one well-shaped matmul instead of a convolution with 4 channels.
_BLOCK = 8


def _use_blocked(kernel_shape: tuple[int, ...], dilation: int) -> bool:
    _, c_in, c_out = kernel_shape
    return min(c_in, c_out) <= _FEW_CHANNELS and dilation == 1


def _canonical_conv(x: jax.Array, kernel: jax.Array, padding: tuple[int, int], dilation: int = 1,
                    stride: int = 1) -> jax.Array:
    return lax.conv_general_dilated(x, kernel, (stride,), (tuple(padding),), rhs_dilation=(dilation,),
                                    dimension_numbers=_CONV_DIMS)


def _block_windows(x: jax.Array, padding: tuple[int, int], span: int) -> tuple[jax.Array, int, int]:
    """Overlapping windows of ``_BLOCK + span`` positions starting every ``_BLOCK``: ``(B * n, width * C)``."""
    batch, _, channels = x.shape
    x = jnp.pad(x, ((0, 0), tuple(padding), (0, 0)))
    out_len = x.shape[1] - span
    n_blocks = -(-out_len // _BLOCK)
    width = _BLOCK + span
    extra = n_blocks * _BLOCK + span - x.shape[1]
    if extra > 0:
        x = jnp.pad(x, ((0, 0), (0, extra), (0, 0)))
    windows = jnp.stack([x[:, i * _BLOCK: i * _BLOCK + width] for i in range(n_blocks)], axis=1)
    return windows.reshape(batch * n_blocks, width * channels), out_len, n_blocks


def _toeplitz_select(kernel_len: int, dilation: int) -> np.ndarray:
    """``select[p + d j, p, j] = 1``: spreads a kernel into the block-Toeplitz matrix."""
    width = _BLOCK + dilation * (kernel_len - 1)
    select = np.zeros((width, _BLOCK, kernel_len), np.float32)
    for p in range(_BLOCK):
        select[p + dilation * np.arange(kernel_len), p, np.arange(kernel_len)] = 1.0
    return select


def _conv1d_blocked(x, kernel, padding, dilation):
    """Blocks of ``_BLOCK`` outputs in one matmul: windows ``(B n, width C_in)`` x ``(width C_in, _BLOCK C_out)``."""
    k, c_in, c_out = kernel.shape
    windows, out_len, n_blocks = _block_windows(x, padding, dilation * (k - 1))
    toeplitz = jnp.einsum("ipj,jco->icpo", _toeplitz_select(k, dilation), kernel)
    y = windows @ toeplitz.reshape(-1, _BLOCK * c_out)
    return y.reshape(x.shape[0], n_blocks * _BLOCK, c_out)[:, :out_len]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv1d_xla(x, kernel, padding, dilation):
    """XLA's convolution with a backward pass of two canonical convolutions (fast inside loops)."""
    return _canonical_conv(x, kernel, padding, dilation)


def _conv1d_xla_fwd(x, kernel, padding, dilation):
    return _canonical_conv(x, kernel, padding, dilation), (x, kernel)


def _conv1d_xla_bwd(padding, dilation, residuals, grad):
    x, kernel = residuals
    lo, hi = padding
    span = dilation * (kernel.shape[0] - 1)
    length, out_len = x.shape[1], grad.shape[1]
    # dx[i] = sum_j grad[i + lo - d j] kernel[j]: the output gradient convolved with the kernel flipped in
    # space and transposed in channels.
    left = span - lo
    right = length - out_len + span - left
    dx = _canonical_conv(grad, jnp.swapaxes(kernel[::-1], 1, 2), (left, right), dilation)
    # dkernel[j, c, o] = sum_{b, i} x_padded[b, i + d j, c] grad[b, i, o]: a canonical convolution with
    # channels as the batch, the batch as features and the output gradient as the kernel (stride d).
    dkernel = _canonical_conv(jnp.transpose(x, (2, 1, 0)), jnp.transpose(grad, (1, 0, 2)), (lo, hi),
                              stride=dilation)
    return dx, jnp.transpose(dkernel, (1, 0, 2))


_conv1d_xla.defvjp(_conv1d_xla_fwd, _conv1d_xla_bwd)


def conv1d(x: jax.Array, kernel: jax.Array, padding: tuple[int, int], dilation: int = 1) -> jax.Array:
    """PyTorch ``Conv1d`` semantics (cross-correlation), channels last, fast forward and backward on CPU.

    Args:
      x: float ``(B, L, C_in)``.
      kernel: ``(k, C_in, C_out)`` (flax ``nn.Conv`` layout).
      padding: ``(before, after)`` zero padding of the length axis (at most ``dilation * (k - 1)``
        each).
      dilation: kernel dilation.

    Returns:
      ``(B, L + before + after - dilation * (k - 1), C_out)``, same dtype; equal to
      ``lax.conv_general_dilated`` up to float rounding.
    """
    k = kernel.shape[0]
    padding = (int(padding[0]), int(padding[1]))
    dilation = int(dilation)
    if k == 1:
        if padding != (0, 0):
            x = jnp.pad(x, ((0, 0), padding, (0, 0)))
        return jnp.einsum("blc,co->blo", x, kernel[0])
    if min(padding) < 0 or max(padding) > dilation * (k - 1):
        raise ValueError(f"conv1d: padding {padding} must be in [0, {dilation * (k - 1)}] (the kernel span)")
    if _use_blocked(kernel.shape, dilation):
        # Autodiff is faster here than a hand-written backward pass (measured, single-layer model).
        return _conv1d_blocked(x, kernel, padding, dilation)
    return _conv1d_xla(x, kernel, padding, dilation)


def _same_padding(kernel_len: int, dilation: int) -> tuple[int, int]:
    total = dilation * (kernel_len - 1)
    return total // 2, total - total // 2  # lax's 'SAME' for stride 1


class Conv1d(nn.Module):
    """``nn.Conv`` for one spatial axis (same parameters and init) computed with :func:`conv1d`.

    Attributes:
      features: output channels.
      kernel_len: kernel width.
      padding: ``"VALID"``, ``"SAME"`` or ``((before, after),)``.
      dilation: kernel dilation.
      kernel_init, bias_init: initialisers of ``kernel (k, C_in, features)`` and ``bias (features,)``.
    """

    features: int
    kernel_len: int
    padding: Any = "VALID"
    dilation: int = 1
    kernel_init: Any = _torch_kernel_init
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c_in = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (self.kernel_len, c_in, self.features), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        if isinstance(self.padding, str):
            padding = {"VALID": (0, 0), "SAME": _same_padding(self.kernel_len, self.dilation)}[self.padding]
        else:
            (padding,) = self.padding
        return conv1d(x, kernel, padding, self.dilation) + bias


class ConvTranspose1d(nn.Module):
    """``nn.ConvTranspose(transpose_kernel=True)`` with stride 1 (same parameters and init).

    A stride-1 transposed convolution is the convolution with the kernel flipped in space and its
    channel axes swapped; flax's padding ``(lo, hi)`` pads the input of that convolution.

    Attributes:
      features: output channels.
      kernel_len: kernel width.
      padding: ``((lo, hi),)`` as for flax ``ConvTranspose`` (``lo = hi = k - 1 - p`` for PyTorch's ``p``).
      kernel_init, bias_init: initialisers of ``kernel (k, features, C_in)`` and ``bias (features,)``.
    """

    features: int
    kernel_len: int
    padding: Any = ((0, 0),)
    kernel_init: Any = _torch_kernel_init
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c_in = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (self.kernel_len, self.features, c_in), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        (padding,) = self.padding
        return conv1d(x, jnp.swapaxes(kernel[::-1], 1, 2), padding) + bias


def _conv(features: int, kernel_len: int, in_features: int, *, padding, dilation: int = 1,
          name: str) -> Conv1d:
    """A ``Conv1d``-equivalent layer (cross-correlation, PyTorch init)."""
    return Conv1d(features, kernel_len, padding=padding, dilation=dilation, kernel_init=_torch_kernel_init,
                  bias_init=_torch_bias_init(in_features * kernel_len), name=name)


def _conv_transpose(features: int, kernel_len: int, torch_padding: int, *, name: str) -> ConvTranspose1d:
    """A ``ConvTranspose1d(C_in, features, kernel_len, padding=torch_padding)`` equivalent."""
    crop = kernel_len - 1 - torch_padding
    return ConvTranspose1d(features, kernel_len, padding=((crop, crop),), kernel_init=_torch_kernel_init,
                           bias_init=_torch_bias_init(features * kernel_len), name=name)


def _dense(features: int, in_features: int, *, name: str) -> nn.Dense:
    return nn.Dense(features, kernel_init=_torch_kernel_init, bias_init=_torch_bias_init(in_features),
                    name=name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _batch_norm_train(x, scale, bias, axes, epsilon):
    """Training-mode batch norm: ``(y, batch mean, batch variance)``, with a closed-form backward pass."""
    return _batch_norm_train_fwd(x, scale, bias, axes, epsilon)[0]


def _batch_norm_train_fwd(x, scale, bias, axes, epsilon):
    # The same operations as flax's BatchNorm with use_fast_variance=False (two-pass variance).
    mean = jnp.mean(x, axes)
    centred = x - jnp.expand_dims(mean, axes)
    var = jnp.mean(jnp.square(centred), axes)
    rstd = lax.rsqrt(var + epsilon)
    y = centred * jnp.expand_dims(rstd * scale, axes) + bias
    return (y, mean, var), (centred, rstd, scale)


def _batch_norm_train_bwd(axes, epsilon, residuals, cotangents):
    # The textbook gradient, two reductions and one elementwise pass, instead of the longer chain
    # autodiff derives through mean, variance and rsqrt (measured 5-8% of the aemd step).
    centred, rstd, scale = residuals
    dy, dmean, dvar = cotangents
    n = centred.size // rstd.size
    normed = centred * jnp.expand_dims(rstd, axes)
    dbias = jnp.sum(dy, axes)
    dscale = jnp.sum(dy * normed, axes)
    dx = jnp.expand_dims(scale * rstd / n, axes) * (n * dy - jnp.expand_dims(dbias, axes)
                                                   - normed * jnp.expand_dims(dscale, axes))
    # Plus the cotangents of the returned batch statistics (zero in training: only the running
    # averages use them).
    dx = dx + jnp.expand_dims(dmean / n, axes) + centred * jnp.expand_dims(2.0 * dvar / n, axes)
    return dx, dscale, dbias


_batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


class BatchNorm(nn.Module):
    """``nn.BatchNorm(momentum, epsilon, use_fast_variance=False)`` over the last (feature) axis.

    The same variables as flax's (params ``scale``, ``bias``; ``batch_stats`` ``mean``, ``var``), the
    same forward pass and running-statistics update; in training mode the backward pass is the
    closed-form batch-norm gradient.

    Attributes:
      use_running_average: normalise with the running statistics (eval) instead of the batch's.
      momentum: decay of the running statistics (PyTorch's ``1 - momentum``).
      epsilon: added to the variance.
    """

    use_running_average: bool
    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (x.shape[-1],)
        axes = tuple(range(x.ndim - 1))
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features)
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
        scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
        if self.use_running_average:
            return (x - ra_mean.value) * (lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
        y, mean, var = _batch_norm_train(x, scale, bias, axes, self.epsilon)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y


def _batch_norm(train: bool, *, name: str) -> BatchNorm:
    # Two-pass variance so outputs match PyTorch to float32 rounding.
    return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def _hparam(hparams: Mapping[str, Any] | None, key: str) -> jax.Array | None:
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


def _pool(x: jax.Array, size: int, kind: str) -> jax.Array:
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
        dropped = jax.random.bernoulli(self.make_rng("dropout"), rate, tokens.shape)
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


class Autoencoder(nn.Module):
    """The prototype's single-layer convolutional autoencoder.

    encoder: SeqDropout -> ``enc_conv`` Conv1d(4, latent_len, kernel_len, valid) -> ReLU
    decoder: GaussianNoise -> ``dec_conv`` ConvTranspose1d(latent_len, 4, kernel_len, padding 0)

    The valid convolution shortens the sequence by ``kernel_len - 1``; the full transposed convolution
    lengthens it back, so logits have the input's length.

    Attributes:
      kernel_len: convolution width (any length ``<= L``).
      latent_len: latent channels per position.
    """

    kernel_len: int
    latent_len: int

    def __post_init__(self):
        _check_positive(type(self).__name__, kernel_len=self.kernel_len, latent_len=self.latent_len)
        super().__post_init__()

    @nn.compact
    def __call__(self, tokens: jax.Array, *, train: bool = False, deterministic: bool | None = None,
                 hparams: Mapping[str, Any] | None = None) -> tuple[jax.Array, jax.Array]:
        """Encodes and decodes a batch of windows.

        Args:
          tokens: integer ``(B, L)``, ``L >= kernel_len``.
          train: batch norm uses batch statistics (and updates the running ones) when True.
          deterministic: no input dropout and no latent noise; default ``not train``.
          hparams: ``{"input_dropout", "latent_noise_std"}`` float32 scalars, or None.

        Returns:
          logits float32 ``(B, L, 4)`` and latent float32 ``(B, L - kernel_len + 1, latent_len)``.
        """
        deterministic = (not train) if deterministic is None else deterministic
        if tokens.shape[1] < self.kernel_len:
            raise ValueError(f"Autoencoder: sequence length {tokens.shape[1]} is shorter than "
                             f"kernel_len {self.kernel_len}")
        tokens = SeqDropout(name="input_dropout")(tokens, _hparam(hparams, "input_dropout"),
                                                   deterministic=deterministic)
        x = embed(tokens)
        latent = nn.relu(_conv(self.latent_len, self.kernel_len, tok.NUM_BASES, padding="VALID",
                               name="enc_conv")(x))
        z = GaussianNoise(name="latent_noise")(latent, _hparam(hparams, "latent_noise_std"),
                                             deterministic=deterministic)
        logits = _conv_transpose(tok.NUM_BASES, self.kernel_len, 0, name="dec_conv")(z)
        return logits.astype(jnp.float32), latent


class MultilayerAutoencoder(nn.Module):
    """The prototype's ``MultilayerEncoder``: conv/pool blocks, a dense bottleneck, mirrored decoder.

    With ``pad = kernel_len // 2``, ``sizes = [4] + [hidden_len * (i + 1) for i in range(n_conv_and_pool)]``,
    block ``i`` maps ``sizes[i] -> sizes[i + 1]`` channels, ``C = sizes[-1]`` and
    ``L' = window_len // pool_size ** n_conv_and_pool``. Layers in call order (flax name: PyTorch layer):

    encoder::

        input_dropout: SeqDropout(input_dropout)                  (hparams, no parameters)
        for block i in 0 .. n_conv_and_pool-1:
            enc_conv_{i}0: Conv1d(sizes[i], sizes[i+1], k, padding=pad) ; ReLU
            enc_conv_{i}{j}, j = 1 .. n_conv_before_pool-1: Conv1d(sizes[i+1], sizes[i+1], k, pad) ; ReLU
            MaxPool1d(pool_size) or AvgPool1d(pool_size)
            enc_norm_{i}: BatchNorm1d(sizes[i+1])
            Dropout(hidden_dropout)
        flatten channels-first: (B, L', C) -> (B, C, L') -> (B, C * L')   (PyTorch's .view)
        enc_linear_0: Linear(C * L', latent_len)
        for i in 1 .. n_linear-1:
            ReLU ; enc_norm_L{i}: BatchNorm1d(latent_len) ; enc_linear_{i}: Linear(latent_len, latent_len)
        -> latent (B, latent_len)

    decoder::

        latent_noise: GaussianNoise(latent_noise_std)             (hparams, no parameters)
        for i in n_linear-1 .. 1:
            dec_linear_{i}: Linear(latent_len, latent_len) ; ReLU ; dec_norm_L{i}: BatchNorm1d(latent_len)
        dec_linear_0: Linear(latent_len, C * L') ; view (B, C, L') -> (B, L', C)
        for block i in n_conv_and_pool-1 .. 0:
            ReLU ; dec_norm_{i}: BatchNorm1d(sizes[i+1]) ; Upsample(pool_size, linear, align_corners=False)
            dec_conv_{i}{j}, j = n_conv_before_pool-1 .. 1:
                ConvTranspose1d(sizes[i+1], sizes[i+1], k, padding=pad) ; ReLU
            dec_conv_{i}0: ConvTranspose1d(sizes[i+1], sizes[i], k, padding=pad)
        -> logits (B, window_len, 4)

    ``dec_*_{i}`` mirrors ``enc_*_{i}``. Names concatenate block and conv index (``enc_conv_01``), which is
    unambiguous while both are below 10.

    Attributes:
      kernel_len: odd convolution width (PyTorch's ``padding=k//2`` keeps the length only for odd k).
      latent_len: size of the latent vector.
      window_len: input length; must be divisible by ``pool_size ** n_conv_and_pool``.
      hidden_len: channels of the first block; block ``i`` has ``hidden_len * (i + 1)``.
      pool: ``"max"`` or ``"avg"``.
      pool_size: pooling window and stride (also the decoder's upsampling factor).
      n_conv_and_pool: number of conv/pool blocks (0 allowed: the dense layers see the one-hot input).
      n_conv_before_pool: convolutions per block (>= 1).
      n_linear: dense layers on each side of the latent (>= 1).
      hidden_dropout: dropout rate after each block's BatchNorm (static; uses the ``"dropout"`` rng).
    """

    kernel_len: int
    latent_len: int
    window_len: int
    hidden_len: int = 24
    pool: str = "max"
    pool_size: int = 2
    n_conv_and_pool: int = 1
    n_conv_before_pool: int = 2
    n_linear: int = 2
    hidden_dropout: float = 0.0

    def __post_init__(self):
        name = type(self).__name__
        _check_positive(name, kernel_len=self.kernel_len, latent_len=self.latent_len,
                        window_len=self.window_len, hidden_len=self.hidden_len, pool_size=self.pool_size,
                        n_conv_before_pool=self.n_conv_before_pool, n_linear=self.n_linear)
        if self.kernel_len % 2 == 0:
            raise ValueError(f"{name}: kernel_len must be odd, got {self.kernel_len} (the prototype's "
                             f"padding kernel_len // 2 lengthens the sequence by one for even kernels)")
        if self.pool not in ("max", "avg"):
            raise ValueError(f"{name}: pool must be 'max' or 'avg', got {self.pool!r}")
        if self.n_conv_and_pool < 0:
            raise ValueError(f"{name}: n_conv_and_pool must be >= 0, got {self.n_conv_and_pool}")
        factor = self.pool_size ** self.n_conv_and_pool
        if self.window_len % factor:
            raise ValueError(f"{name}: window_len {self.window_len} is not divisible by pool_size ** "
                             f"n_conv_and_pool = {self.pool_size} ** {self.n_conv_and_pool} = {factor}")
        if not 0.0 <= self.hidden_dropout < 1.0:
            raise ValueError(f"{name}: hidden_dropout must be in [0, 1), got {self.hidden_dropout}")
        super().__post_init__()

    @property
    def sizes(self) -> list[int]:
        """Channels entering block 0, then leaving each block."""
        return [tok.NUM_BASES] + [self.hidden_len * (i + 1) for i in range(self.n_conv_and_pool)]

    @property
    def linear_size(self) -> int:
        """Sequence length at the bottleneck, ``window_len // pool_size ** n_conv_and_pool``."""
        return self.window_len // self.pool_size ** self.n_conv_and_pool

    @nn.compact
    def __call__(self, tokens: jax.Array, *, train: bool = False, deterministic: bool | None = None,
                 hparams: Mapping[str, Any] | None = None) -> tuple[jax.Array, jax.Array]:
        """Encodes and decodes a batch of windows.

        Args:
          tokens: integer ``(B, window_len)``.
          train: batch norm uses batch statistics (and updates the running ones) when True,
            running statistics otherwise.
          deterministic: no input dropout, hidden dropout or latent noise; default ``not train``.
          hparams: ``{"input_dropout", "latent_noise_std"}`` float32 scalars, or None.

        Returns:
          logits float32 ``(B, window_len, 4)`` and latent float32 ``(B, latent_len)``.
        """
        deterministic = (not train) if deterministic is None else deterministic
        if tokens.shape[1] != self.window_len:
            raise ValueError(f"MultilayerAutoencoder: input length {tokens.shape[1]} != window_len "
                             f"{self.window_len} (the dense layers are sized for window_len)")
        k, pad, sizes = self.kernel_len, self.kernel_len // 2, self.sizes
        batch = tokens.shape[0]

        tokens = SeqDropout(name="input_dropout")(tokens, _hparam(hparams, "input_dropout"),
                                                   deterministic=deterministic)
        x = embed(tokens)
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            for j in range(self.n_conv_before_pool):
                c_in = n_in if j == 0 else n_out
                x = nn.relu(_conv(n_out, k, c_in, padding=((pad, pad),), name=f"enc_conv_{i}{j}")(x))
            x = _pool(x, self.pool_size, self.pool)
            x = _batch_norm(train, name=f"enc_norm_{i}")(x)
            x = nn.Dropout(self.hidden_dropout, deterministic=deterministic)(x)
        channels = sizes[-1]
        # Channels-first flatten so the dense weights line up with PyTorch's .view(B, -1).
        x = jnp.transpose(x, (0, 2, 1)).reshape(batch, channels * self.linear_size)
        x = _dense(self.latent_len, channels * self.linear_size, name="enc_linear_0")(x)
        for i in range(1, self.n_linear):
            x = _batch_norm(train, name=f"enc_norm_L{i}")(nn.relu(x))
            x = _dense(self.latent_len, self.latent_len, name=f"enc_linear_{i}")(x)
        latent = x

        x = GaussianNoise(name="latent_noise")(latent, _hparam(hparams, "latent_noise_std"),
                                             deterministic=deterministic)
        for i in reversed(range(1, self.n_linear)):
            x = nn.relu(_dense(self.latent_len, self.latent_len, name=f"dec_linear_{i}")(x))
            x = _batch_norm(train, name=f"dec_norm_L{i}")(x)
        x = _dense(channels * self.linear_size, self.latent_len, name="dec_linear_0")(x)
        x = jnp.transpose(x.reshape(batch, channels, self.linear_size), (0, 2, 1))
        for i in reversed(range(self.n_conv_and_pool)):
            n_in, n_out = sizes[i], sizes[i + 1]
            x = _batch_norm(train, name=f"dec_norm_{i}")(nn.relu(x))
            x = upsample_linear(x, self.pool_size)
            for j in reversed(range(1, self.n_conv_before_pool)):
                x = nn.relu(_conv_transpose(n_out, k, pad, name=f"dec_conv_{i}{j}")(x))
            x = _conv_transpose(n_in, k, pad, name=f"dec_conv_{i}0")(x)
        return x.astype(jnp.float32), latent


class DilatedAutoencoder(nn.Module):
    """Fully convolutional autoencoder whose receptive field grows by dilation instead of pooling.

    Every convolution is 'same'-padded, so the latent keeps one vector per input position.

    encoder::

        input_dropout: SeqDropout
        enc_conv_0: Conv(4 -> hidden_len, kernel_len, dilation dilations[0]) ; ReLU ; Dropout
        enc_conv_{i}, i = 1 .. n-1: h = h + Dropout(ReLU(Conv(hidden_len -> hidden_len, kernel_len,
                                    dilation dilations[i])(h)))        (no "h +" if residual=False)
        enc_latent: Conv(hidden_len -> latent_len, 1)                  (linear bottleneck)

    decoder (mirror)::

        latent_noise: GaussianNoise
        dec_latent: Conv(latent_len -> hidden_len, 1) ; ReLU
        dec_conv_{i}, i = n-1 .. 1: residual dilated conv as in the encoder
        dec_conv_0: Conv(hidden_len -> 4, kernel_len, dilation dilations[0])   -> logits

    The receptive field of each half is ``1 + (kernel_len - 1) * sum(dilations)`` positions.

    Attributes:
      kernel_len: convolution width (odd keeps 'same' padding symmetric).
      latent_len: latent channels per position.
      hidden_len: channels of the hidden layers.
      dilations: dilation of each layer, e.g. ``(1, 2, 4, 8)``.
      hidden_dropout: dropout rate after each hidden activation (static; ``"dropout"`` rng).
      residual: add each hidden layer's input to its output (layers after the first).
    """

    kernel_len: int
    latent_len: int
    hidden_len: int = 64
    dilations: tuple[int, ...] = (1, 2, 4, 8)
    hidden_dropout: float = 0.0
    residual: bool = True

    def __post_init__(self):
        name = type(self).__name__
        _check_positive(name, kernel_len=self.kernel_len, latent_len=self.latent_len,
                        hidden_len=self.hidden_len)
        # Lists from YAML would make the module unhashable.
        object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))
        if not self.dilations or min(self.dilations) < 1:
            raise ValueError(f"{name}: dilations must be a non-empty sequence of positive ints, "
                             f"got {self.dilations}")
        if not 0.0 <= self.hidden_dropout < 1.0:
            raise ValueError(f"{name}: hidden_dropout must be in [0, 1), got {self.hidden_dropout}")
        super().__post_init__()

    @nn.compact
    def __call__(self, tokens: jax.Array, *, train: bool = False, deterministic: bool | None = None,
                 hparams: Mapping[str, Any] | None = None) -> tuple[jax.Array, jax.Array]:
        """Encodes and decodes a batch of windows.

        Args:
          tokens: integer ``(B, L)``.
          train: unused (no batch norm); accepted so every model has one signature.
          deterministic: no input dropout, hidden dropout or latent noise; default ``not train``.
          hparams: ``{"input_dropout", "latent_noise_std"}`` float32 scalars, or None.

        Returns:
          logits float32 ``(B, L, 4)`` and latent float32 ``(B, L, latent_len)``.
        """
        deterministic = (not train) if deterministic is None else deterministic
        k, hidden = self.kernel_len, self.hidden_len
        dropout = nn.Dropout(self.hidden_dropout, deterministic=deterministic)

        def block(h, name, dilation):
            y = dropout(nn.relu(_conv(hidden, k, hidden, padding="SAME", dilation=dilation, name=name)(h)))
            return h + y if self.residual else y

        tokens = SeqDropout(name="input_dropout")(tokens, _hparam(hparams, "input_dropout"),
                                                   deterministic=deterministic)
        h = embed(tokens)
        h = dropout(nn.relu(_conv(hidden, k, tok.NUM_BASES, padding="SAME", dilation=self.dilations[0],
                                  name="enc_conv_0")(h)))
        for i in range(1, len(self.dilations)):
            h = block(h, f"enc_conv_{i}", self.dilations[i])
        latent = _conv(self.latent_len, 1, hidden, padding="VALID", name="enc_latent")(h)

        h = GaussianNoise(name="latent_noise")(latent, _hparam(hparams, "latent_noise_std"),
                                             deterministic=deterministic)
        h = nn.relu(_conv(hidden, 1, self.latent_len, padding="VALID", name="dec_latent")(h))
        for i in reversed(range(1, len(self.dilations))):
            h = block(h, f"dec_conv_{i}", self.dilations[i])
        logits = _conv(tok.NUM_BASES, k, hidden, padding="SAME", dilation=self.dilations[0],
                       name="dec_conv_0")(h)
        return logits.astype(jnp.float32), latent


def _check_positive(model: str, **values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{model}: {key} must be a positive int, got {value!r}")


#: The only name -> constructor registry (config ``model.name``).
MODELS: dict[str, type[nn.Module]] = {
    "autoencoder": Autoencoder,
    "multilayer": MultilayerAutoencoder,
    "dilated": DilatedAutoencoder,
}


def create_model(name: str, window_len: int, /, **fields: Any) -> nn.Module:
    """Builds a model from its registry name and config fields.

    Only the fields the chosen module declares are passed on; the others are ignored, so a whole
    ``model.*`` config section can be splatted in (e.g. ``pool`` means nothing to the single-layer
    autoencoder, and a ``name`` key is the registry name, not the flax module name). ``window_len``
    goes to modules that declare it (the multilayer model).

    Args:
      name: a key of :data:`MODELS`.
      window_len: input length the model will see (``data.window_len``).
      **fields: model config fields (``kernel_len``, ``latent_len``, ``hidden_len``, ``pool``, ...).

    Returns:
      An unbound flax module.

    Raises:
      ValueError: unknown name (the message lists the choices), invalid field values, or a window
        shorter than the kernel.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choices: {', '.join(sorted(MODELS))}")
    cls = MODELS[name]
    declared = {f.name for f in dataclasses.fields(cls) if f.init} - {"parent", "name"}
    kwargs = {key: value for key, value in fields.items() if key in declared}
    if "window_len" in declared:
        kwargs["window_len"] = window_len
    if "dilations" in kwargs:
        kwargs["dilations"] = tuple(kwargs["dilations"])
    kernel_len = kwargs.get("kernel_len")
    if isinstance(kernel_len, int) and kernel_len > window_len:
        raise ValueError(f"{name}: kernel_len {kernel_len} is longer than window_len {window_len}")
    return cls(**kwargs)
