"""Dense CRF by mean-field in PyTorch: the fast post-hoc CRF and the CRF-as-RNN layer.

Energy: the one of :mod:`cryoparticle.crf.dense` (pydensecrf) —

* unary ``U = -log p`` from the network's softmax (clipped at ``unary_clip`` as pydensecrf's
  ``unary_from_softmax``);
* a Gaussian kernel on pixel positions (bandwidth ``spatial_sxy`` pixels, weight
  ``spatial_weight``) and a bilateral kernel on position and intensity (``bilateral_sxy`` pixels,
  ``bilateral_srgb`` 8-bit levels, weight ``bilateral_weight``), each symmetrically normalised
  (``D^{-1/2} K D^{-1/2}``, pydensecrf's default) with the self-contribution kept;
* a label compatibility ``μ``: Potts ``μ(l, l') = [l ≠ l']`` (equivalent to pydensecrf's
  ``PottsCompatibility(w)``: they differ by a per-pixel constant, which the softmax ignores).

Units match pydensecrf's, so the same numbers mean the same CRF: ``bilateral_srgb`` is
pydensecrf's ``srgb`` for the micrograph's 8-bit levels given as three identical RGB channels
(one-channel bandwidth ``srgb / √3``; levels from
:func:`~cryoparticle.crf.filtering.intensity_levels`, shared with the reference).

Mean-field: ``Q₀ = softmax(-U)``; ``n_iterations`` times ``Q = softmax(-U - μ Σ_k w_k
D_k^{-1/2} K_k D_k^{-1/2} Q)``. The products with ``K_k`` use the grid filters of
:mod:`cryoparticle.crf.filtering` (O(pixels) per iteration). With two classes and no gradient
the iteration runs on the logit difference only (one filtered channel, half the work); with ``C``
classes ``C − 1`` channels are filtered (the last follows from ``K·1``). On large images (above
:data:`~cryoparticle.crf.filtering.NEAREST_SLICE_PIXELS` pixels, learned features aside) that
two-class iteration runs fused (:mod:`cryoparticle.crf.fused`): one banded pass per iteration,
normalisers folded into the grids, the intensity axis binned by ``intensity_cells_per_sigma``.

CRF-as-RNN (Zheng et al. 2015): ``learnable=True`` makes the kernel weights and the
compatibility matrix (initialised Potts) parameters, ``learn_bandwidths=True`` also the three
bandwidths (log-parametrised; the grid cells keep their initial size, the grid blur follows the
learned width); every step is a differentiable tensor operation, so gradients reach the
network's logits and the CRF's parameters.

Learned features: ``feature_channels = F > 0`` adds a small convolutional embedding head on the
micrograph (owned by this module and trained end-to-end with it): ``F`` channels, bounded to
``±FEATURE_BOUND`` in units of the kernel bandwidth, that *replace* (``feature_mode="replace"``)
or *augment* (``"augment"``) the intensity of the bilateral kernel. A head on the image rather
than a hook on the network's layers keeps the CRF independent of the architecture (every
network of :func:`~cryoparticle.models.networks.build_network` works unchanged, and the
module can be used post hoc); its gradients come from the loss through the CRF.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cryoparticle.crf import filtering
from cryoparticle.crf.checks import check_logits_image, check_params
from cryoparticle.crf.filtering import (
    BILATERAL_CELLS_PER_SIGMA,
    DEFAULT_PERCENTILES,
    FEATURE_CELLS_PER_SIGMA,
    FINE_BILATERAL_CELLS_PER_SIGMA,
    FINE_GRID_PIXELS,
    FINE_SPATIAL_CELLS_PER_SIGMA,
    SPATIAL_CELLS_PER_SIGMA,
    FeatureBilateral,
    IntensityBilateral,
    SpatialGaussian,
    auto_cell,
    bands,
    intensity_levels,
    symmetric_normaliser,
)
from cryoparticle.crf.fused import BilateralTerm, SpatialTerm, fused_two_class, log_sigmoid_pair
from cryoparticle.errors import InputError, param_error

#: Learned features are squashed to ±this many bandwidths (keeps their grid small).
FEATURE_BOUND = 2.0
#: pydensecrf's RGB bilateral feature repeats one channel three times: srgb → srgb / √3.
RGB_CHANNELS = 3
FEATURE_MODES = ("replace", "augment")


def _requires_grad(filt) -> bool:
    """Whether a filter's bandwidths are tensors that require grad."""
    values = [getattr(filt, name, None) for name in ("sigma_cells", "kernel", "factor")]
    return any(isinstance(v, Tensor) and v.requires_grad for v in values)


class _Kernel:
    """One pairwise term for the current batch: weight, filter, ``D^{-1/2}`` and (on demand)
    ``D^{-1/2} K D^{-1/2} 1``."""

    def __init__(self, weight: Tensor, filt, like: Tensor) -> None:
        self.weight = weight
        self.filt = filt
        self._ones: Tensor | None = None
        if hasattr(filt, "normalisers"):  # separable: from 1-D filters
            self.norm, self._ones = filt.normalisers(like)
        elif hasattr(filt, "normaliser") and not (torch.is_grad_enabled()
                                                  and _requires_grad(filt)):
            self.norm = filt.normaliser(like)      # from level counts, in bands
        else:
            self.norm = symmetric_normaliser(filt, like)

    @property
    def ones(self) -> Tensor:
        """``F(1) = D^{-1/2} K D^{-1/2} 1``."""
        if self._ones is None:
            self._ones = self.norm * self.filt(self.norm)
        return self._ones

    def messages(self, q: Tensor) -> Tensor:
        """``D^{-1/2} K D^{-1/2} q`` for ``q (N, C, H, W)``, filtering ``C − 1`` channels."""
        c = q.shape[1]
        part = self.norm * self.filt(self.norm * q[:, :c - 1])
        return torch.cat([part, self.ones - part.sum(dim=1, keepdim=True)], dim=1)


class MeanFieldCRF(nn.Module):
    """Dense CRF by mean-field in PyTorch: ``crf(logits (N, C, H, W), image (N, 1, H, W))`` →
    log-marginals ``(N, C, H, W)`` (``log Q``; their softmax is ``Q``).

    ``n_iterations``, ``spatial_sxy``, ``spatial_weight``, ``bilateral_sxy``, ``bilateral_srgb``,
    ``bilateral_weight``, ``unary_clip``, ``percentiles``: as :func:`~cryoparticle.crf.dense.
    dense_crf` (the same CRF). ``num_classes``: size of the compatibility matrix.
    ``learnable``/``learn_bandwidths``/``feature_channels``/``feature_mode``/``feature_hidden``:
    the CRF-as-RNN options (see the module doc). ``*_cells_per_sigma``: grid resolution of the
    approximate filters (1 = one cell per bandwidth; larger is more exact and slower; ``None``:
    1.0 and 0.5, or 1.5 and 2.5 for images of at most 256² pixels, where it costs little);
    ``intensity_cells_per_sigma``: intensity bins per bilateral intensity bandwidth on the fused
    path of large images (1.0: bins of 7 of the 8-bit levels for ``bilateral_srgb=13``; ``None``:
    all 256 levels).
    ``workers``: CPU threads that share the horizontal bands of two-class inference (each with
    its own grids); with ``workers > 1`` run torch with one intra-op thread
    (``torch.set_num_threads(1)``): band parallelism scales better than many small
    OpenMP-parallel operations, especially on a busy machine.
    """

    def __init__(self, n_iterations: int = 10, spatial_sxy: float = 3.0,
                 spatial_weight: float = 3.0, bilateral_sxy: float = 20.0,
                 bilateral_srgb: float = 13.0, bilateral_weight: float = 0.5,
                 unary_clip: float | None = 1e-5,
                 percentiles: Sequence[float] = DEFAULT_PERCENTILES, num_classes: int = 2,
                 learnable: bool = False, learn_bandwidths: bool = False,
                 feature_channels: int = 0, feature_mode: str = "replace",
                 feature_hidden: int = 8,
                 spatial_cells_per_sigma: float | None = None,
                 bilateral_cells_per_sigma: float | None = None,
                 feature_cells_per_sigma: float = FEATURE_CELLS_PER_SIGMA,
                 intensity_cells_per_sigma: float | None = 1.0,
                 workers: int = 1) -> None:
        super().__init__()
        percentiles = tuple(float(p) for p in percentiles)
        check_params(n_iterations, spatial_sxy, spatial_weight, bilateral_sxy, bilateral_srgb,
                     bilateral_weight, unary_clip, percentiles)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise param_error("num_classes", num_classes, "must be an integer ≥ 2")
        if isinstance(feature_channels, bool) or not isinstance(feature_channels, int) \
                or not 0 <= feature_channels <= 4:
            raise param_error("feature_channels", feature_channels, "must be an integer in 0..4")
        if feature_mode not in FEATURE_MODES:
            raise param_error("feature_mode", feature_mode, f"must be one of {FEATURE_MODES}")
        if feature_channels and (not isinstance(feature_hidden, int) or feature_hidden < 1):
            raise param_error("feature_hidden", feature_hidden, "must be an integer ≥ 1")
        for name, value in (("spatial_cells_per_sigma", spatial_cells_per_sigma),
                            ("bilateral_cells_per_sigma", bilateral_cells_per_sigma),
                            ("intensity_cells_per_sigma", intensity_cells_per_sigma),
                            ("feature_cells_per_sigma", feature_cells_per_sigma)):
            if value is None and name != "feature_cells_per_sigma":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0.25 <= float(value) <= 8:
                raise param_error(name, value, "must be a number in [0.25, 8]"
                                  + ("" if name == "feature_cells_per_sigma" else " or null"))
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise param_error("workers", workers, "must be an integer ≥ 1")
        self.workers = int(workers)
        self.n_iterations = int(n_iterations)
        self.unary_clip = None if not unary_clip else float(unary_clip)
        self.percentiles = percentiles
        self.num_classes = int(num_classes)
        self.learnable = bool(learnable)
        self.learn_bandwidths = bool(learn_bandwidths)
        self.feature_channels = int(feature_channels)
        self.feature_mode = feature_mode
        self.feature_cells_per_sigma = float(feature_cells_per_sigma)
        self.spatial_cells_per_sigma = spatial_cells_per_sigma
        self.bilateral_cells_per_sigma = bilateral_cells_per_sigma
        self.intensity_cells_per_sigma = (None if intensity_cells_per_sigma is None
                                          else float(intensity_cells_per_sigma))
        self._initial_sxy = (float(spatial_sxy), float(bilateral_sxy))

        def scalar(value: float, grad: bool) -> nn.Parameter:
            return nn.Parameter(torch.tensor(float(value)), requires_grad=grad)

        self.spatial_weight = scalar(spatial_weight, self.learnable)
        self.bilateral_weight = scalar(bilateral_weight, self.learnable)
        potts = 1.0 - torch.eye(self.num_classes)
        self.compatibility = nn.Parameter(potts, requires_grad=self.learnable)
        self.log_spatial_sxy = scalar(math.log(spatial_sxy), self.learn_bandwidths)
        self.log_bilateral_sxy = scalar(math.log(bilateral_sxy), self.learn_bandwidths)
        self.log_bilateral_srgb = scalar(math.log(bilateral_srgb), self.learn_bandwidths)
        self.embedding: nn.Module | None = None
        if self.feature_channels:
            h = int(feature_hidden)
            self.embedding = nn.Sequential(
                nn.Conv2d(1, h, 5, padding=2), nn.ReLU(),
                nn.Conv2d(h, h, 5, padding=4, dilation=2), nn.ReLU(),
                nn.Conv2d(h, self.feature_channels, 1))

    # ------------------------------------------------------------------------------- helpers

    def extra_repr(self) -> str:
        return (f"n_iterations={self.n_iterations}, spatial_sxy={self._value('spatial_sxy'):.3g}, "
                f"spatial_weight={float(self.spatial_weight.detach()):.3g}, "
                f"bilateral_sxy={self._value('bilateral_sxy'):.3g}, "
                f"bilateral_srgb={self._value('bilateral_srgb'):.3g}, "
                f"bilateral_weight={float(self.bilateral_weight.detach()):.3g}, "
                f"learnable={self.learnable}, learn_bandwidths={self.learn_bandwidths}, "
                f"feature_channels={self.feature_channels}")

    def _value(self, name: str) -> float:
        return float(getattr(self, f"log_{name}").detach().exp())

    def _bandwidth(self, name: str, dtype: torch.dtype) -> Tensor | float:
        param = getattr(self, f"log_{name}")
        return param.to(dtype).exp() if param.requires_grad else float(param.detach().exp())

    def grid_cells(self, height: int, width: int) -> tuple[int, int]:
        """Grid cell sizes (pixels) of the spatial and the bilateral kernel for an image size:
        from ``*_cells_per_sigma`` and the *initial* bandwidths (learned bandwidths change the
        grid blur, not the cells); ``None`` = finer grids up to ``FINE_GRID_PIXELS`` pixels."""
        fine = height * width <= FINE_GRID_PIXELS
        r_spatial = self.spatial_cells_per_sigma or (
            FINE_SPATIAL_CELLS_PER_SIGMA if fine else SPATIAL_CELLS_PER_SIGMA)
        r_bilateral = self.bilateral_cells_per_sigma or (
            FINE_BILATERAL_CELLS_PER_SIGMA if fine else BILATERAL_CELLS_PER_SIGMA)
        return (auto_cell(self._initial_sxy[0], float(r_spatial)),
                auto_cell(self._initial_sxy[1], float(r_bilateral)))

    def features(self, image: Tensor) -> Tensor:
        """The learned feature channels ``(N, F, H, W)`` (unit bandwidth, bounded)."""
        if self.embedding is None:
            raise param_error("feature_channels", 0, "no learned features")
        mean = image.mean(dim=(2, 3), keepdim=True)
        std = image.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)
        x = ((image - mean) / std).to(next(self.embedding.parameters()).dtype)
        return FEATURE_BOUND * torch.tanh(self.embedding(x) / FEATURE_BOUND)

    def _kernels(self, image: Tensor, like: Tensor) -> list[_Kernel]:
        dtype = like.dtype
        _, _, h, w = like.shape
        spatial_cell, bilateral_cell = self.grid_cells(h, w)
        kernels = []
        spatial_w = self.spatial_weight.to(dtype)
        if self.learnable or float(spatial_w) != 0:
            filt = SpatialGaussian(h, w, self._bandwidth("spatial_sxy", dtype), spatial_cell)
            kernels.append(_Kernel(spatial_w, filt, like))
        bilateral_w = self.bilateral_weight.to(dtype)
        if self.learnable or float(bilateral_w) != 0:
            sxy = self._bandwidth("bilateral_sxy", dtype)
            s_level = self._bandwidth("bilateral_srgb", dtype)
            s_level = s_level / math.sqrt(RGB_CHANNELS)
            levels = intensity_levels(image[:, 0], self.percentiles)
            if self.embedding is None:
                filt = IntensityBilateral(levels, sxy, s_level, cell=bilateral_cell, dtype=dtype)
            else:
                feats = self.features(image).to(dtype)
                if self.feature_mode == "augment":
                    feats = torch.cat([levels[:, None].to(dtype) / s_level, feats], dim=1)
                filt = FeatureBilateral(feats, sxy, cell=bilateral_cell,
                                        cells_per_sigma=self.feature_cells_per_sigma)
            kernels.append(_Kernel(bilateral_w, filt, like))
        return kernels

    def _needs_grad(self, logits: Tensor) -> bool:
        if not torch.is_grad_enabled():
            return False
        return logits.requires_grad or any(p.requires_grad for p in self.parameters())

    # ------------------------------------------------------------------------------- forward

    def forward(self, logits: Tensor, image: Tensor) -> Tensor:
        logits, image = check_logits_image(logits, image)
        c = logits.shape[1]
        if c != self.num_classes and (self.learnable or self.embedding is not None):
            raise InputError(f"logits have {c} classes but this CRF was built for "
                             f"num_classes={self.num_classes}")
        dtype = logits.dtype if logits.dtype in (torch.float32, torch.float64) else torch.float32
        image = image.to(device=logits.device)
        if c == 2 and not self._needs_grad(logits):
            # two classes, inference: iterate on the logit difference (see _two_class)
            with torch.no_grad():
                if self._fused(logits):
                    return self._two_class_fused(logits, image, dtype)
                z = (logits[:, 1:2] - logits[:, 0:1]).to(dtype)
                if self.unary_clip:  # |log p₁ − log p₀| ≤ log((1 − clip)/clip) (to 1e-5)
                    limit = math.log((1 - self.unary_clip) / self.unary_clip)
                    z.clamp_(-limit, limit)
                kernels = self._kernels(image, z) if self.n_iterations else []
                compat = self.compatibility.to(device=logits.device, dtype=dtype)
                return self._two_class(z, kernels, compat)
        log_p = F.log_softmax(logits.to(dtype), dim=1)
        if self.unary_clip:
            log_p = log_p.clamp_min(math.log(self.unary_clip))
        if self.n_iterations == 0:
            return F.log_softmax(log_p, dim=1)
        kernels = self._kernels(image, log_p[:, :1])
        if not kernels:
            return F.log_softmax(log_p, dim=1)
        compat = (self.compatibility if c == self.num_classes else 1.0 - torch.eye(c)).to(
            device=logits.device, dtype=dtype)
        return self._generic(log_p, kernels, compat)

    def _fused(self, logits: Tensor) -> bool:
        """Whether two-class inference takes the fused path of :mod:`cryoparticle.crf.fused`:
        large images (the bilateral kernel's nearest slice, above ``NEAREST_SLICE_PIXELS``
        pixels), the intensity bilateral kernel (no learned features), some kernel weight."""
        n, _, h, w = logits.shape
        weights = (float(self.spatial_weight), float(self.bilateral_weight))
        return (self.embedding is None and self.n_iterations > 0 and n * h * w
                > filtering.NEAREST_SLICE_PIXELS and (self.learnable or any(v != 0 for v in weights)))

    @torch.autocast("cuda", enabled=False)
    @torch.autocast("cpu", enabled=False)
    def _two_class_fused(self, logits: Tensor, image: Tensor, dtype: torch.dtype) -> Tensor:
        """Two classes, no gradient, large images: :func:`~cryoparticle.crf.fused.
        fused_two_class` on ``z = s₁ − s₀``, working in the output tensor (``z`` in its class-1
        plane, ``base`` in its class-0 plane), whose last step writes ``log σ(±z)`` there. In
        ``dtype`` throughout, also under mixed-precision autocast (its grid products would
        otherwise be bf16/fp16)."""
        n, _, h, w = logits.shape
        out = logits.new_empty(n, 2, h, w, dtype=dtype)
        z, base = out[:, 1], out[:, 0]
        limit = math.log((1 - self.unary_clip) / self.unary_clip) if self.unary_clip else None
        ranges = bands(h, w, n)
        for r0, r1 in ranges:
            bb = base[:, r0:r1]
            torch.sub(logits[:, 1, r0:r1], logits[:, 0, r0:r1], out=bb)
            if limit is not None:   # |log p₁ − log p₀| ≤ log((1 − clip)/clip) (to 1e-5)
                bb.clamp_(-limit, limit)
        compat = self.compatibility.detach().to(dtype=torch.float64, device="cpu")
        a = float(compat[1, 0] - compat[0, 0])
        b = float(compat[1, 1] - compat[0, 1])
        spatial_cell, bilateral_cell = self.grid_cells(h, w)
        spatial = bilateral = None
        w_spatial, w_bilateral = float(self.spatial_weight), float(self.bilateral_weight)
        if self.learnable or w_spatial != 0:
            filt = SpatialGaussian(h, w, self._value("spatial_sxy"), spatial_cell)
            spatial = SpatialTerm(filt, n, (a - b) * w_spatial, dtype, out.device)
        if self.learnable or w_bilateral != 0:
            s_level = self._value("bilateral_srgb") / math.sqrt(RGB_CHANNELS)
            level_bin = (1 if self.intensity_cells_per_sigma is None
                         else auto_cell(s_level, self.intensity_cells_per_sigma))
            levels = intensity_levels(image[:, 0], self.percentiles)
            bilateral = BilateralTerm(levels, self._value("bilateral_sxy"), s_level,
                                      bilateral_cell, level_bin, (a - b) * w_bilateral, dtype)
            del levels
        start = base        # Q₀ = σ(−ΔU); with a non-Potts compatibility base also holds F(1)
        if a + b != 0:      # the F_k(1) term of a non-Potts compatibility
            start = z.copy_(base)
            ones = bilateral.ones() if bilateral is not None else None
            index = torch.empty(0, dtype=torch.int64, device=out.device)
            for r0, r1 in ranges:
                if spatial is not None:
                    spatial.ones_add_(base[:, r0:r1], r0, -0.5 * (a + b) * w_spatial)
                if bilateral is not None:
                    index = bilateral.band_index(r0, r1, index.new_empty(n * (r1 - r0) * w))
                    base[:, r0:r1].sub_(ones[index].view(n, r1 - r0, w),
                                        alpha=0.5 * (a + b) * w_bilateral)
        fused_two_class(z, base, start, self.n_iterations, spatial, bilateral, self.workers)
        return out

    def _generic(self, log_p: Tensor, kernels: list[_Kernel], compat: Tensor) -> Tensor:
        scores = log_p
        for _ in range(self.n_iterations):
            q = scores.softmax(dim=1)
            messages = sum(k.weight * k.messages(q) for k in kernels)
            pairwise = torch.einsum("lm,nmhw->nlhw", compat, messages)
            scores = log_p - pairwise
        return F.log_softmax(scores, dim=1)

    @torch.no_grad()
    def _two_class(self, z: Tensor, kernels: list[_Kernel], compat: Tensor) -> Tensor:
        """Two classes, no gradient: the iteration on the logit difference ``z = s₁ − s₀``.

        With ``F_k = D_k^{-1/2} K_k D_k^{-1/2}``, ``a = μ₁₀ − μ₀₀``, ``b = μ₁₁ − μ₀₁`` and
        ``Q₁ = σ(z)``, one mean-field step is ``z ← −ΔU − (a+b)/2 · Σ_k w_k F_k(1) +
        (a−b)/2 · Σ_k w_k F_k(2Q₁ − 1)``: one filtered channel per kernel; for Potts
        (``a = 1, b = −1``) the ``F_k(1)`` term vanishes. ``F_k(2Q₁ − 1) = 2 F_k(Q₁ − 1/2)``: the
        splat of ``D^{-1/2} Q₁`` is added to a grid that starts from ``−splat(D^{-1/2})/2``
        (computed once). Runs in horizontal bands: small working arrays, no whole-image
        temporaries.
        """
        n, _, h, w = z.shape
        banded = all(hasattr(k.filt, "splat_") for k in kernels)
        multiple = math.lcm(1, *(k.filt.row_multiple for k in kernels)) if banded else 1
        ranges = bands(h, w, n, multiple)
        if kernels and self.n_iterations and not banded:          # learned features
            a = float(compat[1, 0] - compat[0, 0])
            b = float(compat[1, 1] - compat[0, 1])
            base = z.clone()
            if a + b != 0:
                for k in kernels:
                    base.sub_(k.ones, alpha=0.5 * (a + b) * float(k.weight))
            for _ in range(self.n_iterations):
                t = torch.sigmoid(z).mul_(2).sub_(1)
                z = base.clone()
                for k in kernels:
                    z.addcmul_(k.norm, k.filt(k.norm * t), value=0.5 * (a - b) * float(k.weight))
        elif kernels and self.n_iterations:
            a = float(compat[1, 0] - compat[0, 0])
            b = float(compat[1, 1] - compat[0, 1])
            base = z.clone()
            if a + b != 0:
                for k in kernels:
                    base.sub_(k.ones, alpha=0.5 * (a + b) * float(k.weight))
            # F(2Q₁ − 1) = 2 F(Q₁ − 1/2): splat D^{-1/2} Q₁ onto −splat(D^{-1/2})/2, scale by 2
            scales = [(a - b) * float(k.weight) for k in kernels]
            starts = []
            for k in kernels:
                start = k.filt.new_grid(z)
                for r0, r1 in ranges:
                    k.filt.splat_(start, k.norm[:, :, r0:r1], r0, alpha=-0.5)
                starts.append(start)
            workers = self.workers if z.device.type == "cpu" else 1
            workers = max(1, min(workers, len(ranges)))
            # one set of grids per worker thread (scatter into a shared grid would race)
            grids = [[start.clone() for start in starts] for _ in range(workers)]

            def splat(worker: int) -> None:
                own = grids[worker]
                for i, start in enumerate(starts):
                    if worker == 0:
                        own[i].copy_(start)
                    else:
                        own[i].zero_()
                for r0, r1 in ranges[worker::workers]:
                    q = torch.sigmoid(z[:, :, r0:r1])
                    for k, grid in zip(kernels, own):
                        k.filt.splat_(grid, k.norm[:, :, r0:r1] * q, r0)

            def update(worker: int, blurred: list[Tensor]) -> None:
                for r0, r1 in ranges[worker::workers]:
                    zb = z[:, :, r0:r1]
                    src = base[:, :, r0:r1]
                    for k, scale, grid in zip(kernels, scales, blurred):
                        torch.addcmul(src, k.norm[:, :, r0:r1], k.filt.slice(grid, r0, r1),
                                      value=scale, out=zb)
                        src = zb

            pool = ThreadPoolExecutor(workers) if workers > 1 else None
            try:
                for _ in range(self.n_iterations):
                    if pool is None:
                        splat(0)
                    else:
                        list(pool.map(splat, range(workers)))
                        for own in grids[1:]:
                            for total, part in zip(grids[0], own):
                                total.add_(part)
                    blurred = [k.filt.blur(grid) for k, grid in zip(kernels, grids[0])]
                    if pool is None:
                        update(0, blurred)
                    else:
                        list(pool.map(update, range(workers), [blurred] * workers))
            finally:
                if pool is not None:
                    pool.shutdown()
        # log Q₁ = log σ(z) = min(z, 0) − log(1 + e^{−|z|}), log Q₀ = log σ(−z) = log Q₁ − z
        out = z.new_empty(n, 2, h, w)
        for r0, r1 in ranges:
            log_sigmoid_pair(z[:, :, r0:r1], out[:, 1:2, r0:r1], out[:, 0:1, r0:r1])
        return out


def exact_mean_field(logits: Tensor, image: Tensor, n_iterations: int = 10,
                     spatial_sxy: float = 3.0, spatial_weight: float = 3.0,
                     bilateral_sxy: float = 20.0, bilateral_srgb: float = 13.0,
                     bilateral_weight: float = 0.5, unary_clip: float | None = 1e-5,
                     percentiles: Sequence[float] = DEFAULT_PERCENTILES,
                     compatibility: Tensor | None = None) -> Tensor:
    """Brute-force reference of :class:`MeanFieldCRF` (same energy and parameters): explicit
    ``N × N`` kernels ``exp(-|f_i - f_j|² / 2)`` (as
    :func:`~cryoparticle.crf.filtering.exact_filter`), float64. For tests on images of ≤ 64²
    pixels. Returns log-marginals ``(N, C, H, W)``."""
    from cryoparticle.crf.filtering import position_features

    logits, image = check_logits_image(logits, image)
    n, c, h, w = logits.shape
    log_p = F.log_softmax(logits.double(), dim=1)
    if unary_clip:
        log_p = log_p.clamp_min(math.log(unary_clip))
    levels = intensity_levels(image[:, 0], percentiles).double()
    kernels = []
    if spatial_weight:
        kernels.append((spatial_weight, position_features(n, h, w, spatial_sxy)))
    if bilateral_weight:
        s_level = bilateral_srgb / math.sqrt(RGB_CHANNELS)
        feats = torch.cat([position_features(n, h, w, bilateral_sxy), levels[:, None] / s_level],
                          dim=1)
        kernels.append((bilateral_weight, feats))
    compat = (1.0 - torch.eye(c, dtype=torch.float64)) if compatibility is None else \
        compatibility.double()
    # Σ_k w_k D_k^{-1/2} K_k D_k^{-1/2} per image, from the explicit kernels
    operators = []
    for i in range(n):
        total = 0
        for wk, feats in kernels:
            f = feats[i].reshape(feats.shape[1], -1).T
            kernel = torch.exp(-0.5 * torch.cdist(f, f).square())
            norm = kernel.sum(1).rsqrt()
            total = total + wk * (norm[:, None] * kernel * norm[None, :])
        operators.append(total)
    scores = log_p
    for _ in range(n_iterations):
        q = scores.softmax(dim=1).reshape(n, c, h * w)
        messages = torch.stack([q[i] @ operators[i].T for i in range(n)]).reshape(n, c, h, w)
        scores = log_p - torch.einsum("lm,nmhw->nlhw", compat, messages)
    return F.log_softmax(scores, dim=1)


def meanfield_crf(prob, image, **params) -> Tensor:
    """Marginals ``(C, H, W)`` of :class:`MeanFieldCRF` (``params``) for probabilities
    ``prob (C, H, W)`` (summing to one) of ``image (H, W)``; the counterpart of
    :func:`~cryoparticle.crf.dense.dense_crf`."""
    from cryoparticle.crf.checks import check_probabilities

    prob, image = check_probabilities(prob, image)
    crf = MeanFieldCRF(num_classes=prob.shape[0], **params)
    logits = torch.from_numpy(prob).clamp_min(1e-30).log()[None]
    with torch.no_grad():
        return crf(logits, torch.from_numpy(image)[None, None])[0].exp()


__all__ = ["FEATURE_BOUND", "MeanFieldCRF", "exact_mean_field", "meanfield_crf"]
