"""Shipping checkpoints: export (slim, half precision), resolution of the packaged model."""

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from cryoparticle.errors import InputError
from cryoparticle.models import packaged
from cryoparticle.models.segmenter import Segmenter, load_segmenter


NETWORK = {"name": "unet", "backbone": "resnet18", "encoder_depth": 3,
           "decoder_channels": [16, 8, 8]}


def _train(folder: Path, seed: int, network: dict | None = None) -> Path:
    """A Lightning checkpoint of a small U-Net after two optimizer steps (optimizer state in)."""
    pl.seed_everything(seed, verbose=False)
    seg = Segmenter(network or NETWORK, pixel_size_a=7.08,
                    particle_diameter_a=190.0, extraction={"min_size_fraction": 0.05})
    data = [(torch.randn(1, 32, 32), torch.randint(0, 2, (32, 32))) for _ in range(4)]
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(seg, torch.utils.data.DataLoader(data, batch_size=2))
    path = folder / f"trained_{seed}.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("ckpt"), 0)


@pytest.fixture(scope="module")
def trained_other(tmp_path_factory) -> Path:
    """The same network trained from another seed (an ensemble member)."""
    return _train(tmp_path_factory.mktemp("ckpt"), 1)


def test_export_is_slim_half_precision_and_predicts_as_trained(trained, tmp_path):
    out = packaged.export_checkpoint(trained, tmp_path / "general.ckpt",
                                     extra={"estimate_diameter": True})
    raw = torch.load(out, map_location="cpu", weights_only=True)
    assert "optimizer_states" not in raw and "callbacks" not in raw
    assert all(v.dtype == torch.float16 for v in raw["state_dict"].values()
               if v.is_floating_point())
    assert raw["cryoparticle"]["export"] == {"half": True, "int8": False,
                                             "estimate_diameter": True}
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
    packaged.main(["export", str(trained), str(target), "--relative-threshold", "0.5",
                   "--peak-quantile", "0.75"])
    raw = torch.load(target, map_location="cpu", weights_only=True)
    assert {k: raw["cryoparticle"]["export"][k] for k in ("relative_threshold",
                                                         "peak_quantile")} == \
        {"relative_threshold": 0.5, "peak_quantile": 0.75}
    with pytest.raises(SystemExit):
        packaged.main(["export", str(trained), str(target), "--relative-threshold", "1.5"])
    assert "relative_threshold=1.5" in capsys.readouterr().err
    # the API checks what predict.py will read, before anything is written
    target.unlink()
    for bad in ({"diameter_threshold": -0.1}, {"core_fraction": 0.0}, {"core_fraction": 1.5},
                {"peak_quantile": 2.0}):
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


def test_int8_weights_come_back_within_half_a_step_and_take_half_float16s_bytes(trained,
                                                                                tmp_path):
    half = packaged.export_checkpoint(trained, tmp_path / "half.ckpt")
    small = packaged.export_checkpoint(trained, tmp_path / "int8.ckpt", int8=True)
    raw = torch.load(small, map_location="cpu", weights_only=True)
    assert raw["cryoparticle"]["export"]["int8"] is True
    matrices = [k for k, v in raw["state_dict"].items() if v.dtype == torch.int8]
    assert matrices and set(matrices) == set(raw["weight_scales"])
    assert small.stat().st_size < 0.6 * half.stat().st_size
    original = torch.load(trained, map_location="cpu", weights_only=True)["state_dict"]
    decoded = load_segmenter(small).state_dict()
    for key in matrices:   # each row within half its step (its largest weight / 127) of itself
        rows = original[key].reshape(original[key].shape[0], -1)
        step = rows.abs().amax(dim=1, keepdim=True) / 127
        error = (decoded[key].reshape(rows.shape) - rows).abs()
        assert bool((error <= step / 2 + 1e-7).all()), key
    # re-exporting the int8 export stores the same integers (the rows' maxima are kept)
    again = torch.load(packaged.export_checkpoint(small, tmp_path / "again.ckpt", int8=True),
                       map_location="cpu", weights_only=True)
    assert all(torch.equal(again["state_dict"][k], raw["state_dict"][k]) for k in matrices)


def test_an_ensemble_export_picks_with_the_mean_of_its_members_probabilities(
        trained, trained_other, tmp_path):
    """``export --member``: predict's network averages the members' class probabilities, the
    first member's settings are the ensemble's; ``load_segmenter`` and ``finetune_from`` take
    the first member; another network as a member is a one-line error naming it."""
    from cryoparticle.models.inference import EnsembleNetwork, load_inference_segmenter
    from cryoparticle.models.segmenter import load_network_weights

    ensemble = packaged.export_checkpoint(trained, tmp_path / "ens.ckpt", int8=True,
                                          members=[trained_other], threshold=0.3)
    first = packaged.export_checkpoint(trained, tmp_path / "a.ckpt", int8=True)
    second = packaged.export_checkpoint(trained_other, tmp_path / "b.ckpt", int8=True)
    picker = load_inference_segmenter(ensemble)
    assert isinstance(picker.network, EnsembleNetwork) and len(picker.network.members) == 2
    assert picker.inference_facts()["picking_threshold"] == 0.3
    x = torch.randn(2, 1, 48, 64)
    with torch.no_grad():
        mean = (load_inference_segmenter(first)(x).softmax(1)
                + load_inference_segmenter(second)(x).softmax(1)).numpy() / 2
        got = picker(x).softmax(1).numpy()
    assert got.shape == (2, 2, 48, 64)
    assert abs(got - mean).max() < 1e-5
    assert abs(got - load_inference_segmenter(first)(x).softmax(1).detach().numpy()).max() > 1e-3
    raw = torch.load(ensemble, map_location="cpu", weights_only=True)
    assert raw["cryoparticle"]["export"]["members"] == [trained_other.name]
    assert ensemble.stat().st_size < 2.2 * first.stat().st_size
    # the Lightning loader and fine-tuning read the first member
    lone = load_segmenter(first).state_dict()
    assert all(torch.equal(v, lone[k]) for k, v in load_segmenter(ensemble).state_dict().items())
    net = load_segmenter(trained_other).network
    load_network_weights(net, ensemble)
    assert all(torch.equal(v, lone["network." + k]) for k, v in net.state_dict().items())
    # re-exporting keeps the members
    again = packaged.export_checkpoint(ensemble, tmp_path / "again.ckpt", int8=True)
    assert len(load_inference_segmenter(again).network.members) == 2
    other = _train(tmp_path, 2, {**NETWORK, "decoder_channels": [8, 8, 8]})
    with pytest.raises(InputError, match=f"{other.name}: an ensemble member must hold"):
        packaged.export_checkpoint(trained, tmp_path / "bad.ckpt", members=[other])
    assert not (tmp_path / "bad.ckpt").exists()


def test_malformed_compact_weights_are_one_line_errors(trained, tmp_path):
    raw = torch.load(packaged.export_checkpoint(trained, tmp_path / "int8.ckpt", int8=True),
                     map_location="cpu", weights_only=True)
    key = next(iter(raw["weight_scales"]))
    raw["weight_scales"][key] = raw["weight_scales"][key][:-1]
    torch.save(raw, tmp_path / "cut.ckpt")
    with pytest.raises(InputError, match="cut.ckpt: checkpoint: malformed compact weights"):
        load_segmenter(tmp_path / "cut.ckpt")


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
