"""Flax Linen autoencoders over one-hot DNA, channels last (NLC).

Every model maps integer tokens ``(B, L)`` to per-position logits ``(B, L, 4)`` float32 and also
returns its latent code::

    logits, latent = model.apply(variables, tokens, train=True, hparams=hparams,
                                 rngs={"dropout": k1, "noise": k2}, mutable=["batch_stats"])

The embedding is ``one_hot(tokens, 4)``, so N (4) and MASK (5) positions are all-zero inputs.

``hparams`` holds the *scheduled* regularisers as float32 scalars, which may be traced so that a new
value never recompiles the step:

* ``"input_dropout"``: rate at which :class:`SeqDropout` replaces input tokens by MASK (train only).
* ``"latent_noise_std"``: std of the Gaussian noise :class:`GaussianNoise` adds to the latent
  (train only).

A missing ``hparams`` (or a missing key) means rate/std zero and skips the layer altogether, so it
needs no rng. Rng collections: ``"dropout"`` (input dropout and hidden dropout), ``"noise"`` (latent
noise). Mutable collection ``"batch_stats"`` (BatchNorm running statistics, multilayer model only).
The latent returned is the clean one (before latent noise), the one the neighbour loss sees.

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

BatchNorm: flax ``momentum=0.9`` is PyTorch ``momentum=0.1`` and both use ``epsilon=1e-5`` and the
biased batch variance to normalise. One known difference: PyTorch updates ``running_var`` with the
*unbiased* batch variance, flax with the biased one, so running variances drift apart by a factor
``n / (n - 1)`` per update (``n = B * L`` elements per channel); eval-mode outputs agree exactly
once the running statistics are copied.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import tokens as tok

__all__ = [
    "MODELS",
    "Autoencoder",
    "DilatedAutoencoder",
    "GaussianNoise",
    "MultilayerAutoencoder",
    "SeqDropout",
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


def _conv(features: int, kernel_len: int, in_features: int, *, padding, dilation: int = 1,
          name: str) -> nn.Conv:
    """A ``Conv1d``-equivalent layer (cross-correlation, PyTorch init)."""
    return nn.Conv(features, (kernel_len,), padding=padding, kernel_dilation=(dilation,),
                   kernel_init=_torch_kernel_init,
                   bias_init=_torch_bias_init(in_features * kernel_len), name=name)


def _conv_transpose(features: int, kernel_len: int, torch_padding: int, *, name: str) -> nn.ConvTranspose:
    """A ``ConvTranspose1d(C_in, features, kernel_len, padding=torch_padding)`` equivalent."""
    crop = kernel_len - 1 - torch_padding
    return nn.ConvTranspose(features, (kernel_len,), padding=((crop, crop),), transpose_kernel=True,
                            kernel_init=_torch_kernel_init,
                            bias_init=_torch_bias_init(features * kernel_len), name=name)


def _dense(features: int, in_features: int, *, name: str) -> nn.Dense:
    return nn.Dense(features, kernel_init=_torch_kernel_init, bias_init=_torch_bias_init(in_features),
                    name=name)


def _batch_norm(train: bool, *, name: str) -> nn.BatchNorm:
    # Two-pass variance (use_fast_variance=False) so outputs match PyTorch to float32 rounding.
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        use_fast_variance=False, name=name)


def _hparam(hparams: Mapping[str, Any] | None, key: str) -> jax.Array | None:
    if hparams is None or hparams.get(key) is None:
        return None
    return jnp.asarray(hparams[key], jnp.float32)


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
    length = x.shape[1]
    # Indices and weights depend only on static shapes, so they are numpy constants in the jaxpr.
    src = np.maximum((np.arange(length * scale, dtype=np.float64) + 0.5) / scale - 0.5, 0.0)
    lo = np.floor(src).astype(np.int32)
    hi = np.minimum(lo + 1, length - 1)
    frac = (src - lo).astype(np.float32)[None, :, None]
    return x[:, lo] * (1.0 - frac) + x[:, hi] * frac


class SeqDropout(nn.Module):
    """Input position dropout: replaces whole positions by MASK (train only).

    After :func:`embed` a dropped position is all zeros and a kept one stays exactly one-hot, which is
    the prototype's ``Dropout2d`` followed by rescaling with ``1 - p``.
    """

    @nn.compact
    def __call__(self, tokens: jax.Array, rate: jax.Array | None, *, train: bool) -> jax.Array:
        """Drops input positions.

        Args:
          tokens: integer ``(B, L)``.
          rate: float32 scalar in ``[0, 1)`` (may be traced) or None (no dropout).
          train: dropout applies only when True; uses the ``"dropout"`` rng.

        Returns:
          tokens, same shape and dtype, with dropped positions set to ``tokens.MASK``. Rate 0 returns
          the input unchanged (uniform samples are never below 0).
        """
        if not train or rate is None:
            return tokens
        dropped = jax.random.bernoulli(self.make_rng("dropout"), rate, tokens.shape)
        return jnp.where(dropped, jnp.asarray(tok.MASK, tokens.dtype), tokens)


class GaussianNoise(nn.Module):
    """Adds ``std * N(0, 1)`` to its input (train only), using the ``"noise"`` rng."""

    @nn.compact
    def __call__(self, x: jax.Array, std: jax.Array | None, *, train: bool) -> jax.Array:
        """Adds latent noise.

        Args:
          x: float array, any shape.
          std: float32 scalar (may be traced) or None (no noise). Std 0 returns ``x`` unchanged.
          train: noise applies only when True.

        Returns:
          same shape and dtype as ``x``.
        """
        if not train or std is None:
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
    def __call__(self, tokens: jax.Array, *, train: bool,
                 hparams: Mapping[str, Any] | None = None) -> tuple[jax.Array, jax.Array]:
        """Encodes and decodes a batch of windows.

        Args:
          tokens: integer ``(B, L)``, ``L >= kernel_len``.
          train: enables input dropout and latent noise.
          hparams: ``{"input_dropout", "latent_noise_std"}`` float32 scalars, or None.

        Returns:
          logits float32 ``(B, L, 4)`` and latent float32 ``(B, L - kernel_len + 1, latent_len)``.
        """
        if tokens.shape[1] < self.kernel_len:
            raise ValueError(f"Autoencoder: sequence length {tokens.shape[1]} is shorter than "
                             f"kernel_len {self.kernel_len}")
        tokens = SeqDropout(name="input_dropout")(tokens, _hparam(hparams, "input_dropout"), train=train)
        x = embed(tokens)
        latent = nn.relu(_conv(self.latent_len, self.kernel_len, tok.NUM_BASES, padding="VALID",
                               name="enc_conv")(x))
        z = GaussianNoise(name="latent_noise")(latent, _hparam(hparams, "latent_noise_std"), train=train)
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
    def __call__(self, tokens: jax.Array, *, train: bool,
                 hparams: Mapping[str, Any] | None = None) -> tuple[jax.Array, jax.Array]:
        """Encodes and decodes a batch of windows.

        Args:
          tokens: integer ``(B, window_len)``.
          train: batch statistics + dropout + noise when True, running statistics otherwise.
          hparams: ``{"input_dropout", "latent_noise_std"}`` float32 scalars, or None.

        Returns:
          logits float32 ``(B, window_len, 4)`` and latent float32 ``(B, latent_len)``.
        """
        if tokens.shape[1] != self.window_len:
            raise ValueError(f"MultilayerAutoencoder: input length {tokens.shape[1]} != window_len "
                             f"{self.window_len} (the dense layers are sized for window_len)")
        k, pad, sizes = self.kernel_len, self.kernel_len // 2, self.sizes
        batch = tokens.shape[0]
        pool = nn.max_pool if self.pool == "max" else nn.avg_pool

        tokens = SeqDropout(name="input_dropout")(tokens, _hparam(hparams, "input_dropout"), train=train)
        x = embed(tokens)
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            for j in range(self.n_conv_before_pool):
                c_in = n_in if j == 0 else n_out
                x = nn.relu(_conv(n_out, k, c_in, padding=((pad, pad),), name=f"enc_conv_{i}{j}")(x))
            x = pool(x, (self.pool_size,), strides=(self.pool_size,), padding="VALID")
            x = _batch_norm(train, name=f"enc_norm_{i}")(x)
            x = nn.Dropout(self.hidden_dropout, deterministic=not train)(x)
        channels = sizes[-1]
        # Channels-first flatten so the dense weights line up with PyTorch's .view(B, -1).
        x = jnp.transpose(x, (0, 2, 1)).reshape(batch, channels * self.linear_size)
        x = _dense(self.latent_len, channels * self.linear_size, name="enc_linear_0")(x)
        for i in range(1, self.n_linear):
            x = _batch_norm(train, name=f"enc_norm_L{i}")(nn.relu(x))
            x = _dense(self.latent_len, self.latent_len, name=f"enc_linear_{i}")(x)
        latent = x

        x = GaussianNoise(name="latent_noise")(latent, _hparam(hparams, "latent_noise_std"), train=train)
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
    def __call__(self, tokens: jax.Array, *, train: bool,
                 hparams: Mapping[str, Any] | None = None) -> tuple[jax.Array, jax.Array]:
        """Encodes and decodes a batch of windows.

        Args:
          tokens: integer ``(B, L)``.
          train: enables input dropout, hidden dropout and latent noise.
          hparams: ``{"input_dropout", "latent_noise_std"}`` float32 scalars, or None.

        Returns:
          logits float32 ``(B, L, 4)`` and latent float32 ``(B, L, latent_len)``.
        """
        k, hidden = self.kernel_len, self.hidden_len
        dropout = nn.Dropout(self.hidden_dropout, deterministic=not train)

        def block(h, name, dilation):
            y = dropout(nn.relu(_conv(hidden, k, hidden, padding="SAME", dilation=dilation, name=name)(h)))
            return h + y if self.residual else y

        tokens = SeqDropout(name="input_dropout")(tokens, _hparam(hparams, "input_dropout"), train=train)
        h = embed(tokens)
        h = dropout(nn.relu(_conv(hidden, k, tok.NUM_BASES, padding="SAME", dilation=self.dilations[0],
                                  name="enc_conv_0")(h)))
        for i in range(1, len(self.dilations)):
            h = block(h, f"enc_conv_{i}", self.dilations[i])
        latent = _conv(self.latent_len, 1, hidden, padding="VALID", name="enc_latent")(h)

        h = GaussianNoise(name="latent_noise")(latent, _hparam(hparams, "latent_noise_std"), train=train)
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
