from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from cryoparticle.config import compose
from cryoparticle.data.datamodules import FolderDataModule, SyntheticDataModule
from cryoparticle.errors import InputError
from cryoparticle.simulate.dataset_writer import write_dataset


@pytest.fixture(scope="module")
def sim_folder(tmp_path_factory, simulator):
    """A tiny dataset written by the simulator: one 96² micrograph per split, 7.08 Å/px."""
    out = tmp_path_factory.mktemp("simulated")
    cfg = compose("simulate", [f"out_dir={out}", "n_micrographs=3", "micrograph_size=96",
                               "splits.train=0.34", "splits.val=0.33", "splits.test=0.33"])
    write_dataset(cfg, simulator)
    return out


def _synthetic(simulator, **kwargs):
    args = dict(crop_size=32, train_samples_per_epoch=4, n_val_micrographs=2,
                n_test_micrographs=1, eval_micrograph_size=48, batch_size=4, seed=0)
    args.update(kwargs)
    return SyntheticDataModule(simulator, **args)


def _check_eval_batch(batch, size=None):
    assert {"image", "mask", "name"} <= set(batch) <= {"image", "mask", "name", "particles"}
    if "particles" in batch:  # true centres (x, y) for the picking-threshold calibration
        assert batch["particles"].ndim == 3 and batch["particles"].shape[-1] == 2
    assert batch["image"].ndim == 4 and batch["image"].shape[:2] == (1, 1)
    assert batch["image"].dtype == torch.float32 and batch["mask"].dtype == torch.int64
    assert batch["mask"].shape == (1, *batch["image"].shape[-2:])
    if size is not None:
        assert batch["image"].shape[-2:] == size
    assert isinstance(batch["name"][0], str)


def test_synthetic_batches_and_attributes(simulator):
    dm = _synthetic(simulator, augment={"intensity_jitter": 0.2})
    assert dm.pixel_size_a == 7.08 and dm.particle_diameter_a == 190.0
    assert dm.normalisation == "per_micrograph_standardise"
    dm.setup("fit")
    image, mask = next(iter(dm.train_dataloader()))
    assert image.shape == (4, 1, 32, 32) and image.dtype == torch.float32
    assert mask.shape == (4, 32, 32) and mask.dtype == torch.int64
    val = list(dm.val_dataloader())
    assert len(val) == 2
    _check_eval_batch(val[0], (48, 48))
    dm.setup("test")
    assert len(list(dm.test_dataloader())) == 1
    _check_eval_batch(next(iter(dm.predict_dataloader())), (48, 48))


def test_global_batch_is_split_over_devices(simulator):
    dm = _synthetic(simulator)
    dm.trainer = SimpleNamespace(world_size=2, current_epoch=0,
                                 reload_dataloaders_every_n_epochs=1)
    dm.setup("fit")
    assert dm.per_device_batch_size == 2
    assert next(iter(dm.train_dataloader()))[0].shape[0] == 2
    dm.trainer = SimpleNamespace(world_size=3, current_epoch=0)
    with pytest.raises(InputError, match="batch_size=4.*3 devices"):
        dm.setup("fit")


def test_val_and_test_seeds_disjoint_from_training(simulator, monkeypatch):
    seeds = []
    real = simulator.simulate

    def recording(seed, *args, **kwargs):
        seeds.append(tuple(seed))
        return real(seed, *args, **kwargs)

    monkeypatch.setattr(simulator, "simulate", recording)
    dm = _synthetic(simulator, seed=1)
    dm.setup(None)
    eval_seeds = set(seeds)
    assert eval_seeds == {(2, 0), (2, 1), (3, 0)}
    seeds.clear()
    for epoch in range(2):
        dm.trainer = SimpleNamespace(world_size=1, current_epoch=epoch)
        list(dm.train_dataloader())
    assert set(seeds) == {(1, e, i) for e in range(2) for i in range(4)}
    assert not eval_seeds & set(seeds)


def test_same_seed_same_first_batch_and_epochs_differ(simulator):
    def first(seed, epoch=0):
        dm = _synthetic(simulator, seed=seed, augment={})
        dm.trainer = SimpleNamespace(world_size=1, current_epoch=epoch)
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))

    a, b = first(0), first(0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], first(1)[0])
    assert not torch.equal(a[0], first(0, epoch=1)[0])


def test_synthetic_from_folder(simulator, sim_folder):
    dm = _synthetic(simulator, folder=str(sim_folder), crop_size=64)
    dm.setup(None)
    image, mask = next(iter(dm.train_dataloader()))
    assert image.shape == (4, 1, 64, 64) and mask.shape == (4, 64, 64)
    assert set(mask.unique().tolist()) <= {0, 1}
    batch = next(iter(dm.val_dataloader()))
    _check_eval_batch(batch, (96, 96))
    assert batch["name"] == ["sim_00001"]
    assert next(iter(dm.test_dataloader()))["name"] == ["sim_00002"]
    with pytest.raises(InputError, match="nowhere"):
        _synthetic(simulator, folder=str(sim_folder / "nowhere"))


def test_folder_datamodule_reads_and_bins(sim_folder):
    dm = FolderDataModule(sim_folder, pixel_size_a=7.08, particle_diameter_a=190.0,
                          crop_size=32, train_samples_per_epoch=2, batch_size=2)
    dm.setup("fit")
    image, mask = next(iter(dm.train_dataloader()))
    assert image.shape == (2, 1, 32, 32) and mask.dtype == torch.int64
    _check_eval_batch(next(iter(dm.val_dataloader())), (96, 96))
    binned = FolderDataModule(sim_folder, pixel_size_a=14.16, particle_diameter_a=190.0,
                              crop_size=32, batch_size=2)
    binned.setup("test")
    batch = next(iter(binned.test_dataloader()))
    _check_eval_batch(batch, (48, 48))
    assert binned.pixel_size_a == 14.16 and binned.normalisation == "per_micrograph_standardise"
    native = FolderDataModule(sim_folder, particle_diameter_a=190.0)  # from the MRC header
    assert native.pixel_size_a == pytest.approx(7.08)
    native.setup("validate")
    assert native.pixel_size_a == pytest.approx(7.08)


def test_folder_datamodule_errors(tmp_path, sim_folder):
    with pytest.raises(InputError, match="missing_root"):
        FolderDataModule(tmp_path / "missing_root", particle_diameter_a=190.0)
    dm = FolderDataModule(sim_folder, val_dir="validation", particle_diameter_a=190.0)
    with pytest.raises(InputError, match="validation.*no such folder"):
        dm.setup("validate")
    with pytest.raises(InputError, match="particle_diameter_a"):
        FolderDataModule(sim_folder, particle_diameter_a=-1.0)
    with pytest.raises(InputError, match="finer"):
        FolderDataModule(sim_folder, pixel_size_a=3.0, particle_diameter_a=190.0).setup("test")


class _Recorder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Conv2d(1, 2, 1)
        self.batches = []

    def training_step(self, batch, batch_idx):
        image, mask = batch
        self.batches.append((self.current_epoch, image.clone()))
        return nn.functional.cross_entropy(self.net(image), mask, ignore_index=255)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_trainer_draws_fresh_crops_every_epoch(sim_folder):
    dm = FolderDataModule(sim_folder, pixel_size_a=7.08, particle_diameter_a=190.0,
                          crop_size=32, train_samples_per_epoch=2, batch_size=2)
    model = _Recorder()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0,
                         reload_dataloaders_every_n_epochs=1)
    trainer.fit(model, datamodule=dm)
    assert [epoch for epoch, _ in model.batches] == [0, 1]
    for epoch, image in model.batches:
        dm.train_dataset.set_epoch(epoch)
        assert torch.equal(image, torch.stack([dm.train_dataset[i][0] for i in range(2)]))
    assert not torch.equal(model.batches[0][1], model.batches[1][1])


def test_folder_datamodule_cryoppp_layout_with_coordinates(tmp_path):
    import numpy as np
    from PIL import Image

    split = tmp_path / "data" / "train"
    (split / "micrographs").mkdir(parents=True)
    (split / "picks").mkdir()
    grey = np.random.default_rng(0).integers(0, 255, (40, 60), dtype=np.uint8)
    Image.fromarray(grey).save(split / "micrographs" / "a.jpg")
    (split / "picks" / "a.csv").write_text("X-Coordinate,Y-Coordinate\n20,10\n40,30\n")
    unknown = FolderDataModule(tmp_path / "data", particle_diameter_a=20.0)
    assert np.isnan(unknown.pixel_size_a)  # JPEG: no pixel size anywhere
    dm = FolderDataModule(tmp_path / "data", val_dir="train", test_dir="train",
                          pixel_size_a=4.0, micrograph_pixel_size_a=2.0,
                          particle_diameter_a=20.0, crop_size=16, batch_size=1)
    assert dm.pixel_size_a == 4.0
    dm.setup("fit")
    mic = dm.val_dataset.micrographs[0]
    assert mic.image.shape == (20, 30) and mic.pixel_size_a == 4.0
    np.testing.assert_allclose(mic.particles[["x", "y", "diameter"]].to_numpy(),
                               [[10, 5, 5], [20, 15, 5]])
    assert mic.mask.sum() == 2 * 21  # two discs of diameter 5 px (21 pixels each)
    assert next(iter(dm.train_dataloader()))[0].shape == (1, 1, 16, 16)
