"""Pretrained backbone/encoder weights: a local file, or the libraries' own downloads and caches.

``network.pretrained`` (:func:`~cryoparticle.models.networks.build_network`) is

* ``false`` / ``null``: random initialisation;
* a **local file** (``.pth``/``.pt``/``.ckpt`` written by ``torch.save``, or ``.safetensors``)
  holding the backbone's ``state_dict``;
* ``imagenet`` (or ``true``): the ImageNet weights of the backbone — for ``fcn``/``deeplabv3``
  torchvision's ``ResNet*_Weights.IMAGENET1K_V1`` (the backbone torchvision's segmentation
  models start from), fetched by ``torch.hub.load_state_dict_from_url`` into the torch hub
  cache (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch``); for the
  segmentation_models_pytorch networks the encoder's ``pretrained_settings["imagenet"]``
  (a pinned ``smp-hub`` repository revision), fetched by ``huggingface_hub.hf_hub_download``
  into the Hugging Face cache (``$HF_HOME/hub``, default ``~/.cache/huggingface``); ``tu-``
  (timm) encoders through timm's own download;
* ``coco`` / ``default``: for ``fcn``/``deeplabv3`` with ``resnet50``/``resnet101``,
  torchvision's ``DEFAULT`` weights of the whole segmentation network (COCO, the 20 VOC
  classes), every layer but the last classifier convolution (``default`` with
  ``resnet18``/``34``, which torchvision has no segmentation weights for: ``imagenet``);
* another of the encoder's ``pretrained_settings`` names for smp networks (e.g. ``ssl``,
  ``swsl``).

A file already in the cache is read without network access. When it is missing and cannot be
downloaded (offline), an :class:`~cryoparticle.errors.InputError` says in one line which URL
to fetch and the path to place it at.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from cryoparticle.errors import file_error, param_error
from cryoparticle.io.checks import one_line
from cryoparticle.models.checkpoints import read_checkpoint, state_dict_of

#: Names meaning "no pretrained weights".
NO_WEIGHTS = ("", "false", "none", "null", "no")
#: Names meaning the backbone's ImageNet weights.
IMAGENET_NAMES = ("imagenet", "true")
#: Names meaning torchvision's whole-network segmentation weights (COCO).
COCO_NAMES = ("coco", "default")


def pretrained_source(pretrained: Any) -> Path | str | None:
    """``network.pretrained`` → ``None`` (none), a :class:`Path` (local file) or a lowercase
    weights name (``"imagenet"``, ``"coco"``, ``"default"``, an smp weights name)."""
    if pretrained is None or pretrained is False:
        return None
    if pretrained is True:
        return "imagenet"
    if isinstance(pretrained, Path):
        return pretrained.expanduser()
    if not isinstance(pretrained, str):
        raise param_error("network.pretrained", pretrained, "must be false, a weights name "
                          "(imagenet, coco) or the path of a local state_dict file")
    text = pretrained.strip()
    if text.lower() in NO_WEIGHTS:
        return None
    if "/" in text or "\\" in text or Path(text).suffix in (".pth", ".pt", ".ckpt", ".bin",
                                                            ".safetensors"):
        return Path(text).expanduser()
    return "imagenet" if text.lower() in IMAGENET_NAMES else text.lower()


def _offline_error(cached: Path, url: str, exc: BaseException, cache: str) -> Exception:
    return file_error(cached, f"pretrained weights are not in the {cache} cache and cannot be "
                              f"downloaded ({type(exc).__name__}: {one_line(exc)[:160]}): "
                              f"download {url} and place it at this path, or give "
                              "network.pretrained=PATH of a local file")


def torch_hub_state_dict(url: str) -> dict[str, Tensor]:
    """The ``state_dict`` at ``url`` through the torch hub cache (``$TORCH_HOME/hub/
    checkpoints/<file name>``): read when there, else downloaded (hash-checked) to it."""
    import torch.hub

    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if cached.is_file():
        return state_dict_of(read_checkpoint(cached, "pretrained weights"), cached,
                             "pretrained weights")
    try:
        state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False,
                                                   check_hash=True, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - URLError, timeouts, hash mismatch: all one line
        raise _offline_error(cached, url, exc, "torch hub ($TORCH_HOME)") from None
    return state_dict_of(state, cached, "pretrained weights")


def torchvision_state_dict(name: str, backbone: str, weights: str) -> tuple[dict[str, Tensor],
                                                                              bool]:
    """``(state_dict, whole_network)`` of torchvision's ``weights`` for ``name``/``backbone``:
    the ResNet's ImageNet weights (``whole_network`` False) or the segmentation network's
    COCO weights (True)."""
    import torchvision

    depth = backbone.removeprefix("resnet")
    coco = weights in COCO_NAMES and backbone in ("resnet50", "resnet101")
    if weights == "coco" and not coco:
        raise param_error("network.pretrained", weights, f"torchvision has no COCO weights "
                          f"for {name}_{backbone} (resnet50/resnet101 only); use imagenet")
    if weights not in IMAGENET_NAMES + COCO_NAMES:
        raise param_error("network.pretrained", weights, f"unknown weights for {name}; "
                          "choose imagenet, coco or default, or give a local file")
    if coco:
        label = {"fcn": "FCN", "deeplabv3": "DeepLabV3"}[name]
        enum = getattr(torchvision.models.segmentation, f"{label}_ResNet{depth}_Weights")
        return torch_hub_state_dict(enum.DEFAULT.url), True
    enum = getattr(torchvision.models, f"ResNet{depth}_Weights")
    return torch_hub_state_dict(enum.IMAGENET1K_V1.url), False


def smp_encoder_state_dict(backbone: str, weights: str) -> dict[str, Tensor]:
    """The encoder ``state_dict`` of segmentation_models_pytorch's ``pretrained_settings``
    ``weights`` for ``backbone`` (``model.safetensors`` of a pinned Hugging Face Hub revision),
    through the Hugging Face cache."""
    import segmentation_models_pytorch as smp
    from huggingface_hub import constants, hf_hub_download, hf_hub_url

    settings = smp.encoders.encoders[backbone]["pretrained_settings"]
    if weights not in settings:
        raise param_error("network.pretrained", weights, f"unknown weights for encoder "
                          f"{backbone}; choose one of {', '.join(settings)} or a local file")
    repo_id, revision = settings[weights]["repo_id"], settings[weights]["revision"]
    filename = "model.safetensors"
    cache = Path(constants.HF_HUB_CACHE)
    cached = (cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / revision
              / filename)
    try:
        path = hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache)
    except Exception as exc:  # noqa: BLE001 - offline, timeouts: one line saying what to do
        raise _offline_error(cached, hf_hub_url(repo_id, filename, revision=revision), exc,
                             "Hugging Face ($HF_HOME)") from None
    return state_dict_of(read_checkpoint(path, "pretrained weights"), path,
                         "pretrained weights")


def timm_error(backbone: str, exc: BaseException) -> Exception:
    """A one-line error for timm encoders whose weights could not be fetched."""
    return param_error("network.pretrained", "imagenet", f"timm could not load the weights of "
                       f"{backbone} ({type(exc).__name__}: {one_line(exc)[:160]}); run once with "
                       "network access (timm caches them in the Hugging Face cache, $HF_HOME) "
                       "or give network.pretrained=PATH of a local file")


def matching_tensors(module_state: Mapping[str, Tensor], saved: Mapping[str, Tensor]
                     ) -> dict[str, Tensor]:
    """The tensors of ``saved`` whose name and shape ``module_state`` has (a head whose last
    layer has another number of classes keeps that layer as initialised)."""
    return {k: v.to(module_state[k].dtype) for k, v in saved.items()
            if k in module_state and v.shape == module_state[k].shape}


__all__ = ["COCO_NAMES", "IMAGENET_NAMES", "matching_tensors", "pretrained_source",
           "smp_encoder_state_dict", "timm_error", "torch_hub_state_dict",
           "torchvision_state_dict"]
