"""Lightning DataModules: simulated data (on the fly or from a written folder) and folders of
real micrographs with masks or coordinates.

Batches:

* train: ``(image (B, 1, S, S) float32, mask (B, S, S) int64)`` random crops, mask 1 = particle,
  0 = background, 255 = ignore;
* val / test / predict: dicts ``{"image": (1, 1, H, W), "mask": (1, H, W), "name": [str]}``,
  one whole micrograph per batch (any size).

``batch_size`` is the *global* batch: each device gets ``batch_size // trainer.world_size``
(computed in :meth:`setup`; not divisible → :class:`InputError`). Training item ``i`` of epoch
``e`` is drawn from the seed ``(seed, e, i)``; :meth:`train_dataloader` sets the epoch, so the
trainer must rebuild the train loader every epoch (``reload_dataloaders_every_n_epochs=1``;
workers are not persistent). Every module exposes ``pixel_size_a``, ``particle_diameter_a`` and
``normalisation`` (the spec of the image normalisation, stored in checkpoints: the ``normalisation``
argument, a mapping of :class:`~cryoparticle.data.preprocess.Normalisation` fields, applied to
training crops and evaluation micrographs alike; None = the per-micrograph standardisation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from cryoparticle.data.augment import Augment
from cryoparticle.data.datasets import (MicrographDataset, RandomCropDataset,
                                        SyntheticCropDataset, find_pairs,
                                        load_labelled_micrograph, seed_worker)
from cryoparticle.data.preprocess import Normalisation
from cryoparticle.errors import check_positive, file_error, param_error
from cryoparticle.io.mrc import MRC_SUFFIXES, read_mrc
from cryoparticle.micrograph import Micrograph
from cryoparticle.simulate.micrograph import MicrographSimulator


def _whole(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value \
            or value < minimum:
        raise param_error(name, value, f"must be a whole number ≥ {minimum}")
    return int(value)


def build_augment(augment: Augment | Mapping[str, Any] | None) -> Augment | None:
    """``None`` → no augmentation; a mapping (e.g. from a config) → ``Augment(**mapping)``."""
    if augment is None or isinstance(augment, Augment):
        return augment
    if isinstance(augment, DictConfig):
        augment = OmegaConf.to_container(augment, resolve=True)  # type: ignore[assignment]
    if not isinstance(augment, Mapping):
        raise param_error("augment", augment, "must be a mapping of Augment options or null")
    try:
        return Augment(**{str(k): v for k, v in augment.items() if k != "_target_"})
    except TypeError as exc:
        raise param_error("augment", dict(augment), str(exc)) from None


def load_folder(folder: Path, *, target_pixel_size_a: float | None,
                micrograph_pixel_size_a: float | None,
                particle_diameter_a: float | None,
                labels: str | Path | None = None,
                normalisation: Normalisation | None = None) -> list[Micrograph]:
    """Every labelled micrograph of ``folder`` (see :func:`find_pairs`; ``labels``: a particle
    table for many micrographs), binned and normalised."""
    return [load_labelled_micrograph(image, label, target_pixel_size_a=target_pixel_size_a,
                                     pixel_size_a=micrograph_pixel_size_a,
                                     diameter_a=particle_diameter_a, normalisation=normalisation)
            for image, label in find_pairs(folder, labels=labels)]


def build_normalisation(value: Mapping[str, Any] | str | Normalisation | None
                        ) -> Normalisation | None:
    """None → None (the standardisation, as before); else a :class:`Normalisation`."""
    if value is None:
        return None
    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value, resolve=True)  # type: ignore[assignment]
    return Normalisation.from_spec(value)  # type: ignore[arg-type]


class _CropDataModule(pl.LightningDataModule):
    """Shared loaders: random training crops, whole micrographs for evaluation.

    A module of micrographs held in memory implements :meth:`_split` (the micrographs of
    ``train``, ``val`` or ``test``); the training set is then their random crops (zoomed by
    ``scale_range`` when given), validation and test the whole micrographs.
    """

    pixel_size_a: float
    particle_diameter_a: float

    def __init__(self, *, crop_size: int, train_samples_per_epoch: int, batch_size: int,
                 num_workers: int, seed: int, augment: Augment | Mapping[str, Any] | None,
                 normalisation: Mapping[str, Any] | str | Normalisation | None = None,
                 scale_range: Sequence[float] | None = None) -> None:
        super().__init__()
        self.scale_range = None if scale_range is None else [float(v) for v in scale_range]
        self.crop_size = _whole("crop_size", crop_size, 16)
        self.train_samples_per_epoch = _whole("train_samples_per_epoch",
                                              train_samples_per_epoch, 1)
        self.batch_size = _whole("batch_size", batch_size, 1)
        self.num_workers = _whole("num_workers", num_workers, 0)
        self.seed = _whole("seed", seed, 0)
        self.augment = build_augment(augment)
        #: Applied to every image (None: standardisation); its spec is ``normalisation``.
        self.normaliser = build_normalisation(normalisation)
        self.normalisation = (self.normaliser or Normalisation("standardise")).spec
        self.per_device_batch_size: int | None = None
        self.train_dataset: RandomCropDataset | SyntheticCropDataset | None = None
        self.val_dataset: MicrographDataset | None = None
        self.test_dataset: MicrographDataset | None = None

    # ------------------------------------------------------------------ batch size

    def _world_size(self) -> int:
        trainer = self.trainer
        return int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1

    def _per_device_batch_size(self) -> int:
        world = self._world_size()
        if self.batch_size % world:
            raise param_error("batch_size", self.batch_size,
                              f"the global batch must be divisible by the {world} devices")
        return self.batch_size // world

    def setup(self, stage: str | None = None) -> None:
        self.per_device_batch_size = self._per_device_batch_size()
        if stage in (None, "fit"):
            self._setup_train()
        if stage in (None, "fit", "validate"):
            self._setup_val()
        if stage in (None, "test", "predict"):
            self._setup_test()

    def _split(self, split: str) -> list[Micrograph]:
        raise NotImplementedError

    def _setup_train(self) -> None:
        if self.train_dataset is None:
            self.train_dataset = RandomCropDataset(self._split("train"),
                                                   self.train_samples_per_epoch, self.crop_size,
                                                   self.seed, self.augment, self.scale_range)

    def _setup_val(self) -> None:
        if self.val_dataset is None:
            self.val_dataset = MicrographDataset(self._split("val"))

    def _setup_test(self) -> None:
        if self.test_dataset is None:
            self.test_dataset = MicrographDataset(self._split("test"))

    # ------------------------------------------------------------------ loaders

    def _loader(self, dataset: Dataset, batch_size: int, drop_last: bool = False) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=drop_last,
                          num_workers=self.num_workers, worker_init_fn=seed_worker,
                          generator=torch.Generator().manual_seed(self.seed),
                          persistent_workers=False, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        assert self.train_dataset is not None
        trainer = self.trainer
        epoch = int(getattr(trainer, "current_epoch", 0) or 0) if trainer is not None else 0
        reload = getattr(trainer, "reload_dataloaders_every_n_epochs", 1) if trainer else 1
        if reload != 1:
            rank_zero_warn("training crops are drawn per epoch only when the trainer rebuilds "
                           "the train loader every epoch: set "
                           "reload_dataloaders_every_n_epochs=1")
        self.train_dataset.set_epoch(epoch)
        # drop_last: a last batch of one breaks batch norm in DeepLab's image-pooling branch
        batch = self._per_device_batch_size()
        return self._loader(self.train_dataset, batch, drop_last=len(self.train_dataset) > batch)

    def val_dataloader(self) -> DataLoader:
        if self.val_dataset is None:
            self.setup("validate")
        assert self.val_dataset is not None
        return self._loader(self.val_dataset, 1)

    def test_dataloader(self) -> DataLoader:
        if self.test_dataset is None:
            self.setup("test")
        assert self.test_dataset is not None
        return self._loader(self.test_dataset, 1)

    def predict_dataloader(self) -> DataLoader:
        """The test micrographs (whole, batch size 1)."""
        return self.test_dataloader()


class SyntheticDataModule(_CropDataModule):
    """Simulated micrographs (``simulator``: the ``simulator`` config group, or a built
    :class:`MicrographSimulator`).

    Training crops of ``crop_size²`` are simulated on the fly, ``train_samples_per_epoch`` per
    epoch from the seeds ``(seed, epoch, i)``; validation and test are fixed whole micrographs
    of ``eval_micrograph_size²`` from the seeds ``(seed + 1, i)`` and ``(seed + 2, i)``,
    simulated once in :meth:`setup`. With ``folder`` (written by ``python -m
    cryoparticle.simulate``), crops come from ``folder/train`` and val/test from ``folder/val``
    and ``folder/test`` instead, binned to the simulator's pixel size if they are finer.
    """

    def __init__(self, simulator: DictConfig | Mapping[str, Any] | MicrographSimulator,
                 crop_size: int = 256, train_samples_per_epoch: int = 512,
                 n_val_micrographs: int = 4, n_test_micrographs: int = 4,
                 eval_micrograph_size: int = 512, batch_size: int = 8, num_workers: int = 0,
                 seed: int = 0, augment: Augment | Mapping[str, Any] | None = None,
                 folder: str | Path | None = None,
                 normalisation: Mapping[str, Any] | str | None = None) -> None:
        super().__init__(crop_size=crop_size, train_samples_per_epoch=train_samples_per_epoch,
                         batch_size=batch_size, num_workers=num_workers, seed=seed,
                         augment=augment, normalisation=normalisation)
        self.n_val_micrographs = _whole("n_val_micrographs", n_val_micrographs, 1)
        self.n_test_micrographs = _whole("n_test_micrographs", n_test_micrographs, 1)
        self.eval_micrograph_size = _whole("eval_micrograph_size", eval_micrograph_size, 16)
        if isinstance(simulator, MicrographSimulator):
            self._simulator: MicrographSimulator | None = simulator
            cfg = simulator.cfg
        elif isinstance(simulator, (DictConfig, Mapping)):
            self._simulator = None
            cfg = simulator if isinstance(simulator, DictConfig) else OmegaConf.create(
                dict(simulator))
        else:
            raise param_error("simulator", type(simulator).__name__,
                              "expected the simulator config (a mapping) or a MicrographSimulator")
        self.simulator_cfg = cfg
        self.pixel_size_a = float(check_positive("simulator.pixel_size_a",  # type: ignore[arg-type]
                                            cfg.get("pixel_size_a")))
        self.folder = None if folder is None else Path(folder)
        if self.folder is not None and not self.folder.is_dir():
            raise file_error(self.folder, "no such folder (expected a simulated dataset with "
                                          "train/, val/ and test/)")
        diameter = OmegaConf.select(cfg, "volume.particle_diameter_a")
        if diameter is None:
            diameter = self.simulator.particle_diameter_a
        self.particle_diameter_a = float(diameter)

    @property
    def simulator(self) -> MicrographSimulator:
        """The simulator, built on first use (it loads and prepares the volume)."""
        if self._simulator is None:
            self._simulator = MicrographSimulator(self.simulator_cfg)
        return self._simulator

    def _split(self, split: str) -> list[Micrograph]:
        assert self.folder is not None
        path = self.folder / split
        if not path.is_dir():
            raise file_error(path, f"no such folder (the {split} split of {self.folder})")
        return load_folder(path, target_pixel_size_a=self.pixel_size_a,
                           micrograph_pixel_size_a=None,
                           particle_diameter_a=self.particle_diameter_a,
                           normalisation=self.normaliser)

    def _simulate(self, seed: int, count: int, prefix: str) -> list[Micrograph]:
        size = self.eval_micrograph_size
        micrographs = [self.simulator.simulate((seed, i), size, size, name=f"{prefix}_{i:03d}")
                       for i in range(count)]
        if self.normaliser is not None:
            for mic in micrographs:
                mic.image = self.normaliser(mic.image, self.pixel_size_a)
        return micrographs

    def _setup_train(self) -> None:
        if self.train_dataset is not None:
            return
        if self.folder is not None:
            self.train_dataset = RandomCropDataset(self._split("train"),
                                                   self.train_samples_per_epoch, self.crop_size,
                                                   self.seed, self.augment)
        else:
            self.train_dataset = SyntheticCropDataset(self.simulator,
                                                      self.train_samples_per_epoch,
                                                      self.crop_size, self.seed, self.augment,
                                                      self.normaliser)

    def _setup_val(self) -> None:
        if self.val_dataset is None:
            self.val_dataset = MicrographDataset(
                self._split("val") if self.folder is not None
                else self._simulate(self.seed + 1, self.n_val_micrographs, "val"))

    def _setup_test(self) -> None:
        if self.test_dataset is None:
            self.test_dataset = MicrographDataset(
                self._split("test") if self.folder is not None
                else self._simulate(self.seed + 2, self.n_test_micrographs, "test"))


class FolderDataModule(_CropDataModule):
    """Micrographs (MRC/TIFF/PNG/JPEG) with masks or coordinates in ``root/{train,val,test}``.

    Each split folder is read with :func:`~cryoparticle.data.datasets.find_pairs` (flat, or the
    CryoPPP-like ``micrographs/`` + ``masks/`` or ``picks/`` layout). Micrographs are binned to
    ``pixel_size_a`` when their own pixel size (``micrograph_pixel_size_a``, else the MRC
    header) is finer; without a known source pixel size they are taken to be at
    ``pixel_size_a`` already. Coordinates without a diameter get ``particle_diameter_a``.
    ``labels``: one particle table for the micrographs without a label file of their own
    (RELION ``particles.star``/``coordinate_files.star``, a cryoSPARC particle CSV), looked
    for in each split folder, else taken as a path: existing picks become training labels.
    ``pixel_size_a=None`` keeps the native pixel size: the attribute is then
    ``micrograph_pixel_size_a``, else the first training micrograph's MRC header, else NaN
    (unknown) until :meth:`setup` has read the micrographs. ``scale_range`` zooms training
    crops (see :class:`~cryoparticle.data.datasets.RandomCropDataset`).
    """

    def __init__(self, root: str | Path, train_dir: str = "train", val_dir: str = "val",
                 test_dir: str = "test", *, pixel_size_a: float | None = None,
                 micrograph_pixel_size_a: float | None = None, particle_diameter_a: float,
                 crop_size: int = 256, train_samples_per_epoch: int = 512, batch_size: int = 8,
                 num_workers: int = 0, seed: int = 0,
                 augment: Augment | Mapping[str, Any] | None = None,
                 labels: str | None = None,
                 scale_range: Sequence[float] | None = None,
                 normalisation: Mapping[str, Any] | str | None = None) -> None:
        super().__init__(crop_size=crop_size, train_samples_per_epoch=train_samples_per_epoch,
                         batch_size=batch_size, num_workers=num_workers, seed=seed,
                         augment=augment, normalisation=normalisation,
                         scale_range=scale_range)
        self.labels = labels
        self.root = Path(root)
        if not self.root.is_dir():
            raise file_error(self.root, "no such folder (the dataset root)")
        self.dirs = {"train": train_dir, "val": val_dir, "test": test_dir}
        self.target_pixel_size_a = check_positive("pixel_size_a", pixel_size_a, optional=True)
        self.micrograph_pixel_size_a = check_positive("micrograph_pixel_size_a",
                                                 micrograph_pixel_size_a, optional=True)
        self.particle_diameter_a = float(check_positive("particle_diameter_a",  # type: ignore[arg-type]
                                                   particle_diameter_a))
        self.pixel_size_a = self.target_pixel_size_a or self.micrograph_pixel_size_a \
            or self._header_pixel_size()

    def _header_pixel_size(self) -> float:
        """The first training micrograph's header pixel size (NaN when unknown or not MRC)."""
        folder = self.root / self.dirs["train"]
        if not folder.is_dir():
            return math.nan
        image = find_pairs(folder, labels=self.labels)[0][0]
        if image.suffix.lower() not in MRC_SUFFIXES:
            return math.nan
        _, pixel_size_a = read_mrc(image, mmap=True)
        return math.nan if pixel_size_a is None else float(pixel_size_a)

    def _split(self, split: str) -> list[Micrograph]:
        path = self.root / self.dirs[split]
        if not path.is_dir():
            raise file_error(path, f"no such folder (the {split} split; set {split}_dir)")
        micrographs = load_folder(path, target_pixel_size_a=self.target_pixel_size_a,
                                  micrograph_pixel_size_a=self.micrograph_pixel_size_a,
                                  particle_diameter_a=self.particle_diameter_a,
                                  labels=self.labels, normalisation=self.normaliser)
        if math.isnan(self.pixel_size_a):
            self.pixel_size_a = micrographs[0].pixel_size_a
        return micrographs


__all__ = ["FolderDataModule", "SyntheticDataModule", "build_augment", "build_normalisation",
           "load_folder"]
