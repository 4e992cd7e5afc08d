import pytest
import torch
from torch import nn

from cryoparticle.data.tiling import blend_window, predict_tiled, tile_starts
from cryoparticle.errors import InputError


def test_tile_starts_cover_and_end_flush():
    assert tile_starts(50, 64, 16) == [0]
    assert tile_starts(64, 64, 16) == [0]
    assert tile_starts(100, 64, 16) == [0, 36]
    starts = tile_starts(300, 64, 16)
    assert starts[0] == 0 and starts[-1] == 300 - 64
    assert all(b - a <= 64 - 16 for a, b in zip(starts, starts[1:]))
    with pytest.raises(InputError, match="overlap"):
        tile_starts(100, 64, 64)


def test_blend_window_positive_ramped_symmetric():
    w = blend_window(32, 8)
    assert w.shape == (32, 32) and (w > 0).all() and w.max() == 1
    assert w[16, 16] == 1 and w[0, 0] < w[0, 4] < w[0, 8]
    assert torch.allclose(w, w.flip(0)) and torch.allclose(w, w.T)
    assert (blend_window(16, 0) == 1).all()


@pytest.mark.parametrize("shape", [(70, 95), (20, 90), (33, 17), (64, 64)])
def test_pointwise_fn_equals_whole_image(shape):
    torch.manual_seed(0)
    image = torch.randn(2, *shape)

    def fn(x):  # (B, 2, t, t) -> (B, 3, t, t), pointwise
        return torch.stack([x[:, 0] * 2 + x[:, 1], torch.sin(x[:, 0]), x[:, 1] ** 2], 1)

    out = predict_tiled(fn, image, tile=32, overlap=8, batch_size=3)
    assert out.shape == (3, *shape)
    assert torch.allclose(out, fn(image[None])[0], atol=1e-5)


def test_constant_fn_gives_constant_output_without_seams():
    out = predict_tiled(lambda x: torch.full((x.shape[0], 1, *x.shape[-2:]), 3.0),
                        torch.zeros(1, 77, 130), tile=32, overlap=12, batch_size=5)
    assert torch.allclose(out, torch.full_like(out, 3.0), atol=1e-6)


def test_conv_net_with_overlap_beyond_receptive_field_matches_whole_image():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))
    image = torch.randn(1, 90, 70)
    with torch.no_grad():
        whole = net(image[None])[0]
        tiled = predict_tiled(net, image, tile=48, overlap=16, batch_size=2)
        assert (tiled - whole).abs().max() < 5e-4 * whole.abs().max()
        # a tiny overlap is visibly worse: the test can fail
        poor = predict_tiled(net, image, tile=48, overlap=1, batch_size=2)
        assert (poor - whole).abs().max() > 10 * (tiled - whole).abs().max()


def test_bad_fn_output_is_reported():
    with pytest.raises(InputError, match="fn"):
        predict_tiled(lambda x: x[:, :, :4, :4], torch.zeros(1, 40, 40), tile=16, overlap=4)
