"""The 2020 prototype's two models in PyTorch, channels first, returning logits.

A faithful re-implementation of the prototype's architecture (README.md, "Comparing with the PyTorch prototype"),
with two deliberate changes shared with jaxseq: the decoders end in logits (no softmax; the loss is
the log-softmax cross-entropy), and every module name equals the flax module name of the
corresponding jaxseq layer (``enc_conv_00``, ``enc_norm_0``, ``dec_linear_0`` ...), so weights map by
name (:mod:`.convert`) and parameter counts compare layer by layer.

Every model takes integer tokens ``(B, L)`` (``A C G T N MASK`` = ``0..5``; N and MASK embed to all
zeros) and returns ``(logits (B, L, 4), latent)``, the same layout as jaxseq, so the loss and metric
code is shared in spirit with :mod:`jaxseq.losses`. Internally everything is ``(B, C, L)``, as in
the prototype.

The scheduled regularisers arrive per call as Python floats (``input_dropout``, ``latent_noise_std``),
mirroring jaxseq's traced ``hparams``; both apply in training mode only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NUM_BASES = 4
NUM_TOKENS = 6  # A C G T N MASK, as jaxseq.tokens

# tokens -> one-hot rows; N (4) and MASK (5) are all zeros (jaxseq.models.embed).
_ONE_HOT = torch.cat([torch.eye(NUM_BASES), torch.zeros(NUM_TOKENS - NUM_BASES, NUM_BASES)])


def embed(tokens: torch.Tensor) -> torch.Tensor:
    """One-hot, channels first.

    Args:
      tokens: integer ``(B, L)`` in ``0..5``.

    Returns:
      float32 ``(B, 4, L)``.
    """
    return _ONE_HOT.to(tokens.device)[tokens.long()].transpose(1, 2)


class SeqDropout(nn.Module):
    """The prototype's position dropout: drops all four channels of a position.

    The prototype applied ``Dropout2d`` over positions and multiplied by ``1 - p`` to undo its
    ``1 / (1 - p)`` rescaling; here the keep mask multiplies directly, so kept positions stay exactly
    one-hot (the rescaling round trip is not exact in float32) and dropped ones become zeros, which is
    what jaxseq's MASK token embeds to.
    """

    def forward(self, x: torch.Tensor, p: float) -> torch.Tensor:
        """Args: x float ``(B, C, L)``; p drop rate in ``[0, 1)``. Returns: same shape."""
        if not self.training or p <= 0.0:
            return x
        keep = torch.rand(x.shape[0], 1, x.shape[2], device=x.device) >= p
        return x * keep


class GaussianNoise(nn.Module):
    """``x + std * N(0, 1)`` in training mode."""

    def forward(self, x: torch.Tensor, std: float) -> torch.Tensor:
        if not self.training or std <= 0.0:
            return x
        return x + std * torch.randn_like(x)


class Autoencoder(nn.Module):
    """Single layer: SeqDropout -> Conv1d(4, latent, k) valid -> ReLU | noise -> ConvTranspose1d(latent, 4, k).

    Args:
      kernel_len: convolution width.
      latent_len: latent channels per position.
    """

    def __init__(self, kernel_len: int, latent_len: int):
        super().__init__()
        self.kernel_len, self.latent_len = kernel_len, latent_len
        self.input_dropout = SeqDropout()
        self.enc_conv = nn.Conv1d(NUM_BASES, latent_len, kernel_len)
        self.latent_noise = GaussianNoise()
        self.dec_conv = nn.ConvTranspose1d(latent_len, NUM_BASES, kernel_len)

    def forward(self, tokens: torch.Tensor, input_dropout: float = 0.0,
                latent_noise_std: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns logits float32 ``(B, L, 4)`` and latent ``(B, latent_len, L - k + 1)`` (channels first)."""
        x = self.input_dropout(embed(tokens), input_dropout)
        latent = F.relu(self.enc_conv(x))
        logits = self.dec_conv(self.latent_noise(latent, latent_noise_std))
        return logits.transpose(1, 2), latent


class MultilayerAutoencoder(nn.Module):
    """The prototype's ``MultilayerEncoder``: conv/pool/BatchNorm/Dropout blocks, dense bottleneck, mirror decoder.

    Layer order and names follow ``jaxseq.models.MultilayerAutoencoder`` (see its docstring), itself
    the prototype's order: ``pad = k // 2``, ``sizes = [4] + [hidden_len * (i + 1) ...]``.

    Args: as the jaxseq model (``window_len`` sizes the dense layers).
    """

    def __init__(self, kernel_len: int, latent_len: int, window_len: int, hidden_len: int = 24,
                 pool: str = "max", pool_size: int = 2, n_conv_and_pool: int = 1, n_conv_before_pool: int = 2,
                 n_linear: int = 2, hidden_dropout: float = 0.0):
        super().__init__()
        if kernel_len % 2 == 0:
            raise ValueError(f"kernel_len must be odd, got {kernel_len}")
        if pool not in ("max", "avg"):
            raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
        if window_len % pool_size ** n_conv_and_pool:
            raise ValueError(f"window_len {window_len} is not divisible by pool_size ** n_conv_and_pool")
        self.kernel_len, self.latent_len, self.window_len = kernel_len, latent_len, window_len
        self.pool_size, self.n_conv_and_pool = pool_size, n_conv_and_pool
        self.n_conv_before_pool, self.n_linear = n_conv_before_pool, n_linear
        self.sizes = [NUM_BASES] + [hidden_len * (i + 1) for i in range(n_conv_and_pool)]
        self.linear_size = window_len // pool_size ** n_conv_and_pool
        k, pad, sizes = kernel_len, kernel_len // 2, self.sizes
        channels = sizes[-1]

        self.input_dropout = SeqDropout()
        self.pool = (nn.MaxPool1d if pool == "max" else nn.AvgPool1d)(pool_size)
        self.hidden_dropout = nn.Dropout(hidden_dropout)
        self.upsample = nn.Upsample(scale_factor=pool_size, mode="linear", align_corners=False)
        self.latent_noise = GaussianNoise()
        # A dict keyed by the flax names: state_dict keys are "layers.<flax name>.<tensor>".
        layers: dict[str, nn.Module] = {}
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            for j in range(n_conv_before_pool):
                layers[f"enc_conv_{i}{j}"] = nn.Conv1d(n_in if j == 0 else n_out, n_out, k, padding=pad)
            layers[f"enc_norm_{i}"] = nn.BatchNorm1d(n_out)
        layers["enc_linear_0"] = nn.Linear(channels * self.linear_size, latent_len)
        for i in range(1, n_linear):
            layers[f"enc_norm_L{i}"] = nn.BatchNorm1d(latent_len)
            layers[f"enc_linear_{i}"] = nn.Linear(latent_len, latent_len)
        for i in reversed(range(1, n_linear)):
            layers[f"dec_linear_{i}"] = nn.Linear(latent_len, latent_len)
            layers[f"dec_norm_L{i}"] = nn.BatchNorm1d(latent_len)
        layers["dec_linear_0"] = nn.Linear(latent_len, channels * self.linear_size)
        for i in reversed(range(n_conv_and_pool)):
            layers[f"dec_norm_{i}"] = nn.BatchNorm1d(sizes[i + 1])
            for j in reversed(range(1, n_conv_before_pool)):
                layers[f"dec_conv_{i}{j}"] = nn.ConvTranspose1d(sizes[i + 1], sizes[i + 1], k, padding=pad)
            layers[f"dec_conv_{i}0"] = nn.ConvTranspose1d(sizes[i + 1], sizes[i], k, padding=pad)
        self.layers = nn.ModuleDict(layers)

    def encode(self, tokens: torch.Tensor, input_dropout: float = 0.0) -> torch.Tensor:
        """Tokens ``(B, window_len)`` -> latent ``(B, latent_len)``."""
        if tokens.shape[1] != self.window_len:
            raise ValueError(f"input length {tokens.shape[1]} != window_len {self.window_len}")
        m = self.layers
        x = self.input_dropout(embed(tokens), input_dropout)
        for i in range(self.n_conv_and_pool):
            for j in range(self.n_conv_before_pool):
                x = F.relu(m[f"enc_conv_{i}{j}"](x))
            x = self.hidden_dropout(m[f"enc_norm_{i}"](self.pool(x)))
        x = m["enc_linear_0"](x.reshape(x.shape[0], -1))  # channels-first flatten, the prototype's .view
        for i in range(1, self.n_linear):
            x = m[f"enc_linear_{i}"](m[f"enc_norm_L{i}"](F.relu(x)))
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent ``(B, latent_len)`` -> logits channels first ``(B, 4, window_len)``."""
        m = self.layers
        x = z
        for i in reversed(range(1, self.n_linear)):
            x = m[f"dec_norm_L{i}"](F.relu(m[f"dec_linear_{i}"](x)))
        x = m["dec_linear_0"](x).reshape(z.shape[0], self.sizes[-1], self.linear_size)
        for i in reversed(range(self.n_conv_and_pool)):
            x = self.upsample(m[f"dec_norm_{i}"](F.relu(x)))
            for j in reversed(range(1, self.n_conv_before_pool)):
                x = F.relu(m[f"dec_conv_{i}{j}"](x))
            x = m[f"dec_conv_{i}0"](x)
        return x

    def forward(self, tokens: torch.Tensor, input_dropout: float = 0.0,
                latent_noise_std: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns logits float32 ``(B, window_len, 4)`` and latent ``(B, latent_len)``."""
        latent = self.encode(tokens, input_dropout)
        logits = self.decode(self.latent_noise(latent, latent_noise_std))
        return logits.transpose(1, 2), latent


MODELS = {"autoencoder": Autoencoder, "multilayer": MultilayerAutoencoder}


def create_model(config) -> nn.Module:
    """The model named by ``config.model.name`` (a :class:`jaxseq.config.Config`).

    Raises:
      ValueError: a model the prototype did not have (``dilated`` is jaxseq-only).
    """
    m = config.model
    if m.name == "autoencoder":
        return Autoencoder(m.kernel_len, m.latent_len)
    if m.name == "multilayer":
        return MultilayerAutoencoder(m.kernel_len, m.latent_len, config.data.window_len, hidden_len=m.hidden_len,
                                     pool=m.pool, pool_size=m.pool_size, n_conv_and_pool=m.n_conv_and_pool,
                                     n_conv_before_pool=m.n_conv_before_pool, n_linear=m.n_linear,
                                     hidden_dropout=m.hidden_dropout)
    raise ValueError(f"model.name={m.name!r}: the PyTorch baseline has only the prototype's models "
                     f"({', '.join(MODELS)})")
