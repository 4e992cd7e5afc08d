"""Robust normalisation: borders, carbon and gradients do not set the statistics; the same
normalisation in training, in the checkpoint and in prediction."""

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from cryoparticle.data.datamodules import SyntheticDataModule
from cryoparticle.data.preprocess import (NORMALISATION, Normalisation, normalise,
                                          smooth_background, standardise)
from cryoparticle.errors import InputError
from cryoparticle.io.mrc import write_mrc
from cryoparticle.picking.predict import MicrographFiles, build_settings

ROBUST = {"method": "robust", "clip_percentiles": [0.5, 99.5], "background_sigma_a": 700.0}


def _noise(shape=(256, 256), seed=0, loc=5.0, scale=2.0):
    return np.random.default_rng(seed).normal(loc, scale, shape).astype(np.float32)


def test_a_constant_band_does_not_change_the_statistics():
    x = _noise()
    banded = x.copy()
    banded[:, :60] = 250.0  # a padding border: a quarter of the micrograph, far off scale
    for kwargs in ({}, {"background_sigma_a": 700.0, "pixel_size_a": 7.08}):
        a, b = normalise(x, **kwargs), normalise(banded, **kwargs)
        assert np.abs(a[:, 62:] - b[:, 62:]).max() < 0.02
        assert np.all(b[:, :59] == 0)  # the band itself is set to 0
    # the plain standardisation is ruined by the band
    assert np.abs(standardise(x)[:, 62:] - standardise(banded)[:, 62:]).max() > 1


def test_robust_statistics_are_unit_scale_and_ignore_a_bright_region():
    x = _noise(seed=1)
    out = normalise(x)
    assert abs(out.mean()) < 0.02 and out.std() == pytest.approx(1.0, abs=0.03)
    carbon = x.copy()
    carbon[:40] += 30.0  # a noisy bright region (not flat): clipped, and out of the centre/scale
    out2 = normalise(carbon)
    # the same centre and scale (the clip level differs: 99.5 % now falls in the carbon)
    assert np.abs(np.clip(out2[40:], -2.5, 2.5) - np.clip(out[40:], -2.5, 2.5)).max() < 0.1
    assert (out2 >= out2.max() - 1e-4).mean() >= 0.004  # the top 0.5 % clipped to one value


def test_background_removal_takes_out_an_ice_gradient():
    x = _noise(seed=2)
    ramp = np.linspace(0, 40, 256, dtype=np.float32)[None, :] * np.ones((256, 1), np.float32)
    a = normalise(x, background_sigma_a=354.0, pixel_size_a=7.08)  # 50 px
    b = normalise(x + ramp, background_sigma_a=354.0, pixel_size_a=7.08)
    assert np.abs(a - b)[20:-20, 20:-20].max() < 0.1
    assert np.abs(normalise(x + ramp) - normalise(x)).max() > 1  # without it, the ramp stays


def test_smooth_background_of_a_constant_is_that_constant():
    bg = smooth_background(np.full((100, 80), 3.5, np.float32), 20.0)
    assert bg.shape == (100, 80) and np.allclose(bg, 3.5, atol=1e-5)


def test_spec_round_trip_and_old_checkpoints():
    norm = Normalisation.from_spec(ROBUST)
    assert Normalisation.from_spec(norm.spec) == norm
    assert json.loads(norm.spec)["background_sigma_a"] == 700.0
    old = Normalisation.from_spec(NORMALISATION)  # what checkpoints before this one hold
    assert old.method == "standardise" and old.spec == NORMALISATION
    x = _noise(seed=3)
    assert np.array_equal(old(x), standardise(x))
    for bad in ("zscore", {"method": "robust", "clip_percentiles": [99, 1]},
                {"method": "robust", "background_sigma_a": -1}, {"methd": "robust"}):
        with pytest.raises(InputError):
            Normalisation.from_spec(bad)


def test_training_crops_and_eval_micrographs_use_the_configured_normalisation(simulator):
    dm = SyntheticDataModule(simulator, crop_size=64, train_samples_per_epoch=2, batch_size=2,
                             n_val_micrographs=1, n_test_micrographs=1, eval_micrograph_size=96,
                             seed=3, normalisation=OmegaConf.create(ROBUST))
    assert dm.normalisation == Normalisation.from_spec(ROBUST).spec  # stored in checkpoints
    dm.setup("fit")
    image, _ = dm.train_dataset[1]
    raw = simulator.simulate((3, 0, 1), 64).image
    assert np.allclose(image[0].numpy(), normalise(raw, **ROBUST, pixel_size_a=7.08))
    val = dm.val_dataset.micrographs[0].image
    raw_val = simulator.simulate((4, 0), 96).image
    assert np.allclose(val, normalise(raw_val, **ROBUST, pixel_size_a=7.08))


def test_prediction_applies_the_checkpoint_normalisation(tmp_path: Path):
    image = _noise((128, 128), seed=4)
    image[:, :20] = 0.0  # a padded border
    path = tmp_path / "m.mrc"
    write_mrc(path, image, 7.08)
    cfg = {"output_dir": str(tmp_path / "out")}
    for spec in (json.dumps(ROBUST), NORMALISATION):
        facts = {"pixel_size_a": 7.08, "particle_diameter_a": 190.0, "normalisation": spec}
        settings = build_settings(cfg, facts, tmp_path / "x.ckpt")
        item = MicrographFiles([path], ["m"], settings)[0]
        expected = Normalisation.from_spec(spec)(image, 7.08)
        assert item["error"] is None and np.allclose(item["image"][0].numpy(), expected)
    with pytest.raises(InputError, match="x.ckpt"):
        build_settings(cfg, {"pixel_size_a": 7.08, "particle_diameter_a": 190.0,
                             "normalisation": "zscore"}, tmp_path / "x.ckpt")


@pytest.mark.slow
def test_general_training_run_stores_the_robust_normalisation(tmp_path: Path):
    import torch

    from cryoparticle.config import compose
    from cryoparticle.training import run

    cfg = compose("train", ["data=synthetic_general", "debug=tiny", "print_config=false",
                            f"paths.output_dir={tmp_path}", "logger=csv", "test=false"])
    _, best = run(cfg)
    facts = torch.load(best, map_location="cpu", weights_only=False)["cryoparticle"]
    expected = Normalisation.from_spec(dict(cfg.data.normalisation))
    assert facts["normalisation"] == expected.spec
    settings = build_settings({"output_dir": str(tmp_path / "picks")}, facts, Path(best))
    assert settings.normalisation == expected  # prediction applies what training applied
