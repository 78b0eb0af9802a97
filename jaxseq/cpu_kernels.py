"""Opt-in convolutions and batch norm that XLA:CPU runs fast inside ``lax.scan`` (``model.conv_impl: cpu``).

XLA's CPU backend runs a convolution fast only in its canonical form (batch, spatial, feature) x
(spatial, in, out). The gradients autodiff derives from ``lax.conv_general_dilated`` are convolutions
in other dimension orders; outside loops XLA rewrites them, but inside the ``lax.scan`` of train steps
it does not and falls back to a naive loop (measured: the aemd step ran at ~500 windows/s instead of
~15,000). So the convolutions here have a hand-written backward pass made of canonical convolutions
(the input gradient convolves with the flipped kernel, the kernel gradient treats channels as the
batch). Convolutions with few channels (the one-hot input, the 4 logits) run as one block-Toeplitz
matmul instead, whose autodiff is matmuls, pads and slices: faster than XLA's convolution for so few
channels. :class:`BatchNorm` has a closed-form backward pass.

Each module holds exactly the variables of its flax counterpart (``nn.Conv``,
``nn.ConvTranspose(transpose_kernel=True)``, ``nn.BatchNorm(use_fast_variance=False)``: same names,
shapes, layouts, initialisers and running-statistics update), so a checkpoint restores under either
implementation; ``tests/test_kernels.py`` checks values and gradients against autodiff of the flax
layers. :mod:`jaxseq.layers` picks between the two (``layers.resolve_conv_impl``).

Reduced precision: with ``dtype=jnp.bfloat16`` the convolutions cast their input, kernel and bias to
bfloat16 before computing (as flax's ``dtype=`` does; parameters stay float32, autodiff casts their
gradients back); batch norm always computes in float32.

Forward-mode autodiff (``jax.jvp``) does not pass through ``custom_vjp``: use ``conv_impl: flax`` for it.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["BatchNorm", "Conv1d", "ConvTranspose1d", "conv1d"]

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



def same_padding(kernel_len: int, dilation: int) -> tuple[int, int]:
    """lax's ``'SAME'`` padding ``(before, after)`` of a stride-1 convolution."""
    total = dilation * (kernel_len - 1)
    return total // 2, total - total // 2


class Conv1d(nn.Module):
    """``nn.Conv`` for one spatial axis (same parameters and init) computed with :func:`conv1d`.

    Attributes:
      features: output channels.
      kernel_len: kernel width.
      padding: ``"VALID"``, ``"SAME"`` or ``((before, after),)``.
      dilation: kernel dilation.
      dtype: computation dtype (input, kernel and bias are cast to it); None keeps the input's.
      kernel_init, bias_init: initialisers of ``kernel (k, C_in, features)`` and ``bias (features,)``
        float32.
    """

    features: int
    kernel_len: int
    padding: Any = "VALID"
    dilation: int = 1
    dtype: Any = None
    kernel_init: Any = nn.linear.default_kernel_init
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``(B, L, C_in)`` -> ``(B, L', features)`` in ``dtype``."""
        x, kernel, bias = _parameters(self, x, (self.kernel_len, x.shape[-1], self.features))
        if isinstance(self.padding, str):
            padding = {"VALID": (0, 0), "SAME": same_padding(self.kernel_len, self.dilation)}[self.padding]
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
      dtype: computation dtype (input, kernel and bias are cast to it); None keeps the input's.
      kernel_init, bias_init: initialisers of ``kernel (k, features, C_in)`` and ``bias (features,)``
        float32.
    """

    features: int
    kernel_len: int
    padding: Any = ((0, 0),)
    dtype: Any = None
    kernel_init: Any = nn.linear.default_kernel_init
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``(B, L, C_in)`` -> ``(B, L + k - 1 - lo - hi, features)`` in ``dtype``."""
        x, kernel, bias = _parameters(self, x, (self.kernel_len, self.features, x.shape[-1]))
        (padding,) = self.padding
        return conv1d(x, jnp.swapaxes(kernel[::-1], 1, 2), padding) + bias


def _parameters(module: nn.Module, x: jax.Array, kernel_shape: tuple[int, ...]) -> tuple[jax.Array, ...]:
    """The float32 ``kernel`` and ``bias`` params, and ``x``, cast to the module's compute dtype."""
    kernel = module.param("kernel", module.kernel_init, kernel_shape, jnp.float32)
    bias = module.param("bias", module.bias_init, (module.features,), jnp.float32)
    if module.dtype is None:
        return x, kernel, bias
    # Outside the custom_vjp, so autodiff casts the float32 parameters' gradients back.
    return x.astype(module.dtype), kernel.astype(module.dtype), bias.astype(module.dtype)


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
        """Normalises ``(..., C)`` over all but the last axis; float32 result of the input's shape."""
        # Statistics and gradients in float32 whatever the input (bfloat16 convolutions feed it).
        x = x.astype(jnp.float32)
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


