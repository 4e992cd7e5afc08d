"""Two-class mean-field inference on large images: fused, banded, without autograd.

The iteration of :meth:`~cryoparticle.crf.meanfield.MeanFieldCRF._two_class` on the logit
difference ``z = s₁ − s₀``,

    ``z ← base + Σ_k c_k · n_k ⊙ slice_k(blur_k(splat_k(n_k ⊙ (σ(z) − ½))))``

(``base = −ΔU`` plus the ``F_k(1)`` term of a non-Potts compatibility, ``c_k = (a − b) w_k``,
``n_k = D_k^{-1/2}``), arranged so that each iteration reads the per-pixel arrays once:

* one pass per iteration over horizontal bands: the slice of iteration ``t`` (``z`` of the band)
  and the splat of iteration ``t + 1`` (``σ(z)`` into the next grids) run back to back on the
  band while it is in cache; the grids are blurred in between;
* what does not change across iterations is computed once: the bilateral grid cell of every
  pixel (``int32``), the normalisers, the splat of ``−½ n_k``;
* the normalisers are folded into the grids: the bilateral kernel's nearest slice makes
  ``D^{-1/2}`` a function of the grid cell (it is the slice of the blurred pixel counts), and the
  spatial kernel's is an outer product of two 1-D vectors (:meth:`SpatialGaussian.normalisers`),
  applied per row and per column, so no per-pixel normaliser array is read;
* the spatial kernel's box splat is a sum of rows then of columns, its bilinear slice a 1-D
  interpolation of the band's grid rows then weighted row additions (scalar weights away from
  the borders, where ``D^{-1/2}`` is constant);
* the bilateral kernel's intensity axis is binned by ``level_bin`` levels (nearest, like its
  spatial cells; the grid blur makes up the two boxes' variance): a ``level_bin``-times smaller
  grid, a cache-resident scatter/gather and a smaller low-rank intensity blur.

The spatial kernel is the same as :class:`~cryoparticle.crf.filtering.SpatialGaussian`'s
(bilinear slice), the bilateral one :class:`~cryoparticle.crf.filtering.IntensityBilateral`'s with
``slice_mode="nearest"`` (equal to it for ``level_bin=1``). With ``workers > 1`` the bands are
shared by threads (own bilateral grid each; spatial grid rows are disjoint per band) and the two
grid blurs run side by side.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from cryoparticle.crf.filtering import (
    LEVELS,
    LOWRANK_TOLERANCE,
    SpatialGaussian,
    _blur_sigma,
    _box_variance,
    _lowrank_factor,
    bands,
    blur_axis,
    gaussian_taps,
)


class SpatialTerm:
    """The Gaussian kernel of :class:`SpatialGaussian` for the fused iteration: grid rows are
    written by the band that owns them; ``prepare`` blurs; ``slice_add_`` adds the message."""

    def __init__(self, filt: SpatialGaussian, n: int, scale: float, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.filt = filt
        s = self.cell = filt.cell
        self.pad = 1 if s > 1 else 0
        h, w = self.height, self.width = filt.height, filt.width
        self.taps = gaussian_taps(float(filt.sigma_cells), dtype, device)
        ones_y = torch.ones(h, dtype=dtype, device=device)
        ones_x = torch.ones(w, dtype=dtype, device=device)
        self.ay = filt.filter_1d(ones_y, 0).clamp_min(1e-20).rsqrt()     # D^{-1/2} = ay ⊗ ax
        self.ax = filt.filter_1d(ones_x, 1).clamp_min(1e-20).rsqrt()
        gy, gx = filt.grid_shape
        self.cells_x = gx - 2 * self.pad                  # grid columns holding pixels
        self.grid = torch.zeros(n, gy, gx, dtype=dtype, device=device)
        # −½ splat(D^{-1/2}): the box sums of ay and of ax, an outer product
        self.start = -0.5 * (self._pool_1d(self.ay, gy)[:, None] * self._pool_1d(self.ax, gx))
        # bilinear slice: pixel offset k in its cell reads its own cell with weight own[k] and the
        # neighbouring cell (side[k] = ±1) with 1 − own[k]; scale and ay folded in per row
        offsets = [(k - (s - 1) / 2) / s for k in range(s)]
        self.side = [-1 if d < 0 else 1 for d in offsets]
        own = torch.tensor([1 - abs(d) for d in offsets], dtype=dtype, device=device)
        k = torch.arange(h, device=device) % s
        self.own_row = self.ay * own[k] * scale
        self.side_row = self.ay * (1 - own[k]) * scale
        self.own = own.tolist()
        # ay is one constant away from the borders (≈ 4 σ): bands there use scalar row weights
        centre = self.ay[h // 2]
        varies = (self.ay != centre).nonzero().flatten().tolist()
        self.interior = (max([i + 1 for i in varies if i < h // 2], default=0),
                         min([i for i in varies if i >= h // 2], default=h))
        self.ax_centre = self.ax * centre
        self.ax_scaled = self.ax * centre * scale
        self.blurred: Tensor | None = None

    def _uniform(self, r0: int, rows: int) -> bool:
        """Whether every row of the band has the centre's ``ay`` (and whole cells)."""
        return (self.interior[0] <= r0 and r0 + rows <= self.interior[1]
                and rows % self.cell == 0)

    def _pool_1d(self, a: Tensor, size: int) -> Tensor:
        s = self.cell
        cells = -(-a.shape[0] // s)
        pooled = torch.nn.functional.pad(a, (0, cells * s - a.shape[0])).view(cells, s).sum(1)
        return torch.nn.functional.pad(pooled, (self.pad, size - cells - self.pad))

    def buffers(self, n: int, rows: int, like: Tensor) -> dict[str, Tensor]:
        r = -(-rows // self.cell)
        return {"acc": like.new_zeros(n, r, self.cells_x * self.cell),
                "up": like.new_empty(n, r + 2 * self.pad, self.width)}

    def splat_(self, q: Tensor, r0: int, buf: dict[str, Tensor]) -> None:
        """Box sums of ``(ay ⊗ ax) ⊙ q`` for the band ``q (n, rows, W)`` at row ``r0`` (a
        multiple of the cell) into the grid rows of the band."""
        s, w = self.cell, self.width
        n, rows, _ = q.shape
        r = -(-rows // s)
        acc = buf["acc"][:, :r]
        band = acc[:, :, :w]
        if self._uniform(r0, rows):                    # rows: plain sums, then ax · ay (scalar)
            if s == 1:
                band.copy_(q)
            else:
                torch.add(q[:, 0::s], q[:, 1::s], out=band)
            for k in range(2, s):
                band.add_(q[:, k::s])
            band.mul_(self.ax_centre)
        else:                                          # rows weighted by ay, then by ax
            for k in range(s):
                qk = q[:, k::s]
                ay = self.ay[r0 + k:r0 + rows:s, None]
                if k == 0:
                    torch.mul(qk, ay, out=acc[:, :qk.shape[1], :w])
                    if qk.shape[1] < r:
                        acc[:, qk.shape[1]:].zero_()
                else:
                    acc[:, :qk.shape[1], :w].addcmul_(qk, ay)
            band.mul_(self.ax)
        cells = acc.view(n, r, self.cells_x, s)
        g0 = self.pad + r0 // s
        dst = self.grid[:, g0:g0 + r, self.pad:self.pad + self.cells_x]
        if s == 1:
            dst.copy_(cells[..., 0])
            return
        torch.add(cells[..., 0], cells[..., 1], out=dst)
        for k in range(2, s):
            dst.add_(cells[..., k])

    def prepare(self) -> None:
        """Blur the grid (plus the −½ start) for this iteration's slices."""
        grid = self.grid.add_(self.start)
        if self.blurred is None:
            self._half = torch.empty_like(grid)
            self.blurred = torch.empty_like(grid)
        blur_axis(blur_axis(grid, 1, self.taps, out=self._half), 2, self.taps, out=self.blurred)

    def slice_add_(self, z: Tensor, r0: int, buf: dict[str, Tensor]) -> None:
        """``z (n, rows, W) += c · ns ⊙ slice(blurred)`` for the band at row ``r0``."""
        s, w = self.cell, self.width
        rows = z.shape[1]
        r = -(-rows // s)
        j0 = r0 // s                                       # grid row above the band's first
        if s == 1:
            up = torch.mul(self.blurred[:, j0:j0 + rows], self.ax, out=buf["up"][:, :rows])
            z.addcmul_(up, self.own_row[r0:r0 + rows, None])
            return
        grid = self.blurred[:, j0:j0 + r + 2]
        wide = torch.nn.functional.interpolate(grid, scale_factor=s, mode="linear",
                                               align_corners=False)
        if self._uniform(r0, rows):                   # scalar row weights: c · ay · own
            up = torch.mul(wide[:, :, s:s + w], self.ax_scaled, out=buf["up"][:, :r + 2])
            for k in range(s):
                zk = z[:, k::s]
                m = zk.shape[1]
                zk.add_(up[:, 1:1 + m], alpha=self.own[k])
                if self.own[k] != 1:
                    o = 1 + self.side[k]
                    zk.add_(up[:, o:o + m], alpha=1 - self.own[k])
            return
        up = torch.mul(wide[:, :, s:s + w], self.ax, out=buf["up"][:, :r + 2])
        for k in range(s):
            zk = z[:, k::s]
            m = zk.shape[1]
            zk.addcmul_(up[:, 1:1 + m], self.own_row[r0 + k:r0 + rows:s, None])
            o = 1 + self.side[k]
            zk.addcmul_(up[:, o:o + m], self.side_row[r0 + k:r0 + rows:s, None])

    def ones_add_(self, z: Tensor, r0: int, alpha: float) -> None:
        """``z += alpha · F(1)`` for the band (``F(1) = D^{-1/2} K D^{-1/2} 1``, separable)."""
        oy = self.ay * self.filt.filter_1d(self.ay, 0)
        ox = self.ax * self.filt.filter_1d(self.ax, 1)
        z.addcmul_(oy[r0:r0 + z.shape[1], None], ox, value=alpha)


class BilateralTerm:
    """The bilateral kernel of :class:`IntensityBilateral` (nearest slice) for the fused
    iteration, with ``level_bin`` intensity levels per grid bin: the grid cell of every pixel is
    kept (``int32``); ``D^{-1/2}`` and the scale live on the grid."""

    def __init__(self, levels: Tensor, sxy: float, s_level: float, cell: int, level_bin: int,
                 scale: float, dtype: torch.dtype) -> None:
        n, h, w = levels.shape
        device = levels.device
        c, b = int(cell), int(level_bin)
        self.gy, self.gx = -(-h // c), -(-w // c)
        self.bins = -(-LEVELS // b)
        self.size = n * self.gy * self.gx * self.bins
        if self.size >= 2 ** 31:
            raise ValueError(f"bilateral grid of {self.size} cells is too large")
        # cell of each pixel, layout (image, row, column, bin): a band scatters into a compact,
        # cache-resident part of the grid; computed in floating point (exact below 2^24 for
        # float32), integer division being slow
        exact = torch.float32 if self.size < 2 ** 24 else torch.float64
        iy = torch.arange(h, device=device) // c
        ix = (torch.arange(w, device=device) // c * self.bins).to(exact)
        image = torch.arange(n, device=device).view(n, 1) * self.gy
        rowpart = ((image + iy) * (self.gx * self.bins)).to(exact)             # (n, h)
        self.index = torch.empty(n, h, w, dtype=torch.int32, device=device)
        ranges = bands(h, w, n)
        work = torch.empty(n, max(r1 - r0 for r0, r1 in ranges), w, dtype=exact, device=device)
        for r0, r1 in ranges:
            cell = work[:, :r1 - r0].copy_(levels[:, r0:r1])
            if b > 1:                       # floor(level / b), away from rounding: (l + ½)/b
                cell.add_(0.5).mul_(1.0 / b).floor_()
            cell.add_(rowpart[:, r0:r1, None]).add_(ix)
            self.index[:, r0:r1].copy_(cell)
        counts = torch.bincount(self.index.view(-1), minlength=self.size).to(dtype)
        self.factor = _lowrank_factor(float(_blur_sigma(s_level, b, 2 * _box_variance(b))),
                                      self.bins, LOWRANK_TOLERANCE).to(device=device, dtype=dtype)
        self.taps = gaussian_taps(float(_blur_sigma(sxy, c, 2 * _box_variance(c))), dtype,
                                  device)
        self.norm = self._blur(counts).clamp_min_(1e-20).rsqrt_()             # D^{-1/2}
        self.start = counts.mul_(-0.5).mul_(self.norm)            # −½ splat(D^{-1/2})
        self.scaled = self.norm * scale                           # c · D^{-1/2}
        self.blurred: Tensor | None = None

    def _blur(self, grid: Tensor) -> Tensor:
        """The bilateral kernel on the grid: low-rank intensity, Gaussian on the cells."""
        cells = grid.numel() // self.bins
        small = (grid.view(cells, self.bins) @ self.factor).view(-1, self.gy, self.gx,
                                                                 self.factor.shape[1])
        small = blur_axis(blur_axis(small, 1, self.taps), 2, self.taps)
        return (small.view(cells, -1) @ self.factor.T).view(-1)

    def new_grid(self) -> Tensor:
        return self.start.new_zeros(self.size)

    def band_index(self, r0: int, r1: int, out: Tensor) -> Tensor:
        """The grid cells (``int64``, flat) of the band's pixels."""
        n, _, w = self.index.shape
        flat = out[:n * (r1 - r0) * w]
        flat.view(n, r1 - r0, w).copy_(self.index[:, r0:r1])
        return flat

    def prepare(self, grids: list[Tensor]) -> None:
        """Sum the workers' splats and blur: ``c · n ⊙ blur(n ⊙ hist − ½ n ⊙ counts)``."""
        total = grids[0]
        for other in grids[1:]:
            total.add_(other)
        total.mul_(self.norm).add_(self.start)
        self.blurred = self._blur(total).mul_(self.scaled)
        for grid in grids:
            grid.zero_()

    def ones(self) -> Tensor:
        """``F(1)`` on the grid (gathered per pixel like the messages)."""
        return self.norm * self._blur(self.start * -2)


def log_sigmoid_pair(z: Tensor, log_q1: Tensor, log_q0: Tensor) -> None:
    """``log_q1 = log σ(z)``, then ``log_q0 = log σ(−z) = log_q1 − z`` (neither may overlap
    ``z``); exact also where ``σ(z)`` would underflow."""
    floor = math.log(torch.finfo(z.dtype).tiny) + 1.0
    if float(z.min()) > floor:
        torch.sigmoid(z, out=log_q1).log_()
    else:                                   # min(z, 0) − log(1 + e^{−|z|})
        torch.abs(z, out=log_q1).neg_().exp_().add_(1).log_().neg_().add_(z.clamp(max=0))
    torch.sub(log_q1, z, out=log_q0)


def fused_two_class(z: Tensor, base: Tensor, start: Tensor, n_iterations: int,
                    spatial: SpatialTerm | None, bilateral: BilateralTerm | None,
                    workers: int = 1) -> None:
    """``n_iterations ≥ 1`` mean-field steps from ``start`` (the initial ``z``, may be ``base``;
    read by the first splat only) with ``base`` and at least one term; the last step writes
    ``log σ(z)`` into ``z (n, H, W)`` and ``log σ(−z)`` into ``base`` (band by band, after
    reading it): ``z`` and ``base`` are the class-1 and class-0 planes of the log-marginals."""
    n, h, w = z.shape
    ranges = bands(h, w, n, spatial.cell if spatial is not None else 1)
    rows = max(r1 - r0 for r0, r1 in ranges)
    workers = max(1, min(workers if z.device.type == "cpu" else 1, len(ranges)))
    grids = [bilateral.new_grid() for _ in range(workers)] if bilateral is not None else []
    bufs = []
    for _ in range(workers):
        buf = {"q": z.new_empty(n, rows, w), "z": z.new_empty(n, rows, w)}
        if spatial is not None:
            buf.update(spatial.buffers(n, rows, z))
        if bilateral is not None:
            buf["index"] = torch.empty(n * rows * w, dtype=torch.int64, device=z.device)
            buf["sel"] = z.new_empty(n * rows * w)
        bufs.append(buf)

    def splat(zb: Tensor, r0: int, r1: int, worker: int, index: Tensor | None) -> None:
        buf = bufs[worker]
        q = torch.sigmoid(zb, out=buf["q"][:, :r1 - r0])
        if spatial is not None:
            spatial.splat_(q, r0, buf)
        if bilateral is not None:
            grids[worker].scatter_add_(0, index, q.reshape(-1))

    def first(worker: int) -> None:
        for r0, r1 in ranges[worker::workers]:
            index = (bilateral.band_index(r0, r1, bufs[worker]["index"])
                     if bilateral is not None else None)
            splat(start[:, r0:r1], r0, r1, worker, index)

    def step(worker: int, last: bool) -> None:
        buf = bufs[worker]
        for r0, r1 in ranges[worker::workers]:
            # the band's z stays in the cache: splatted, or turned into the log-marginals
            zb = buf["z"][:, :r1 - r0]
            index = None
            if bilateral is not None:
                index = bilateral.band_index(r0, r1, buf["index"])
                sel = torch.index_select(bilateral.blurred, 0, index,
                                         out=buf["sel"][:index.numel()])
                torch.add(base[:, r0:r1], sel.view(zb.shape), out=zb)
            else:
                zb.copy_(base[:, r0:r1])
            if spatial is not None:
                spatial.slice_add_(zb, r0, buf)
            if last:
                log_sigmoid_pair(zb, z[:, r0:r1], base[:, r0:r1])
            else:
                splat(zb, r0, r1, worker, index)

    tasks = [t for t in (spatial.prepare if spatial is not None else None,
                         (lambda: bilateral.prepare(grids)) if bilateral is not None else None)
             if t is not None]
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        run = (lambda f, *a: list(pool.map(f, *a))) if pool else (lambda f, *a: list(map(f, *a)))
        run(first, range(workers))
        for it in range(n_iterations):
            run(lambda task: task(), tasks)
            run(step, range(workers), [it == n_iterations - 1] * workers)
    finally:
        if pool is not None:
            pool.shutdown()


__all__ = ["BilateralTerm", "SpatialTerm", "fused_two_class", "log_sigmoid_pair"]
