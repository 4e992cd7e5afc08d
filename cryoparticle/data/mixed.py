"""Training on several data sources at once: simulation and real labelled micrographs.

:class:`MixedDataModule` wraps named child DataModules (each built from its own config: the
``synthetic*`` and ``cryoppp``/``folder`` groups) that share the training pixel size, crop size
and normalisation. Training item ``i`` of epoch ``e`` draws its source from ``weights`` with the
generator ``(seed, e, i)`` and takes item ``i`` of that source's crop dataset, so the mixture is
as reproducible as its sources. Validation and test are the children's whole micrographs, each
name prefixed by its source (``"real_10017/NAME"``), so the picking threshold is calibrated on
every kind of micrograph the model is meant for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import ConcatDataset, Dataset

from cryoparticle.config import instantiate
from cryoparticle.data.datamodules import _CropDataModule
from cryoparticle.data.datasets import item_generator
from cryoparticle.errors import param_error


class MixtureDataset(Dataset):
    """``length`` items, item ``i`` from source ``k`` drawn with probability ``weights[k]``.

    Every source must hold at least ``length`` items and have ``set_epoch``; item ``i`` of the
    mixture is item ``i`` of the source drawn for it.
    """

    def __init__(self, sources: Sequence[Dataset], weights: Sequence[float], length: int,
                 seed: int = 0) -> None:
        if not sources or len(sources) != len(weights):
            raise param_error("weights", list(weights), "need one weight per source (≥ 1)")
        w = np.asarray(weights, dtype=np.float64)
        if (w < 0).any() or not math.isfinite(float(w.sum())) or w.sum() <= 0:
            raise param_error("weights", list(weights), "must be ≥ 0 with a positive sum")
        for source in sources:
            if len(source) < length:  # type: ignore[arg-type]
                raise param_error("train_samples_per_epoch", length,
                                  f"a source holds only {len(source)} items")  # type: ignore
        self.sources = list(sources)
        self._cumulative = np.cumsum(w) / w.sum()
        self.length = int(length)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Fresh crops in every source, and a fresh draw of sources."""
        self.epoch = int(epoch)
        for source in self.sources:
            source.set_epoch(epoch)  # type: ignore[attr-defined]

    def source_of(self, index: int) -> int:
        """The source item ``index`` is drawn from in the current epoch."""
        # spawn key distinct from the crops' own generator: (seed + 7919) is not a crop seed
        u = torch.rand(1, generator=item_generator(self.seed + 7919, self.epoch, index),
                       dtype=torch.float64).item()
        return min(int(np.searchsorted(self._cumulative, u, side="right")),
                   len(self.sources) - 1)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return self.sources[self.source_of(index)][index]


class _Prefixed(Dataset):
    """A whole-micrograph dataset whose item names are ``"{prefix}/{name}"``."""

    def __init__(self, dataset: Dataset, prefix: str) -> None:
        self.dataset = dataset
        self.prefix = prefix

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        item["name"] = f"{self.prefix}/{item['name']}"
        return item


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


class MixedDataModule(_CropDataModule):
    """Several DataModules as one: weighted training crops, every source's val/test micrographs.

    ``sources`` maps a name to a DataModule config (with ``_target_``) or a built
    :class:`_CropDataModule`; ``weights`` maps names to relative sampling weights (default
    equal; 0 keeps a source for validation/testing only, and a source with weight 0 outside
    ``eval_sources`` is not built at all). Every source must use this module's
    ``crop_size`` and the same training pixel size (within 0.1 %) and normalisation: a mismatch
    is an :class:`InputError` naming the source. ``eval_sources`` (default: all) lists the
    sources whose validation and test micrographs are used.
    """

    def __init__(self, sources: Mapping[str, Any], weights: Mapping[str, float] | None = None,
                 *, crop_size: int = 256, train_samples_per_epoch: int = 512,
                 batch_size: int = 8, num_workers: int = 0, seed: int = 0,
                 particle_diameter_a: float | None = None,
                 eval_sources: Sequence[str] | None = None) -> None:
        super().__init__(crop_size=crop_size, train_samples_per_epoch=train_samples_per_epoch,
                         batch_size=batch_size, num_workers=num_workers, seed=seed,
                         augment=None)
        sources = {str(k): v for k, v in
                   dict(_plain(sources) if isinstance(sources, DictConfig) else sources).items()}
        if not sources:
            raise param_error("sources", {}, "need at least one data source")
        weights = dict(_plain(weights) or {})
        unknown = set(weights) - set(sources)
        if unknown:
            raise param_error("weights", sorted(unknown), f"not a source: {sorted(sources)}")
        # sources.NAME=null switches a source off; so does weight 0 outside eval_sources
        # (never built: a simulation-only run needs no real data on disk)
        active = [n for n, spec in sources.items() if spec is not None]
        if not active:
            raise param_error("sources", list(sources), "every source is null")
        self.eval_sources = list(eval_sources) if eval_sources is not None else active
        missing = [n for n in self.eval_sources if n not in active]
        if missing:
            raise param_error("eval_sources", missing, f"not a source: {sorted(active)}")
        self.children: dict[str, _CropDataModule] = {}
        for name in active:
            if float(weights.get(name, 1.0)) == 0 and name not in self.eval_sources:
                continue
            spec = sources[name]
            self.children[name] = spec if isinstance(spec, _CropDataModule) else instantiate(
                spec, crop_size=self.crop_size,
                train_samples_per_epoch=self.train_samples_per_epoch,
                batch_size=self.batch_size, num_workers=0)
        if not self.children:
            raise param_error("weights", weights, "no source is trained on or evaluated")
        self.weights = {n: float(weights.get(n, 1.0)) for n in self.children}
        first_name, first = next(iter(self.children.items()))
        self.pixel_size_a = float(first.pixel_size_a)
        self.normalisation = first.normalisation
        for name, child in self.children.items():
            if child.crop_size != self.crop_size:
                raise param_error(f"sources.{name}.crop_size", child.crop_size,
                                  f"every source must crop {self.crop_size} px")
            if not math.isclose(float(child.pixel_size_a), self.pixel_size_a, rel_tol=1e-3):
                raise param_error(f"sources.{name}.pixel_size_a", child.pixel_size_a,
                                  f"differs from {first_name}'s {self.pixel_size_a} Å/px")
            if child.normalisation != self.normalisation:
                raise param_error(f"sources.{name}.normalisation", child.normalisation,
                                  f"differs from {first_name}'s {self.normalisation!r}")
        self.particle_diameter_a = float(particle_diameter_a if particle_diameter_a is not None
                                         else first.particle_diameter_a)

    def _setup_train(self) -> None:
        if self.train_dataset is not None:
            return
        names = [n for n in self.children if self.weights[n] > 0]
        if not names:
            raise param_error("weights", self.weights, "no source has a positive weight")
        for n in names:
            self.children[n]._setup_train()
        self.train_dataset = MixtureDataset(  # type: ignore[assignment]
            [self.children[n].train_dataset for n in names],  # type: ignore[misc]
            [self.weights[n] for n in names], self.train_samples_per_epoch, self.seed)

    def _whole(self, split: str) -> ConcatDataset:
        parts = []
        for n in self.eval_sources:
            child = self.children[n]
            getattr(child, f"_setup_{split}")()
            parts.append(_Prefixed(getattr(child, f"{split}_dataset"), n))
        return ConcatDataset(parts)

    def _setup_val(self) -> None:
        if self.val_dataset is None:
            self.val_dataset = self._whole("val")

    def _setup_test(self) -> None:
        if self.test_dataset is None:
            self.test_dataset = self._whole("test")


__all__ = ["MixedDataModule", "MixtureDataset"]
