"""The code paths that differ on GPUs, exercised on the CPU where they can be: the GPU trainer
configs (precision, sync_batchnorm) compose and build; mixed-precision training and inference
run (bf16 autocast on the CPU, the path 16-mixed takes on a GPU); batch norm becomes
SyncBatchNorm under trainer=ddp; the CRF's tensors all move with ``.to(device, dtype)``.
What only a GPU run confirms is listed in the README ("What the CPU tests cannot confirm")."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cryoparticle.config import compose, crf_params
from cryoparticle.crf.meanfield import MeanFieldCRF
from cryoparticle.training import run

FDR = ["debug=fdr", "data.crop_size=64", "data.eval_micrograph_size=80",
       "data.n_val_micrographs=1", "data.n_test_micrographs=1", "data.batch_size=2",
       "print_config=false", "logger=csv", "callbacks=none",
       "model.tile_size=96", "model.tile_overlap=16"]  # one tile per 80 px micrograph


@pytest.mark.parametrize("trainer, precision", [("gpu", "16-mixed"), ("ddp", "16-mixed")])
def test_gpu_trainer_configs_compose_with_mixed_precision(trainer, precision):
    cfg = compose("train", [f"trainer={trainer}"])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == precision
    if trainer == "ddp":
        assert cfg.trainer.strategy == "ddp" and cfg.trainer.sync_batchnorm is True
    predict = compose("predict", ["ckpt_path=a", "input=b", "output_dir=c",
                                  "trainer.precision=16-mixed", "trainer.accelerator=gpu"])
    assert predict.trainer.precision == "16-mixed"


def test_ddp_config_turns_every_batch_norm_into_sync_batch_norm(tmp_path):
    """trainer=ddp's sync_batchnorm (on the CPU, one process): Lightning's layer sync converts
    every BatchNorm of the network, the converted network keeps its weights and, in eval mode,
    its outputs."""
    from hydra.utils import instantiate

    cfg = compose("train", ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=1",
                            "trainer.precision=32", f"paths.output_dir={tmp_path}"])
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    sync = trainer.strategy._layer_sync
    assert sync is not None
    model = instantiate(cfg.model, pixel_size_a=7.08, particle_diameter_a=190.0).eval()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert n_bn > 0
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        before = model(x)
    synced = sync.apply(model)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == n_bn
    assert not any(type(m) is nn.BatchNorm2d for m in synced.modules())
    with torch.no_grad():
        torch.testing.assert_close(synced(x), before)


def test_mixed_precision_training_with_a_learnable_crf_on_cpu(tmp_path):
    """trainer=gpu's settings with bf16 autocast on the CPU: a fast_dev_run of DeepLabv3 +
    CRF-as-RNN trains, validates and tests with finite metrics."""
    cfg = compose("train", ["trainer=gpu", "trainer.accelerator=cpu",
                            "trainer.precision=bf16-mixed", "model=deeplabv3", "crf=rnn",
                            f"paths.output_dir={tmp_path}", *FDR])
    metrics, _ = run(cfg)
    for key in ("test/iou", "test/loss"):
        assert key in metrics and math.isfinite(metrics[key]), metrics


def test_crf_tensors_move_with_the_module():
    """Every tensor the CRF-as-RNN layer uses is a parameter or buffer: ``.to(dtype)`` (as
    ``.to(cuda)``) moves all of them, and the layer then computes in that dtype, agreeing
    with float32."""
    torch.manual_seed(0)
    crf = MeanFieldCRF(**crf_params("rnn"), num_classes=2, learnable=True, feature_channels=2)
    stray = [name for module in crf.modules() for name, value in vars(module).items()
             if isinstance(value, torch.Tensor)]
    assert stray == []  # no tensor attribute outside parameters and buffers
    logits, image = torch.randn(1, 2, 48, 40), torch.randn(1, 1, 48, 40)
    with torch.no_grad():
        single = crf(logits, image)
        crf64 = crf.to(torch.float64)
        assert {p.dtype for p in crf64.parameters()} == {torch.float64}
        double = crf64(logits.double(), image.double())
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), single, atol=1e-4, rtol=1e-4)
