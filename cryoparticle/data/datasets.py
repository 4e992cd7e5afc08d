"""Torch datasets. :class:`SyntheticCropDataset` simulates (crop, mask) pairs on the fly."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset

from cryoparticle.errors import param_error
from cryoparticle.simulate.micrograph import MicrographSimulator


def seed_worker(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: seed numpy/random from the worker's torch seed.

    Torch gives every worker a distinct seed (base seed + worker id, the base seed drawn from
    the loader's generator); numpy and ``random`` are seeded from it so augmentations differ
    between workers and are reproducible. One thread per worker avoids oversubscription.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    torch.set_num_threads(1)


class SyntheticCropDataset(Dataset):
    """``length`` simulated crops of ``crop_size²`` pixels, each with its segmentation mask.

    Item ``i`` is simulated from the seed ``(seed, epoch, i)``: the same index always gives the
    same pair (whatever worker draws it), and :meth:`set_epoch` gives fresh data per epoch.
    Items are ``(image (1, S, S) float32, mask (S, S) int64)`` with the image normalised to
    zero mean and unit variance and the mask 1 = particle, 0 = background.
    """

    def __init__(self, simulator: MicrographSimulator, length: int, crop_size: int,
                 seed: int = 0) -> None:
        if length < 0:
            raise param_error("length", length, "must be ≥ 0")
        if crop_size < 16:
            raise param_error("crop_size", crop_size, "must be ≥ 16 pixels")
        self.simulator = simulator
        self.length = int(length)
        self.crop_size = int(crop_size)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw a different set of crops (takes effect in non-persistent workers)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        mic = self.simulator.simulate((self.seed, self.epoch, int(index)), self.crop_size,
                                      name=f"crop_{self.epoch}_{index}")
        return (torch.from_numpy(mic.image)[None], torch.from_numpy(mic.mask.astype(np.int64)))
