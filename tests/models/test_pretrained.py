"""Named pretrained weights (``imagenet``, ``coco``) through the libraries' own caches: a file
placed in the cache (a temporary ``TORCH_HOME`` / Hugging Face cache) is loaded without
network; a missing one gives a one-line error naming the URL and the path to place it at.
The download functions are replaced by ones that raise: these tests never reach the network."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import huggingface_hub.file_download
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.hub
import torchvision
from safetensors.torch import save_file

from cryoparticle.errors import InputError
from cryoparticle.models.networks import build_network
from cryoparticle.models.pretrained import pretrained_source


def backbone_of(model: torch.nn.Module) -> torch.nn.Module:
    inner = model.model
    return inner.backbone if hasattr(inner, "backbone") else inner.encoder


@pytest.fixture(autouse=True)
def offline_caches(tmp_path, monkeypatch) -> dict[str, Path]:
    """Empty torch hub and Hugging Face caches under ``tmp_path``; every download raises."""
    torch_home, hf_cache = tmp_path / "torch", tmp_path / "hf"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_cache))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(huggingface_hub.file_download, "get_hf_file_metadata", no_network)
    monkeypatch.setattr(huggingface_hub.file_download, "http_get", no_network)
    return {"torch": torch_home / "hub" / "checkpoints", "hf": hf_cache}


def resnet18_state(seed: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return torchvision.models.resnet18().state_dict()


def smp_cache_path(cache: Path, encoder: str, weights: str = "imagenet") -> tuple[Path, str]:
    """Where huggingface_hub keeps smp's pinned encoder weights, and their URL."""
    settings = smp.encoders.encoders[encoder]["pretrained_settings"][weights]
    repo, revision = settings["repo_id"], settings["revision"]
    path = (cache / f"models--{repo.replace('/', '--')}" / "snapshots" / revision
            / "model.safetensors")
    return path, f"huggingface.co/{repo}/resolve/{revision}/model.safetensors"


@pytest.mark.parametrize("name", ["fcn", "deeplabv3"])
def test_torchvision_imagenet_weights_from_the_torch_hub_cache(name, offline_caches):
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    saved = resnet18_state()
    offline_caches["torch"].mkdir(parents=True)
    torch.save(saved, offline_caches["torch"] / Path(url).name)
    body = backbone_of(build_network(name, "resnet18", pretrained="imagenet")).state_dict()
    torch.testing.assert_close(body["conv1.weight"], saved["conv1.weight"].sum(1, keepdim=True))
    for key in ("layer4.1.conv2.weight", "layer2.0.bn1.running_var"):
        assert torch.equal(body[key], saved[key]), key
    # true means imagenet too
    body = backbone_of(build_network(name, "resnet18", pretrained=True)).state_dict()
    assert torch.equal(body["layer1.0.conv1.weight"], saved["layer1.0.conv1.weight"])


def test_smp_imagenet_weights_from_the_hugging_face_cache(offline_caches):
    saved = {k: v for k, v in resnet18_state(4).items() if not k.startswith("fc.")}
    path, _ = smp_cache_path(offline_caches["hf"], "resnet18")
    path.parent.mkdir(parents=True)
    save_file(saved, str(path))
    encoder = backbone_of(build_network("unet", "resnet18", pretrained="imagenet")).state_dict()
    torch.testing.assert_close(encoder["conv1.weight"],
                               saved["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(encoder["layer3.1.conv2.weight"], saved["layer3.1.conv2.weight"])


def test_torchvision_coco_weights_load_every_layer_but_the_class_layer(offline_caches):
    """fcn_resnet50 with torchvision's DEFAULT (COCO) weights: backbone and head from the file,
    the last convolution (21 classes there, 2 here) as initialised."""
    url = torchvision.models.segmentation.FCN_ResNet50_Weights.DEFAULT.url
    torch.manual_seed(5)
    coco = torchvision.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=True).state_dict()
    offline_caches["torch"].mkdir(parents=True)
    torch.save(coco, offline_caches["torch"] / Path(url).name)
    model = build_network("fcn", "resnet50", num_classes=2, pretrained="coco").model
    state = model.state_dict()
    torch.testing.assert_close(state["backbone.conv1.weight"],
                               coco["backbone.conv1.weight"].sum(1, keepdim=True))
    for key in ("backbone.layer4.2.conv3.weight", "classifier.0.weight",
                "classifier.1.running_mean"):
        assert torch.equal(state[key], coco[key]), key
    assert state["classifier.4.weight"].shape[0] == 2


@pytest.mark.parametrize("name, backbone, weights", [("fcn", "resnet18", "imagenet"),
                                                     ("deeplabv3", "resnet101", "default"),
                                                     ("unet", "resnet34", "imagenet")])
def test_offline_without_cached_file_is_one_line_naming_url_and_path(name, backbone, weights,
                                                                      offline_caches):
    with pytest.raises(InputError) as info:
        build_network(name, backbone, pretrained=weights)
    message = str(info.value)
    assert "\n" not in message
    if name == "unet":
        path, url = smp_cache_path(offline_caches["hf"], backbone)
    elif weights == "default":
        url = torchvision.models.segmentation.DeepLabV3_ResNet101_Weights.DEFAULT.url
        path = offline_caches["torch"] / Path(url).name
    else:
        url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
        path = offline_caches["torch"] / Path(url).name
    assert message.startswith(f"{path}: ") and url in message and "place it" in message
    assert not path.exists()


def test_unknown_or_impossible_weight_names_are_one_line():
    with pytest.raises(InputError, match="no COCO weights"):
        build_network("fcn", "resnet18", pretrained="coco")
    with pytest.raises(InputError, match="ssl, swsl|imagenet, ssl"):
        build_network("unet", "resnet18", pretrained="instagram")
    with pytest.raises(InputError, match="unknown weights"):
        build_network("fcn", "resnet18", pretrained="ssl")


def test_pretrained_values():
    assert pretrained_source(False) is None and pretrained_source("none") is None
    assert pretrained_source(True) == "imagenet" and pretrained_source("ImageNet") == "imagenet"
    assert pretrained_source("weights/r18.pth") == Path("weights/r18.pth")
    assert pretrained_source("r18.safetensors") == Path("r18.safetensors")
    with pytest.raises(InputError):
        pretrained_source(3)
