"""The pydensecrf reference: functional and module forms, the 8-bit RGB feature."""

from __future__ import annotations

import numpy as np
import torch

from cryoparticle.crf.dense import DenseCRF, dense_crf, rgb_levels
from cryoparticle.crf.filtering import intensity_levels

from .conftest import disc_scene


def test_rgb_levels_repeat_the_shared_intensity_levels():
    _, image, _ = disc_scene(32, 0)
    rgb = rgb_levels(image[0, 0])
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    assert (rgb == intensity_levels(image[0, 0]).numpy()[..., None]).all()


def test_dense_crf_returns_marginals_and_the_module_their_logs():
    logits, image, _ = disc_scene(64, 1)
    prob = logits[0].softmax(0).numpy()
    q = dense_crf(prob, image[0, 0].numpy(), n_iterations=5)
    assert q.shape == (2, 64, 64) and q.dtype == np.float32
    assert np.allclose(q.sum(0), 1, atol=1e-4)
    out = DenseCRF(n_iterations=5)(torch.cat([logits, logits]), torch.cat([image, image]))
    assert out.shape == (2, 2, 64, 64)
    assert np.allclose(out[0].exp().numpy(), q, atol=1e-5)
    assert torch.equal(out[0], out[1])
    # the unary alone (no pairwise term) is the input
    q0 = dense_crf(prob, image[0, 0].numpy(), spatial_weight=0, bilateral_weight=0)
    assert np.allclose(q0, np.clip(prob, 1e-5, 1) / np.clip(prob, 1e-5, 1).sum(0), atol=1e-5)
