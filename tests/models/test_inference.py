"""The Lightning-free loader of a Segmenter checkpoint (what predict.py picks with): the same
logits and facts as ``load_segmenter``, the defaults of ``Segmenter.__init__``, and one-line
errors for checkpoints of another layout."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch

from cryoparticle.errors import InputError
from cryoparticle.models.inference import (
    INFERENCE_DEFAULTS,
    InferenceSegmenter,
    load_inference_segmenter,
)
from cryoparticle.models.segmenter import Segmenter, load_segmenter

CRF = {"_target_": "cryoparticle.crf.meanfield.MeanFieldCRF", "n_iterations": 2,
       "learnable": True}


def _save(segmenter: Segmenter, path) -> None:
    """A checkpoint as ``Trainer.save_checkpoint`` writes the parts that loading reads."""
    checkpoint = {"state_dict": segmenter.state_dict(),
                  "hyper_parameters": dict(segmenter.hparams),
                  "cryoparticle": segmenter.inference_facts(),
                  "pytorch-lightning_version": "2.2.0"}
    torch.save(checkpoint, path)


@pytest.mark.parametrize("crf", [None, CRF])
def test_same_logits_and_facts_as_the_lightning_segmenter(tmp_path, crf):
    torch.manual_seed(0)
    trained = Segmenter({"name": "unet", "backbone": "resnet18",
                         "decoder_channels": [16, 16, 8, 8, 8]}, crf=crf, tile_size=128,
                        tile_overlap=16, pixel_size_a=7.08, particle_diameter_a=190.0,
                        picking_threshold=0.3, extraction={"min_size_fraction": 0.2})
    if crf is not None:  # learnt CRF weights, not the initial ones, must be loaded
        with torch.no_grad():
            for p in trained.crf.parameters():
                p.add_(0.25)
    path = tmp_path / "model.ckpt"
    _save(trained, path)
    light = load_inference_segmenter(path)
    reference = load_segmenter(path).eval()
    assert isinstance(light, InferenceSegmenter) and not light.training
    image = torch.randn(2, 1, 96, 64)
    with torch.no_grad():
        torch.testing.assert_close(light(image), reference(image))
    assert light.inference_facts() == reference.inference_facts()
    assert light.hparams.tile_size == 128 and light.hparams.network["name"] == "unet"
    assert (light.crf is None) == (crf is None)


def test_defaults_are_the_segmenters():
    signature = inspect.signature(Segmenter.__init__).parameters
    assert INFERENCE_DEFAULTS == {k: signature[k].default for k in INFERENCE_DEFAULTS}


def test_checkpoints_of_another_layout_are_one_line_errors(tmp_path):
    trained = Segmenter({"name": "unet", "backbone": "resnet18"})
    good = {"state_dict": trained.state_dict(), "hyper_parameters": dict(trained.hparams)}
    renamed = {**good, "state_dict": {k.replace("network.", "net.", 1): v
                                      for k, v in good["state_dict"].items()}}
    other_net = {**good, "hyper_parameters": {**good["hyper_parameters"],
                                              "network": {"name": "unet",
                                                          "backbone": "resnet34"}}}
    cases = {"renamed.ckpt": (renamed, "unexpected weights: net."),
             "other.ckpt": (other_net, "cannot load it into a Segmenter (RuntimeError"),
             "weights.pt": ({"conv.weight": torch.zeros(1)}, "not a cryoparticle Segmenter"),
             "unknown.ckpt": ({**good, "hyper_parameters": {"network": {"name": "nope"}}},
                              "cannot load it into a Segmenter")}
    for name, (content, expected) in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(InputError) as info:
            load_inference_segmenter(tmp_path / name)
        message = str(info.value)
        assert expected in message and name in message and "\n" not in message, message


def test_loading_for_picking_imports_neither_lightning_nor_torchmetrics():
    code = ("import sys\nfrom cryoparticle.models.packaged import packaged_checkpoint\n"
            "from cryoparticle.models.inference import load_inference_segmenter\n"
            "load_inference_segmenter(packaged_checkpoint())\n"
            "import cryoparticle.picking.predict\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'pytorch_lightning', 'lightning', 'lightning_fabric', 'torchmetrics'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
