"""Segmentation networks: ``build_network(name, backbone, ...)`` → ``nn.Module`` producing logits.

Every network returned by :func:`build_network` maps a batch ``(N, in_channels, H, W)`` to logits
``(N, num_classes, H, W)`` at the input resolution for *any* ``H, W``: the input is padded by
reflection to the multiple the architecture needs (the encoder's output stride) and the output
cropped back (:class:`PaddedNetwork`).

=================  ==============================================================================
name               architecture
=================  ==============================================================================
``fcn``            torchvision FCN; ``resnet18``/``resnet34`` built here (ResNet features
                   dilated to ``output_stride`` 8 by default, or 16 or 32, + torchvision
                   ``FCNHead``), ``resnet50``/``resnet101`` from torchvision (dilated, stride 8)
``deeplabv3``      torchvision DeepLabv3 (ASPP ``DeepLabHead``), backbones as for ``fcn``
``unet``           segmentation_models_pytorch U-Net, ``backbone`` = any smp encoder
``unetplusplus``   segmentation_models_pytorch U-Net++
``deeplabv3plus``  segmentation_models_pytorch DeepLabv3+
=================  ==============================================================================

Micrographs have one channel: the first convolution takes ``in_channels`` inputs (no RGB copy).
Pretrained weights (:mod:`cryoparticle.models.pretrained`): ``pretrained=imagenet`` (the
backbone's ImageNet weights through torchvision's or segmentation_models_pytorch's own download
and cache), ``coco``/``default`` (torchvision's COCO-trained FCN/DeepLabv3, ResNet-50/101), or a
local file (``pretrained="path/to/resnet18.pth"``: a ``state_dict`` of the backbone/encoder, e.g.
``torchvision.models.resnet18(...).state_dict()``); RGB kernels of the first convolution are
summed over the colour axis for one input channel (and cycled and rescaled by ``3 / in_channels`` otherwise, as segmentation_models_pytorch does).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cryoparticle.errors import file_error, param_error
from cryoparticle.models.checkpoints import read_state_dict
from cryoparticle.models.pretrained import (
    matching_tensors,
    pretrained_source,
    smp_encoder_state_dict,
    timm_error,
    torchvision_state_dict,
)

#: Network names accepted by :func:`build_network`.
NETWORKS: tuple[str, ...] = ("fcn", "deeplabv3", "unet", "unetplusplus", "deeplabv3plus")
#: The ones built from torchvision's segmentation models.
TORCHVISION_NETWORKS: tuple[str, ...] = ("fcn", "deeplabv3")
#: The ones built with segmentation_models_pytorch.
SMP_NETWORKS: tuple[str, ...] = ("unet", "unetplusplus", "deeplabv3plus")
#: Backbones of the torchvision networks.
TORCHVISION_BACKBONES: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101")
#: State-dict key prefixes stripped when loading a backbone/encoder file.
_PREFIXES = ("", "module.", "backbone.", "encoder.", "model.", "model.backbone.",
             "model.encoder.", "network.model.backbone.", "network.model.encoder.")


class PaddedNetwork(nn.Module):
    """Wrap a segmentation model: reflect-pad the input to ``multiple``, crop the logits back.

    ``model`` returns a tensor or (torchvision) a dict with the logits under ``"out"``.
    """

    def __init__(self, model: nn.Module, multiple: int) -> None:
        super().__init__()
        self.model = model
        self.multiple = int(multiple)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        top, left = ph // 2, pw // 2
        if ph or pw:
            x = reflect_pad(x, (left, pw - left, top, ph - top))
        out = self.model(x)
        if isinstance(out, Mapping):
            out = out["out"]
        return out[..., top:top + h, left:left + w]


def reflect_pad(x: Tensor, pads: tuple[int, int, int, int]) -> Tensor:
    """``F.pad(x, pads, mode="reflect")`` (``pads`` = left, right, top, bottom) for pads of any
    size: reflected repeatedly; an axis of length 1 is replicated."""
    left, right, top, bottom = pads
    for axis, (before, after) in ((-1, (left, right)), (-2, (top, bottom))):
        while before or after:
            size = x.shape[axis]
            if size == 1:
                mode, b, a = "replicate", before, after
            else:
                mode, b, a = "reflect", min(before, size - 1), min(after, size - 1)
            x = F.pad(x, (b, a, 0, 0) if axis == -1 else (0, 0, b, a), mode=mode)
            before, after = before - b, after - a
    return x


# --------------------------------------------------------------------------------------------
# builders


def _smp_encoder_names() -> list[str]:
    import segmentation_models_pytorch as smp

    return sorted(smp.encoders.get_encoder_names())


def _valid_backbones(name: str) -> str:
    if name in TORCHVISION_NETWORKS:
        return ", ".join(TORCHVISION_BACKBONES)
    return ", ".join(_smp_encoder_names()) + " (or any timm encoder as 'tu-<timm name>')"


#: Default output stride of the BasicBlock ResNets (resnet18/34) in ``fcn``/``deeplabv3``: 8,
#: as torchvision's resnet50/101 segmentation networks (layer3 and layer4 dilated; ≈3× the
#: training step of undilated stride 32 on 128² crops, which leaves one feature cell per 27 px
#: particle). 16 dilates layer4 only.
BASIC_OUTPUT_STRIDE = 8


def _dilate(layer: nn.Module, dilation: int, first_dilation: int) -> None:
    """Replace the stride of a BasicBlock ResNet stage by dilation (as torchvision's
    ``replace_stride_with_dilation`` does for Bottleneck ResNets): the first block's 3×3
    convolution and shortcut get stride 1 and ``first_dilation``, every later 3×3 convolution
    ``dilation``; the weights' shapes are unchanged (pretrained files still load)."""
    for i, block in enumerate(layer):
        for j, conv in enumerate((block.conv1, block.conv2)):
            d = first_dilation if (i == 0 and j == 0) else dilation
            conv.stride, conv.dilation, conv.padding = (1, 1), (d, d), (d, d)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


def _torchvision_network(name: str, backbone: str, in_channels: int, num_classes: int,
                         **kwargs: Any) -> tuple[nn.Module, nn.Module, int]:
    """(model, backbone module, multiple) for ``fcn``/``deeplabv3``."""
    import torchvision
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
    from torchvision.models.segmentation.fcn import FCN, FCNHead

    output_stride = kwargs.pop("output_stride", None)
    if kwargs:
        raise param_error("network", sorted(kwargs),
                          f"unknown options for {name!r} (torchvision networks take only "
                          "output_stride)")
    if backbone in ("resnet18", "resnet34"):
        # BasicBlock ResNets: torchvision cannot dilate them; dilated here (see _dilate).
        stride = BASIC_OUTPUT_STRIDE if output_stride is None else output_stride
        if stride not in (8, 16, 32):
            raise param_error("output_stride", output_stride, "must be 8, 16 or 32")
        resnet = getattr(torchvision.models, backbone)(weights=None)
        if stride <= 16:
            _dilate(resnet.layer4, 2 if stride == 16 else 4, 1 if stride == 16 else 2)
        if stride == 8:
            _dilate(resnet.layer3, 2, 1)
        features = IntermediateLayerGetter(resnet, return_layers={"layer4": "out"})
        if name == "fcn":
            model: nn.Module = FCN(features, FCNHead(512, num_classes))
        else:
            model = DeepLabV3(features, DeepLabHead(512, num_classes))
        multiple = stride
    else:
        if output_stride not in (None, 8):
            raise param_error("output_stride", output_stride,
                              f"torchvision's {name}_{backbone} has output stride 8")
        builder = getattr(torchvision.models.segmentation, f"{name}_{backbone}")
        model = builder(weights=None, weights_backbone=None, num_classes=num_classes,
                        aux_loss=False)
        multiple = 8  # dilated ResNet: output stride 8
    body = model.backbone
    old = body.conv1
    body.conv1 = nn.Conv2d(in_channels, old.out_channels, kernel_size=old.kernel_size,
                           stride=old.stride, padding=old.padding, bias=old.bias is not None)
    return model, body, multiple


def _smp_network(name: str, backbone: str, in_channels: int, num_classes: int,
                 encoder_weights: bool | None = None, **kwargs: Any
                 ) -> tuple[nn.Module, nn.Module, int]:
    import segmentation_models_pytorch as smp

    cls = {"unet": smp.Unet, "unetplusplus": smp.UnetPlusPlus,
           "deeplabv3plus": smp.DeepLabV3Plus}[name]
    try:
        model = cls(encoder_name=backbone, encoder_weights=encoder_weights,
                    in_channels=in_channels, classes=num_classes, **kwargs)
    except TypeError as exc:
        raise param_error("network", kwargs, f"invalid options for {name!r}: {exc}") from exc
    except (OSError, RuntimeError, ValueError) as exc:
        if encoder_weights is None:
            raise
        raise timm_error(backbone, exc) from None
    multiple = int(getattr(model.encoder, "output_stride", 32))
    return model, model.encoder, multiple


def build_network(name: str, backbone: str = "resnet18", in_channels: int = 1,
                  num_classes: int = 2, pretrained: bool | str | Path = False,
                  **kwargs: Any) -> nn.Module:
    """Build the segmentation network ``name`` (one of :data:`NETWORKS`).

    Returns a module mapping ``(N, in_channels, H, W)`` to logits ``(N, num_classes, H, W)`` for
    any ``H, W``. ``pretrained``: ``False``, a weights name (``imagenet``, ``coco``/``default``
    for torchvision networks, an smp encoder's weights name) or a local file holding a
    ``state_dict`` of the backbone (torchvision networks) or encoder (smp networks), keys with
    or without a ``backbone.``/``encoder.`` prefix (see :mod:`cryoparticle.models.pretrained`).
    ``kwargs`` go to the smp constructor (e.g. ``decoder_channels``, ``encoder_depth``). Bad
    names, backbones or weights, and weights that are neither cached nor downloadable, raise
    :class:`~cryoparticle.errors.InputError`.
    """
    if name not in NETWORKS:
        raise param_error("network.name", name, f"unknown network; choose one of "
                          f"{', '.join(NETWORKS)}")
    if in_channels < 1 or num_classes < 1:
        raise param_error("network", (in_channels, num_classes),
                          "in_channels and num_classes must be ≥ 1")
    source = pretrained_source(pretrained)
    timm = str(backbone).startswith("tu-")
    if name in TORCHVISION_NETWORKS:
        if backbone not in TORCHVISION_BACKBONES:
            raise param_error("network.backbone", backbone,
                              f"unknown backbone for {name!r}; choose one of "
                              f"{_valid_backbones(name)}")
        model, body, multiple = _torchvision_network(name, backbone, in_channels, num_classes,
                                                     **kwargs)
    else:
        if backbone not in _smp_encoder_names() and not timm:
            raise param_error("network.backbone", backbone,
                              f"unknown encoder for {name!r}; choose one of "
                              f"{_valid_backbones(name)}")
        if timm and isinstance(source, str):  # timm fetches and adapts its own weights
            if source != "imagenet":
                raise param_error("network.pretrained", source, "timm encoders take "
                                  "imagenet (the tag in 'tu-<name>.<tag>') or a local file")
            kwargs["encoder_weights"] = True  # smp: True = the tag's weights
        try:
            model, body, multiple = _smp_network(name, backbone, in_channels, num_classes,
                                                 **kwargs)
        except (KeyError, RuntimeError) as exc:  # e.g. an unknown timm name
            raise param_error("network.backbone", backbone, f"cannot build it: {exc}") from exc
    if isinstance(source, Path):
        load_backbone_weights(body, source, in_channels)
    elif source is not None and name in TORCHVISION_NETWORKS:
        state, whole = torchvision_state_dict(name, backbone, source)
        origin = f"torchvision {source} weights"
        if whole:  # the COCO network: backbone, then the head but its last (class) layer
            prefix = "backbone."
            load_backbone_weights(body, {k[len(prefix):]: v for k, v in state.items()
                                         if k.startswith(prefix)}, in_channels, origin)
            head = {k[len("classifier."):]: v for k, v in state.items()
                    if k.startswith("classifier.")}
            model.classifier.load_state_dict(
                matching_tensors(model.classifier.state_dict(), head), strict=False)
        else:
            load_backbone_weights(body, state, in_channels, origin)
    elif source is not None and not timm:
        load_backbone_weights(body, smp_encoder_state_dict(backbone, source), in_channels,
                              f"{backbone} {source} weights")
    return PaddedNetwork(model, multiple)


# --------------------------------------------------------------------------------------------
# loading backbone weights


def _first_conv_key(module: nn.Module) -> str | None:
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Conv2d):
            return f"{name}.weight" if name else "weight"
    return None


def adapt_first_conv(weight: Tensor, in_channels: int) -> Tensor:
    """Kernels ``(out, c, kh, kw)`` of an RGB-trained first convolution for ``in_channels``
    inputs: summed over the colour axis for 1; for more, channel ``i`` copies colour
    ``i mod c`` and all are scaled by ``c / in_channels`` (segmentation_models_pytorch's rule)."""
    c = weight.shape[1]
    if in_channels == c:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    idx = torch.arange(in_channels) % c
    return weight[:, idx] * (c / in_channels)


def load_backbone_weights(module: nn.Module, weights: str | Path | Mapping[str, Tensor],
                          in_channels: int, origin: str | None = None) -> None:
    """Load a ``state_dict`` (or the file ``weights`` holding one) into the backbone/encoder
    ``module``; errors name the file (or ``origin``).

    Prefixes such as ``backbone.``/``encoder.``/``module.`` are stripped (whichever matches the
    most keys); the classifier of an ImageNet ResNet (``fc.*``) is ignored. The first
    convolution's kernels are adapted to ``in_channels`` (:func:`adapt_first_conv`). Missing
    tensors, tensors the backbone has no place for (another depth) and shape mismatches raise
    :class:`InputError` naming the file with examples of the offending keys.
    """
    if isinstance(weights, Mapping):
        path: str | Path = origin or "pretrained weights"
        saved = {str(k): v for k, v in weights.items() if isinstance(v, Tensor)}
    else:
        path = Path(weights)
        saved = read_state_dict(path, "pretrained weights")
    target = module.state_dict()
    best: dict[str, Tensor] = {}
    for prefix in _PREFIXES:
        cand = {k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)}
        if len(cand.keys() & target.keys()) > len(best.keys() & target.keys()):
            best = cand
    matched = best.keys() & target.keys()
    if not matched:
        raise file_error(path, "no tensor matches the network's backbone: expected keys like "
                               f"{sorted(target)[:3]}, the file has keys like {sorted(saved)[:3]}")
    first = _first_conv_key(module)
    new_state: dict[str, Tensor] = {}
    bad_shapes = []
    for key in matched:
        value = best[key]
        if key == first and value.ndim == 4 and value.shape[1] != in_channels:
            value = adapt_first_conv(value, in_channels)
        if value.shape != target[key].shape:
            bad_shapes.append(f"{key}: file {tuple(value.shape)} vs network "
                              f"{tuple(target[key].shape)}")
            continue
        new_state[key] = value.to(target[key].dtype)
    if bad_shapes:
        raise file_error(path, f"incompatible weights ({len(bad_shapes)} shape mismatches, e.g. "
                               + "; ".join(bad_shapes[:3]) + ")")
    missing = sorted(k for k in target.keys() - matched if not k.endswith("num_batches_tracked"))
    if missing:
        raise file_error(path, f"incompatible weights: {len(missing)} tensors of the backbone "
                               f"are missing from the file, e.g. {missing[:3]} (another "
                               "architecture or depth?)")
    unused = sorted(k for k in best.keys() - matched if not k.startswith("fc."))
    if unused:
        raise file_error(path, f"incompatible weights: {len(unused)} tensors of the file have "
                               f"no place in the backbone, e.g. {unused[:3]} (another "
                               "architecture or depth?)")
    module.load_state_dict(new_state, strict=False)
