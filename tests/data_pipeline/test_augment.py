import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

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


def _look_only(**options):
    return Augment(flips=False, rot90=False, intensity_jitter=0.0, contrast_jitter=0.0,
                   **options)


def _standard_image(seed: int = 0, size: int = 96) -> torch.Tensor:
    """A smooth, standardised test image (a low-passed random field)."""
    field = gaussian_filter(np.random.default_rng(seed).normal(size=(size, size)), 3.0)
    return torch.tensor((field - field.mean()) / field.std(), dtype=torch.float32)[None]


def test_blur_is_a_gaussian_low_pass_that_keeps_the_crop_sigma_and_the_mask():
    image = _standard_image() + 0.5 * torch.randn(1, 96, 96, generator=torch.Generator()
                                                  .manual_seed(1))
    mask = (torch.rand(96, 96, generator=torch.Generator().manual_seed(2)) * 3).long()
    out, out_mask = _look_only(blur_probability=1.0, blur_sigma_px=[1.5, 1.5])(
        image, mask, torch.Generator().manual_seed(0))
    assert torch.equal(out_mask, mask)
    # independent reference: SciPy's Gaussian filter (mirror = torch's reflect padding),
    # rescaled to the input's standard deviation
    reference = gaussian_filter(image[0].double().numpy(), 1.5, mode="mirror", truncate=3.0)
    reference *= float(image.std()) / reference.std()
    np.testing.assert_allclose(out[0].numpy(), reference, atol=2e-3)
    assert float(out.std()) == pytest.approx(float(image.std()), rel=1e-4)


def test_noise_has_the_drawn_strength_and_correlation_and_keeps_the_crop_sigma():
    image = _standard_image(size=160)
    mask = torch.zeros(160, 160, dtype=torch.int64)
    for amount in (0.5, 1.5):
        out, _ = _look_only(noise_probability=1.0, noise_std=[amount, amount])(
            image, mask, torch.Generator().manual_seed(4))
        # out = (x + a·σ·n) / √(1 + a²): correlation with the input 1/√(1 + a²), σ kept
        r = np.corrcoef(out[0].flatten().numpy(), image[0].flatten().numpy())[0, 1]
        assert r == pytest.approx(1 / np.sqrt(1 + amount ** 2), abs=0.02)
        assert float(out.std()) == pytest.approx(1.0, abs=0.03)

    def lag1(correlation_px):
        # noise 100× the image: the output is the noise field, up to 1e-4 of the image
        out, _ = _look_only(noise_probability=1.0, noise_std=[100.0, 100.0],
                            noise_correlation_px=[correlation_px, correlation_px])(
            image, mask, torch.Generator().manual_seed(5))
        noise = out[0].numpy()
        return np.corrcoef(noise[:, :-1].ravel(), noise[:, 1:].ravel())[0, 1]

    assert abs(lag1(0.0)) < 0.05                                    # white
    # a Gaussian blur of σ px correlates neighbours by exp(−1 / (4σ²)): 0.89 at 1.5 px
    assert lag1(1.5) == pytest.approx(np.exp(-1 / (4 * 1.5 ** 2)), abs=0.05)


def test_look_probabilities_ranges_and_determinism():
    image = _standard_image(size=32)
    mask = torch.zeros(32, 32, dtype=torch.int64)
    aug = _look_only(blur_probability=0.5, blur_sigma_px=[0.5, 2.0], noise_probability=0.5,
                     noise_std=[0.2, 1.0])
    changed = 0
    for seed in range(200):
        a, _ = aug(image, mask, torch.Generator().manual_seed(seed))
        b, _ = aug(image, mask, torch.Generator().manual_seed(seed))
        assert torch.equal(a, b)                                    # seeded
        changed += not torch.equal(a, image)
    assert 0.65 * 200 < changed < 0.85 * 200                        # 1 − ½·½ = 0.75
    # the look is off by default, and the flips/rotation/jitter draws are the same with it on
    plain = Augment()
    looked = Augment(noise_probability=1.0, noise_std=[0.0, 0.0])   # noise of strength 0
    for seed in range(8):
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        assert torch.allclose(plain(image, mask, g1)[0], looked(image, mask, g2)[0])


@pytest.mark.parametrize("options, name", [
    ({"blur_probability": 1.5}, "blur_probability"),
    ({"noise_probability": -0.1}, "noise_probability"),
    ({"blur_sigma_px": [2.0, 1.0]}, "blur_sigma_px"),
    ({"noise_std": [0.5]}, "noise_std"),
    ({"noise_correlation_px": [-1.0, 1.0]}, "noise_correlation_px"),
])
def test_bad_look_parameters(options, name):
    with pytest.raises(InputError, match=name):
        Augment(**options)
