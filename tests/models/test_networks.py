"""build_network: every architecture gives logits at the input size; local pretrained weights
(named weights through the libraries' caches: test_pretrained.py)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from cryoparticle.errors import InputError
from cryoparticle.models.networks import NETWORKS, PaddedNetwork, build_network, reflect_pad


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def backbone_of(model: nn.Module) -> nn.Module:
    inner = model.model
    return inner.backbone if hasattr(inner, "backbone") else inner.encoder


@pytest.mark.parametrize("name", NETWORKS)
def test_logits_at_input_size_for_any_size(name):
    torch.manual_seed(0)
    net = build_network(name, "resnet18")
    assert first_conv(net).in_channels == 1
    for h, w in [(64, 96), (70, 50)]:
        x = torch.randn(2, 1, h, w)
        out = net(x)
        assert out.shape == (2, 2, h, w)
        assert torch.isfinite(out).all()
        out.mean().backward()  # trainable end to end
    assert first_conv(net).weight.grad is not None


@pytest.mark.parametrize("name", ["fcn", "deeplabv3"])
def test_torchvision_resnet50_construction(name):
    net = build_network(name, "resnet50", num_classes=3).eval()
    assert first_conv(net).in_channels == 1
    assert net.multiple == 8  # dilated backbone
    assert getattr(net.model, "aux_classifier", None) is None
    with torch.no_grad():
        assert net(torch.randn(1, 1, 20, 28)).shape == (1, 3, 20, 28)


def test_in_channels_and_classes():
    net = build_network("unet", in_channels=3, num_classes=4)
    assert first_conv(net).in_channels == 3
    assert net(torch.randn(1, 3, 40, 33)).shape == (1, 4, 40, 33)


def test_padding_is_cropped_back_exactly():
    class Echo(nn.Module):  # returns its input as 1 "class" + a check of the padded shape
        def forward(self, x):
            assert x.shape[-2] % 32 == 0 and x.shape[-1] % 32 == 0
            return x

    net = PaddedNetwork(Echo(), 32)
    for shape in [(70, 50), (5, 3), (1, 7), (64, 64)]:
        x = torch.randn(2, 1, *shape)
        assert torch.equal(net(x), x)
    # repeated reflection for pads longer than the image: a mirror, not a copy of the edge
    x = torch.arange(3.0).view(1, 1, 1, 3)
    assert reflect_pad(x, (0, 5, 0, 0)).flatten().tolist() == [0, 1, 2, 1, 0, 1, 2, 1]


def test_unknown_names_list_choices():
    with pytest.raises(InputError, match="unetplusplus"):
        build_network("segnet")
    with pytest.raises(InputError, match="resnet34"):
        build_network("fcn", "vgg16")
    with pytest.raises(InputError, match="resnet18"):
        build_network("unet", "not_an_encoder")
    with pytest.raises(InputError, match="options"):
        build_network("fcn", "resnet18", dropout=0.1)


# --- pretrained weights from a local file ---------------------------------------------------


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    torch.manual_seed(1)
    state = torchvision.models.resnet18().state_dict()  # RGB, with the ImageNet classifier
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("name", ["fcn", "unet"])
def test_pretrained_from_local_file(name, resnet18_file):
    path, saved = resnet18_file
    body = backbone_of(build_network(name, "resnet18", pretrained=str(path)))
    got = body.state_dict()
    assert got["conv1.weight"].shape == (64, 1, 7, 7)
    torch.testing.assert_close(got["conv1.weight"], saved["conv1.weight"].sum(1, keepdim=True))
    for key in ["layer4.1.conv2.weight", "layer1.0.bn1.running_mean", "bn1.weight",
                "layer3.0.downsample.0.weight"]:
        assert torch.equal(got[key], saved[key]), key
    # a fresh network without weights differs (the check above can fail)
    fresh = backbone_of(build_network(name, "resnet18")).state_dict()
    assert not torch.equal(fresh["layer4.1.conv2.weight"], saved["layer4.1.conv2.weight"])


def test_pretrained_prefixed_keys_and_more_channels(resnet18_file, tmp_path):
    path, saved = resnet18_file
    prefixed = tmp_path / "prefixed.pth"
    torch.save({f"backbone.{k}": v for k, v in saved.items() if not k.startswith("fc.")},
               prefixed)
    body = backbone_of(build_network("deeplabv3", pretrained=prefixed, in_channels=2))
    w = saved["conv1.weight"]
    expected = torch.stack([w[:, 0], w[:, 1]], dim=1) * 1.5  # smp rule: cycle, scale 3/2
    torch.testing.assert_close(body.conv1.weight, expected)
    assert torch.equal(body.layer2[0].conv1.weight, saved["layer2.0.conv1.weight"])
    body3 = backbone_of(build_network("unetplusplus", pretrained=path, in_channels=3))
    assert torch.equal(body3.conv1.weight, w)


def test_pretrained_errors(tmp_path, resnet18_file):
    missing = tmp_path / "nope.pth"
    with pytest.raises(InputError, match="nope.pth"):
        build_network("unet", pretrained=str(missing))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a state dict")
    with pytest.raises(InputError, match="garbage.pth"):
        build_network("fcn", pretrained=garbage)
    # weights of another architecture: a deeper ResNet (extra blocks) and a wider one
    r34 = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), r34)
    with pytest.raises(InputError, match="resnet34.pth"):
        build_network("fcn", "resnet18", pretrained=r34)
    path, _ = resnet18_file
    with pytest.raises(InputError, match="resnet18.pth.*shape"):
        build_network("unet", "resnet50", pretrained=path)
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"foo.weight": torch.zeros(3)}, unrelated)
    with pytest.raises(InputError, match="unrelated.pth"):
        build_network("unet", pretrained=unrelated)


@pytest.mark.parametrize("name", ["fcn", "deeplabv3"])
@pytest.mark.parametrize("stride", [8, 16, 32])
def test_basic_block_resnets_reach_the_requested_output_stride(name, stride):
    """resnet18/34 are dilated like torchvision's resnet50/101: features at 1/stride of the
    input, the same weight shapes as the undilated ResNet (pretrained files load)."""
    model = build_network(name, "resnet18", 1, 2, output_stride=stride)
    body = backbone_of(model)
    with torch.no_grad():
        features = body(torch.zeros(1, 1, 128, 96))["out"]
    assert features.shape[-2:] == (128 // stride, 96 // stride)
    assert model.multiple == stride
    plain = torchvision.models.resnet18(weights=None)
    shapes = {k: v.shape for k, v in plain.state_dict().items() if not k.startswith("fc.")}
    ours = {k: v.shape for k, v in body.state_dict().items()}
    assert {k: v for k, v in shapes.items() if k != "conv1.weight"} == \
        {k: v for k, v in ours.items() if k != "conv1.weight"}


def test_output_stride_errors():
    with pytest.raises(InputError, match="output_stride"):
        build_network("fcn", "resnet18", 1, 2, output_stride=4)
    with pytest.raises(InputError, match="output_stride"):
        build_network("deeplabv3", "resnet50", 1, 2, output_stride=16)
