"""data=cryoppp: layouts, pairing, scaling, targets, borders, split and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from cryoparticle.config import compose, instantiate
from cryoparticle.data.cryoppp_module import CryoPPPDataModule
from cryoparticle.errors import InputError
from cryoparticle.io.coords import write_cryoppp_csv
from cryoparticle.io.mrc import write_mask_png, write_mrc
from cryoparticle.data.masks import disc_mask

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _particles(xy, d) -> pd.DataFrame:
    xy = np.asarray(xy, float)
    return pd.DataFrame({"micrograph": "m", "x": xy[:, 0], "y": xy[:, 1], "diameter": float(d),
                         "score": 1.0})


def _micrograph(size: int, xy, radius: float, seed: int, pad: int = 0) -> np.ndarray:
    """Noise texture with dark particles; ``pad`` rows of edge-replicated padding on top."""
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.normal(size=(size, size)), 1.5)
    rows, cols = np.mgrid[:size, :size]
    for x, y in xy:
        image[np.hypot(cols - x, rows - y) <= radius] -= 1.5
    if pad:
        image[:pad] = image[pad]
    return image.astype(np.float32)


def _positions(seed: int, size: int, n: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(24, size - 24, (n, 2)).round()


def _cryoppp_folder(root: Path, n: int = 5, size: int = 256, pad: int = 0) -> Path:
    """The CryoPPP archive layout: MRC at 1.77 Å/px + ground_truth/particle_coordinates CSVs."""
    for i in range(n):
        xy = _positions(i, size)
        write_mrc(root / "micrographs" / f"mic_{i:02d}.mrc",
                  _micrograph(size, xy, 8, i, pad), 1.77)
        write_cryoppp_csv(root / "ground_truth" / "particle_coordinates" / f"mic_{i:02d}.csv",
                          _particles(xy, 24).assign(micrograph=f"mic_{i:02d}"))
    return root


def _module(datasets, tmp_path: Path, **kw) -> CryoPPPDataModule:
    kw.setdefault("pixel_size_a", 3.54)
    kw.setdefault("particle_diameter_a", 42.48)
    kw.setdefault("split_file", tmp_path / "run" / "split.json")
    kw.setdefault("crop_size", 32)
    kw.setdefault("train_samples_per_epoch", 4)
    kw.setdefault("batch_size", 2)
    return CryoPPPDataModule(datasets, **kw)


# --------------------------------------------------------------------------- layouts


def test_cryoppp_layout_binned_with_split_file(tmp_path):
    root = _cryoppp_folder(tmp_path / "10017")
    (root / "micrographs" / "unlabelled.mrc").write_bytes(
        (root / "micrographs" / "mic_00.mrc").read_bytes())
    dm = _module([{"root": root, "empiar_id": 10017}], tmp_path,
                 split={"fractions": [0.6, 0.2, 0.2], "seed": 3})
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 3, "val": 1, "test": 1}
    assert dm.unpaired == {"empiar-10017": [str(root / "micrographs" / "unlabelled.mrc")]}
    dm.setup("fit")
    record = json.loads((tmp_path / "run" / "split.json").read_text())
    assert record["splits"] == dm.splits and record["datasets"][0]["empiar_id"] == 10017
    assert set(sum(record["splits"].values(), [])) == {f"empiar-10017/mic_{i:02d}"
                                                      for i in range(5)}
    mic = dm.val_dataset.micrographs[0]
    assert mic.image.shape == (128, 128) and mic.pixel_size_a == pytest.approx(3.54)
    i = int(mic.name[-2:])
    xy = _positions(i, 256) / 2
    np.testing.assert_allclose(mic.particles[["x", "y"]].to_numpy(), xy)
    assert (mic.particles["diameter"] == 12).all()
    assert mic.mask.tolist() == disc_mask((128, 128), _particles(xy, 12)).tolist()
    image, mask = next(iter(dm.train_dataloader()))
    assert image.shape == (2, 1, 32, 32) and mask.shape == (2, 32, 32)


def test_same_seed_same_split_and_a_changed_split_is_refused(tmp_path):
    root = _cryoppp_folder(tmp_path / "d", n=6)
    a = _module([{"root": root}], tmp_path, split={"seed": 1})
    b = _module([{"root": root}], tmp_path, split={"seed": 1})
    assert a.splits == b.splits
    a.trainer = SimpleNamespace(default_root_dir=str(tmp_path / "runA"), world_size=1)
    a.split_file = None
    a.setup("test")
    assert (tmp_path / "runA" / "split.json").is_file()
    leaked = a.splits["train"][0]                # a training micrograph of run A as test
    other = _module([{"root": root}], tmp_path, split={"test": [leaked]},
                    split_file=tmp_path / "runA" / "split.json")
    with pytest.raises(InputError, match="different split"):
        other.setup("test")


def test_explicit_lists_and_a_micrograph_in_two_splits(tmp_path):
    root = _cryoppp_folder(tmp_path / "d", n=4)
    dm = _module([{"root": root, "name": "beta"}], tmp_path,
                 split={"val": ["mic_01"], "test": ["beta/mic_02"]})
    assert dm.splits == {"train": ["beta/mic_00", "beta/mic_03"], "val": ["beta/mic_01"],
                         "test": ["beta/mic_02"]}
    with pytest.raises(InputError, match="mic_01.*listed in two splits"):
        _module([{"root": root}], tmp_path, split={"val": ["mic_01"], "test": ["mic_01"]})
    with pytest.raises(InputError, match="mic_09.*in no dataset"):
        _module([{"root": root}], tmp_path, split={"test": ["mic_09"]})


def test_png_with_coarser_masks_scaled_by_diameter(tmp_path):
    """The shared 10059/10947 layout: 128² PNGs, 32² masks (4× coarser), pixel size unknown:
    particle_diameter_px scales them to the training diameter."""
    root = tmp_path / "png"
    for i in range(3):
        xy = (_positions(10 + i, 128, 4) // 4) * 4 + 2
        image = _micrograph(128, xy, 6, i)
        grey = np.clip((image - image.min()) / np.ptp(image) * 255, 0, 255).astype(np.uint8)
        (root / "micrographs").mkdir(parents=True, exist_ok=True)
        Image.fromarray(grey).save(root / "micrographs" / f"s_{i}.png")
        coarse = disc_mask((32, 32), _particles((xy - 1.5) / 4, 24 / 4))
        write_mask_png(root / "masks" / f"s_{i}_mask.png", coarse)
    dm = _module([{"root": root, "particle_diameter_px": 24}], tmp_path,
                 particle_diameter_a=42.48, split={"fractions": [1, 1, 1]})
    dm.setup("test")
    mic = dm.test_dataset.micrographs[0]
    # 24 px particles → 12 px at training scale (42.48 Å at 3.54 Å/px): binned 2×
    assert mic.image.shape == (64, 64) and mic.pixel_size_a == pytest.approx(3.54)
    assert len(mic.particles) == 4  # centres recovered from the coarse mask


def test_cryosegnet_layout_and_border_ignored(tmp_path):
    root = tmp_path / "seg"
    for i in range(3):
        xy = _positions(20 + i, 200, 4) + [0, 20]
        image = _micrograph(200, xy.clip(0, 180), 6, i, pad=30)
        grey = np.clip((image - image.min()) / np.ptp(image) * 255, 0, 255).astype(np.uint8)
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(grey).save(root / "images" / f"m{i}.png")
        write_mask_png(root / "masks" / f"m{i}.png", disc_mask((200, 200), _particles(xy, 16)))
    dm = _module([{"root": root, "pixel_size_a": 3.54}], tmp_path,
                 split={"fractions": [1, 1, 1]}, border={"margin_px": 4})
    dm.setup("test")
    mic = dm.test_dataset.micrographs[0]
    assert (mic.mask[:34] == 255).all() and (mic.mask[34:] != 255).all()
    dm_off = _module([{"root": root, "pixel_size_a": 3.54}], tmp_path,
                     split={"fractions": [1, 1, 1]}, border={"enabled": False},
                     split_file=tmp_path / "run2" / "split.json")
    dm_off.setup("test")
    assert not (dm_off.test_dataset.micrographs[0].mask == 255).any()


@pytest.mark.parametrize("kind", ["disc", "refined"])
def test_training_targets(tmp_path, kind):
    root = _cryoppp_folder(tmp_path / "d", n=3)
    dm = _module([{"root": root}], tmp_path, split={"fractions": [1, 1, 1]},
                 target={"kind": kind, "ring_px": 2, "far_ignore_px": 20})
    dm.setup("fit")
    train = dm.train_dataset.micrographs[0]
    val = dm.val_dataset.micrographs[0]
    assert set(np.unique(train.mask)) == {0, 1, 255}
    assert 255 not in np.unique(val.mask)                  # evaluation keeps plain discs
    discs = disc_mask(train.mask.shape, train.particles).astype(bool)
    assert not ((train.mask == 1) & ~discs).any()
    if kind == "refined":
        assert (train.mask == 1).sum() < 0.8 * discs.sum()


def test_a_dataset_target_overrides_the_module_target(tmp_path):
    """Cores for one dataset (its discs' rims ignored), refined shapes for the other."""
    crowded = _cryoppp_folder(tmp_path / "crowded", n=3)
    isolated = _cryoppp_folder(tmp_path / "isolated", n=3)
    dm = _module([{"root": crowded, "name": "crowded", "target": {"kind": "core"}},
                  {"root": isolated, "name": "isolated"}], tmp_path,
                 split={"fractions": [1, 0, 0]}, target={"kind": "refined"})
    core = dm.load("crowded/mic_00", train=True)
    refined = dm.load("isolated/mic_00", train=True)
    discs = disc_mask(core.mask.shape, core.particles).astype(bool)
    cores = disc_mask(core.mask.shape, core.particles.assign(
        diameter=core.particles["diameter"] * 0.5)).astype(bool)
    assert ((core.mask == 1) == cores).all()                       # the dataset's own kind
    assert ((core.mask == 255) == (discs & ~cores)).all()
    assert set(np.unique(refined.mask)) == {0, 1}                  # the module's kind: no rims
    assert (refined.mask == 1).sum() < 0.8 * disc_mask(
        refined.mask.shape, refined.particles).sum()
    with pytest.raises(InputError, match=r"datasets\[0\]\.target\.kind.*choose one of"):
        _module([{"root": crowded, "target": {"kind": "blob"}}], tmp_path)


def test_compose_data_cryoppp(tmp_path):
    root = _cryoppp_folder(tmp_path / "d", n=3)
    cfg = compose("train", ["data=cryoppp", f"data.datasets=[{{root: '{root}'}}]",
                            "data.pixel_size_a=3.54", "data.particle_diameter_a=42.48",
                            f"data.split_file={tmp_path / 'split.json'}"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, CryoPPPDataModule) and dm.pixel_size_a == 3.54
    assert sum(len(v) for v in dm.splits.values()) == 3


def test_empiar10017_recipe_is_the_cross_validated_one(tmp_path):
    """experiment=empiar10017 trains what benchmarks/real_data_cv.py measured: refined targets,
    robust normalisation, the checkpoint and early stop judged by validation pick F1."""
    root = _cryoppp_folder(tmp_path / "empiar-10017", n=3)
    cfg = compose("train", ["experiment=empiar10017", f"data.datasets.0.root={root}",
                            f"data.split_file={tmp_path / 'split.json'}"])
    for callback in (cfg.callbacks.model_checkpoint, cfg.callbacks.early_stopping):
        assert callback.monitor == "val/pick_f1" and callback.mode == "max"
    dm = instantiate(cfg.data)
    assert dm.target_cfg["kind"] == "refined" and dm.target_cfg["ring_px"] == 0
    key = next(iter(dm.items))
    mic = dm.load(key, train=False)

    def load(normalisation):
        return _module([{"root": root, "empiar_id": 10017}], tmp_path, pixel_size_a=7.08,
                       normalisation=normalisation, split_file=tmp_path / "other.json"
                       ).load(key, train=False).image

    robust = {"method": "robust", "clip_percentiles": [0.5, 99.5], "background_sigma_a": 1000.0}
    np.testing.assert_allclose(mic.image, load(robust), atol=1e-6)   # what was measured
    assert not np.allclose(mic.image, load(None))        # not the plain standardisation


# --------------------------------------------------------------------------- bad input


def test_unknown_empiar_id(tmp_path):
    root = _cryoppp_folder(tmp_path / "d", n=3)
    with pytest.raises(InputError, match="99999: not a CryoPPP dataset"):
        _module([{"root": root, "empiar_id": 99999}], tmp_path)


def _first_stage_error(tmp_path, root, match):
    dm = _module([{"root": root}], tmp_path, split={"fractions": [1, 0, 0]})
    with pytest.raises(InputError, match=match):
        dm.setup("fit")
    assert not (tmp_path / "run" / "split.json").exists()   # nothing written


def test_coordinates_outside_the_micrograph(tmp_path):
    root = _cryoppp_folder(tmp_path / "d", n=2)
    csv = root / "ground_truth" / "particle_coordinates" / "mic_01.csv"
    csv.write_text(csv.read_text() + "300,10,24\n")
    _first_stage_error(tmp_path, root, r"mic_01.csv: 1 coordinate\(s\) outside")


def test_csv_with_wrong_columns_or_no_rows(tmp_path):
    root = _cryoppp_folder(tmp_path / "d", n=2)
    csv = root / "ground_truth" / "particle_coordinates" / "mic_01.csv"
    csv.write_text("X,Y,Diameter\n10,10,24\n")
    _first_stage_error(tmp_path, root, r"mic_01.csv: (missing column|unrecognised particle table)")
    csv.write_text("X-Coordinate,Y-Coordinate,Diameter\n")
    _first_stage_error(tmp_path, root, r"mic_01.csv: has no particle rows")


def test_two_micrographs_with_one_name(tmp_path):
    root = _cryoppp_folder(tmp_path / "d", n=2)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "micrographs" / "mic_00.png")
    with pytest.raises(InputError, match="two micrographs named 'mic_00'"):
        _module([{"root": root}], tmp_path)


def test_mask_of_another_size(tmp_path):
    root = tmp_path / "m"
    for i in range(2):
        write_mrc(root / "micrographs" / f"a{i}.mrc", _micrograph(64, [(32, 32)], 5, i), 3.54)
        write_mask_png(root / "masks" / f"a{i}_mask.png",
                       disc_mask((48, 48), _particles([(24, 24)], 10)))
    _first_stage_error(tmp_path, root, r"a0_mask.png: mask shape \(48, 48\) does not match")


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "empiar-10017").is_dir(), reason="needs ../shared/data")
def test_shared_empiar10017(tmp_path):
    dm = CryoPPPDataModule([{"root": SHARED / "empiar-10017", "empiar_id": 10017}],
                           split={"test": ["Falcon_2012_06_12-14_33_35_0"], "val": [
                               "Falcon_2012_06_12-15_41_22_0"]},
                           split_file=tmp_path / "split.json")
    dm.setup("test")
    mic = dm.test_dataset.micrographs[0]
    assert mic.image.shape == (1024, 1024) and len(mic.particles) == 629
    assert (mic.mask[:20] == 255).all() and (mic.mask[:, -25:] == 255).all()


def test_train_py_on_a_cryoppp_folder(tmp_path):
    """train.py data=cryoppp: trains, calibrates, checkpoints; split.json in the run folder."""
    import subprocess
    import sys

    root = _cryoppp_folder(tmp_path / "10017", n=4)
    run_dir = tmp_path / "run"
    repo = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, str(repo / "train.py"), f"hydra.run.dir={run_dir}",
           "print_config=false", "data=cryoppp", f"data.datasets=[{{root: '{root}'}}]",
           "data.pixel_size_a=3.54", "data.particle_diameter_a=42.48",
           "data.split.fractions=[0.5,0.25,0.25]", "data.crop_size=64",
           "data.train_samples_per_epoch=4", "data.batch_size=2", "data.num_workers=0",
           "trainer.max_epochs=1", "model.tile_size=64", "model.tile_overlap=16",
           "callbacks.progress_bar=null", "callbacks.model_summary=null"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=repo)
    assert out.returncode == 0, out.stderr[-2000:]
    split = json.loads((run_dir / "split.json").read_text())["splits"]
    assert {k: len(v) for k, v in split.items()} == {"train": 2, "val": 1, "test": 1}
    assert list((run_dir / "checkpoints").glob("epoch_*.ckpt"))
