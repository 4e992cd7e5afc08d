"""crf=dense/meanfield/rnn from the configs; CRF-as-RNN training through Lightning: gradients reach
the network and the CRF; fine-tuning a trained network, frozen or not."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from cryoparticle.config import compose
from cryoparticle.crf.dense import DenseCRF
from cryoparticle.crf.meanfield import MeanFieldCRF
from cryoparticle.errors import InputError
from cryoparticle.models.segmenter import Segmenter

from .conftest import disc_scene

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*(does not have many workers|LeafSpec|val_dataloader|train_dataloader"
    "|in eval mode at the start of training).*")

FACTS = {"pixel_size_a": 7.08, "particle_diameter_a": 190.0}


@pytest.mark.parametrize("option,kind", [("dense", DenseCRF), ("meanfield", MeanFieldCRF),
                                         ("rnn", MeanFieldCRF)])
def test_configs_compose_and_build_the_crf(option, kind):
    cfg = compose("train", [f"crf={option}"])
    crf = instantiate(cfg.crf)
    assert isinstance(crf, kind)
    assert dict(cfg.model.crf) == dict(cfg.crf)
    if option == "rnn":
        assert crf.learnable and any(p.requires_grad for p in crf.parameters())
        assert cfg.model.freeze_network is False and cfg.model.finetune_from is None
    elif option == "meanfield":
        assert not any(p.requires_grad for p in crf.parameters())


def loaders(size: int = 64, n: int = 4):
    scenes = [disc_scene(size, s, n_discs=4) for s in range(n)]
    train = [(img[0], mask.long()) for _, img, mask in scenes]
    val = [{"image": scenes[0][1][0], "mask": scenes[0][2].long(), "name": "m0"}]
    return DataLoader(train, batch_size=2), DataLoader(val, batch_size=1)


class GradientProbe(pl.Callback):
    """Records, after the first backward, the gradient norms of the network and the CRF."""

    def __init__(self) -> None:
        self.network = self.crf = None
        self.bn_training = None

    def on_after_backward(self, trainer, module) -> None:
        if self.network is not None:
            return
        grads = [p.grad for p in module.network.parameters()]
        self.network = sum(float(g.abs().sum()) for g in grads if g is not None)
        self.crf = {n: None if p.grad is None else float(p.grad.abs().sum())
                    for n, p in module.crf.named_parameters() if p.requires_grad}
        self.bn_training = [m.training for m in module.network.modules()
                            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def fit(model: Segmenter) -> GradientProbe:
    probe = GradientProbe()
    trainer = pl.Trainer(accelerator="cpu", fast_dev_run=True, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[probe])
    train, val = loaders()
    trainer.fit(model, train, val)
    return probe


def rnn_model(*overrides: str) -> Segmenter:
    cfg = compose("train", ["model=fcn", "crf=rnn", "model.tile_size=64",
                            "model.tile_overlap=16", *overrides])
    return instantiate(cfg.model, **FACTS)


def test_crf_as_rnn_trains_end_to_end():
    torch.manual_seed(0)
    model = rnn_model("crf.learn_bandwidths=true")
    assert isinstance(model.crf, MeanFieldCRF) and model.crf.learnable
    probe = fit(model)
    assert probe.network > 0                                  # through the CRF to the network
    assert probe.crf and all(v is not None and v > 0 for v in probe.crf.values()), probe.crf
    assert set(probe.crf) >= {"spatial_weight", "bilateral_weight", "compatibility",
                              "log_bilateral_sxy"}


def test_learned_features_option_trains():
    torch.manual_seed(0)
    probe = fit(rnn_model("crf.feature_channels=2", "crf.n_iterations=2"))
    assert probe.network > 0
    assert all(probe.crf[n] > 0 for n in probe.crf if n.startswith("embedding."))


def test_fine_tune_a_trained_network_frozen_or_not(tmp_path):
    torch.manual_seed(0)
    trained = Segmenter({"name": "fcn", "backbone": "resnet18"}, **FACTS)
    path = tmp_path / "trained.ckpt"
    torch.save({"state_dict": trained.state_dict()}, path)

    frozen = rnn_model(f"model.finetune_from={path}", "model.freeze_network=true")
    before = {k: v.clone() for k, v in frozen.network.state_dict().items()}
    assert all(torch.equal(before[k], v) for k, v in trained.network.state_dict().items())
    probe = fit(frozen)
    assert probe.network == 0 and probe.bn_training and not any(probe.bn_training)
    assert all(v is not None and v > 0 for v in probe.crf.values())
    after = frozen.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)   # weights and BN statistics

    unfrozen = rnn_model(f"model.finetune_from={path}")
    assert fit(unfrozen).network > 0

    crf = {"_target_": "cryoparticle.crf.meanfield.MeanFieldCRF", "learnable": True}
    with pytest.raises(InputError, match="another network"):
        Segmenter({"name": "deeplabv3", "backbone": "resnet18"}, crf=crf, finetune_from=path)
    with pytest.raises(InputError, match="not found"):
        Segmenter({"name": "fcn", "backbone": "resnet18"}, crf=crf,
                  finetune_from=tmp_path / "missing.ckpt")
