"""Ground truth from the clean projections: pasting boxes, per-particle masks, instance maps.

The segmentation mask of a particle is its noiseless projection thresholded at a fraction of
that particle's own maximum (so every orientation is labelled alike), then closed with a small
disc; masks and instance labels are computed per box (``N × box²`` work) and pasted into the
micrograph, never by a loop over particles or pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class BoxIndices:
    """Where the pixels of boxes ``(N, B, B)`` centred at ``(x, y)`` land in an ``(H, W)`` image.

    Indices are flat positions in a canvas padded by ``B//2 + 1`` on every side, so boxes cut
    by the border need no masking (no boolean gathers in the hot path); :meth:`crop` returns
    the ``(H, W)`` image.
    """

    def __init__(self, centres_xy: torch.Tensor, box: int, height: int, width: int) -> None:
        self.pad = box // 2 + 1
        self.height, self.width = height, width
        self.padded_width = width + 2 * self.pad
        self.numel = (height + 2 * self.pad) * self.padded_width
        offs = torch.arange(box, device=centres_xy.device) + (self.pad - box // 2)
        rows = centres_xy[:, 1, None, None] + offs[None, :, None]
        cols = centres_xy[:, 0, None, None] + offs[None, None, :]
        self.flat = (rows * self.padded_width + cols).reshape(-1)

    def crop(self, canvas: torch.Tensor) -> torch.Tensor:
        padded = canvas.view(-1, self.padded_width)
        p = self.pad
        return padded[p:p + self.height, p:p + self.width].contiguous()


def box_indices(centres_xy: torch.Tensor, box: int, height: int, width: int) -> BoxIndices:
    """The :class:`BoxIndices` of boxes of ``box`` pixels at these centres."""
    return BoxIndices(centres_xy, box, height, width)


def paste_sum(boxes: torch.Tensor, centres_xy: torch.Tensor, height: int, width: int,
              indices: BoxIndices | None = None) -> torch.Tensor:
    """Sum boxes ``(N, B, B)`` into an ``(H, W)`` image, box index ``B//2`` at each centre (x, y).

    ``indices``: the result of :func:`box_indices` for these centres, when already computed.
    """
    if boxes.shape[0] == 0:
        return torch.zeros((height, width), dtype=boxes.dtype, device=boxes.device)
    at = indices or box_indices(centres_xy, boxes.shape[-1], height, width)
    canvas = torch.zeros(at.numel, dtype=boxes.dtype, device=boxes.device)
    canvas.index_add_(0, at.flat, boxes.reshape(-1))
    return at.crop(canvas)


def binary_closing(masks: torch.Tensor, radius_px: int) -> torch.Tensor:
    """Morphological closing of boolean masks ``(N, H, W)`` by a ``(2r+1)²`` square.

    Dilation is a max-pool and erosion a max-pool of the complement; pixels beyond the box
    count as background for the dilation and do not erode the result.
    """
    if radius_px <= 0 or masks.numel() == 0:
        return masks
    k = 2 * radius_px + 1
    x = masks[:, None].to(torch.float32)
    dilated = F.max_pool2d(x, k, stride=1, padding=radius_px)
    eroded_complement = F.max_pool2d(1.0 - dilated, k, stride=1, padding=radius_px)
    return eroded_complement[:, 0] < 0.5


def particle_masks(projections: torch.Tensor, threshold_fraction: float, closing_radius_px: int
                   ) -> torch.Tensor:
    """Boolean masks ``(N, B, B)``: projection above ``threshold_fraction`` × its own maximum."""
    if projections.shape[0] == 0:
        return projections.bool()
    peak = projections.flatten(1).amax(1).clamp_min(1e-12)
    masks = projections > threshold_fraction * peak[:, None, None]
    return binary_closing(masks, closing_radius_px)


def instance_map(masks: torch.Tensor, centres_xy: torch.Tensor, height: int, width: int,
                 indices: BoxIndices | None = None) -> torch.Tensor:
    """Instance labels ``(H, W)`` int32: 0 = background, ``k`` = particle ``k − 1``.

    Where particles overlap, the later particle in the table wins (a fixed, documented rule).
    """
    if masks.shape[0] == 0:
        return torch.zeros((height, width), dtype=torch.int32, device=masks.device)
    at = indices or box_indices(centres_xy, masks.shape[-1], height, width)
    canvas = torch.zeros(at.numel, dtype=torch.int32, device=masks.device)
    ids = torch.arange(1, masks.shape[0] + 1, dtype=torch.int32, device=masks.device)
    keep = masks.reshape(-1)  # only particle pixels: the mask is sparse in its box
    canvas.scatter_reduce_(0, at.flat[keep], ids[:, None, None].expand_as(masks).reshape(-1)[keep],
                           reduce="amax")
    return at.crop(canvas)


def disc_masks(diameters_px: torch.Tensor, box: int) -> torch.Tensor:
    """Boolean discs ``(N, B, B)`` of the given diameters (pixels), centred on box index ``B//2``.

    The label real ground truth draws (CryoPPP, most pickers' training sets): every pixel
    within half a diameter of the particle centre.
    """
    c = torch.arange(box, dtype=torch.float32, device=diameters_px.device) - box // 2
    r2 = c[:, None] ** 2 + c[None, :] ** 2
    radius = diameters_px.to(torch.float32) / 2
    return r2[None] <= (radius * radius)[:, None, None]


def pad_boxes(boxes: torch.Tensor, box: int) -> torch.Tensor:
    """Zero-pad boxes ``(N, b, b)`` to ``(N, box, box)`` keeping index ``b//2`` at ``box//2``."""
    b = boxes.shape[-1]
    if b == box:
        return boxes
    before = box // 2 - b // 2
    return F.pad(boxes, (before, box - b - before, before, box - b - before))
