"""Training on several sources at once, and zoomed crops (particle-size augmentation)."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from cryoparticle.data.datamodules import FolderDataModule, SyntheticDataModule
from cryoparticle.data.datasets import RandomCropDataset
from cryoparticle.data.masks import disc_mask
from cryoparticle.data.mixed import MixedDataModule, MixtureDataset
from cryoparticle.errors import InputError
from cryoparticle.io.mrc import write_mask_png, write_mrc
from cryoparticle.micrograph import Micrograph


def _discs(shape, xy, diameter):
    df = pd.DataFrame({"micrograph": "m", "x": [p[0] for p in xy], "y": [p[1] for p in xy],
                       "diameter": float(diameter), "score": 1.0})
    return disc_mask(shape, df)


def _folder(root, n=2, size=64, pixel_size_a=7.08):
    """root/{train,val,test}/ of ``n`` MRC micrographs with one disc of 16 px each."""
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        (root / split).mkdir(parents=True)
        for i in range(n):
            mask = _discs((size, size), [(size / 2, size / 2)], 16)
            image = rng.normal(size=(size, size)).astype(np.float32) - 3.0 * mask
            write_mrc(root / split / f"{split}{i}.mrc", image, pixel_size_a)
            write_mask_png(root / split / f"{split}{i}_mask.png", mask)
    return root


def test_zoomed_crops_scale_the_particles():
    """A disc of 20 px zoomed by 1.5 is 30 px across; the mask stays labels 0/1 only."""
    mask = _discs((200, 200), [(100, 100)], 20)
    mic = Micrograph("m", mask.astype(np.float32), mask, 1.0,
                     pd.DataFrame(columns=["micrograph", "x", "y", "diameter", "score"]))
    plain = RandomCropDataset([mic], 40, 64, seed=3)
    zoomed = RandomCropDataset([mic], 40, 64, seed=3, scale_range=[1.5, 1.5])
    shrunk = RandomCropDataset([mic], 40, 64, seed=3, scale_range=[0.5, 0.5])
    for i in range(8):
        image, m = zoomed[i]
        assert image.shape == (1, 64, 64) and m.shape == (64, 64) and m.dtype == torch.int64
        assert set(torch.unique(m).tolist()) <= {0, 1}
    area = {name: max(int((ds[i][1] == 1).sum()) for i in range(40))
            for name, ds in (("plain", plain), ("zoomed", zoomed), ("shrunk", shrunk))}
    disc = math.pi * 10 ** 2
    # a whole disc is in at least one crop of each (64-px crops of a 200-px micrograph)
    assert area["plain"] == pytest.approx(disc, rel=0.1)
    assert area["zoomed"] == pytest.approx(disc * 1.5 ** 2, rel=0.1)
    assert area["shrunk"] == pytest.approx(disc * 0.5 ** 2, rel=0.15)
    # the unzoomed dataset draws exactly as before the option existed (same crops per seed)
    again = RandomCropDataset([mic], 40, 64, seed=3, scale_range=None)
    assert all(torch.equal(again[i][0], plain[i][0]) for i in range(40))


def test_zoom_range_is_checked():
    mic = Micrograph("m", np.zeros((32, 32), np.float32), np.zeros((32, 32), np.uint8), 1.0,
                     pd.DataFrame())
    for bad in ([0.0, 1.0], [2.0, 1.0], [1.0], [1.0, math.inf]):
        with pytest.raises(InputError, match="scale_range"):
            RandomCropDataset([mic], 1, 16, scale_range=bad)


class _Items(torch.utils.data.Dataset):
    def __init__(self, tag, n):
        self.tag, self.n, self.epoch = tag, n, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return (self.tag, self.epoch, i)


def test_mixture_follows_the_weights_and_is_reproducible():
    mix = MixtureDataset([_Items("a", 4000), _Items("b", 4000)], [3.0, 1.0], 4000, seed=1)
    tags = [mix[i][0] for i in range(4000)]
    assert tags.count("a") / 4000 == pytest.approx(0.75, abs=0.03)
    assert [mix[i] for i in range(50)] == [mix[i] for i in range(50)]
    assert all(mix[i][2] == i for i in range(50))  # item i of its source
    mix.set_epoch(1)
    assert all(s.epoch == 1 for s in mix.sources)
    assert [mix[i][0] for i in range(200)] != tags[:200]  # a fresh draw of sources per epoch
    zero = MixtureDataset([_Items("a", 10), _Items("b", 10)], [0.0, 1.0], 10)
    assert {zero[i][0] for i in range(10)} == {"b"}
    with pytest.raises(InputError, match="weights"):
        MixtureDataset([_Items("a", 10)], [-1.0], 10)
    with pytest.raises(InputError, match="holds only"):
        MixtureDataset([_Items("a", 5)], [1.0], 10)


def test_mixed_module_trains_on_both_and_evaluates_every_source(tmp_path, simulator):
    real = FolderDataModule(_folder(tmp_path / "real"), pixel_size_a=7.08,
                            particle_diameter_a=113.0, crop_size=32, seed=0)
    synthetic = SyntheticDataModule(simulator, crop_size=32, n_val_micrographs=1,
                                    n_test_micrographs=1, eval_micrograph_size=48, seed=0)
    dm = MixedDataModule({"sim": synthetic, "real": real}, {"sim": 1.0, "real": 1.0},
                         crop_size=32, train_samples_per_epoch=8, batch_size=4, seed=0)
    assert dm.pixel_size_a == 7.08 and dm.particle_diameter_a == 190.0
    assert dm.normalisation == synthetic.normalisation
    dm.setup("fit")
    image, mask = next(iter(dm.train_dataloader()))
    assert image.shape == (4, 1, 32, 32) and mask.shape == (4, 32, 32)
    sources = {dm.train_dataset.source_of(i) for i in range(8)}
    assert sources == {0, 1}
    names = [b["name"][0] for b in dm.val_dataloader()]
    assert names == ["sim/val_000", "real/val0", "real/val1"]
    dm.setup("test")
    assert [b["name"][0] for b in dm.test_dataloader()][-1] == "real/test1"


def test_mixed_module_refuses_incompatible_sources(tmp_path, simulator):
    coarse = FolderDataModule(_folder(tmp_path / "coarse", pixel_size_a=14.16),
                              particle_diameter_a=190.0, crop_size=32)
    synthetic = SyntheticDataModule(simulator, crop_size=32)
    with pytest.raises(InputError, match="coarse.pixel_size_a"):
        MixedDataModule({"sim": synthetic, "coarse": coarse}, crop_size=32)
    with pytest.raises(InputError, match="crop"):
        MixedDataModule({"sim": SyntheticDataModule(simulator, crop_size=64)}, crop_size=32)
    with pytest.raises(InputError, match="not a source"):
        MixedDataModule({"sim": synthetic}, {"other": 1.0}, crop_size=32)
    with pytest.raises(InputError, match="at least one"):
        MixedDataModule({}, crop_size=32)


def test_a_source_neither_trained_on_nor_evaluated_is_never_built(tmp_path, simulator):
    synthetic = SyntheticDataModule(simulator, crop_size=32, n_val_micrographs=1,
                                    n_test_micrographs=1, eval_micrograph_size=48, seed=0)
    missing = {"_target_": "cryoparticle.data.datamodules.FolderDataModule",
               "root": str(tmp_path / "no_such_dataset"), "particle_diameter_a": 190.0}
    # simulation only (README: the simulation-only model) needs no real data on disk
    dm = MixedDataModule({"sim": synthetic, "real": missing}, {"sim": 1.0, "real": 0.0},
                         crop_size=32, train_samples_per_epoch=8, batch_size=4, seed=0,
                         eval_sources=["sim"])
    assert list(dm.children) == ["sim"] and dm.weights == {"sim": 1.0}
    dm.setup("fit")
    assert {dm.train_dataset.source_of(i) for i in range(8)} == {0}
    # nothing trained on and nothing evaluated: an error naming the weights, not a crash
    with pytest.raises(InputError, match="no source is trained on or evaluated"):
        MixedDataModule({"sim": synthetic, "real": missing}, {"sim": 0.0, "real": 0.0},
                        crop_size=32, eval_sources=[])
    # evaluated, or given a weight, the same source is built, and its missing folder is an error
    for weights, evaluated in (({"real": 0.0}, None), ({"real": 1.0}, ["sim"])):
        with pytest.raises(InputError, match="no_such_dataset"):
            MixedDataModule({"sim": synthetic, "real": missing}, weights, crop_size=32,
                            eval_sources=evaluated)
