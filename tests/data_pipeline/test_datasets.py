import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from cryoparticle.data.augment import Augment
from cryoparticle.data.datasets import (MicrographDataset, RandomCropDataset,
                                        SyntheticCropDataset, find_pairs, item_generator,
                                        load_labelled_micrograph, seed_worker)
from cryoparticle.data.masks import disc_mask
from cryoparticle.errors import InputError
from cryoparticle.io.coords import write_cryoppp_csv, write_star
from cryoparticle.io.mrc import write_mask_png, write_mrc
from cryoparticle.micrograph import Micrograph


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


# --------------------------------------------------------------------------- loading from disk


def _particles(x, y, diameter=np.nan, name="mic"):
    return pd.DataFrame({"micrograph": name, "x": np.asarray(x, float),
                         "y": np.asarray(y, float), "diameter": diameter, "score": np.nan})


@pytest.fixture
def image_64x48(tmp_path):
    image = np.random.default_rng(0).normal(3.0, 2.0, (64, 48)).astype(np.float32)
    path = tmp_path / "mic.mrc"
    write_mrc(path, image, pixel_size_a=2.0)
    return path, image


def test_load_from_mask_png_with_and_without_binning(tmp_path, image_64x48):
    path, image = image_64x48
    mask = np.zeros((64, 48), np.uint8)
    mask[10:30, 20:40] = 1
    mask[:4, :4] = 255
    write_mask_png(tmp_path / "mic_mask.png", mask)
    mic = load_labelled_micrograph(path, tmp_path / "mic_mask.png", diameter_px=None,
                                   target_pixel_size_a=None, pixel_size_a=None)
    assert mic.name == "mic" and mic.pixel_size_a == 2.0
    assert mic.image.dtype == np.float32 and abs(mic.image.mean()) < 1e-5
    assert abs(mic.image.std() - 1) < 1e-4
    np.testing.assert_array_equal(mic.mask, mask)
    binned = load_labelled_micrograph(path, tmp_path / "mic_mask.png", diameter_px=None,
                                      target_pixel_size_a=4.0, pixel_size_a=None)
    assert binned.image.shape == binned.mask.shape == (32, 24)
    assert binned.pixel_size_a == 4.0 and binned.metadata["bin_factor"] == 2.0
    rows, cols = np.nonzero(binned.mask == 1)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (5, 14, 10, 19)
    assert binned.mask[0, 0] == 255
    with pytest.raises(InputError, match="mic.mrc.*finer"):
        load_labelled_micrograph(path, tmp_path / "mic_mask.png", diameter_px=None,
                                 target_pixel_size_a=1.0, pixel_size_a=None)


def test_load_from_star_and_csv_binning_halves_coordinates(tmp_path, image_64x48):
    path, _ = image_64x48
    parts = _particles([10.0, 30.0, 44.0], [12.0, 50.0, 3.0])
    write_star(tmp_path / "mic.star", parts)
    mic = load_labelled_micrograph(path, tmp_path / "mic.star", diameter_px=8.0,
                                   target_pixel_size_a=None, pixel_size_a=None)
    np.testing.assert_array_equal(mic.mask, disc_mask((64, 48), parts, 8.0))
    binned = load_labelled_micrograph(path, tmp_path / "mic.star", diameter_px=8.0,
                                      target_pixel_size_a=4.0, pixel_size_a=None)
    np.testing.assert_allclose(binned.particles["x"], [5.0, 15.0, 22.0])
    np.testing.assert_allclose(binned.particles["y"], [6.0, 25.0, 1.5])
    np.testing.assert_allclose(binned.particles["diameter"], 4.0)
    np.testing.assert_array_equal(binned.mask, disc_mask((32, 24), binned.particles))
    # CryoPPP CSV: the file's diameters win; the pixel size argument overrides the header
    write_cryoppp_csv(tmp_path / "mic.csv", _particles([10, 30], [12, 50], diameter=[6.0, 12.0]))
    csv = load_labelled_micrograph(path, tmp_path / "mic.csv", diameter_px=100.0,
                                   target_pixel_size_a=2.0, pixel_size_a=1.0)
    assert csv.image.shape == (32, 24) and csv.pixel_size_a == 2.0
    np.testing.assert_allclose(csv.particles["diameter"], [3.0, 6.0])
    # a diameter in Å is converted with the micrograph's pixel size (2 Å/px from the header)
    star = load_labelled_micrograph(path, tmp_path / "mic.star", target_pixel_size_a=None,
                                    pixel_size_a=None, diameter_a=20.0)
    np.testing.assert_allclose(star.particles["diameter"], 10.0)
    with pytest.raises(InputError, match="mic.star.*diameter"):
        load_labelled_micrograph(path, tmp_path / "mic.star", diameter_px=None,
                                 target_pixel_size_a=None, pixel_size_a=None)


def test_mask_shape_mismatch_names_both_files_and_shapes(tmp_path, image_64x48):
    path, _ = image_64x48
    write_mask_png(tmp_path / "mic_mask.png", np.zeros((60, 48), np.uint8))
    with pytest.raises(InputError) as info:
        load_labelled_micrograph(path, tmp_path / "mic_mask.png", diameter_px=None,
                                 target_pixel_size_a=None, pixel_size_a=None)
    text = str(info.value)
    assert "mic_mask.png" in text and "mic.mrc" in text
    assert "(60, 48)" in text and "(64, 48)" in text and "\n" not in text


def test_unlabelled_micrograph_is_all_ignore(image_64x48):
    mic = load_labelled_micrograph(image_64x48[0], None, diameter_px=None,
                                   target_pixel_size_a=None, pixel_size_a=None)
    assert (mic.mask == 255).all() and len(mic.particles) == 0


def _touch_image(path, size=(20, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    grey = np.random.default_rng(len(str(path))).integers(0, 255, size, dtype=np.uint8)
    Image.fromarray(grey).save(path)


def test_find_pairs_flat_and_cryoppp_layouts(tmp_path):
    flat = tmp_path / "flat"
    _touch_image(flat / "a.png")
    _touch_image(flat / "a_mask.png")
    (flat / "a.star").write_text("x")  # mask preferred over coordinates
    _touch_image(flat / "a_instances.tif")
    _touch_image(flat / "b.jpg")
    (flat / "b.box").write_text("")
    (flat / "notes.txt").write_text("")
    assert find_pairs(flat) == [(flat / "a.png", flat / "a_mask.png"),
                                (flat / "b.jpg", flat / "b.box")]
    ppp = tmp_path / "ppp"
    _touch_image(ppp / "micrographs" / "m1.jpg")
    _touch_image(ppp / "masks" / "m1_mask.jpg")
    _touch_image(ppp / "micrographs" / "m2.jpg")
    (ppp / "picks").mkdir()
    (ppp / "picks" / "m2.csv").write_text("X-Coordinate,Y-Coordinate\n")
    assert find_pairs(ppp) == [(ppp / "micrographs" / "m1.jpg", ppp / "masks" / "m1_mask.jpg"),
                               (ppp / "micrographs" / "m2.jpg", ppp / "picks" / "m2.csv")]


def test_find_pairs_errors(tmp_path):
    with pytest.raises(InputError, match="missing_dir.*no such folder"):
        find_pairs(tmp_path / "missing_dir")
    (tmp_path / "empty").mkdir()
    _touch_image(tmp_path / "empty" / "x_mask.png")
    with pytest.raises(InputError, match="empty.*no micrographs"):
        find_pairs(tmp_path / "empty")
    _touch_image(tmp_path / "lonely" / "alone.tif")
    with pytest.raises(InputError, match="alone.tif.*no label"):
        find_pairs(tmp_path / "lonely")


def _mic(name, height, width, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(height, width)).astype(np.float32)
    mask = (rng.random((height, width)) > 0.7).astype(np.uint8)
    return Micrograph(name=name, image=image, mask=mask, pixel_size_a=1.0,
                      particles=_particles([], []))


def test_micrograph_dataset_items():
    ds = MicrographDataset([_mic("a", 30, 20), _mic("b", 17, 40)])
    item = ds[1]
    assert set(item) == {"image", "mask", "name"} and item["name"] == "b"
    assert item["image"].shape == (1, 17, 40) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (17, 40) and item["mask"].dtype == torch.int64


def test_random_crops_are_windows_deterministic_and_padded():
    big = _mic("big", 40, 50, seed=1)
    ds = RandomCropDataset([big], length=6, crop_size=16, seed=5, augment=None)
    image, mask = ds[2]
    assert image.shape == (1, 16, 16) and mask.shape == (16, 16) and mask.dtype == torch.int64
    windows = np.lib.stride_tricks.sliding_window_view(big.image, (16, 16))
    hits = np.argwhere((windows == image[0].numpy()).all(axis=(2, 3)))
    assert len(hits) == 1
    y0, x0 = hits[0]
    assert torch.equal(mask, torch.from_numpy(big.mask[y0:y0 + 16, x0:x0 + 16].astype(np.int64)))
    assert torch.equal(ds[2][0], image)
    ds.set_epoch(1)
    assert not torch.equal(ds[2][0], image)
    small = RandomCropDataset([_mic("small", 10, 30)], length=2, crop_size=16, seed=0,
                              augment=None)
    image, mask = small[0]
    assert image.shape == (1, 16, 16)
    assert (mask == 255).sum() == 6 * 16 and set(mask.unique().tolist()) <= {0, 1, 255}
    assert torch.isfinite(image).all()


def test_augment_in_datasets_is_seeded_by_seed_epoch_index(simulator):
    aug = Augment(intensity_jitter=0.5, contrast_jitter=0.3)
    plain = SyntheticCropDataset(simulator, length=2, crop_size=32, seed=1)
    augmented = SyntheticCropDataset(simulator, length=2, crop_size=32, seed=1, augment=aug)
    base = plain[1]
    expected = aug(*base, item_generator(1, 0, 1))
    got = augmented[1]
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert not torch.equal(got[0], base[0])


def test_existing_picks_become_labels(tmp_path):
    """A lab's picks as training labels: RELION particles.star (optics + many micrographs),
    a cryoSPARC particle CSV, RELION autopick files; matched to the micrographs by name."""
    from cryoparticle.data.datamodules import load_folder

    folder = tmp_path / "train"
    folder.mkdir()
    picks = {"a": ([10.0, 30.0], [12.0, 50.0]), "b": ([40.0], [5.0]), "c": ([20.0], [20.0])}
    for seed, name in enumerate(picks):
        write_mrc(folder / f"{name}.mrc",
                  np.random.default_rng(seed).normal(size=(64, 48)).astype(np.float32), 2.0)
    relion = pd.concat([_particles(*picks[n], name=f"MotionCorr/job002/Movies/{n}.mrc")
                        for n in ("a", "b")])
    write_star(folder / "particles.star", relion, pixel_size_a=2.0)
    write_star(folder / "c_autopick.star", _particles(*picks["c"]))  # its own file wins
    mics = {m.name: m for m in load_folder(folder, target_pixel_size_a=None,
                                           micrograph_pixel_size_a=None,
                                           particle_diameter_a=16.0, labels="particles.star")}
    assert sorted(mics) == ["a", "b", "c"]
    for name, (x, y) in picks.items():
        expected = _particles(x, y, diameter=8.0, name=name)  # 16 Å at 2 Å/px
        np.testing.assert_allclose(mics[name].particles[["x", "y"]], expected[["x", "y"]])
        np.testing.assert_array_equal(mics[name].mask, disc_mask((64, 48), expected))
    assert mics["c"].metadata["label_path"].endswith("c_autopick.star")

    # cryoSPARC: fractions of a 64 × 48 (rows × columns) micrograph, uid-prefixed names
    rows = [(n, x, y) for n in ("a", "b") for x, y in zip(*picks[n])]
    pd.DataFrame({"location/micrograph_path": [f"J1/imported/00112233445566778_{n}.mrc"
                                               for n, _, _ in rows],
                  "location/micrograph_shape/0": 64, "location/micrograph_shape/1": 48,
                  "location/center_x_frac": [x / 48 for _, x, _ in rows],
                  "location/center_y_frac": [y / 64 for _, _, y in rows]}
                 ).to_csv(tmp_path / "cryosparc.csv", index=False)
    (folder / "c_autopick.star").unlink()
    with pytest.raises(InputError, match="cryosparc.csv: names no micrograph 'c'"):
        load_folder(folder, target_pixel_size_a=None, micrograph_pixel_size_a=None,
                    particle_diameter_a=16.0, labels=str(tmp_path / "cryosparc.csv"))
    (folder / "c.mrc").unlink()
    mics = {m.name: m for m in load_folder(folder, target_pixel_size_a=4.0,
                                           micrograph_pixel_size_a=None,
                                           particle_diameter_a=16.0,
                                           labels=str(tmp_path / "cryosparc.csv"))}
    np.testing.assert_allclose(mics["a"].particles[["x", "y"]],
                               np.array([[10.0, 12.0], [30.0, 50.0]]) / 2, atol=1e-4)
    with pytest.raises(InputError, match="nowhere.star: no such particle table"):
        find_pairs(folder, labels="nowhere.star")
