import torch
from torch.utils.data import DataLoader

from cryoparticle.data.datasets import SyntheticCropDataset, seed_worker


def test_items_deterministic_per_index_and_epoch(simulator):
    ds = SyntheticCropDataset(simulator, length=4, crop_size=64, seed=3)
    img, mask = ds[1]
    assert img.shape == (1, 64, 64) and img.dtype == torch.float32
    assert mask.shape == (64, 64) and mask.dtype == torch.int64 and set(mask.unique().tolist()) <= {0, 1}
    img2, mask2 = ds[1]
    assert torch.equal(img, img2) and torch.equal(mask, mask2)
    assert not torch.equal(img, ds[2][0])
    ds.set_epoch(1)
    assert not torch.equal(img, ds[1][0])


def test_workers_produce_distinct_samples_equal_to_single_process(simulator):
    ds = SyntheticCropDataset(simulator, length=6, crop_size=48, seed=0)
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(ds, batch_size=1, num_workers=2, worker_init_fn=seed_worker, generator=g)
    batches = list(loader)
    images = [b[0][0] for b in batches]
    assert len(images) == 6
    flat = torch.stack(images).flatten(1)
    # no two workers produce the same sample
    assert torch.unique(flat, dim=0).shape[0] == 6
    # and each equals what the index gives in the main process (up to float summation order:
    # workers run one thread each)
    for i, (im, mask) in enumerate(batches):
        ref_image, ref_mask = ds[i]
        assert torch.allclose(im[0], ref_image, atol=1e-4)
        assert torch.equal(mask[0], ref_mask)
