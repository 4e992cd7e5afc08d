"""Tiles ↔ micrograph: run a network on overlapping tiles and stitch them without seams.

:func:`predict_tiled` cuts a ``(C, H, W)`` image into ``tile × tile`` tiles overlapping by
``overlap`` pixels (the last tile of each row/column flush with the image edge), runs ``fn`` on
batches of tiles, and blends the outputs with :func:`blend_window` weights normalised by their
sum at every pixel, so a constant ``fn`` gives a constant image and a pointwise ``fn`` gives
exactly the whole-image result. For a convolutional network, choose ``overlap`` well above its
receptive-field radius: each pixel is then dominated by a tile in which it lies far from the
tile's edge.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from cryoparticle.errors import param_error


def _check_tiling(tile: int, overlap: int) -> None:
    if isinstance(tile, bool) or int(tile) != tile or tile < 1:
        raise param_error("tile", tile, "must be a positive whole number of pixels")
    if isinstance(overlap, bool) or int(overlap) != overlap or not 0 <= overlap < tile:
        raise param_error("overlap", overlap, f"must be a whole number in [0, tile={tile})")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering ``[0, length)`` with stride ``tile − overlap``.

    The last tile ends flush with ``length`` (it may overlap its neighbour by more than
    ``overlap``); ``length ≤ tile`` gives ``[0]``.
    """
    _check_tiling(tile, overlap)
    if length < 1:
        raise param_error("length", length, "must be ≥ 1")
    if length <= tile:
        return [0]
    stride = tile - overlap
    return list(range(0, length - tile, stride)) + [length - tile]


def blend_window(tile: int, overlap: int) -> torch.Tensor:
    """``(tile, tile)`` float32 weights: 1 inside, a ramp over ``overlap`` pixels at each side,
    strictly positive everywhere (the outer product of two 1-D windows).

    The 1-D ramp is ``sin²(π/2 · S(t))`` with ``t = (i + ½) / overlap`` and ``S`` the quintic
    smootherstep: the two ramps of neighbouring tiles sum to 1 across an overlap, and the ramp
    is very flat near the tile edge (≈ 250 t⁶), where a convolutional network's output is
    corrupted by its padding, so those pixels hardly count where a neighbour covers them.
    """
    _check_tiling(tile, overlap)
    ramp = torch.ones(tile, dtype=torch.float64)
    n = min(int(overlap), tile // 2)
    if n > 0:
        t = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        smooth = t * t * t * (10.0 - 15.0 * t + 6.0 * t * t)
        up = torch.sin(math.pi / 2 * smooth).pow(2).clamp_min(1e-12)
        ramp[:n] = up
        ramp[tile - n:] = torch.minimum(ramp[tile - n:], up.flip(0))
    return (ramp[:, None] * ramp[None, :]).to(torch.float32)


def _reflect_index(size: int, target: int, before: int, device: torch.device) -> torch.Tensor:
    """Indices into ``[0, size)`` for a reflect padding (edge not repeated), any pad width."""
    idx = torch.arange(target, device=device) - before
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    idx = idx.remainder(period)
    return torch.where(idx >= size, period - idx, idx)


def predict_tiled(fn: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, tile: int,
                  overlap: int, batch_size: int = 8) -> torch.Tensor:
    """Apply ``fn`` ``(B, C, t, t) → (B, K, t, t)`` to a ``(C, H, W)`` image tile by tile.

    An image smaller than a tile along a side is reflect-padded (centred) to the tile size and
    the result cropped back. Outputs are blended with :func:`blend_window` weights divided by
    their sum, accumulated in float32 on the image's device; returns ``(K, H, W)`` float32.
    Call it under ``torch.inference_mode()`` (or ``no_grad``) when gradients are not needed.
    """
    _check_tiling(tile, overlap)
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise param_error("batch_size", batch_size, "must be a positive whole number")
    if image.ndim != 3 or image.numel() == 0:
        raise param_error("image", f"tensor of shape {tuple(image.shape)}",
                          "expected a non-empty (C, H, W) tensor")
    device = image.device
    _, height, width = image.shape
    pad_h, pad_w = max(0, tile - height), max(0, tile - width)
    top, left = pad_h // 2, pad_w // 2
    if pad_h or pad_w:
        rows = _reflect_index(height, height + pad_h, top, device)
        cols = _reflect_index(width, width + pad_w, left, device)
        image = image[:, rows[:, None], cols[None, :]]
    full_h, full_w = image.shape[-2:]

    ys = torch.tensor(tile_starts(full_h, tile, overlap), device=device)
    xs = torch.tensor(tile_starts(full_w, tile, overlap), device=device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    starts_y, starts_x = grid_y.flatten(), grid_x.flatten()
    offsets = torch.arange(tile, device=device)
    window = blend_window(tile, overlap).to(device)

    out: torch.Tensor | None = None
    weight_sum = torch.zeros(full_h, full_w, dtype=torch.float32, device=device)
    for first in range(0, starts_y.numel(), int(batch_size)):
        rows = (starts_y[first:first + batch_size, None] + offsets)[:, :, None]  # (B, t, 1)
        cols = (starts_x[first:first + batch_size, None] + offsets)[:, None, :]  # (B, 1, t)
        tiles = image[:, rows, cols].transpose(0, 1)  # (B, C, t, t)
        result = fn(tiles)
        if result.ndim != 4 or result.shape[0] != tiles.shape[0] or \
                tuple(result.shape[-2:]) != (tile, tile):
            raise param_error("fn", f"output of shape {tuple(result.shape)}",
                              f"expected ({tiles.shape[0]}, K, {tile}, {tile})")
        if out is None:
            out = torch.zeros(result.shape[1], full_h, full_w, dtype=torch.float32,
                              device=device)
        weighted = (result.to(device=device, dtype=torch.float32) * window).transpose(0, 1)
        rows_b, cols_b = torch.broadcast_tensors(rows, cols)  # (B, t, t)
        channel = torch.arange(out.shape[0], device=device)[:, None, None, None]
        out.index_put_((channel, rows_b[None], cols_b[None]), weighted, accumulate=True)
        weight_sum.index_put_((rows_b, cols_b), window.expand_as(rows_b), accumulate=True)
    assert out is not None
    out /= weight_sum
    return out[:, top:top + height, left:left + width]


__all__ = ["blend_window", "predict_tiled", "tile_starts"]
