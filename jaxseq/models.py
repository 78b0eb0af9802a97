"""The three autoencoder architectures over one-hot DNA (channels last), the registry, ``create_model``.

Every model maps integer tokens ``(B, L)`` to per-position logits ``(B, L, 4)`` float32 and also
returns its latent code (float32)::

    logits, latent = model.apply(variables, tokens, train=True, deterministic=False, hparams=hparams,
                                 rngs={"dropout": k1, "noise": k2}, mutable=["batch_stats"])

``train`` switches batch norm to batch statistics (and updates the running ones); ``deterministic``
(default ``not train``) switches input dropout, hidden dropout and latent noise off. They are
independent: stochastic evaluation is ``train=False, deterministic=False``.

The embedding is ``one_hot(tokens, 4)``, so N (4) and MASK (5) positions are all-zero inputs.

``hparams`` holds the *scheduled* regularisers as float32 scalars, which may be traced so that a new
value never recompiles the step:

* ``"input_dropout"``: rate at which :class:`~jaxseq.layers.SeqDropout` replaces input tokens by MASK.
* ``"latent_noise_std"``: std of the Gaussian noise :class:`~jaxseq.layers.GaussianNoise` adds to
  the latent.

A missing ``hparams`` (or a missing key) means rate/std zero and skips the layer altogether, so it
needs no rng; so does a value that is a concrete zero at trace time (e.g. a constant schedule closed
over by the jitted step), which gives the same result without drawing random numbers. Rng
collections: ``"dropout"`` (input dropout and hidden dropout), ``"noise"`` (latent noise). Mutable
collection ``"batch_stats"`` (BatchNorm running statistics, multilayer model only). The latent returned
is the clean one (before latent noise), the one the neighbour loss sees.

Two attributes every model shares choose how, not what, it computes (neither changes the variables):
``conv_impl`` (``"flax"``, ``"cpu"`` or ``"auto"``, see :func:`jaxseq.layers.resolve_conv_impl`) and
``dtype`` (float32 or bfloat16 computation of convolutions and dense layers; parameters stay float32).
Layers, their PyTorch correspondence and initialisation are documented in :mod:`jaxseq.layers`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import layers
from jaxseq import tokens as tok
from jaxseq.layers import Dropout, GaussianNoise, SeqDropout, embed, hparam

__all__ = ["MODELS", "Autoencoder", "DilatedAutoencoder", "MultilayerAutoencoder", "create_model"]


class Autoencoder(nn.Module):
    """The prototype's single-layer convolutional autoencoder.

    encoder: SeqDropout -> ``enc_conv`` Conv1d(4, latent_len, kernel_len, valid) -> ReLU
    decoder: GaussianNoise -> ``dec_conv`` ConvTranspose1d(latent_len, 4, kernel_len, padding 0)

    The valid convolution shortens the sequence by ``kernel_len - 1``; the full transposed convolution
    lengthens it back, so logits have the input's length.

    Attributes:
      kernel_len: convolution width (any length ``<= L``).
      latent_len: latent channels per position.
      conv_impl: ``"flax"``, ``"cpu"`` or ``"auto"`` layers (same variables; see :mod:`jaxseq.layers`).
      dtype: computation dtype of convolutions and dense layers (float32 or bfloat16).
    """

    kernel_len: int
    latent_len: int
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

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
        conv, conv_t, dense = _factories(self)
        if tokens.shape[1] < self.kernel_len:
            raise ValueError(f"Autoencoder: sequence length {tokens.shape[1]} is shorter than "
                             f"kernel_len {self.kernel_len}")
        tokens = SeqDropout(name="input_dropout")(tokens, hparam(hparams, "input_dropout"),
                                                   deterministic=deterministic)
        x = embed(tokens)
        latent = nn.relu(conv(self.latent_len, self.kernel_len, tok.NUM_BASES, padding="VALID",
                               name="enc_conv")(x))
        z = GaussianNoise(name="latent_noise")(latent, hparam(hparams, "latent_noise_std"),
                                             deterministic=deterministic)
        logits = conv_t(tok.NUM_BASES, self.kernel_len, 0, name="dec_conv")(z)
        return logits.astype(jnp.float32), latent.astype(jnp.float32)


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
      conv_impl: ``"flax"``, ``"cpu"`` or ``"auto"`` layers (same variables; see :mod:`jaxseq.layers`).
      dtype: computation dtype of convolutions and dense layers (float32 or bfloat16).
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
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

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
        conv, conv_t, dense = _factories(self)
        if tokens.shape[1] != self.window_len:
            raise ValueError(f"MultilayerAutoencoder: input length {tokens.shape[1]} != window_len "
                             f"{self.window_len} (the dense layers are sized for window_len)")
        k, pad, sizes = self.kernel_len, self.kernel_len // 2, self.sizes
        batch = tokens.shape[0]

        tokens = SeqDropout(name="input_dropout")(tokens, hparam(hparams, "input_dropout"),
                                                   deterministic=deterministic)
        x = embed(tokens)
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            for j in range(self.n_conv_before_pool):
                c_in = n_in if j == 0 else n_out
                x = nn.relu(conv(n_out, k, c_in, padding=((pad, pad),), name=f"enc_conv_{i}{j}")(x))
            x = layers.pool(x, self.pool_size, self.pool)
            x = layers.batch_norm(train, impl=self.conv_impl, name=f"enc_norm_{i}")(x)
            x = Dropout(self.hidden_dropout, deterministic=deterministic)(x)
        channels = sizes[-1]
        # Channels-first flatten so the dense weights line up with PyTorch's .view(B, -1).
        x = jnp.transpose(x, (0, 2, 1)).reshape(batch, channels * self.linear_size)
        x = dense(self.latent_len, channels * self.linear_size, name="enc_linear_0")(x)
        for i in range(1, self.n_linear):
            x = layers.batch_norm(train, impl=self.conv_impl, name=f"enc_norm_L{i}")(nn.relu(x))
            x = dense(self.latent_len, self.latent_len, name=f"enc_linear_{i}")(x)
        latent = x.astype(jnp.float32)

        x = GaussianNoise(name="latent_noise")(latent, hparam(hparams, "latent_noise_std"),
                                             deterministic=deterministic)
        for i in reversed(range(1, self.n_linear)):
            x = nn.relu(dense(self.latent_len, self.latent_len, name=f"dec_linear_{i}")(x))
            x = layers.batch_norm(train, impl=self.conv_impl, name=f"dec_norm_L{i}")(x)
        x = dense(channels * self.linear_size, self.latent_len, name="dec_linear_0")(x)
        x = jnp.transpose(x.reshape(batch, channels, self.linear_size), (0, 2, 1))
        for i in reversed(range(self.n_conv_and_pool)):
            n_in, n_out = sizes[i], sizes[i + 1]
            x = layers.batch_norm(train, impl=self.conv_impl, name=f"dec_norm_{i}")(nn.relu(x))
            x = layers.upsample_linear(x, self.pool_size)
            for j in reversed(range(1, self.n_conv_before_pool)):
                x = nn.relu(conv_t(n_out, k, pad, name=f"dec_conv_{i}{j}")(x))
            x = conv_t(n_in, k, pad, name=f"dec_conv_{i}0")(x)
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
      conv_impl: ``"flax"``, ``"cpu"`` or ``"auto"`` layers (same variables; see :mod:`jaxseq.layers`).
      dtype: computation dtype of convolutions and dense layers (float32 or bfloat16).
    """

    kernel_len: int
    latent_len: int
    hidden_len: int = 64
    dilations: tuple[int, ...] = (1, 2, 4, 8)
    hidden_dropout: float = 0.0
    residual: bool = True
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

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
        conv, conv_t, dense = _factories(self)
        k, hidden = self.kernel_len, self.hidden_len
        dropout = Dropout(self.hidden_dropout, deterministic=deterministic)

        def block(h, name, dilation):
            y = dropout(nn.relu(conv(hidden, k, hidden, padding="SAME", dilation=dilation, name=name)(h)))
            return h + y if self.residual else y

        tokens = SeqDropout(name="input_dropout")(tokens, hparam(hparams, "input_dropout"),
                                                   deterministic=deterministic)
        h = embed(tokens)
        h = dropout(nn.relu(conv(hidden, k, tok.NUM_BASES, padding="SAME", dilation=self.dilations[0],
                                  name="enc_conv_0")(h)))
        for i in range(1, len(self.dilations)):
            h = block(h, f"enc_conv_{i}", self.dilations[i])
        latent = conv(self.latent_len, 1, hidden, padding="VALID", name="enc_latent")(h)

        h = GaussianNoise(name="latent_noise")(latent, hparam(hparams, "latent_noise_std"),
                                             deterministic=deterministic)
        h = nn.relu(conv(hidden, 1, self.latent_len, padding="VALID", name="dec_latent")(h))
        for i in reversed(range(1, len(self.dilations))):
            h = block(h, f"dec_conv_{i}", self.dilations[i])
        logits = conv(tok.NUM_BASES, k, hidden, padding="SAME", dilation=self.dilations[0],
                       name="dec_conv_0")(h)
        return logits.astype(jnp.float32), latent.astype(jnp.float32)


def _factories(model: nn.Module):
    """The model's conv, transposed-conv and dense factories, bound to its ``conv_impl`` and ``dtype``."""
    impl, dtype = model.conv_impl, model.dtype
    return (functools.partial(layers.conv, impl=impl, dtype=dtype),
            functools.partial(layers.conv_transpose, impl=impl, dtype=dtype),
            functools.partial(layers.dense, dtype=dtype))


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


def create_model(name: str, window_len: int, /, *, dtype: str = "float32", **fields: Any) -> nn.Module:
    """Builds a model from its registry name and config fields.

    Only the fields the chosen module declares are passed on; the others are ignored, so a whole
    ``model.*`` config section can be splatted in (e.g. ``pool`` means nothing to the single-layer
    autoencoder, and a ``name`` key is the registry name, not the flax module name). ``window_len``
    goes to modules that declare it (the multilayer model). ``conv_impl: auto`` is resolved here, so
    the module records the implementation it builds.

    Args:
      name: a key of :data:`MODELS`.
      window_len: input length the model will see (``data.window_len``).
      dtype: ``train.compute_dtype``, one of :data:`jaxseq.layers.COMPUTE_DTYPES`.
      **fields: model config fields (``kernel_len``, ``latent_len``, ``hidden_len``, ``pool``,
        ``conv_impl``, ...).

    Returns:
      An unbound flax module.

    Raises:
      ValueError: unknown name (the message lists the choices), unknown ``conv_impl`` or ``dtype``,
        invalid field values, or a window shorter than the kernel.
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
    kwargs["conv_impl"] = layers.resolve_conv_impl(kwargs.get("conv_impl", "auto"))
    if dtype not in layers.COMPUTE_DTYPES:
        raise ValueError(f"train.compute_dtype: unknown dtype {dtype!r}; choose one of "
                         f"{', '.join(layers.COMPUTE_DTYPES)}")
    kwargs["dtype"] = jnp.dtype(dtype)
    kernel_len = kwargs.get("kernel_len")
    if isinstance(kernel_len, int) and kernel_len > window_len:
        raise ValueError(f"{name}: kernel_len {kernel_len} is longer than window_len {window_len}")
    return cls(**kwargs)
