"""Shipping checkpoints: export (slim, half precision), resolution of the packaged model."""

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from cryoparticle.errors import InputError
from cryoparticle.models import packaged
from cryoparticle.models.segmenter import Segmenter, load_segmenter


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A Lightning checkpoint of a small U-Net after two optimizer steps (optimizer state in)."""
    pl.seed_everything(0, verbose=False)
    seg = Segmenter({"name": "unet", "backbone": "resnet18", "encoder_depth": 3,
                     "decoder_channels": [16, 8, 8]}, pixel_size_a=7.08,
                    particle_diameter_a=190.0, extraction={"min_size_fraction": 0.05})
    data = [(torch.randn(1, 32, 32), torch.randint(0, 2, (32, 32))) for _ in range(4)]
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(seg, torch.utils.data.DataLoader(data, batch_size=2))
    path = tmp_path_factory.mktemp("ckpt") / "trained.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_export_is_slim_half_precision_and_predicts_as_trained(trained, tmp_path):
    out = packaged.export_checkpoint(trained, tmp_path / "general.ckpt",
                                     extra={"estimate_diameter": True})
    raw = torch.load(out, map_location="cpu", weights_only=True)
    assert "optimizer_states" not in raw and "callbacks" not in raw
    assert all(v.dtype == torch.float16 for v in raw["state_dict"].values()
               if v.is_floating_point())
    assert raw["cryoparticle"]["export"] == {"half": True, "estimate_diameter": True}
    assert out.stat().st_size < 0.5 * trained.stat().st_size
    full, slim = load_segmenter(trained).eval(), load_segmenter(out).eval()
    assert next(slim.parameters()).dtype == torch.float32  # cast back on load
    assert slim.inference_facts()["extraction"] == {"min_size_fraction": 0.05}
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        a, b = full.predict_proba(x), slim.predict_proba(x)
    assert torch.allclose(a, b, atol=2e-2)  # float16 weights: probabilities within 0.02
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


def test_export_cli_and_bad_sources(trained, tmp_path, capsys):
    target = tmp_path / "out.ckpt"
    assert packaged.main(["export", str(trained), str(target), "--estimate-diameter"]) == target
    assert "MB" in capsys.readouterr().out
    raw = torch.load(target, map_location="cpu", weights_only=True)
    assert raw["cryoparticle"]["export"]["estimate_diameter"] is True
    packaged.main(["export", str(trained), str(target), "--threshold", "0.35"])
    assert load_segmenter(target).inference_facts()["picking_threshold"] == 0.35
    # extraction options calibrated after training replace the trained ones, merged
    packaged.main(["export", str(trained), str(target), "--extraction", "min_size_fraction=0.2",
                   "--extraction", "split_touching=false"])
    facts = load_segmenter(target).inference_facts()
    assert facts["extraction"] == {"min_size_fraction": 0.2, "split_touching": False}
    raw = torch.load(target, map_location="cpu", weights_only=True)
    assert raw["cryoparticle"]["export"]["trained_extraction"] == {"min_size_fraction": 0.05}
    # re-exporting the export with another threshold keeps what training stored
    again = tmp_path / "again.ckpt"
    packaged.main(["export", str(target), str(again), "--threshold", "0.2"])
    raw = torch.load(again, map_location="cpu", weights_only=True)
    assert raw["cryoparticle"]["export"]["trained_extraction"] == {"min_size_fraction": 0.05}
    assert raw["cryoparticle"]["export"]["trained_threshold"] == 0.5
    assert raw["cryoparticle"]["extraction"] == {"min_size_fraction": 0.2, "split_touching": False}
    packaged.main(["export", str(trained), str(target), "--diameter-threshold", "0.5"])
    raw = torch.load(target, map_location="cpu", weights_only=True)
    assert raw["cryoparticle"]["export"]["diameter_threshold"] == 0.5
    with pytest.raises(SystemExit):
        packaged.main(["export", str(trained), str(target), "--diameter-threshold", "2"])
    assert "diameter_threshold=2.0" in capsys.readouterr().err
    # the API checks what predict.py will read, before anything is written
    target.unlink()
    for bad in ({"diameter_threshold": -0.1}, {"core_fraction": 0.0}, {"core_fraction": 1.5}):
        with pytest.raises(InputError, match=next(iter(bad))):
            packaged.export_checkpoint(trained, target, extra=bad)
        assert not target.exists()
    for bad, message in [("min_size_fraction", "KEY=VALUE"), ("min_size_fraction=big", "number"),
                         ("no_such_option=1", "unknown option"),
                         ("min_size_fraction=-1", "min_size_fraction")]:
        with pytest.raises(SystemExit) as exit_info:
            packaged.main(["export", str(trained), str(target), "--extraction", bad])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err, bad
    with pytest.raises(InputError, match="threshold"):
        packaged.export_checkpoint(trained, target, threshold=1.5)
    with pytest.raises(InputError, match="checkpoint not found"):
        packaged.export_checkpoint(tmp_path / "missing.ckpt", target)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.ckpt: not a readable checkpoint"):
        packaged.export_checkpoint(tmp_path / "junk.ckpt", target)
    with pytest.raises(SystemExit) as exit_info:
        packaged.main(["export", str(tmp_path / "missing.ckpt"), str(target)])
    assert exit_info.value.code == 2
    assert "missing.ckpt: checkpoint not found" in capsys.readouterr().err


def test_packaged_names_resolve_and_a_missing_file_is_one_line(monkeypatch, tmp_path):
    assert packaged.resolve_checkpoint("my.ckpt") == Path("my.ckpt")
    with pytest.raises(InputError, match="not a packaged model"):
        packaged.packaged_checkpoint("other")
    monkeypatch.setitem(packaged.PACKAGED, "general", "no_such_file.ckpt")
    with pytest.raises(InputError, match="packaged 'general' model is missing"):
        packaged.resolve_checkpoint(None)


def test_the_shipped_general_model_loads():
    try:
        path = packaged.packaged_checkpoint("general")
    except InputError:
        pytest.skip("the general model is not in this checkout (cryoparticle/models/weights/)")
    assert path.stat().st_size < 25e6
    seg = load_segmenter(path)
    facts = seg.inference_facts()
    assert facts["pixel_size_a"] == pytest.approx(7.08)
    assert "robust" in facts["normalisation"]


def test_training_starts_from_the_general_model_with_model_finetune_from():
    """``train.py model.finetune_from=general`` (any model config, no CRF needed): the network
    starts from the packaged weights (float16 → float32), every tensor equal; another
    architecture is a one-line error naming the file."""
    from hydra.utils import instantiate

    from cryoparticle.config import compose

    try:
        shipped = load_segmenter(packaged.packaged_checkpoint("general")).network.state_dict()
    except InputError:
        pytest.skip("the general model is not in this checkout (cryoparticle/models/weights/)")
    model = instantiate(compose("train", ["model.finetune_from=general"]).model)
    state = model.network.state_dict()
    assert state.keys() == shipped.keys()
    for key, value in shipped.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key
    assert compose("train").model.finetune_from is None
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException, match="general.ckpt: finetune_from: holds another"):
        instantiate(compose("train", ["model=deeplabv3", "model.finetune_from=general"]).model)
