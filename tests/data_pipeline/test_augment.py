import pytest
import torch

from cryoparticle.data.augment import Augment
from cryoparticle.errors import InputError


def _marked(height, width):
    image = torch.zeros(1, height, width)
    mask = torch.zeros(height, width, dtype=torch.int64)
    image[0, 2, 5] = 100.0
    mask[2, 5] = 1
    mask[height - 1, 0] = 255
    image[0, height - 1, 0] = -100.0
    return image, mask


@pytest.mark.parametrize("shape", [(16, 16), (12, 20)])
def test_image_and_mask_move_together_and_ignore_is_kept(shape):
    aug = Augment(intensity_jitter=0.0, contrast_jitter=0.0)
    seen = set()
    for seed in range(24):
        image, mask = _marked(*shape)
        out_image, out_mask = aug(image, mask, torch.Generator().manual_seed(seed))
        assert out_image.shape == (1, *shape) and out_mask.shape == shape
        assert out_mask.dtype == torch.int64
        assert torch.equal((out_image[0] == 100.0), (out_mask == 1))
        assert torch.equal((out_image[0] == -100.0), (out_mask == 255))
        seen.add(tuple(torch.nonzero(out_mask == 1)[0].tolist()))
    # square: flips and rotations reach all 8 orientations; non-square: flips only (4)
    assert len(seen) == (8 if shape[0] == shape[1] else 4)


def test_intensity_jitter_and_determinism():
    aug = Augment(flips=False, rot90=False, intensity_jitter=0.5, contrast_jitter=0.2)
    image = torch.randn(1, 8, 8)
    mask = torch.zeros(8, 8, dtype=torch.int64)
    a, _ = aug(image, mask, torch.Generator().manual_seed(3))
    b, _ = aug(image, mask, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, image)
    # an affine map a = s·x + o with s in [0.8, 1.2] and o in [-0.5, 0.5]
    s = ((a - a.mean()) / (image - image.mean())).median()
    assert 0.8 <= s <= 1.2 and abs(float(a.mean() - s * image.mean())) <= 0.5 + 1e-5
    off = Augment(flips=False, rot90=False, intensity_jitter=0, contrast_jitter=0)
    assert torch.equal(off(image, mask, torch.Generator())[0], image)


def test_bad_parameters():
    with pytest.raises(InputError, match="contrast_jitter"):
        Augment(contrast_jitter=1.5)
    with pytest.raises(InputError, match="intensity_jitter"):
        Augment(intensity_jitter=-1)
