"""Fast Gaussian and bilateral filtering: the message passing of a dense CRF in O(pixels).

A mean-field step of a fully connected CRF (Krähenbühl & Koltun 2011) multiplies the current
marginals ``Q`` by an ``N × N`` Gaussian kernel matrix ``K_ij = exp(-|f_i - f_j|² / 2)`` in a
feature space ``f``: pixel positions divided by ``sxy`` (the *spatial* kernel) or positions and
intensity divided by ``sxy`` and ``s_intensity`` (the *bilateral* kernel). Done exactly this costs
``N²``; here it is done on a coarse grid (Chen, Paris & Durand's bilateral grid), in
``O(N + grid)`` with a handful of tensor operations (no Python loop over pixels), batched, on any
device, and differentiable (autograd) with respect to the values, the kernel bandwidths and — for
:class:`FeatureBilateral` — the features themselves.

Spatial axes (regular)
    *splat*: every pixel is added to the grid cell holding it (a box of ``cell`` pixels; for
    :class:`SpatialGaussian` an average pooling); *blur*: a separable Gaussian on the grid whose
    width makes up the rest of the kernel's variance (``σ²/cell² − var(box) − var(tent)``,
    so the effective kernel has the requested ``σ``); *slice*: bilinear interpolation back to the
    pixels. One pad cell on each side keeps the interpolation inside the grid.

Intensity axis (:class:`IntensityBilateral`, 8-bit levels as pydensecrf sees them)
    pixels are splatted into a *fine* histogram with one bin per level (256, exact), the
    256 × 256 Gaussian intensity kernel is applied as a matrix — exact for small grids and while
    the bandwidth is being learned, otherwise through its rank-``k`` eigen-factorisation
    ``K ≈ B Bᵀ`` (max. abs. error ≤ :data:`LOWRANK_TOLERANCE`; ``k = 43`` for σ = 7.5 levels) —
    and the result is sliced with one 2-D ``grid_sample`` on an "atlas" stacking the 256 level
    planes, i.e. trilinear slicing for the price of bilinear.

Learned features (:class:`FeatureBilateral`, any number of float channels)
    multilinear (tent) splat and slice along each feature axis (``2^F`` corners), so gradients
    reach the features through the interpolation weights.

Normalisation as pydensecrf's default ``NORMALIZE_SYMMETRIC``: messages are
``D^{-1/2} K D^{-1/2} Q`` with ``D = K·1`` computed with the same approximate ``K`` (see
:func:`symmetric_normaliser`). The self-contribution ``K_ii = 1`` is kept, as in pydensecrf.

Accuracy: with one grid cell per bandwidth the normalised filters are within a few % of the
exact ones (the kernel depends a little on where two pixels fall in their cells), within ~1 %
with two or more (``tests/crf/test_filtering.py``); the cell sizes are the speed/accuracy knob.

Bands: without autograd the filters run over horizontal bands of :data:`BAND_PIXELS` pixels
(``new_grid``, ``splat_`` per band, ``blur``, ``slice`` per band; :func:`apply_filter`): small,
cache-resident working arrays and no whole-micrograph temporaries (on the CPU a fresh 64 MB
array costs more in page faults than the arithmetic done on it).

:func:`exact_filter` is the brute-force reference (explicit ``N × N`` kernel) the tests compare
against; keep it to images of ≤ 64² pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

#: Number of intensity levels of the bilateral feature (8 bit, as pydensecrf's RGB input).
LEVELS = 256
#: Percentiles of a micrograph mapped to levels 0 and 255 by :func:`intensity_levels`.
DEFAULT_PERCENTILES: tuple[float, float] = (0.5, 99.5)
#: Grid cells per kernel bandwidth along the spatial axes (cell = σ / this, in whole pixels).
SPATIAL_CELLS_PER_SIGMA = 1.0
#: Grid cells per bandwidth along the spatial axes of the bilateral kernel.
BILATERAL_CELLS_PER_SIGMA = 0.5
#: Grid cells per bandwidth along learned-feature axes.
FEATURE_CELLS_PER_SIGMA = 1.0
#: Images of at most this many pixels get finer grids by default (cheap at that size and
#: closer to the exact kernels): :data:`FINE_SPATIAL_CELLS_PER_SIGMA`,
#: :data:`FINE_BILATERAL_CELLS_PER_SIGMA`.
FINE_GRID_PIXELS = 1 << 16
FINE_SPATIAL_CELLS_PER_SIGMA = 1.5
FINE_BILATERAL_CELLS_PER_SIGMA = 2.5
#: Largest max-abs error of the low-rank intensity kernel (its diagonal is 1).
LOWRANK_TOLERANCE = 1e-3
#: Images (all of a batch together) of more than this many pixels get the *nearest* slice of the
#: bilateral grid by default at inference (without autograd; CRF-as-RNN training keeps the
#: bilinear slice): each pixel reads back the cell it was splatted into, one
#: ``index_select``; the blur makes up the slice's variance), smaller ones the bilinear slice
#: (closer to the exact kernel on small grids). At 4096² the nearest slice makes 10 iterations
#: ~30 % faster at 99.85 % label agreement with pydensecrf (bilinear: 99.89 %).
NEAREST_SLICE_PIXELS = FINE_GRID_PIXELS
#: Blur taps reach this many standard deviations.
TRUNCATE = 4.0
#: Pixels used to estimate the percentiles of a micrograph (a regular subsample).
_PERCENTILE_SAMPLES = 1 << 18


# ----------------------------------------------------------------------------- intensity levels


def intensity_levels(image: Tensor, percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> Tensor:
    """8-bit intensity levels (``uint8``, same shape) of images ``(..., H, W)``, per image.

    The ``percentiles`` (robust to outliers such as ice and carbon) of each image map to 0 and 255,
    values beyond are clipped; estimated on a regular subsample of at most 2¹⁸ pixels. This is
    the one place where a micrograph's intensity becomes the CRF feature, so the pydensecrf
    reference (:mod:`cryoparticle.crf.dense`) and :class:`~cryoparticle.crf.meanfield.MeanFieldCRF`
    see identical features. A constant image maps to 0.
    """
    if image.ndim < 2:
        raise ValueError(f"image must have at least 2 dimensions, got {tuple(image.shape)}")
    lo_p, hi_p = (float(p) for p in percentiles)
    shape = image.shape
    flat = image.detach().reshape(-1, shape[-2] * shape[-1])
    if not flat.is_floating_point():
        flat = flat.float()
    step = max(1, math.ceil(flat.shape[1] / _PERCENTILE_SAMPLES))
    sample = flat[:, ::step].float()
    q = torch.tensor([lo_p / 100.0, hi_p / 100.0], dtype=sample.dtype, device=sample.device)
    lo, hi = torch.quantile(sample, q, dim=1)
    span = hi - lo
    scale = torch.where(span > 0, (LEVELS - 1) / span.clamp_min(1e-30), torch.zeros_like(span))
    out = torch.empty(flat.shape, dtype=torch.uint8, device=flat.device)
    step = max(1, BAND_PIXELS)           # in pieces: no whole-micrograph float temporaries
    for i in range(flat.shape[0]):
        for j in range(0, flat.shape[1], step):
            piece = flat[i, j:j + step].float()
            out[i, j:j + step] = (piece - lo[i]).mul_(scale[i]).round_().clamp_(0, LEVELS - 1)
    return out.reshape(shape)


# ---------------------------------------------------------------------------------- helpers


def auto_cell(sigma: float, cells_per_sigma: float = SPATIAL_CELLS_PER_SIGMA) -> int:
    """Grid cell size (whole pixels ≥ 1) for a spatial bandwidth ``sigma`` (pixels)."""
    return max(1, math.floor(float(sigma) / cells_per_sigma + 1e-9))


def _tent_variance(cell: int) -> float:
    """Mean variance (cells²) of bilinear slicing weights over the pixels of one cell."""
    if cell <= 1:
        return 0.0
    t = ((torch.arange(cell, dtype=torch.float64) + 0.5) / cell + 0.5) % 1.0
    return float((t * (1 - t)).mean())


def _box_variance(cell: int) -> float:
    """Variance (cells²) of a box of ``cell`` pixels."""
    return (cell * cell - 1) / (12.0 * cell * cell)


def _blur_sigma(sigma: Tensor | float, cell: float, extra_variance: float) -> Tensor | float:
    """Standard deviation (cells) of the grid blur so that the whole kernel has ``sigma``."""
    if isinstance(sigma, Tensor):
        return ((sigma / cell) ** 2 - extra_variance).clamp_min(1e-4).sqrt()
    return math.sqrt(max((sigma / cell) ** 2 - extra_variance, 1e-4))


def gaussian_taps(sigma: Tensor | float, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> Tensor:
    """Normalised 1-D Gaussian taps of standard deviation ``sigma`` (samples), cut at
    ``TRUNCATE·σ``: ``max(0, exp(-k²/2σ²) − exp(-TRUNCATE²/2))``, so that the taps are
    continuous in ``σ`` (a tap enters with weight 0) and differentiable for a tensor ``sigma``."""
    value = float(sigma.detach()) if isinstance(sigma, Tensor) else float(sigma)
    radius = math.floor(TRUNCATE * value) if value > 1 / TRUNCATE else 0
    if isinstance(sigma, Tensor):
        device, dtype = sigma.device, (sigma.dtype if sigma.is_floating_point() else dtype)
    if radius == 0:
        return torch.ones(1, dtype=dtype, device=device)
    k = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    w = (torch.exp(-0.5 * (k / sigma) ** 2) - math.exp(-0.5 * TRUNCATE ** 2)).clamp_min(0)
    return w / w.sum()


def blur_axis(x: Tensor, dim: int, taps: Tensor, out: Tensor | None = None) -> Tensor:
    """Convolve ``x`` along ``dim`` with symmetric ``taps`` (odd length), zero padding, same size.

    Without autograd: shifted in-place additions (fast on small grids and on the CPU, where a
    one-channel ``conv1d`` is slow), into ``out`` if given (not ``x``: no fresh array); with
    autograd: ``conv1d``."""
    n = taps.numel()
    if n == 1:
        return torch.mul(x, taps.to(x.dtype), out=out) if out is not None else \
            x * taps.to(x.dtype)
    radius = n // 2
    if torch.is_grad_enabled() and (x.requires_grad or taps.requires_grad):
        moved = x.movedim(dim, -1)
        shape = moved.shape
        flat = moved.reshape(-1, 1, shape[-1])
        out = F.conv1d(flat, taps.to(x.dtype).view(1, 1, n), padding=radius)
        return out.reshape(shape).movedim(-1, dim)
    weights = [float(v) for v in taps]
    length = x.shape[dim]
    out = torch.mul(x, weights[radius], out=out) if out is not None else x * weights[radius]
    for j in range(1, min(radius, length - 1) + 1):
        out.narrow(dim, j, length - j).add_(x.narrow(dim, 0, length - j), alpha=weights[radius - j])
        out.narrow(dim, 0, length - j).add_(x.narrow(dim, j, length - j), alpha=weights[radius + j])
    return out


def _axis(length: int, cell: int, device: torch.device) -> tuple[int, Tensor, Tensor]:
    """Grid size (with one pad cell each side), splat cell of each pixel, slice coordinate."""
    size = -(-length // cell) + 2
    p = torch.arange(length, device=device)
    index = torch.div(p, cell, rounding_mode="floor") + 1
    coord = (p.to(torch.float64) + 0.5) / cell + 0.5
    return size, index, coord


@lru_cache(maxsize=16)
def _lowrank_factor(sigma: float, levels: int, tolerance: float) -> Tensor:
    """``B`` (levels × k, float64, CPU) with ``B Bᵀ ≈ exp(-(l-l')²/2σ²)`` within ``tolerance``."""
    lv = torch.arange(levels, dtype=torch.float64)
    kernel = torch.exp(-0.5 * ((lv[:, None] - lv[None, :]) / sigma) ** 2)
    values, vectors = torch.linalg.eigh(kernel)
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    factor = vectors * values.sqrt()
    lo, hi = 1, levels
    while lo < hi:  # smallest rank within tolerance (the error falls with the rank)
        mid = (lo + hi) // 2
        b = factor[:, :mid]
        if float((b @ b.T - kernel).abs().max()) <= tolerance:
            hi = mid
        else:
            lo = mid + 1
    return factor[:, :lo].contiguous()


def intensity_kernel(sigma: Tensor | float, levels: int = LEVELS, dtype: torch.dtype = torch.float32,
                     device: torch.device | str | None = None) -> Tensor:
    """The exact ``levels × levels`` Gaussian kernel on intensity levels (differentiable)."""
    if isinstance(sigma, Tensor):
        device, dtype = sigma.device, sigma.dtype
    lv = torch.arange(levels, dtype=dtype, device=device)
    return torch.exp(-0.5 * ((lv[:, None] - lv[None, :]) / sigma) ** 2)


# ------------------------------------------------------------------------------------ filters


class SpatialGaussian:
    """Gaussian kernel on pixel positions (pydensecrf's ``addPairwiseGaussian``): values
    ``(N, C, H, W)`` ↦ ``Σ_j exp(-|p_i - p_j|² / 2 sxy²) v_j`` (approximately).

    ``cell`` (pixels, default from ``sxy``): sum-pool by ``cell``, blur, bilinear upsampling;
    ``cell = 1`` is an exact separable convolution (truncated at ``TRUNCATE`` σ). ``sxy`` may be
    a tensor (learnable); the cell size stays as built.

    Besides ``filt(values)``, the filter runs in horizontal bands (``new_grid``, ``splat_`` for
    each band, ``blur``, ``slice`` for each band): see :func:`apply_filter`.
    """

    def __init__(self, height: int, width: int, sxy: Tensor | float, cell: int | None = None
                 ) -> None:
        self.height, self.width = int(height), int(width)
        self.cell = int(cell) if cell is not None else auto_cell(float(sxy))
        s = self.cell
        extra = (_box_variance(s) + _tent_variance(s)) if s > 1 else 0.0
        self.sigma_cells = _blur_sigma(sxy, s, extra)
        self.grid_shape = ((-(-self.height // s) + 2, -(-self.width // s) + 2) if s > 1
                           else (self.height, self.width))

    #: Bands must start at a multiple of this many rows.
    @property
    def row_multiple(self) -> int:
        return self.cell

    def new_grid(self, values: Tensor) -> Tensor:
        return values.new_zeros(values.shape[0], values.shape[1], *self.grid_shape)

    def splat_(self, grid: Tensor, values: Tensor, r0: int, alpha: float = 1.0) -> Tensor:
        """Add ``alpha`` × the band ``values (N, C, rows, W)`` starting at row ``r0`` to
        ``grid``."""
        s = self.cell
        if s == 1:
            grid[:, :, r0:r0 + values.shape[2]].add_(values, alpha=alpha)
            return grid
        pooled = F.avg_pool2d(values, s, ceil_mode=True, divisor_override=1)
        g0 = 1 + r0 // s
        grid[:, :, g0:g0 + pooled.shape[2], 1:1 + pooled.shape[3]].add_(pooled, alpha=alpha)
        return grid

    def blur(self, grid: Tensor) -> Tensor:
        taps = gaussian_taps(self.sigma_cells, grid.dtype, grid.device)
        return blur_axis(blur_axis(grid, 2, taps), 3, taps)

    def slice(self, grid: Tensor, r0: int, r1: int) -> Tensor:
        """Filtered values of rows ``r0:r1`` from a blurred grid."""
        s = self.cell
        if s == 1:
            return grid[:, :, r0:r1]
        a = math.floor((r0 + 0.5) / s + 0.5)
        b = min(self.grid_shape[0], math.floor((r1 - 0.5) / s + 0.5) + 2)
        up = F.interpolate(grid[:, :, a:b], scale_factor=s, mode="bilinear", align_corners=False)
        top = r0 + s - a * s
        return up[:, :, top:top + r1 - r0, s:s + self.width]

    def __call__(self, values: Tensor) -> Tensor:
        return apply_filter(self, values)

    def filter_1d(self, u: Tensor, axis: int) -> Tensor:
        """The filter along one axis (``axis`` 0: rows, 1: columns) of a vector ``u``: the
        2-D filter of an outer product ``u ⊗ v`` is the outer product of the 1-D filters
        (box, blur and bilinear slicing are all separable)."""
        s = self.cell
        taps = gaussian_taps(self.sigma_cells, u.dtype, u.device)
        length = u.shape[0]
        if s == 1:
            return blur_axis(u.view(1, length), 1, taps).view(length)
        cells = -(-length // s)
        pooled = F.pad(u, (0, cells * s - length)).view(cells, s).sum(dim=1)
        grid = blur_axis(F.pad(pooled, (1, 1)).view(1, cells + 2), 1, taps)
        up = F.interpolate(grid.view(1, 1, cells + 2), scale_factor=s, mode="linear",
                           align_corners=False)
        return up.view(-1)[s:s + length]

    def normalisers(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """``D^{-1/2}`` and ``D^{-1/2} K D^{-1/2} 1`` ``(N, 1, H, W)`` from 1-D filters (the
        ones image and ``D^{-1/2}`` are outer products): O(H + W) instead of two 2-D passes."""
        n = like.shape[0]
        factors = []
        for axis, length in ((0, self.height), (1, self.width)):
            ones = torch.ones(length, dtype=like.dtype, device=like.device)
            a = self.filter_1d(ones, axis).clamp_min(1e-20).rsqrt()
            factors.append((a, a * self.filter_1d(a, axis)))
        (ay, oy), (ax, ox) = factors
        norm = (ay[:, None] * ax[None, :]).expand(n, 1, self.height, self.width)
        ones = (oy[:, None] * ox[None, :]).expand(n, 1, self.height, self.width)
        return norm.contiguous(), ones.contiguous()


class IntensityBilateral:
    """Bilateral kernel on position and 8-bit intensity level (pydensecrf's
    ``addPairwiseBilateral`` for a grey image): values ``(N, C, H, W)`` ↦
    ``Σ_j exp(-|p_i - p_j|² / 2 sxy² - (l_i - l_j)² / 2 s_level²) v_j`` (approximately).

    ``levels``: ``(N, H, W)`` or ``(N, 1, H, W)`` integers in ``[0, 256)`` (see
    :func:`intensity_levels`); ``s_level`` in levels. ``rank``: ``None`` = automatic (exact
    intensity kernel when ``s_level`` is a tensor that requires grad or the grid is small, else
    the low-rank factor); ``0`` = always exact; ``k > 0`` = that rank. ``slice_mode``:
    ``"bilinear"`` or ``"nearest"``; ``None`` = nearest above :data:`NEAREST_SLICE_PIXELS`
    pixels when autograd is off, else bilinear.
    """

    row_multiple = 1

    def __init__(self, levels: Tensor, sxy: Tensor | float, s_level: Tensor | float,
                 cell: int | None = None, rank: int | None = None,
                 dtype: torch.dtype = torch.float32, slice_mode: str | None = None) -> None:
        if levels.ndim == 4:
            levels = levels[:, 0]
        n, h, w = levels.shape
        if slice_mode is None:  # training (autograd) keeps the bilinear slice, as measured
            large = n * h * w > NEAREST_SLICE_PIXELS
            slice_mode = "nearest" if large and not torch.is_grad_enabled() else "bilinear"
        if slice_mode not in ("bilinear", "nearest"):
            raise ValueError(f"slice_mode must be 'bilinear' or 'nearest', got {slice_mode!r}")
        self.slice_mode = slice_mode
        nearest = slice_mode == "nearest"
        device = levels.device
        self.shape = (n, h, w)
        s = self.cell = int(cell) if cell is not None else auto_cell(float(sxy))
        gy, iy, cy = _axis(h, s, device)
        gx, ix, cx = _axis(w, s, device)
        self.gy, self.gx = gy, gx
        cells = n * gy * gx
        index_dtype = torch.int64                  # scatter_add_ (faster than index_add_)
        batch = torch.arange(n, device=device, dtype=index_dtype).view(n, 1, 1)
        # grid layout (level, image, row, column): the intensity kernel is one 2-D matmul
        rowpart = (batch * gy + iy.to(index_dtype).view(1, h, 1)) * gx       # (n, h, 1)
        colpart = ix.to(index_dtype).view(1, 1, w)
        lev = levels.to(device)
        if lev.dtype not in (torch.uint8, index_dtype):
            lev = lev.to(index_dtype)
        # slicing: bilinear on an atlas of the 256 level planes stacked along the rows
        rows = LEVELS * gy
        self.index = torch.empty(n, h, w, dtype=index_dtype, device=device)
        self.sample = None if nearest else torch.empty(n, h, w, 2, dtype=dtype, device=device)
        xs = (cx * (2.0 / (gx - 1)) - 1.0).to(dtype).view(1, w)
        ys = (cy * (2.0 / (rows - 1)) - 1.0).to(dtype)
        for r0, r1 in bands(h, w, n):        # in bands: no whole-micrograph temporaries
            torch.add(rowpart[:, r0:r1], colpart, out=self.index[:, r0:r1])
            self.index[:, r0:r1].add_(lev[:, r0:r1], alpha=cells)
            if self.sample is not None:
                self.sample[:, r0:r1, :, 0] = xs
                torch.add(ys[r0:r1].view(1, -1, 1), lev[:, r0:r1], alpha=2.0 * gy / (rows - 1),
                          out=self.sample[:, r0:r1, :, 1])
        slice_variance = _box_variance(s) if nearest else _tent_variance(s)
        extra = (_box_variance(s) + slice_variance) if s > 1 else 0.0
        self.sigma_cells = _blur_sigma(sxy, s, extra)
        learn_level = isinstance(s_level, Tensor) and s_level.requires_grad
        if rank is None:
            rank = 0 if learn_level or gy * gx * LEVELS <= (1 << 16) else -1
        if rank == 0:
            self.factor = None
            self.kernel = intensity_kernel(s_level, dtype=dtype, device=device)
        else:
            factor = (_full_factor(float(s_level))[:, :rank] if rank > 0 else
                      _lowrank_factor(float(s_level), LEVELS, LOWRANK_TOLERANCE))
            self.factor = factor.to(device=device, dtype=dtype)
            self.kernel = None

    def new_grid(self, values: Tensor) -> Tensor:
        n, c = values.shape[:2]
        size = LEVELS * n * self.gy * self.gx
        return values.new_zeros(size) if c == 1 else values.new_zeros(size, c)

    def splat_(self, grid: Tensor, values: Tensor, r0: int, alpha: float = 1.0) -> Tensor:
        """Add ``alpha`` × the band ``values (N, C, rows, W)`` starting at row ``r0``."""
        n, c, rows, w = values.shape
        index = self.index[:, r0:r0 + rows].reshape(-1)
        if alpha != 1.0:
            values = values * alpha
        if c == 1:
            return grid.scatter_add_(0, index, values.reshape(-1))
        src = values.reshape(n, c, rows * w).transpose(1, 2).reshape(-1, c)
        return grid.scatter_add_(0, index[:, None].expand(-1, c), src)

    def blur(self, grid: Tensor) -> Tensor:
        """The blurred grid for slicing: an atlas ``(N, C, 256·rows, columns)`` (bilinear slice)
        or the cells in the splat layout ``(cells, C)`` (nearest slice)."""
        n = self.shape[0]
        gy, gx = self.gy, self.gx
        c = 1 if grid.ndim == 1 else grid.shape[1]
        hist = grid.view(LEVELS, n * gy * gx * c)
        taps = gaussian_taps(self.sigma_cells, grid.dtype, grid.device)
        if self.factor is not None:
            factor = self.factor.to(grid.dtype)
            small = (factor.T @ hist).view(-1, n, gy, gx, c)           # (k, n, gy, gx, c)
            small = blur_axis(blur_axis(small, 2, taps), 3, taps)
            fine = factor @ small.reshape(small.shape[0], -1)
        else:
            small = blur_axis(blur_axis(hist.view(LEVELS, n, gy, gx, c), 2, taps), 3, taps)
            fine = self.kernel.to(grid.dtype) @ small.reshape(LEVELS, -1)
        if self.slice_mode == "nearest":
            return fine.view(-1, c)
        fine = fine.view(LEVELS, n, gy, gx, c)
        if n == 1 and c == 1:
            return fine.view(1, 1, LEVELS * gy, gx)
        return fine.permute(1, 4, 0, 2, 3).reshape(n, c, LEVELS * gy, gx)

    def slice(self, atlas: Tensor, r0: int, r1: int) -> Tensor:
        """Filtered values ``(N, C, r1 − r0, W)`` of rows ``r0:r1`` from :meth:`blur`'s result."""
        if self.slice_mode == "nearest":
            n, _, w = self.shape
            c = atlas.shape[1]
            index = self.index[:, r0:r1].reshape(-1)
            if c == 1:  # 1-D: the fast path of index_select (a 2-D one copies row by row)
                return atlas.view(-1).index_select(0, index).view(n, 1, r1 - r0, w)
            return atlas.index_select(0, index).view(n, r1 - r0, w, c).permute(0, 3, 1, 2)
        return F.grid_sample(atlas, self.sample[:, r0:r1].to(atlas.dtype), mode="bilinear",
                             padding_mode="zeros", align_corners=True)

    def normaliser(self, like: Tensor) -> Tensor:
        """``D^{-1/2}`` ``(N, 1, H, W)`` with ``D = K·1``: the splat of ones is a histogram
        count (``bincount``), the slice runs in bands into the result (no gradient)."""
        n, h, w = self.shape
        size = LEVELS * n * self.gy * self.gx
        counts = torch.bincount(self.index.reshape(-1), minlength=size).to(like.dtype)
        atlas = self.blur(counts)
        out = like.new_empty(n, 1, h, w)
        for r0, r1 in bands(h, w, n):
            out[:, :, r0:r1] = self.slice(atlas, r0, r1).clamp_min_(1e-20).rsqrt_()
        return out

    def __call__(self, values: Tensor) -> Tensor:
        return apply_filter(self, values)


#: Pixels per band of a banded filter (working arrays of a few MB: cache-friendly, and no
#: fresh page-faulting allocation of a whole micrograph per operation).
BAND_PIXELS = 1 << 19


def bands(height: int, width: int, n: int, row_multiple: int = 1,
          pixels: int | None = None) -> list[tuple[int, int]]:
    """Row ranges ``[(r0, r1), ...]`` covering ``height`` rows, each of about ``pixels``
    pixels (over the ``n`` images), starting at multiples of ``row_multiple``."""
    pixels = BAND_PIXELS if pixels is None else pixels
    rows = max(row_multiple, (pixels // max(1, n * width)) // row_multiple * row_multiple)
    return [(r0, min(height, r0 + rows)) for r0 in range(0, height, rows)]


def apply_filter(filt, values: Tensor) -> Tensor:
    """``filt(values)`` for a band-capable filter; in bands unless autograd records."""
    n, _, h, w = values.shape
    if torch.is_grad_enabled() and values.requires_grad or h * w * n <= BAND_PIXELS:
        grid = filt.blur(filt.splat_(filt.new_grid(values), values, 0))
        return filt.slice(grid, 0, h)
    ranges = bands(h, w, n, filt.row_multiple)
    grid = filt.new_grid(values)
    for r0, r1 in ranges:
        filt.splat_(grid, values[:, :, r0:r1], r0)
    grid = filt.blur(grid)
    out = values.new_empty(values.shape)
    for r0, r1 in ranges:
        out[:, :, r0:r1] = filt.slice(grid, r0, r1)
    return out


@lru_cache(maxsize=16)
def _full_factor(sigma: float) -> Tensor:
    lv = torch.arange(LEVELS, dtype=torch.float64)
    kernel = torch.exp(-0.5 * ((lv[:, None] - lv[None, :]) / sigma) ** 2)
    values, vectors = torch.linalg.eigh(kernel)
    return (vectors.flip(1) * values.flip(0).clamp_min(0).sqrt()).contiguous()


class FeatureBilateral:
    """Bilateral kernel on position and ``F`` float feature channels: values ``(N, C, H, W)`` ↦
    ``Σ_j exp(-|p_i - p_j|² / 2 sxy² - |f_i - f_j|² / 2) v_j`` (approximately).

    ``features``: ``(N, F, H, W)`` already divided by their bandwidths (unit σ), e.g. a learned
    embedding; gradients reach them through the multilinear splat/slice weights. The grid spans
    the features' range in this batch, so keep them bounded (``F`` ≤ 4 and a few σ of range).
    """

    def __init__(self, features: Tensor, sxy: Tensor | float, cell: int | None = None,
                 cells_per_sigma: float = FEATURE_CELLS_PER_SIGMA) -> None:
        n, nf, h, w = features.shape
        device = features.device
        self.shape = (n, h, w)
        s = self.cell = int(cell) if cell is not None else auto_cell(float(sxy))
        gy, iy, cy = _axis(h, s, device)
        gx, ix, cx = _axis(w, s, device)
        step = 1.0 / float(cells_per_sigma)                       # feature units per cell
        lo = features.detach().amin(dim=(0, 2, 3))
        hi = features.detach().amax(dim=(0, 2, 3))
        sizes = [math.floor(float(hi[f] - lo[f]) / step) + 3 for f in range(nf)]
        self.dims = (*sizes, gy, gx)
        strides = [1] * len(self.dims)
        for d in range(len(self.dims) - 2, -1, -1):
            strides[d] = strides[d + 1] * self.dims[d + 1]
        self.cells = strides[0] * self.dims[0]
        u = (features - lo.view(1, nf, 1, 1)) / step + 1.0
        z0 = u.detach().floor().clamp_(min=1)
        z0 = torch.minimum(z0, torch.tensor(sizes, device=device, dtype=z0.dtype).view(1, nf, 1, 1)
                           - 2)
        t = u - z0                                                  # carries the gradient
        z0 = z0.long()
        batch = torch.arange(n, device=device).view(n, 1, 1) * self.cells
        feat_base = sum(z0[:, f] * strides[f] for f in range(nf))  # (n, h, w)
        splat_base = (batch + feat_base + iy.view(1, h, 1) * strides[-2] + ix.view(1, 1, w))
        y0 = cy.floor()
        x0 = cx.floor()
        ty, tx = (cy - y0).to(features.dtype), (cx - x0).to(features.dtype)
        slice_base = (batch + feat_base + y0.long().view(1, h, 1) * strides[-2]
                      + x0.long().view(1, 1, w))
        self.splat: list[tuple[Tensor, Tensor]] = []
        self.slice: list[tuple[Tensor, Tensor]] = []
        for corner in range(1 << nf):
            weight = torch.ones_like(t[:, 0])
            offset = 0
            for f in range(nf):
                if corner >> f & 1:
                    weight = weight * t[:, f]
                    offset += strides[f]
                else:
                    weight = weight * (1 - t[:, f])
            self.splat.append(((splat_base + offset).reshape(-1), weight.reshape(-1)))
            for ay in (0, 1):
                wy = (ty if ay else 1 - ty).view(1, h, 1)
                for ax in (0, 1):
                    wx = (tx if ax else 1 - tx).view(1, 1, w)
                    off = offset + ay * strides[-2] + ax
                    self.slice.append(((slice_base + off).reshape(-1),
                                       (weight * wy * wx).reshape(-1)))
        extra_xy = (_box_variance(s) + _tent_variance(s)) if s > 1 else 0.0
        self.sigma_xy_cells = _blur_sigma(sxy, s, extra_xy)
        # tent splat + tent slice: 1/6 + 1/6 cells² on average
        self.sigma_f_cells = _blur_sigma(1.0, step, 1.0 / 3.0)

    def __call__(self, values: Tensor) -> Tensor:
        n, c, h, w = values.shape
        rows = values.reshape(n, c, h * w).transpose(1, 2).reshape(-1, c)
        grid = values.new_zeros(n * self.cells, c)
        for index, weight in self.splat:
            grid = grid.index_add(0, index, rows * weight.to(values.dtype)[:, None])
        grid = grid.view(n, *self.dims, c)
        taps_f = gaussian_taps(self.sigma_f_cells, values.dtype, values.device)
        taps_xy = gaussian_taps(self.sigma_xy_cells, values.dtype, values.device)
        nf = len(self.dims) - 2
        for d in range(nf):
            grid = blur_axis(grid, 1 + d, taps_f)
        grid = blur_axis(blur_axis(grid, 1 + nf, taps_xy), 2 + nf, taps_xy)
        flat = grid.reshape(-1, c)
        out = None
        for index, weight in self.slice:
            term = flat.index_select(0, index) * weight.to(values.dtype)[:, None]
            out = term if out is None else out + term
        return out.view(n, h * w, c).transpose(1, 2).reshape(n, c, h, w)


# ------------------------------------------------------------------------------- functional


def symmetric_normaliser(filt, like: Tensor) -> Tensor:
    """``D^{-1/2}`` ``(N, 1, H, W)`` with ``D = filt(1)`` (pydensecrf's NORMALIZE_SYMMETRIC)."""
    n, _, h, w = like.shape
    ones = torch.ones(n, 1, h, w, dtype=like.dtype, device=like.device)
    return filt(ones).clamp_min(1e-20).rsqrt()


def gaussian_filter(values: Tensor, sxy: float, normalise: bool = False) -> Tensor:
    """Spatial Gaussian filtering of ``values (N, C, H, W)`` (see :class:`SpatialGaussian`);
    ``normalise``: apply ``D^{-1/2} K D^{-1/2}`` instead of ``K``."""
    filt = SpatialGaussian(values.shape[-2], values.shape[-1], sxy)
    return _apply(filt, values, normalise)


def bilateral_filter(values: Tensor, levels: Tensor, sxy: float, s_level: float,
                     normalise: bool = False) -> Tensor:
    """Bilateral filtering of ``values (N, C, H, W)`` with 8-bit ``levels (N, H, W)`` (see
    :class:`IntensityBilateral`); ``normalise``: ``D^{-1/2} K D^{-1/2}`` instead of ``K``."""
    filt = IntensityBilateral(levels, sxy, s_level, dtype=values.dtype)
    return _apply(filt, values, normalise)


def _apply(filt, values: Tensor, normalise: bool) -> Tensor:
    if not normalise:
        return filt(values)
    norm = symmetric_normaliser(filt, values)
    return norm * filt(norm * values)


def position_features(n: int, height: int, width: int, sxy: float,
                      dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """``(n, 2, H, W)``: row and column divided by ``sxy`` (the spatial features)."""
    y = torch.arange(height, dtype=dtype, device=device) / sxy
    x = torch.arange(width, dtype=dtype, device=device) / sxy
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([yy, xx])[None].expand(n, 2, height, width)


def exact_filter(values: Tensor, features: Tensor, normalise: bool = False) -> Tensor:
    """Brute force: ``K v`` with the explicit ``N × N`` kernel ``exp(-|f_i - f_j|² / 2)``
    (self-contribution included), per image; ``features (N, D, H, W)`` in σ units. For tests:
    memory grows as (H·W)²."""
    n, c, h, w = values.shape
    out = []
    for i in range(n):
        f = features[i].reshape(features.shape[1], -1).T.to(values.dtype)
        kernel = torch.exp(-0.5 * torch.cdist(f, f).square())
        v = values[i].reshape(c, -1).T
        if normalise:
            norm = kernel.sum(1, keepdim=True).rsqrt()
            out.append((norm * (kernel @ (norm * v))).T.reshape(c, h, w))
        else:
            out.append((kernel @ v).T.reshape(c, h, w))
    return torch.stack(out)


__all__ = [
    "DEFAULT_PERCENTILES",
    "LEVELS",
    "FeatureBilateral",
    "IntensityBilateral",
    "SpatialGaussian",
    "apply_filter",
    "auto_cell",
    "bands",
    "bilateral_filter",
    "blur_axis",
    "exact_filter",
    "gaussian_filter",
    "gaussian_taps",
    "intensity_kernel",
    "intensity_levels",
    "position_features",
    "symmetric_normaliser",
]
