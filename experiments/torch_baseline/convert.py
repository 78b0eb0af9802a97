"""Weights between jaxseq (flax) and the PyTorch baseline, both ways.

Torch modules carry the flax module names (``enc_conv_00``; the multilayer model keeps them in a
``ModuleDict`` called ``layers``), so the mapping is by name and only the tensor layouts differ:

=========================  =======================================  ============================================
flax (jaxseq.models)       torch (experiments.torch_baseline)       conversion flax -> torch
=========================  =======================================  ============================================
``Conv`` kernel            ``Conv1d.weight (C_out, C_in, k)``       ``kernel.transpose(2, 1, 0)``
``(k, C_in, C_out)``       (both cross-correlate: no flip)
``ConvTranspose`` kernel   ``ConvTranspose1d.weight                 ``kernel.transpose(2, 1, 0)``: jaxseq builds
``(k, C_out, C_in)``       (C_in, C_out, k)``                       it with ``transpose_kernel=True``, which
                                                                    flips the kernel itself and swaps its two
                                                                    feature axes, exactly as PyTorch's
                                                                    transposed convolution does: no flip here
                                                                    (verified numerically in the tests)
``Dense`` kernel           ``Linear.weight (n_out, n_in)``          ``kernel.T``
``(n_in, n_out)``
``bias``                   ``bias``                                 as is
``BatchNorm`` params       ``BatchNorm1d.weight``, ``.bias``        ``scale`` -> ``weight``, ``bias`` -> ``bias``
``scale``, ``bias``
``batch_stats`` ``mean``,  ``running_mean``, ``running_var``        as is (``num_batches_tracked`` is not used
``var``                                                             with a fixed momentum; left untouched)
=========================  =======================================  ============================================

The multilayer models flatten channels first on both sides (``(B, C, L') -> (B, C * L')``), so the
first/last dense layers need no permutation.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn


def _np(x) -> np.ndarray:
    # A writable copy: torch.from_numpy warns on the read-only views of jax arrays.
    return np.array(x, dtype=np.float32, copy=True)


def _torch_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Flax name -> torch module holding parameters."""
    container = model.layers if hasattr(model, "layers") else model
    return {name: module for name, module in container.named_children()
            if any(True for _ in module.parameters(recurse=False))}


def flax_to_torch_state_dict(model: nn.Module, params: Mapping[str, Any],
                             batch_stats: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """A ``state_dict`` for ``model`` holding jaxseq's weights.

    Args:
      model: the baseline model built from the same config (gives names, types and prefixes).
      params: flax ``params`` collection (arrays; jax or numpy).
      batch_stats: flax ``batch_stats`` collection, or None / empty for models without BatchNorm.

    Returns:
      ``{state_dict key: tensor}`` with every parameter and BatchNorm buffer of ``model`` (load it with
      ``model.load_state_dict(sd, strict=False)``; only ``num_batches_tracked`` is absent).

    Raises:
      KeyError: a torch layer without flax counterpart or the reverse.
      ValueError: shapes that do not match (different configs).
    """
    batch_stats = batch_stats or {}
    prefix = "layers." if hasattr(model, "layers") else ""
    modules = _torch_modules(model)
    missing = sorted(set(modules) ^ set(params))
    if missing:
        raise KeyError(f"layers not in both models: {missing}")
    out: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        p = params[name]
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
            weight = _np(p["kernel"]).transpose(2, 1, 0)
        elif isinstance(module, nn.Linear):
            weight = _np(p["kernel"]).T
        elif isinstance(module, nn.BatchNorm1d):
            weight = _np(p["scale"])
            stats = batch_stats[name]
            out[f"{prefix}{name}.running_mean"] = torch.from_numpy(_np(stats["mean"]))
            out[f"{prefix}{name}.running_var"] = torch.from_numpy(_np(stats["var"]))
        else:
            raise TypeError(f"{name}: no conversion for {type(module).__name__}")
        if tuple(weight.shape) != tuple(module.weight.shape):
            raise ValueError(f"{name}: flax weight maps to shape {weight.shape}, torch has {tuple(module.weight.shape)}")
        out[f"{prefix}{name}.weight"] = torch.from_numpy(np.ascontiguousarray(weight))
        out[f"{prefix}{name}.bias"] = torch.from_numpy(_np(p["bias"]))
    return out


def load_flax_weights(model: nn.Module, params: Mapping[str, Any], batch_stats: Mapping[str, Any] | None = None) -> None:
    """Copies jaxseq weights into ``model`` in place (see :func:`flax_to_torch_state_dict`)."""
    state = flax_to_torch_state_dict(model, params, batch_stats)
    result = model.load_state_dict(state, strict=False)
    unexpected = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if unexpected or result.unexpected_keys:
        raise KeyError(f"state_dict mismatch: missing {unexpected}, unexpected {result.unexpected_keys}")


def torch_to_flax(model: nn.Module) -> tuple[dict, dict]:
    """The reverse mapping: ``(params, batch_stats)`` nested dicts of numpy float32 arrays.

    Use it to evaluate a baseline checkpoint with jaxseq (``model.apply({"params": ..., "batch_stats": ...})``).
    """
    params: dict[str, dict] = {}
    batch_stats: dict[str, dict] = {}
    for name, module in _torch_modules(model).items():
        weight = module.weight.detach().cpu().numpy().astype(np.float32)
        bias = module.bias.detach().cpu().numpy().astype(np.float32)
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
            params[name] = {"kernel": np.ascontiguousarray(weight.transpose(2, 1, 0)), "bias": bias}
        elif isinstance(module, nn.Linear):
            params[name] = {"kernel": np.ascontiguousarray(weight.T), "bias": bias}
        elif isinstance(module, nn.BatchNorm1d):
            params[name] = {"scale": weight, "bias": bias}
            batch_stats[name] = {"mean": module.running_mean.cpu().numpy().astype(np.float32),
                                 "var": module.running_var.cpu().numpy().astype(np.float32)}
        else:
            raise TypeError(f"{name}: no conversion for {type(module).__name__}")
    return params, batch_stats


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable parameters per layer, keyed by the flax module name."""
    return {name: sum(p.numel() for p in module.parameters()) for name, module in _torch_modules(model).items()}
