import numpy as np
import pytest
import torch

from cryoparticle.simulate.projection import (FourierProjector, euler_to_matrix,
                                              project_real_space, random_euler_angles)


def _asymmetric_volume(b: int = 32) -> np.ndarray:
    c = np.arange(b) - b // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    blobs = [((5, -3, 1), 8.0, 1.0), ((-6, 4, -7), 6.0, 0.5), ((0, 8, 2), 3.0, 0.7)]
    return sum(w * np.exp(-((x - px) ** 2 + (y - py) ** 2 + (z - pz) ** 2) / s)
               for (px, py, pz), s, w in blobs).astype(np.float32)


def test_euler_matrices_are_rotations():
    rng = np.random.default_rng(0)
    r = euler_to_matrix(random_euler_angles(50, rng))
    eye = torch.eye(3, dtype=r.dtype).expand(50, 3, 3)
    assert torch.allclose(r @ r.transpose(1, 2), eye, atol=1e-10)
    assert torch.allclose(torch.linalg.det(r), torch.ones(50, dtype=r.dtype), atol=1e-10)


def test_relion_convention_tilt_about_y():
    # RELION: rot=0, tilt=90, psi=0 maps the volume's z axis onto the projection's x axis
    # up to sign; the matrix is Ry(tilt) in RELION's passive convention.
    a = euler_to_matrix(np.array([[0.0, 90.0, 0.0]]))[0]
    expected = torch.tensor([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=a.dtype)
    assert torch.allclose(a, expected, atol=1e-12)


def test_orientations_uniform_on_so3():
    rng = np.random.default_rng(1)
    ang = random_euler_angles(20000, rng)
    # Uniform on SO(3): the projection direction (3rd row of A) is uniform on the sphere,
    # so its z component (cos tilt) is uniform on [-1, 1]: mean 0, variance 1/3.
    z = euler_to_matrix(ang)[:, 2, 2].numpy()
    assert abs(z.mean()) < 0.02 and abs(z.var() - 1 / 3) < 0.01
    assert abs(ang[:, 0].mean() - 180) < 5 and abs(ang[:, 2].mean() - 180) < 5


@pytest.mark.parametrize("pad", [2.0])
def test_fourier_slice_matches_real_space_projection(pad):
    vol = _asymmetric_volume()
    rot = euler_to_matrix(random_euler_angles(6, np.random.default_rng(2)))
    fourier = FourierProjector(vol, pad_factor=pad).project(rot)
    real = project_real_space(vol, rot)
    for a, b in zip(fourier, real):
        corr = np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1]
        assert corr >= 0.99
    # and the integral is preserved within a few percent
    assert abs(fourier.sum() / real.sum() - 1) < 0.06


def test_identity_projection_is_sum_along_z():
    vol = _asymmetric_volume()
    proj = FourierProjector(vol).project(euler_to_matrix(np.zeros((1, 3))))[0].numpy()
    ref = vol.sum(0)
    assert np.corrcoef(proj.ravel(), ref.ravel())[0, 1] > 0.999
    # peak in the same place: x/y are not swapped or flipped
    assert np.unravel_index(proj.argmax(), proj.shape) == np.unravel_index(ref.argmax(), ref.shape)


def test_batched_projection_equals_one_by_one():
    vol = _asymmetric_volume()
    rot = euler_to_matrix(random_euler_angles(5, np.random.default_rng(3)))
    proj = FourierProjector(vol)
    batch = proj.project(rot, chunk=2)
    single = torch.stack([proj.project(r[None])[0] for r in rot])
    assert torch.allclose(batch, single, atol=1e-4)
    assert proj.project(torch.zeros((0, 3, 3))).shape == (0, 32, 32)
