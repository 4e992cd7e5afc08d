"""A trained segmenter for picking, without Lightning: the network and CRF of a checkpoint.

:func:`load_inference_segmenter` rebuilds from a :class:`~cryoparticle.models.segmenter.
Segmenter` checkpoint what inference needs — the network (its ``pretrained`` file not read: the
checkpoint's weights replace it), the CRF it was trained with, the hyperparameters and
:func:`inference_facts` — as ``Segmenter.load_from_checkpoint`` does, but without importing
PyTorch Lightning and torchmetrics: a picking process on one device starts 1–1.5 s sooner
(``benchmarks/pick_speed.py --lightning``). The weights load strictly: a checkpoint of another
network or layout is a one-line :class:`~cryoparticle.errors.InputError` naming the file. An
ensemble export (``export --member``) loads as an :class:`EnsembleNetwork` of its members.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cryoparticle.errors import InputError, file_error, param_error
from cryoparticle.io.checks import one_line
from cryoparticle.models.checkpoints import read_checkpoint
from cryoparticle.models.networks import build_network

#: The defaults of the Segmenter's inference hyperparameters, for checkpoints that lack one
#: (the test suite checks them against ``Segmenter.__init__``'s signature).
INFERENCE_DEFAULTS: dict[str, Any] = {
    "crf": None, "tile_size": 256, "tile_overlap": 32, "pixel_size_a": None,
    "particle_diameter_a": None, "normalisation": "per_micrograph_standardise",
    "picking_threshold": 0.5, "extraction": None}

#: ``state_dict`` prefixes of a Segmenter: the network and CRF weights, and the loss's buffers
#: (class weights; unused in inference).
_PARTS = ("network", "crf", "criterion")


class Hyperparameters(dict):
    """A dict whose keys are also attributes (``hparams.tile_size``), as Lightning's."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def inference_facts(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """What a picker needs besides the weights (also ``checkpoint["cryoparticle"]``): pixel
    size (Å/px), particle diameter (Å), normalisation, network, picking threshold, tiling,
    extraction options and CRF of a Segmenter's hyperparameters."""
    return {"pixel_size_a": hparams["pixel_size_a"],
            "particle_diameter_a": hparams["particle_diameter_a"],
            "normalisation": hparams["normalisation"],
            "network": copy.deepcopy(dict(hparams["network"])),
            "picking_threshold": hparams["picking_threshold"], "tile_size": hparams["tile_size"],
            "extraction": copy.deepcopy(hparams.get("extraction")),
            "tile_overlap": hparams["tile_overlap"], "crf": copy.deepcopy(hparams["crf"])}


def build_crf(crf: Mapping[str, Any] | None) -> nn.Module | None:
    """The CRF module of a Hydra config (``None``, or no ``_target_``: no CRF)."""
    if not crf or not crf.get("_target_"):
        return None
    from hydra.utils import instantiate

    try:
        module = instantiate(dict(crf))
    except Exception as exc:
        raise param_error("crf", crf, f"cannot instantiate: {exc}") from exc
    if not isinstance(module, nn.Module):
        raise param_error("crf", crf, "must build a torch.nn.Module")
    return module


class EnsembleNetwork(nn.Module):
    """Networks of one architecture trained apart (other seeds), read as one: the log of their
    mean class probabilities ``(N, K, H, W)``, so that a softmax of the output is the mean of
    the members' softmaxes."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one network")
        self.members = nn.ModuleList(members)

    def forward(self, image: Tensor) -> Tensor:
        logs = torch.stack([m(image).float().log_softmax(dim=1) for m in self.members])
        return torch.logsumexp(logs, dim=0) - math.log(len(self.members))


class InferenceSegmenter(nn.Module):
    """The network (then the CRF) of a trained Segmenter: logits ``(N, K, H, W)`` of images
    ``(N, 1, H, W)``, as ``Segmenter.forward``; ``hparams`` and :meth:`inference_facts` as the
    Segmenter's."""

    def __init__(self, network: nn.Module, crf: nn.Module | None,
                 hparams: Mapping[str, Any]) -> None:
        super().__init__()
        self.network = network
        self.crf = crf
        self.hparams = Hyperparameters({**INFERENCE_DEFAULTS, **hparams})

    def forward(self, image: Tensor) -> Tensor:
        logits = self.network(image)
        if self.crf is not None:
            logits = self.crf(logits, image)
        return logits

    def inference_facts(self) -> dict[str, Any]:
        return inference_facts(self.hparams)


def load_inference_segmenter(path: str | Path, weights_only: bool = True
                             ) -> InferenceSegmenter:
    """An :class:`InferenceSegmenter` (eval mode, CPU) from a Segmenter checkpoint ``path``
    (a training checkpoint or an export). A missing or unreadable file, one that is not a
    Segmenter checkpoint, or whose weights do not fit its network (another version's layer
    names) raise :class:`InputError` naming the file."""
    path = Path(path)
    checkpoint = read_checkpoint(path, "checkpoint", weights_only=weights_only)
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, Mapping) or not isinstance(hparams, Mapping) or \
            "network" not in hparams:
        raise file_error(path, "not a cryoparticle Segmenter checkpoint (no state_dict and "
                               "hyper_parameters.network)")
    hparams = dict(hparams)
    try:
        network = build_network(**{**dict(hparams["network"]), "pretrained": False})
        crf = build_crf(hparams.get("crf"))
    except InputError as exc:
        raise file_error(path, f"cannot load it into a Segmenter ({one_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - a stored configuration this version cannot build
        raise file_error(path, f"cannot load it into a Segmenter ({type(exc).__name__}: "
                               f"{one_line(exc)[:300]})") from None
    parts = _split_parts(path, state)
    members = [_split_parts(path, other).get("network", {})
               for other in checkpoint.get("ensemble") or []]
    networks = [network]
    try:
        network.load_state_dict(parts.get("network", {}), strict=True)
        for weights in members:   # an ensemble: the others (one architecture, other training)
            networks.append(build_network(**{**dict(hparams["network"]), "pretrained": False}))
            networks[-1].load_state_dict(weights, strict=True)
        if crf is not None:
            crf.load_state_dict(parts.get("crf", {}), strict=True)
        elif parts.get("crf"):
            raise RuntimeError("CRF weights but no CRF configured")
    except RuntimeError as exc:
        raise file_error(path, f"cannot load it into a Segmenter (RuntimeError: "
                               f"{one_line(exc)[:300]})") from None
    keep = {k: hparams[k] for k in ("network", *INFERENCE_DEFAULTS) if k in hparams}
    return InferenceSegmenter(EnsembleNetwork(networks) if members else network, crf,
                              keep).eval()


def _split_parts(path: Path, state: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """A Segmenter ``state_dict`` split by :data:`_PARTS` prefix (``{"network": {...}}``);
    any other entry raises :class:`InputError` naming the file."""
    parts: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        part, _, rest = str(key).partition(".")
        if part in _PARTS and rest:
            parts.setdefault(part, {})[rest] = value
        else:
            parts.setdefault("unknown", {})[str(key)] = value
    if "unknown" in parts:
        names = sorted(parts["unknown"])[:3]
        raise file_error(path, f"cannot load it into a Segmenter (unexpected weights: "
                               f"{', '.join(names)}{' …' if len(parts['unknown']) > 3 else ''})")
    return parts


__all__ = ["INFERENCE_DEFAULTS", "EnsembleNetwork", "Hyperparameters", "InferenceSegmenter",
           "build_crf", "inference_facts", "load_inference_segmenter"]
