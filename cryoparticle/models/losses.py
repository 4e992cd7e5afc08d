"""Segmentation losses on ``(logits (N, C, H, W), target (N, H, W) int64)``.

``build_loss(name, ...)`` returns one of

* ``ce``: cross-entropy with label smoothing and class weights; mean over the non-ignored pixels
  weighted as :func:`torch.nn.functional.cross_entropy` does (divided by the summed weights of
  their true classes);
* ``dice``: soft Dice loss ``1 - (2 Σ p t + s) / (Σ p + Σ t + s)`` of the particle class 1 over
  the non-ignored pixels of the whole batch (``p`` its softmax probability, ``t`` the indicator
  of class 1, ``s = 1`` smoothing);
* ``focal``: ``-Σ_c q_c α_c (1 - p_c)^γ log p_c`` averaged over the non-ignored pixels, with
  ``α`` the class weights (1 without) and ``q`` the (label-smoothed) one-hot target; γ = 0,
  no smoothing, no weights is plain cross-entropy;
* ``ce_dice``: ``ce + dice_weight × dice``;
* ``nnpu``: the non-negative positive-unlabelled risk (Kiryo et al. 2017, NeurIPS; Topaz's
  idea for pickers) for labels that miss particles, as CryoPPP's do. The labelled particle
  pixels are the positive sample, every non-ignored pixel the unlabelled sample of all pixels,
  whose particle share is ``π = labelled share / (1 − pu_missing_fraction)`` (per batch);
  ``z = logit₁ − logit₀``, ``ℓ`` the logistic loss. Risk ``π·E_P[ℓ(z)] + max(0, E_U[ℓ(−z)] −
  π·E_P[ℓ(−z)])``; when the bracket falls below ``−pu_beta`` its gradient is ``−pu_gamma ×``
  the bracket's (the paper's defaults: 0 and 1). ``pu_missing_fraction = 0`` is plain
  two-class cross-entropy on the labels.

Pixels equal to ``ignore_index`` (255: uncertain pixels) add nothing to the loss nor to its
gradient; a batch made only of them gives a loss of exactly 0 (finite, differentiable).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cryoparticle.errors import param_error

#: Loss names accepted by :func:`build_loss`.
LOSSES: tuple[str, ...] = ("ce", "dice", "focal", "ce_dice", "nnpu")


def _zero(logits: Tensor) -> Tensor:
    """A 0 connected to the graph (so ``backward`` works and gives zero gradients)."""
    return logits.sum() * 0.0


def _check(logits: Tensor, target: Tensor) -> Tensor:
    if logits.ndim != 4 or target.shape != logits.shape[:1] + logits.shape[2:]:
        raise param_error("target", tuple(target.shape),
                          f"must be (N, H, W) matching logits {tuple(logits.shape)}")
    return target.long()


class _WeightedLoss(nn.Module):
    def __init__(self, class_weights: Sequence[float] | None, ignore_index: int) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)
        weights = None if class_weights is None else torch.as_tensor(
            [float(w) for w in class_weights], dtype=torch.float64)
        if weights is not None and (weights.ndim != 1 or bool((weights < 0).any())):
            raise param_error("loss.class_weights", class_weights,
                              "must be a list of non-negative numbers, one per class")
        self.register_buffer("class_weights", weights, persistent=False)

    def _weights(self, logits: Tensor) -> Tensor | None:
        w = self.class_weights
        if w is None:
            return None
        if w.numel() != logits.shape[1]:
            raise param_error("loss.class_weights", w.tolist(),
                              f"needs one weight per class ({logits.shape[1]})")
        return w.to(device=logits.device, dtype=logits.dtype)


class CrossEntropyLoss(_WeightedLoss):
    """Cross-entropy with label smoothing and class weights, safe on all-ignore batches."""

    def __init__(self, label_smoothing: float = 0.0, class_weights: Sequence[float] | None = None,
                 ignore_index: int = 255) -> None:
        super().__init__(class_weights, ignore_index)
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = _check(logits, target)
        valid = target != self.ignore_index
        if not bool(valid.any()):
            return _zero(logits)
        weight = self._weights(logits)
        total = F.cross_entropy(logits, target, weight=weight, ignore_index=self.ignore_index,
                                label_smoothing=self.label_smoothing, reduction="sum")
        norm = valid.sum().to(logits.dtype) if weight is None else weight[target[valid]].sum()
        return total / norm.clamp_min(torch.finfo(logits.dtype).tiny)


class DiceLoss(nn.Module):
    """Soft Dice loss of class ``positive_class`` over the non-ignored pixels of the batch."""

    def __init__(self, ignore_index: int = 255, smooth: float = 1.0,
                 positive_class: int = 1) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.smooth = float(smooth)
        self.positive_class = int(positive_class)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = _check(logits, target)
        valid = (target != self.ignore_index).to(logits.dtype)
        prob = logits.softmax(dim=1)[:, self.positive_class] * valid
        truth = (target == self.positive_class).to(logits.dtype) * valid
        intersection = (prob * truth).sum()
        denominator = prob.sum() + truth.sum()
        return 1.0 - (2.0 * intersection + self.smooth) / (denominator + self.smooth)


class FocalLoss(_WeightedLoss):
    """Multi-class focal loss (Lin et al. 2017) with class weights as α."""

    def __init__(self, gamma: float = 2.0, class_weights: Sequence[float] | None = None,
                 ignore_index: int = 255, label_smoothing: float = 0.0) -> None:
        super().__init__(class_weights, ignore_index)
        if gamma < 0:
            raise param_error("loss.focal_gamma", gamma, "must be ≥ 0")
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = _check(logits, target)
        valid = target != self.ignore_index
        if not bool(valid.any()):
            return _zero(logits)
        n_classes = logits.shape[1]
        dtype = torch.promote_types(logits.dtype, torch.float32)
        logp = logits.to(dtype).log_softmax(dim=1).movedim(1, -1)[valid]  # (P, C)
        q = F.one_hot(target[valid], n_classes).to(logp.dtype)
        if self.label_smoothing:
            q = q * (1.0 - self.label_smoothing) + self.label_smoothing / n_classes
        terms = -q * (1.0 - logp.exp()).clamp_min(0.0) ** self.gamma * logp
        weight = self._weights(logits)
        if weight is not None:
            terms = terms * weight.to(terms.dtype)
        return terms.sum(dim=1).mean().to(logits.dtype)


class NonNegativePULoss(nn.Module):
    """Non-negative PU risk of the particle class 1 (see the module docstring)."""

    def __init__(self, missing_fraction: float = 0.1, beta: float = 0.0, gamma: float = 1.0,
                 ignore_index: int = 255) -> None:
        super().__init__()
        if not 0.0 <= missing_fraction < 1.0:
            raise param_error("loss.pu_missing_fraction", missing_fraction, "must be in [0, 1)")
        if beta < 0 or gamma <= 0:
            raise param_error("loss.pu_beta/pu_gamma", (beta, gamma), "need beta ≥ 0, gamma > 0")
        self.missing_fraction, self.beta, self.gamma = float(missing_fraction), float(beta), \
            float(gamma)
        self.ignore_index = int(ignore_index)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = _check(logits, target)
        if logits.shape[1] != 2:
            raise param_error("loss.name", "nnpu", f"needs 2 classes, not {logits.shape[1]}")
        valid = target != self.ignore_index
        if not bool(valid.any()):
            return _zero(logits)
        dtype = torch.promote_types(logits.dtype, torch.float32)
        z = (logits[:, 1] - logits[:, 0]).to(dtype)
        positive = (target == 1) & valid
        n_valid, n_positive = valid.sum(), positive.sum()
        prior = n_positive.to(dtype) / n_valid.to(dtype) / (1.0 - self.missing_fraction)
        unlabelled_negative = F.softplus(z)[valid].mean()   # E_U[ℓ(−z)]: called background
        if bool(n_positive > 0):
            positive_risk = prior * F.softplus(-z)[positive].mean()
            negative_risk = unlabelled_negative - prior * F.softplus(z)[positive].mean()
        else:
            positive_risk, negative_risk = _zero(z), unlabelled_negative
        risk = positive_risk + negative_risk.clamp_min(0.0)
        if bool(negative_risk < -self.beta):  # value: the risk; gradient: −γ ∇negative_risk
            ascent = -self.gamma * negative_risk
            risk = risk.detach() + ascent - ascent.detach()
        return risk.to(logits.dtype)


class CombinedLoss(nn.Module):
    """``first + weight × second``."""

    def __init__(self, first: nn.Module, second: nn.Module, weight: float = 1.0) -> None:
        super().__init__()
        self.first = first
        self.second = second
        self.weight = float(weight)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.first(logits, target) + self.weight * self.second(logits, target)


def build_loss(name: str = "ce", label_smoothing: float = 0.0,
               class_weights: list[float] | None = None, ignore_index: int = 255,
               focal_gamma: float = 2.0, dice_weight: float = 1.0,
               pu_missing_fraction: float = 0.1, pu_beta: float = 0.0,
               pu_gamma: float = 1.0) -> nn.Module:
    """The loss ``name`` (one of :data:`LOSSES`) as a module called ``loss(logits, target)``.

    ``label_smoothing`` applies to ``ce``, ``focal`` and the ``ce`` part of ``ce_dice``;
    ``class_weights`` (one per class) to ``ce`` and, as α, ``focal``; ``dice`` uses neither;
    ``pu_*`` to ``nnpu`` only.
    """
    if name not in LOSSES:
        raise param_error("loss.name", name, f"unknown loss; choose one of {', '.join(LOSSES)}")
    if not 0.0 <= label_smoothing < 1.0:
        raise param_error("loss.label_smoothing", label_smoothing, "must be in [0, 1)")
    if class_weights is not None:
        class_weights = [float(w) for w in class_weights]
    if name == "ce":
        return CrossEntropyLoss(label_smoothing, class_weights, ignore_index)
    if name == "dice":
        return DiceLoss(ignore_index)
    if name == "focal":
        return FocalLoss(focal_gamma, class_weights, ignore_index, label_smoothing)
    if name == "nnpu":
        return NonNegativePULoss(pu_missing_fraction, pu_beta, pu_gamma, ignore_index)
    return CombinedLoss(CrossEntropyLoss(label_smoothing, class_weights, ignore_index),
                        DiceLoss(ignore_index), dice_weight)
