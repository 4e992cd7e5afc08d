"""Tests for cryoparticle.io.mrc: MRC/TIFF/PNG/JPEG images, volumes and masks."""

from __future__ import annotations

import datetime as _dt
import itertools
import os
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile
from PIL import Image

from cryoparticle.errors import InputError
from cryoparticle.io.mrc import (
    read_mask,
    read_micrograph,
    read_mrc,
    read_volume,
    write_mask_png,
    write_mrc,
)


def _image(shape: tuple[int, ...] = (12, 17), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.fixture
def ticking_clock(tick_clock) -> None:
    """Make mrcfile's ``datetime.now()`` advance a minute per call (timestamps would differ)."""
    tick_clock(mrcfile.mrcobject)


# --------------------------------------------------------------------------- MRC


def test_mrc_round_trip_keeps_data_and_pixel_size(tmp_path: Path) -> None:
    data = _image()
    write_mrc(tmp_path / "a.mrc", data, 1.23)
    read, pixel_size_a = read_mrc(tmp_path / "a.mrc")
    assert pixel_size_a == 1.23
    assert read.shape == (12, 17)
    np.testing.assert_array_equal(read, data)
    with mrcfile.open(tmp_path / "a.mrc") as mrc:  # independent check of the header
        assert float(mrc.voxel_size.x) == pytest.approx(1.23)
        assert mrc.header.nx == 17 and mrc.header.ny == 12


def test_read_mrc_mmap_and_in_memory(tmp_path: Path) -> None:
    data = _image((3, 8, 8))
    write_mrc(tmp_path / "v.mrc", data, 2.0)
    mapped, _ = read_mrc(tmp_path / "v.mrc", mmap=True)
    loaded, _ = read_mrc(tmp_path / "v.mrc", mmap=False)
    assert isinstance(mapped, np.memmap)
    assert not isinstance(loaded, np.memmap)
    np.testing.assert_array_equal(mapped, data)
    np.testing.assert_array_equal(loaded, data)


def test_mrc_without_pixel_size_reads_none(tmp_path: Path) -> None:
    write_mrc(tmp_path / "a.mrc", _image(), None)
    assert read_mrc(tmp_path / "a.mrc")[1] is None
    assert read_micrograph(tmp_path / "a.mrc")[1] is None


@pytest.mark.parametrize(("given", "stored"), [(np.float16, np.float16), (np.int8, np.int8),
                                               (np.float64, np.float32), (np.int32, np.float32),
                                               (">f4", np.float32)])
def test_write_mrc_dtypes(tmp_path: Path, given: object, stored: object) -> None:
    data = (np.arange(24).reshape(4, 6) - 12).astype(given)
    write_mrc(tmp_path / "a.mrc", data, 1.0)
    read, _ = read_mrc(tmp_path / "a.mrc")
    assert read.dtype == np.dtype(stored)
    np.testing.assert_array_equal(read.astype(np.float64), data.astype(np.float64))


def test_write_mrc_is_byte_identical(tmp_path: Path, ticking_clock: None) -> None:
    data = _image()
    write_mrc(tmp_path / "a.mrc", data, 1.5)
    write_mrc(tmp_path / "b.mrc", data, 1.5)
    assert (tmp_path / "a.mrc").read_bytes() == (tmp_path / "b.mrc").read_bytes()


def test_write_mrc_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="pixel_size_a"):
        write_mrc(tmp_path / "a.mrc", _image(), -1.0)
    with pytest.raises(InputError, match="data"):
        write_mrc(tmp_path / "a.mrc", np.zeros(5, np.float32), 1.0)
    assert not (tmp_path / "a.mrc").exists()


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "mask.png"
    write_mask_png(target, np.eye(4, dtype=np.uint8))
    before = target.read_bytes()
    with pytest.raises(InputError):
        write_mask_png(target, np.full((4, 4), 7, np.uint8))
    write_mrc(tmp_path / "a.mrc", _image(), 1.0)
    write_mrc(tmp_path / "a.mrc", _image(seed=1), 1.0)  # overwrite in place
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mrc", "mask.png"]


# --------------------------------------------------------------------------- bad files


def _random_bytes(path: Path, n: int = 2000) -> Path:
    path.write_bytes(np.random.default_rng(1).integers(0, 256, n, dtype=np.uint8).tobytes())
    return path


@pytest.mark.parametrize("mmap", [True, False])
def test_corrupt_mrc_raises_input_error_naming_file(tmp_path: Path, mmap: bool) -> None:
    bad = _random_bytes(tmp_path / "garbage_file.mrc")
    with pytest.raises(InputError, match="garbage_file.mrc"):
        read_mrc(bad, mmap=mmap)


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("keep", [100, -10])  # inside the header / inside the data
def test_truncated_mrc_raises_input_error(tmp_path: Path, mmap: bool, keep: int) -> None:
    write_mrc(tmp_path / "whole.mrc", _image((64, 64)), 1.0)
    data = (tmp_path / "whole.mrc").read_bytes()
    cut = tmp_path / "cut_short.mrc"
    cut.write_bytes(data[:keep])
    with pytest.raises(InputError, match="cut_short.mrc") as info:
        read_mrc(cut, mmap=mmap)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["missing.mrc", "missing.png", "missing.tif"])
def test_missing_file_raises_input_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError, match=f"{name}: no such file"):
        read_micrograph(tmp_path / name)


@pytest.mark.parametrize("name", ["broken.png", "broken.jpg", "broken.tif", "broken.mrc"])
def test_corrupt_images_raise_input_error(tmp_path: Path, name: str) -> None:
    bad = _random_bytes(tmp_path / name)
    with pytest.raises(InputError, match=name):
        read_micrograph(bad)
    empty = tmp_path / f"empty_{name}"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=f"empty_{name}"):
        read_micrograph(empty)


def test_truncated_png_raises_input_error(tmp_path: Path) -> None:
    noise = np.random.default_rng(2).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.png")
    full = (tmp_path / "full.png").read_bytes()
    assert len(full) > 3000
    (tmp_path / "half.png").write_bytes(full[: len(full) // 2])
    with pytest.raises(InputError, match="half.png"):
        read_micrograph(tmp_path / "half.png")


def test_unsupported_extension(tmp_path: Path) -> None:
    (tmp_path / "image.xyz").write_bytes(b"123")
    with pytest.raises(InputError, match="image.xyz: unsupported image format"):
        read_micrograph(tmp_path / "image.xyz")


# --------------------------------------------------------------------------- micrographs


def test_read_micrograph_mrc_is_float32_copy(tmp_path: Path) -> None:
    data = (np.arange(30).reshape(5, 6) * 3).astype(np.int16)
    write_mrc(tmp_path / "m.mrc", data.astype(np.float32), 0.8)
    image, pixel_size_a = read_micrograph(tmp_path / "m.mrc")
    assert image.dtype == np.float32 and image.shape == (5, 6)
    assert not isinstance(image, np.memmap) and image.flags.writeable
    assert pixel_size_a == 0.8
    np.testing.assert_array_equal(image, data)
    assert image[1, 2] == data[1, 2] == 24  # row 1, column 2: no transposition


def test_read_micrograph_single_section_stack_is_squeezed(tmp_path: Path) -> None:
    data = _image((1, 9, 7))
    write_mrc(tmp_path / "one.mrcs", data, 1.0)
    image, _ = read_micrograph(tmp_path / "one.mrcs")
    assert image.shape == (9, 7)
    np.testing.assert_array_equal(image, data[0])


def test_read_micrograph_rejects_stack(tmp_path: Path) -> None:
    write_mrc(tmp_path / "stack.mrcs", _image((3, 9, 7)), 1.0)
    with pytest.raises(InputError, match="stack.mrcs: is a stack of 3 images, expected one"):
        read_micrograph(tmp_path / "stack.mrcs")
    tifffile.imwrite(tmp_path / "stack.tif", _image((2, 9, 7)))
    with pytest.raises(InputError, match="stack.tif: is a stack of 2 images"):
        read_micrograph(tmp_path / "stack.tif")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_read_micrograph_rejects_non_finite(tmp_path: Path, bad: float) -> None:
    data = _image()
    data[3, 4] = bad
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile warns about NaN/Inf stats
        write_mrc(tmp_path / "nan.mrc", data, 1.0)
    with pytest.raises(InputError, match="nan.mrc: contains non-finite pixels"):
        read_micrograph(tmp_path / "nan.mrc")


def test_read_micrograph_rejects_constant(tmp_path: Path) -> None:
    write_mrc(tmp_path / "flat.mrc", np.full((8, 8), 3.5, np.float32), 1.0)
    with pytest.raises(InputError, match="flat.mrc: is constant"):
        read_micrograph(tmp_path / "flat.mrc")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "black.png")
    with pytest.raises(InputError, match="black.png: is constant"):
        read_micrograph(tmp_path / "black.png")


def test_read_micrograph_tiff(tmp_path: Path) -> None:
    data = _image((10, 13))
    tifffile.imwrite(tmp_path / "m.tiff", data)
    image, pixel_size_a = read_micrograph(tmp_path / "m.tiff")
    assert pixel_size_a is None
    np.testing.assert_array_equal(image, data)


def test_read_micrograph_png_grey_and_rgb(tmp_path: Path) -> None:
    grey = (np.arange(60) * 4).astype(np.uint8).reshape(6, 10)
    Image.fromarray(grey).save(tmp_path / "g.png")
    image, pixel_size_a = read_micrograph(tmp_path / "g.png")
    assert image.dtype == np.float32 and pixel_size_a is None
    np.testing.assert_array_equal(image, grey)

    rgb = np.zeros((6, 10, 3), np.uint8)
    rgb[..., 1] = 200  # pure green -> luma 0.587 * 200 = 117.4
    rgb[0, 0] = 0
    Image.fromarray(rgb).save(tmp_path / "c.png")
    image, _ = read_micrograph(tmp_path / "c.png")
    assert image.shape == (6, 10)
    assert image[1, 1] == pytest.approx(117, abs=1) and image[0, 0] == 0


def test_read_micrograph_jpeg(tmp_path: Path) -> None:
    grey = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (16, 1))
    Image.fromarray(grey).save(tmp_path / "m.jpg", quality=95)
    image, _ = read_micrograph(tmp_path / "m.jpg")
    assert image.shape == (16, 32) and image.dtype == np.float32
    assert np.abs(image - grey).max() < 8


# --------------------------------------------------------------------------- volumes


def test_read_volume_header_and_override(tmp_path: Path) -> None:
    data = _image((8, 8, 8))
    write_mrc(tmp_path / "v.mrc", data, 2.5)
    volume, size_a = read_volume(tmp_path / "v.mrc")
    assert volume.dtype == np.float32 and volume.shape == (8, 8, 8) and size_a == 2.5
    np.testing.assert_array_equal(volume, data)
    assert read_volume(tmp_path / "v.mrc", pixel_size_a=1.1)[1] == 1.1


def test_read_volume_without_pixel_size(tmp_path: Path) -> None:
    write_mrc(tmp_path / "nopix.mrc", _image((6, 6, 6)), None)
    with pytest.raises(InputError, match="nopix.mrc: has no pixel size in its header; "
                                         "give pixel_size_a"):
        read_volume(tmp_path / "nopix.mrc")
    assert read_volume(tmp_path / "nopix.mrc", pixel_size_a=3.0)[1] == 3.0


def test_read_volume_rejects_bad_volumes(tmp_path: Path) -> None:
    write_mrc(tmp_path / "box.mrc", _image((6, 6, 8)), 1.0)
    with pytest.raises(InputError, match=r"box.mrc: is not cubic \(shape \(6, 6, 8\)\)"):
        read_volume(tmp_path / "box.mrc")
    write_mrc(tmp_path / "flat.mrc", _image((6, 6)), 1.0)
    with pytest.raises(InputError, match="flat.mrc: is 2-D"):
        read_volume(tmp_path / "flat.mrc")
    write_mrc(tmp_path / "zero.mrc", np.zeros((4, 4, 4), np.float32), 1.0)
    with pytest.raises(InputError, match="zero.mrc: is empty"):
        read_volume(tmp_path / "zero.mrc")
    with pytest.raises(InputError, match="pixel_size_a"):
        read_volume(tmp_path / "box.mrc", pixel_size_a=0.0)


# --------------------------------------------------------------------------- masks


def _mask() -> np.ndarray:
    mask = np.zeros((7, 9), np.uint8)
    mask[1:3, 2:6] = 1
    mask[5, :] = 255
    mask[6, 8] = 1
    return mask


def test_mask_png_round_trip_with_ignore(tmp_path: Path) -> None:
    mask = _mask()
    write_mask_png(tmp_path / "m.png", mask)
    on_disk = np.asarray(Image.open(tmp_path / "m.png"))
    assert on_disk.dtype == np.uint8
    np.testing.assert_array_equal(on_disk, np.select([mask == 1, mask == 255], [255, 128], 0))
    back = read_mask(tmp_path / "m.png")
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, mask)


def test_mask_png_is_byte_identical(tmp_path: Path) -> None:
    write_mask_png(tmp_path / "a.png", _mask())
    write_mask_png(tmp_path / "b.png", _mask())
    data = (tmp_path / "a.png").read_bytes()
    assert data == (tmp_path / "b.png").read_bytes()
    assert b"tIME" not in data and b"tEXt" not in data


def test_read_mask_png_thresholds(tmp_path: Path) -> None:
    grey = np.array([[0, 63, 64, 128, 191, 192, 255]], np.uint8)
    Image.fromarray(grey).save(tmp_path / "t.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "t.png"), [[0, 0, 255, 255, 255, 1, 1]])


def test_read_mask_jpeg(tmp_path: Path) -> None:
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 10:24] = 1
    Image.fromarray(mask * 255).save(tmp_path / "m.jpg", quality=75)
    back = read_mask(tmp_path / "m.jpg")
    assert set(np.unique(back)) <= {0, 1}
    np.testing.assert_array_equal(back, mask)


@pytest.mark.parametrize("name", ["m.mrc", "m.tif"])
def test_read_mask_mrc_tiff(tmp_path: Path, name: str) -> None:
    mask = _mask()
    if name.endswith(".mrc"):
        write_mrc(tmp_path / name, mask.astype(np.float32), None)
    else:
        tifffile.imwrite(tmp_path / name, mask)
    np.testing.assert_array_equal(read_mask(tmp_path / name), mask)
    bad = mask.copy()
    bad[0, 0] = 2
    write_mrc(tmp_path / "bad.mrc", bad.astype(np.float32), None)
    with pytest.raises(InputError, match=r"bad.mrc: mask values must be 0, 1 or 255 \(found \[2"):
        read_mask(tmp_path / "bad.mrc")


def test_all_background_mask_is_valid(tmp_path: Path) -> None:
    write_mask_png(tmp_path / "z.png", np.zeros((4, 5), np.uint8))
    assert not read_mask(tmp_path / "z.png").any()


def test_write_mask_png_rejects_bad_values(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="mask"):
        write_mask_png(tmp_path / "m.png", np.full((3, 3), 2, np.uint8))
    assert not os.listdir(tmp_path)


def test_read_mask_png_holding_labels_0_1_255(tmp_path: Path) -> None:
    """A PNG written with the label values themselves (not write_mask_png's greys) is read as
    labels: 1 = particle, 255 = ignore — not 1 → background and 255 → particle."""
    from PIL import Image

    labels = np.zeros((20, 30), dtype=np.uint8)
    labels[5:10, 5:12] = 1
    labels[:2] = 255
    Image.fromarray(labels).save(tmp_path / "labels.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "labels.png"), labels)
