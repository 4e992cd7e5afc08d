"""CRF tests: one torch thread (a shared 2-core machine: two threads fighting other processes make
many small tensor operations slower than one), and small synthetic scenes."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def disc_scene(size: int, seed: int = 0, n_discs: int = 3, logit_noise: float = 2.0,
               image_noise: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``logits (1, 2, S, S)``, ``image (1, 1, S, S)`` and the true ``mask (S, S)`` of a few
    discs: the image is the mask plus noise, the logits a noisy version of the mask (a coarse,
    noisy segmentation, about 10–20 % of pixels wrong)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = torch.zeros(size, size)
    for _ in range(n_discs):
        cy, cx = (torch.rand(2, generator=g) * size).tolist()
        radius = 5 + 4 * torch.rand(1, generator=g).item()
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 < radius * radius] = 1
    image = mask * 1.5 + image_noise * torch.randn(size, size, generator=g)
    logit = 2.5 * (2 * mask - 1) + logit_noise * torch.randn(size, size, generator=g)
    logits = torch.stack([torch.zeros_like(logit), logit])[None]
    return logits, image[None, None], mask


@pytest.fixture
def scene():
    return disc_scene
