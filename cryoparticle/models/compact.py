"""Compact checkpoints: 8-bit weights, and several trained networks (an ensemble) in one file.

An export (:func:`~cryoparticle.models.packaged.export_checkpoint`) may store each weight
matrix as signed 8-bit integers with one float32 scale per output row (``int8``: a quarter of
float32's bytes, half of float16's), and may carry further members of an ensemble beside its
own weights. On disk::

    checkpoint["state_dict"]      # the first member: int8 matrices, float16 vectors, ...
    checkpoint["weight_scales"]   # {key: float32 scales (rows,)} of the int8 entries
    checkpoint["ensemble"]        # [{"state_dict": ..., "weight_scales": ...}, ...]: the others

:func:`decode_checkpoint` (every reader goes through
:func:`~cryoparticle.models.checkpoints.read_checkpoint`) turns that back into float weights:
``state_dict`` of the first member, ``ensemble`` a list of the others' ``state_dict``.
A weight ``w`` of a row with largest magnitude ``m`` is stored as ``round(w / s)``, ``s = m /
127``, so it comes back within ``s / 2`` of itself (0.4 % of the row's largest weight).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

#: Floating tensors with at least this many dimensions (weight matrices and convolution
#: kernels) are stored as int8 rows; biases and normalisation vectors stay floating.
INT8_MIN_DIMS = 2
INT8_LEVELS = 127


def quantise_state_dict(state: Mapping[str, Tensor], half: bool = True
                        ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(stored, scales)``: every floating tensor of ``INT8_MIN_DIMS`` or more dimensions as
    int8 rows (dimension 0) with a float32 scale per row; other floating tensors as float16
    when ``half``; the rest unchanged."""
    stored: dict[str, Tensor] = {}
    scales: dict[str, Tensor] = {}
    for key, value in state.items():
        if value.is_floating_point() and value.ndim >= INT8_MIN_DIMS and value.numel():
            rows = value.detach().float().reshape(value.shape[0], -1)
            scale = rows.abs().amax(dim=1) / INT8_LEVELS
            safe = torch.where(scale > 0, scale, torch.ones_like(scale))
            stored[key] = torch.round(rows / safe[:, None]).clamp(-INT8_LEVELS, INT8_LEVELS) \
                .to(torch.int8).reshape(value.shape)
            scales[key] = scale
        elif value.is_floating_point() and half:
            stored[key] = value.half()
        else:
            stored[key] = value
    return stored, scales


def dequantise_state_dict(state: Mapping[str, Any], scales: Mapping[str, Any]
                          ) -> dict[str, Tensor]:
    """The float32 weights of a :func:`quantise_state_dict` pair (entries without a scale as
    stored). A scale without its tensor, or of the wrong length, raises ``ValueError``."""
    out = dict(state)
    for key, scale in scales.items():
        value = state.get(key)
        if not isinstance(value, Tensor) or not isinstance(scale, Tensor) \
                or value.dtype != torch.int8 or scale.shape != (value.shape[0],):
            raise ValueError(f"weight_scales[{key!r}] does not fit an int8 weight of the "
                             "state_dict")
        out[key] = value.float() * scale.float().reshape(-1, *([1] * (value.ndim - 1)))
    return out


def is_compact(checkpoint: Any) -> bool:
    """Whether ``checkpoint`` (as ``torch.load`` returns it) holds int8 weights or an
    ensemble."""
    return isinstance(checkpoint, Mapping) and ("weight_scales" in checkpoint
                                                or "ensemble" in checkpoint)


def decode_checkpoint(checkpoint: Any) -> Any:
    """A compact checkpoint with float weights: ``state_dict`` (the first member's) and, for an
    ensemble, ``ensemble`` = the other members' ``state_dict`` (float32 where stored int8).
    Anything else (not :func:`is_compact`) is returned as it is, the same object. Malformed
    entries raise ``ValueError``."""
    if not is_compact(checkpoint):
        return checkpoint
    out = dict(checkpoint)
    scales = out.pop("weight_scales", {}) or {}
    if not isinstance(out.get("state_dict"), Mapping) or not isinstance(scales, Mapping):
        raise ValueError("int8 weights without a state_dict")
    out["state_dict"] = dequantise_state_dict(out["state_dict"], scales)
    if "ensemble" in out:
        members = out["ensemble"]
        if not isinstance(members, list) or not all(
                isinstance(m, Mapping) and isinstance(m.get("state_dict"), Mapping)
                for m in members):
            raise ValueError("ensemble is not a list of {'state_dict': ...} members")
        out["ensemble"] = [dequantise_state_dict(m["state_dict"], m.get("weight_scales") or {})
                           for m in members]
    return out


__all__ = ["INT8_LEVELS", "INT8_MIN_DIMS", "decode_checkpoint", "dequantise_state_dict",
           "is_compact", "quantise_state_dict"]
