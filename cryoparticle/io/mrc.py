"""Images in and out: MRC maps and micrographs, TIFF/PNG/JPEG micrographs, label masks.

Conventions (see ARCHITECTURE.md): micrographs are ``float32`` arrays ``(H, W)`` with row 0 the
first stored row; masks are ``uint8`` with 0 = background, 1 = particle, 255 = ignore. Pixel
sizes are in Å per pixel and come from the MRC header only (other formats carry none).

Every reader turns a missing, corrupt or unusable file into a one-line
:class:`~cryoparticle.errors.InputError` naming the file; every writer is atomic and
deterministic (identical input gives identical bytes).
"""

from __future__ import annotations

import math
from pathlib import Path

import mrcfile
import numpy as np
import tifffile
from PIL import Image

from cryoparticle.io.checks import one_line, require_file
from cryoparticle.errors import InputError, file_error, param_error
from cryoparticle.io.atomic import atomic_path

MRC_SUFFIXES = (".mrc", ".mrcs", ".map")
TIFF_SUFFIXES = (".tif", ".tiff")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
JPEG_SUFFIXES = (".jpg", ".jpeg")

MASK_IGNORE = 255
"""In-memory mask value for pixels excluded from loss and metrics."""

# Fixed MRC header label: mrcfile's default label[0] holds the creation time, which would make
# repeated writes of the same data differ byte for byte.
_MRC_LABEL = "Created by cryoparticle"
# Mask PNG grey levels: 0 -> 0 (background), 1 -> 255 (particle), 255 -> 128 (ignore).
_MASK_TO_PNG = np.zeros(256, dtype=np.uint8)
_MASK_TO_PNG[1] = 255
_MASK_TO_PNG[MASK_IGNORE] = 128
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 (as PIL's "L")
_WRITE_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.int8))


# --------------------------------------------------------------------------- helpers


def _image_kind(path: Path) -> str:
    """``'mrc'``, ``'tiff'`` or ``'pil'`` from the file extension."""
    suffix = path.suffix.lower()
    if suffix in MRC_SUFFIXES:
        return "mrc"
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    if suffix in PIL_SUFFIXES:
        return "pil"
    known = ", ".join(MRC_SUFFIXES + TIFF_SUFFIXES + PIL_SUFFIXES)
    raise file_error(path, f"unsupported image format {suffix or '(no extension)'!r} "
                           f"(expected one of {known})")


def _check_pixel_size(pixel_size_a: float | None) -> None:
    if pixel_size_a is None:
        return
    try:
        ok = math.isfinite(float(pixel_size_a)) and float(pixel_size_a) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise param_error("pixel_size_a", pixel_size_a, "must be a positive number of Å")


def _header_pixel_size(mrc: mrcfile.mrcfile.MrcFile) -> float | None:
    """Voxel size along x in Å, or None when the header leaves it at 0 (unknown)."""
    mx = int(mrc.header.mx)
    cella_x = float(mrc.header.cella.x)
    if mx <= 0 or not math.isfinite(cella_x) or cella_x <= 0:
        return None
    # The header stores float32; give back its shortest decimal (1.23, not 1.2300000190734863).
    return float(np.format_float_positional(np.float32(cella_x / mx)))


# --------------------------------------------------------------------------- MRC


def read_mrc(path: str | Path, *, mmap: bool = True) -> tuple[np.ndarray, float | None]:
    """Read an MRC/MRCS file: ``(data, pixel size in Å or None)``.

    With ``mmap`` the data is a read-only ``numpy.memmap`` (nothing is loaded until used);
    otherwise it is read into memory. The dtype and byte order are those of the file.
    """
    path = Path(path)
    require_file(path)
    opener = mrcfile.mmap if mmap else mrcfile.open
    try:
        with opener(path, mode="r", permissive=False) as mrc:
            data = mrc.data
            pixel_size_a = _header_pixel_size(mrc)
    except Exception as exc:  # mrcfile raises ValueError/OSError/... for corrupt files
        raise file_error(path, f"not a readable MRC file ({one_line(exc)})") from exc
    if data is None:
        raise file_error(path, "not a readable MRC file (no data block)")
    return data, pixel_size_a


def write_mrc(path: str | Path, data: np.ndarray, pixel_size_a: float | None) -> None:
    """Write a 2-D image or 3-D volume/stack to MRC atomically, with voxel size in Å.

    float32, float16 and int8 data are stored as given; anything else as float32.
    ``pixel_size_a=None`` leaves the voxel size 0 (unknown). A ``.mrcs`` 3-D array is
    marked as an image stack. The header carries no timestamp, so output is reproducible.
    """
    path = Path(path)
    _check_pixel_size(pixel_size_a)
    array = np.asarray(data)
    if array.ndim not in (2, 3) or array.size == 0:
        raise param_error("data", f"array of shape {array.shape}",
                          "expected a non-empty 2-D image or 3-D volume")
    if array.dtype not in _WRITE_DTYPES:  # also catches non-native byte order
        array = array.astype(np.float32)
    array = np.ascontiguousarray(array)
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(array)
            if array.ndim == 3 and path.suffix.lower() == ".mrcs":
                mrc.set_image_stack()
            if pixel_size_a is not None:
                mrc.voxel_size = float(pixel_size_a)
            mrc.header.label[0] = _MRC_LABEL
            mrc.header.nlabl = 1


# --------------------------------------------------------------------------- 2-D images


def _to_grey(rgb: np.ndarray) -> np.ndarray:
    """Colour samples on the last axis -> greyscale float32 (luma; alpha dropped)."""
    if rgb.shape[-1] >= 3:
        return rgb[..., :3].astype(np.float32) @ _LUMA
    return rgb[..., 0]


def _read_tiff(path: Path) -> np.ndarray:
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise file_error(path, "TIFF file contains no images")
            series = tif.series[0]
            data, axes = series.asarray(), series.axes
    except InputError:
        raise
    except Exception as exc:
        raise file_error(path, f"not a readable TIFF file ({one_line(exc)})") from exc
    if "S" in axes and data.ndim >= 3:  # colour samples (RGB, RGBA)
        data = _to_grey(np.moveaxis(data, axes.index("S"), -1))
    return data


def _read_pil(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                raise file_error(path, f"is a stack of {frames} images, expected one micrograph")
            if image.mode not in ("L", "I", "F", "I;16", "I;16L", "I;16B"):
                image = image.convert("L")
            return np.asarray(image)
    except InputError:
        raise
    except Exception as exc:  # PIL: UnidentifiedImageError, OSError (truncated), ...
        raise file_error(path, f"not a readable image ({one_line(exc)})") from exc


def _read_image_2d(path: Path) -> tuple[np.ndarray, float | None]:
    """One 2-D image (dtype as stored) and its pixel size; stacks of >1 image rejected."""
    require_file(path)
    kind = _image_kind(path)
    pixel_size_a = None
    if kind == "mrc":
        data, pixel_size_a = read_mrc(path, mmap=True)
    elif kind == "tiff":
        data = _read_tiff(path)
    else:
        data = _read_pil(path)
    if data.ndim > 2:
        data = data.reshape(-1, *data.shape[-2:])
        if data.shape[0] != 1:
            raise file_error(path, f"is a stack of {data.shape[0]} images, "
                                   "expected one micrograph")
        data = data[0]
    if data.ndim != 2:
        raise file_error(path, f"has {data.ndim} dimension(s), expected a 2-D image")
    if data.size == 0:
        raise file_error(path, "is empty (0 pixels)")
    return data, pixel_size_a


def read_micrograph(path: str | Path) -> tuple[np.ndarray, float | None]:
    """Read one micrograph as a float32 ``(H, W)`` array and its pixel size in Å (or None).

    Formats by extension: MRC/MRCS/MAP (2-D, or one section), TIFF, PNG and JPEG (colour is
    converted to greyscale). Only MRC headers carry a pixel size. Images that are empty,
    constant or contain NaN/Inf are rejected.
    """
    path = Path(path)
    data, pixel_size_a = _read_image_2d(path)
    image = np.array(data, dtype=np.float32)  # a copy, detached from any memory map
    if not np.isfinite(image).all():
        raise file_error(path, "contains non-finite pixels (NaN or Inf)")
    low, high = image.min(), image.max()
    if low == high:
        raise file_error(path, f"is constant (every pixel is {low:g})")
    return image, pixel_size_a


def read_volume(path: str | Path,
                pixel_size_a: float | None = None) -> tuple[np.ndarray, float]:
    """Read a cubic 3-D MRC map as float32 ``(D, D, D)`` and its voxel size in Å.

    ``pixel_size_a`` overrides the header; one of the two must give a voxel size.
    """
    path = Path(path)
    _check_pixel_size(pixel_size_a)
    require_file(path)
    if _image_kind(path) != "mrc":
        raise file_error(path, f"unsupported volume format {path.suffix!r} "
                               f"(expected one of {', '.join(MRC_SUFFIXES)})")
    data, header_pixel_size_a = read_mrc(path, mmap=True)
    if data.ndim != 3:
        raise file_error(path, f"is {data.ndim}-D (shape {tuple(data.shape)}), "
                               "expected a 3-D volume")
    if data.size == 0:
        raise file_error(path, "is empty (0 voxels)")
    if len(set(data.shape)) != 1:
        raise file_error(path, f"is not cubic (shape {tuple(data.shape)})")
    size_a = float(pixel_size_a) if pixel_size_a is not None else header_pixel_size_a
    if size_a is None:
        raise file_error(path, "has no pixel size in its header; give pixel_size_a")
    volume = np.array(data, dtype=np.float32)
    if not np.isfinite(volume).all():
        raise file_error(path, "contains non-finite voxels (NaN or Inf)")
    if not volume.any():
        raise file_error(path, "is empty (every voxel is 0)")
    return volume, size_a


# --------------------------------------------------------------------------- masks


def write_mask_png(path: str | Path, mask: np.ndarray) -> None:
    """Write a ``{0, 1, 255}`` mask as an 8-bit greyscale PNG, atomically.

    Grey levels on disk: background 0, particle 255 (white), ignore 128.
    """
    path = Path(path)
    array = np.asarray(mask)
    if array.ndim != 2 or array.size == 0:
        raise param_error("mask", f"array of shape {array.shape}", "expected a non-empty 2-D mask")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not np.isin(array, (0, 1, MASK_IGNORE)).all():
        raise param_error("mask", f"array with values {np.unique(array)[:8].tolist()}",
                          "expected only 0, 1 and 255 (ignore)")
    grey = _MASK_TO_PNG[array.astype(np.uint8)]
    with atomic_path(path) as tmp:
        Image.fromarray(grey).save(tmp, format="PNG")


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask as uint8 ``(H, W)`` with 0 = background, 1 = particle, 255 = ignore.

    PNG: grey >= 192 -> 1, 64..191 -> ignore, below -> 0 (inverse of :func:`write_mask_png`);
    a PNG holding only the labels 0, 1 and 255 with some 1s is read as labels (255 = ignore).
    JPEG (e.g. CryoPPP, 0/255 smeared by compression): grey > 127 -> 1, no ignore label.
    MRC/TIFF: values are used as they are and must be 0, 1 or 255.
    """
    path = Path(path)
    data, _ = _read_image_2d(path)
    suffix = path.suffix.lower()
    if suffix == ".png":
        grey = np.asarray(data)
        values = np.unique(grey)
        if np.isin(values, (0, 1, MASK_IGNORE)).all() and 1 in values:
            return grey.astype(np.uint8)          # a label image: 0, 1 and 255 as they are
        mask = np.zeros(grey.shape, dtype=np.uint8)
        mask[grey >= 64] = MASK_IGNORE
        mask[grey >= 192] = 1
        return mask
    if suffix in JPEG_SUFFIXES:
        return (np.asarray(data) > 127).astype(np.uint8)
    values = np.asarray(data)
    if not np.isin(values, (0, 1, MASK_IGNORE)).all():
        bad = np.unique(values[~np.isin(values, (0, 1, MASK_IGNORE))])[:5].tolist()
        raise file_error(path, f"mask values must be 0, 1 or 255 (found {bad})")
    return values.astype(np.uint8)
