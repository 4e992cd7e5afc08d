"""3-D volumes for the simulator: density maps from MRC files, atomic models, or the packaged map.

Conventions shared by every function here:

- A volume is a cubic ``float32`` array indexed ``[z, y, x]`` with voxel size ``pixel_size_a``.
- Its centre is the voxel at index ``box // 2`` on each axis (the same convention as
  ``numpy.fft.fftshift``, so Fourier-space operations and the projector in
  :mod:`cryoparticle.simulate.projection` agree on where the particle is).
- Values are a density *per Å³*: resampling keeps the values (and so ``sum × pixel_size_a³``,
  the integral), not the sum of voxels.
- Densities computed from atoms are the electrostatic-potential density of gemmi's electron
  scattering factors (International Tables C.4.3.2), in Å⁻²: the integral of one atom is its
  electron scattering factor at zero angle, ``f_e(0)`` in Å (≈2.5 Å for carbon). Multiply by
  ``h² / (2π m₀ e) ≈ 47.88 V·Å²`` to get volts.
"""

from __future__ import annotations

import importlib.resources
import math
import warnings
from pathlib import Path

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from cryoparticle.errors import file_error, param_error

MAP_SUFFIXES = (".mrc", ".map", ".mrcs")
ATOM_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")
DEFAULT_VOLUME_NAMES = ("default", "beta_galactosidase")
#: The packaged β-galactosidase map (PDB 5A1A), relative to the ``cryoparticle`` package.
DEFAULT_VOLUME_RESOURCE = ("data", "volumes", "beta_galactosidase_5a1a.mrc")
#: Every packaged map by name (3.54 Å/voxel, made by ``scripts/make_default_volume.py``):
#: β-galactosidase (PDB 5A1A) and human apoferritin (PDB 6Z6U, the 24-mer).
PACKAGED_VOLUMES = {**{name: DEFAULT_VOLUME_RESOURCE for name in DEFAULT_VOLUME_NAMES},
                    "apoferritin": ("data", "volumes", "apoferritin_6z6u.mrc")}
#: Its voxel size: 2 × the EMPIAR-10017 pixel size (1.77 Å).
DEFAULT_VOLUME_PIXEL_SIZE_A = 3.54

# Gaussian low-pass used for atoms: sigma = resolution / (pi * sqrt(2)), so the Fourier amplitude
# falls to 1/e at 1/resolution (UCSF Chimera's ``molmap`` convention).
_SIGMA_PER_RESOLUTION = 1.0 / (math.pi * math.sqrt(2.0))
# The atoms are computed on a grid fine enough that sigma >= this many fine voxels, so point
# sampling aliases by less than exp(-2 pi^2 * 0.75^2) ~ 1.5e-5 before the Fourier crop.
_MIN_SIGMA_FINE_VOXELS = 0.75
_MAX_FINE_BOX = 512
_RELATIVE_PIXEL_TOLERANCE = 1e-6


# ----------------------------------------------------------------------------- helpers


def _check_pixel_size(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise param_error(name, value, "must be a positive number of Å") from None
    if not math.isfinite(value) or value <= 0:
        raise param_error(name, value, "must be a positive number of Å")
    return value


def _check_box(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    try:
        ok = not isinstance(value, bool) and int(value) == value and value >= 2 and value % 2 == 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise param_error(name, value, "must be an even number of voxels >= 2")
    return int(value)


def _check_cubic(vol: np.ndarray, what: str = "volume") -> np.ndarray:
    vol = np.asarray(vol)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise param_error(what, f"array of shape {vol.shape}", "must be a cubic 3-D array")
    return vol


def _even_ceil(x: float) -> int:
    return max(2, 2 * math.ceil(x / 2.0 - 1e-9))


def crop_or_pad_centered(arr: np.ndarray, size: int) -> np.ndarray:
    """Crop or zero-pad a cubic array to ``size`` per axis; index ``n//2`` goes to ``size//2``."""
    n = arr.shape[0]
    if size == n:
        return arr
    out = np.zeros((size,) * arr.ndim, dtype=arr.dtype)
    if size < n:
        start = n // 2 - size // 2
        sl = tuple(slice(start, start + size) for _ in range(arr.ndim))
        out[...] = arr[sl]
    else:
        start = size // 2 - n // 2
        sl = tuple(slice(start, start + n) for _ in range(arr.ndim))
        out[sl] = arr
    return out


def _zero_nyquist(spectrum: np.ndarray) -> None:
    """Zero the unpaired Nyquist planes (index 0 of a centred spectrum of even size), in place."""
    if spectrum.shape[0] % 2 == 0:
        spectrum[0] = 0
        spectrum[:, 0] = 0
        spectrum[:, :, 0] = 0


def _fourier_resize(vol: np.ndarray, size: int) -> np.ndarray:
    """Crop or pad the centred spectrum of ``vol`` to ``size``; values (density per Å³) preserved.

    The sample at index ``n//2`` stays at ``size//2``. Unpaired Nyquist components are dropped on
    both sides so the result is exactly real and symmetric about the centre.
    """
    n = vol.shape[0]
    spectrum = sfft.fftshift(sfft.fftn(sfft.ifftshift(vol), workers=-1))
    _zero_nyquist(spectrum)
    spectrum = crop_or_pad_centered(spectrum, size)
    _zero_nyquist(spectrum)
    out = sfft.fftshift(sfft.ifftn(sfft.ifftshift(spectrum), workers=-1)).real
    return (out * (size / n) ** 3).astype(np.float32)


def _exact_fourier_sizes(n: int, ratio: float) -> tuple[int, int] | None:
    """Smallest padded size ``n_pad >= n`` with ``n_pad * ratio`` an integer (to 1e-6), or None."""
    candidates = np.arange(n, n + max(64, n) + 1)
    m = candidates * ratio
    ok = (np.abs(m - np.round(m)) <= _RELATIVE_PIXEL_TOLERANCE * m) & (np.round(m) >= 1)
    if not ok.any():
        return None
    i = int(np.argmax(ok))
    return int(candidates[i]), int(round(m[i]))


# ----------------------------------------------------------------------------- resampling


def resample_volume(vol: np.ndarray, pixel_size_a: float, target_pixel_size_a: float,
                    box_size: int | None = None) -> np.ndarray:
    """Resample a cubic volume to a new voxel size by Fourier cropping (coarser) or padding (finer).

    Convention: the voxel at index ``n // 2`` (the centre) maps to index ``m // 2`` of the result;
    voxel *values* are kept (a density per Å³), so ``vol.sum() * pixel_size_a**3`` is preserved
    up to the high frequencies a coarser grid cannot hold. When ``n * pixel_size_a /
    target_pixel_size_a`` is not an integer, the volume is first zero-padded about its centre to the
    smallest size that makes it one; if no such size exists (an irrational ratio), the Fourier
    resize goes to the nearest grid and a cubic spline corrects the last fraction of a percent.
    Finally the result is cropped or zero-padded about its centre to ``box_size`` if given (even),
    otherwise it holds the same physical extent as the input, rounded to whole voxels.

    Returns a ``float32`` array indexed ``[z, y, x]``.
    """
    pixel_size_a = _check_pixel_size("pixel_size_a", pixel_size_a)
    target_pixel_size_a = _check_pixel_size("target_pixel_size_a", target_pixel_size_a)
    box_size = _check_box("box_size", box_size)
    vol = _check_cubic(vol).astype(np.float32, copy=False)
    n = vol.shape[0]
    ratio = pixel_size_a / target_pixel_size_a

    if abs(ratio - 1.0) <= _RELATIVE_PIXEL_TOLERANCE:
        out = vol.copy()
    else:
        sizes = _exact_fourier_sizes(n, ratio)
        if sizes is not None:
            n_pad, m = sizes
            out = _fourier_resize(crop_or_pad_centered(vol, n_pad), m)
        else:
            # Fourier resize to the nearest whole grid, then a small spline rescale.
            m = max(1, round(n * ratio))
            near = _fourier_resize(vol, m)
            near_px = pixel_size_a * n / m
            scale = target_pixel_size_a / near_px  # output voxel step in units of `near` voxels
            m_out = max(1, round(n * ratio))
            offset = m // 2 - scale * (m_out // 2)
            out = ndimage.affine_transform(near, np.full(3, scale), offset=offset,
                                           output_shape=(m_out,) * 3, order=3, mode="constant",
                                           cval=0.0, prefilter=True).astype(np.float32)
    if box_size is not None:
        out = crop_or_pad_centered(out, box_size)
    return np.ascontiguousarray(out, dtype=np.float32)


# ----------------------------------------------------------------------------- atoms


def _read_model(path: Path, assembly: str | None):
    import gemmi

    try:
        st = gemmi.read_structure(str(path))
    except Exception as exc:  # gemmi raises RuntimeError/ValueError/OSError for bad files
        raise file_error(path, f"cannot read atomic model ({exc})") from exc
    if len(st) == 0:
        raise file_error(path, "no atoms in the model")
    try:
        st.setup_entities()
    except Exception:  # entity set-up is a nicety (water/ligand flags), never a reason to fail
        pass
    model = st[0].clone()  # NMR ensembles and multi-model files: the first model only
    model = _expand_assembly(st, model, assembly, path)
    model.remove_hydrogens()
    model.remove_waters()
    return model


def _expand_assembly(st, model, assembly: str | None, path: Path):
    """Apply a biological assembly.

    ``"auto"``: the first assembly if it has any non-identity operator (a crystal's asymmetric unit
    or a symmetric deposition), else the model as deposited; if expansion fails or would put
    copies on top of chains already present (a file expanded by hand that kept its BIOMT
    records), the deposited model is used, with a warning. ``None``: the model as deposited.
    Any other string: that assembly (an error if it is missing or cannot be built).
    """
    import gemmi

    if assembly is None or not st.assemblies:
        if assembly not in (None, "auto"):
            raise file_error(path, f"no assembly {assembly!r} in the model")
        return model
    if assembly == "auto":
        chosen = st.assemblies[0]
        ops = [op for gen in chosen.generators for op in gen.operators]
        if all(op.transform.is_identity() for op in ops):
            return model
    else:
        matches = [a for a in st.assemblies if a.name == assembly]
        if not matches:
            names = ", ".join(a.name for a in st.assemblies)
            raise file_error(path, f"no assembly {assembly!r} in the model (has: {names})")
        chosen = matches[0]
    try:
        expanded = gemmi.make_assembly(chosen, model, gemmi.HowToNameCopiedChain.AddNumber)
    except Exception as exc:
        if assembly != "auto":
            raise file_error(path, f"cannot build assembly {chosen.name!r} ({exc})") from exc
        warnings.warn(f"{path}: cannot build assembly {chosen.name!r} ({exc}); using the model "
                      "as deposited", stacklevel=3)
        return model
    if assembly == "auto" and _has_overlapping_chains(expanded):
        warnings.warn(f"{path}: assembly {chosen.name!r} would duplicate chains already in the "
                      "model; using the model as deposited", stacklevel=3)
        return model
    return expanded


def _has_overlapping_chains(model) -> bool:
    centres = []
    for chain in model:
        pos = np.array([atom.pos.tolist() for res in chain for atom in res])
        if len(pos):
            centres.append((len(pos), pos.mean(axis=0)))
    for i in range(len(centres)):
        for j in range(i + 1, len(centres)):
            if centres[i][0] == centres[j][0] and \
                    np.linalg.norm(centres[i][1] - centres[j][1]) < 0.5:
                return True
    return False


def _atom_table(model, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Positions (N, 3) x, y, z in Å and weights (mass × occupancy); drops atoms with no
    electron scattering factors in gemmi's table (unknown element X, Z > 98)."""
    pos, weight, bad = [], [], []
    for res in (res for chain in model for res in chain):
        for i, atom in enumerate(res):
            el = atom.element
            if el.atomic_number == 0 or el.c4322 is None:
                bad.append((res, i))
                continue
            pos.append(atom.pos.tolist())
            weight.append(el.weight * atom.occ)
    for res, i in reversed(bad):
        del res[i]
    if bad:
        warnings.warn(f"{path}: ignored {len(bad)} atom(s) of unknown element or without electron "
                      "scattering factors", stacklevel=3)
    if not pos:
        raise file_error(path, "no atoms left after removing hydrogens and waters")
    return np.asarray(pos, dtype=np.float64), np.asarray(weight, dtype=np.float64)


def _atom_margin_a(resolution_a: float) -> float:
    """Room left on each side of the outermost atom centres for their blurred density."""
    return 2.0 * resolution_a + 2.0


def density_from_atoms(path: str | Path, pixel_size_a: float, box_size: int | None = None,
                       resolution_a: float | None = None, *,
                       assembly: str | None = "auto") -> np.ndarray:
    """Electrostatic-potential density of an atomic model (PDB or mmCIF, optionally ``.gz``).

    Hydrogens and waters are removed; the first model is used; ``assembly`` is applied as in
    :func:`_expand_assembly` (``"auto"`` builds the first biological assembly only when it has
    non-identity operators). Alternative conformations are all kept, weighted by occupancy.

    The density is computed with gemmi's ``DensityCalculatorE`` (electron scattering factors, each
    atom blurred by its B-factor) plus a Gaussian low-pass to ``resolution_a`` (default
    ``2 × pixel_size_a``, Nyquist): sigma = resolution / (π√2), Fourier amplitude 1/e at
    1/resolution. It is evaluated on a grid an integer factor finer than ``pixel_size_a`` (gemmi
    samples atoms point-wise) and Fourier-cropped to exactly ``pixel_size_a``.

    The mass-weighted centre of mass sits at voxel index ``box // 2`` on every axis. The default
    ``box_size`` is the smallest even size holding the model's diameter about its centre of mass
    (twice the largest atom distance, so every rotation fits) plus 10 % and, on each side,
    ``2 × resolution_a + 2 Å`` for the atoms' own blurred extent. A smaller ``box_size`` crops
    the result (the density is still computed in the full box, so nothing wraps around).
    Returns ``float32`` indexed ``[z, y, x]``, in Å⁻² (see the module docstring).
    """
    import gemmi

    path = Path(path)
    pixel_size_a = _check_pixel_size("pixel_size_a", pixel_size_a)
    box_size = _check_box("box_size", box_size)
    if resolution_a is None:
        resolution_a = 2.0 * pixel_size_a
    resolution_a = _check_pixel_size("resolution_a", resolution_a)
    if not path.exists():
        raise file_error(path, "no such file")
    if path.is_dir():
        raise file_error(path, "is a folder, not an atomic model file")

    model = _read_model(path, assembly)
    pos, weight = _atom_table(model, path)
    com = (pos * weight[:, None]).sum(axis=0) / weight.sum() if weight.sum() > 0 \
        else pos.mean(axis=0)
    radius_a = float(np.linalg.norm(pos - com, axis=1).max())
    needed = _even_ceil((1.1 * 2.0 * radius_a + 2.0 * _atom_margin_a(resolution_a)) / pixel_size_a)
    box = box_size if box_size is not None else needed
    calc_box = max(box, needed)  # never let gemmi's periodic grid wrap atoms into the box

    sigma_a = resolution_a * _SIGMA_PER_RESOLUTION
    factor = max(1, math.ceil(_MIN_SIGMA_FINE_VOXELS * pixel_size_a / sigma_a))
    factor = max(1, min(factor, _MAX_FINE_BOX // calc_box))
    fine_box = calc_box * factor
    length_a = calc_box * pixel_size_a

    # Move the centre of mass to the position of voxel calc_box // 2 (fine index factor * that).
    shift = np.full(3, (calc_box // 2) * pixel_size_a) - com
    tr = gemmi.Transform()
    tr.vec.fromlist(shift.tolist())
    model.transform_pos_and_adp(tr)

    calc = gemmi.DensityCalculatorE()
    calc.grid.unit_cell = gemmi.UnitCell(length_a, length_a, length_a, 90, 90, 90)
    calc.grid.spacegroup = gemmi.SpaceGroup("P 1")
    calc.grid.set_size(fine_box, fine_box, fine_box)
    calc.blur = 8.0 * math.pi**2 * sigma_a**2  # B = 8π²σ², added to every atom's B-factor
    try:
        calc.add_model_density_to_grid(model)
    except Exception as exc:
        raise file_error(path, f"cannot compute density ({exc})") from exc
    fine = np.array(calc.grid, copy=True).transpose(2, 1, 0)  # gemmi's [x, y, z] -> [z, y, x]

    vol = _fourier_resize(np.ascontiguousarray(fine), calc_box) if factor > 1 else fine
    vol = crop_or_pad_centered(vol, box)
    return np.ascontiguousarray(vol, dtype=np.float32)


# ----------------------------------------------------------------------------- entry point


def _suffix_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
        if any(name.endswith(s) for s in ATOM_SUFFIXES):
            return "atoms"
        return None
    if any(name.endswith(s) for s in MAP_SUFFIXES):
        return "map"
    if any(name.endswith(s) for s in ATOM_SUFFIXES):
        return "atoms"
    return None


def default_volume_path(name: str = "default"):
    """A packaged map (default: β-galactosidase) as a ``Traversable`` (open it via
    ``resources.as_file``); ``name`` is a key of :data:`PACKAGED_VOLUMES`."""
    return importlib.resources.files("cryoparticle").joinpath(*PACKAGED_VOLUMES[name])


def load_volume(source: str | Path, pixel_size_a: float, *,
                source_pixel_size_a: float | None = None,
                box_size: int | None = None) -> np.ndarray:
    """Load a volume at ``pixel_size_a`` from a map, an atomic model, or the packaged default.

    - ``.mrc``/``.map``/``.mrcs``: read with :func:`cryoparticle.io.mrc.read_volume` (the header's
      voxel size, or ``source_pixel_size_a`` when given) and resampled with
      :func:`resample_volume`.
    - ``.pdb``/``.ent``/``.cif``/``.mmcif`` (optionally ``.gz``): :func:`density_from_atoms`.
    - ``"default"`` or ``"beta_galactosidase"``: the packaged β-galactosidase map (PDB 5A1A,
      3.54 Å/voxel), resampled; ``"apoferritin"``: the packaged apoferritin map (PDB 6Z6U).

    ``box_size`` (even) crops or pads the result about its centre (index ``box // 2``).
    Returns a cubic ``float32`` array indexed ``[z, y, x]``.
    """
    pixel_size_a = _check_pixel_size("pixel_size_a", pixel_size_a)
    box_size = _check_box("box_size", box_size)
    if source_pixel_size_a is not None:
        source_pixel_size_a = _check_pixel_size("source_pixel_size_a", source_pixel_size_a)
    from cryoparticle.io.mrc import read_volume

    if isinstance(source, str) and source.strip().lower() in PACKAGED_VOLUMES:
        with importlib.resources.as_file(default_volume_path(source.strip().lower())) as packaged:
            if not packaged.exists():
                raise file_error(packaged, "no such file (the package data is missing; "
                                 "run scripts/make_default_volume.py)")
            vol, src_px = read_volume(packaged, source_pixel_size_a)
        return resample_volume(vol, src_px, pixel_size_a, box_size)

    path = Path(source)
    kind = _suffix_kind(path)
    if not path.exists():
        raise file_error(path, "no such file")
    if kind is None:
        raise file_error(path, "unknown volume type: expected a map (.mrc, .map, .mrcs), an "
                         "atomic model (.pdb, .ent, .cif, .mmcif, optionally .gz), or one of "
                         + ", ".join(repr(n) for n in PACKAGED_VOLUMES))
    if kind == "atoms":
        return density_from_atoms(path, pixel_size_a, box_size)
    vol, src_px = read_volume(path, source_pixel_size_a)
    vol = np.asarray(vol)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise file_error(path, f"volume must be cubic 3-D, got shape {vol.shape}")
    return resample_volume(vol, src_px, pixel_size_a, box_size)


# ----------------------------------------------------------------------------- measurements


def volume_diameter_a(vol: np.ndarray, pixel_size_a: float,
                      threshold_fraction: float = 0.05) -> float:
    """The particle's largest extent in Å: the largest distance between two voxels above
    ``threshold_fraction × max`` (plus one voxel, for the voxels' own width).

    Computed on the convex hull of the thresholded voxels, so it is exact and fast for any box.
    Returns 0.0 for a volume with no positive density.
    """
    pixel_size_a = _check_pixel_size("pixel_size_a", pixel_size_a)
    if not 0 < threshold_fraction < 1:
        raise param_error("threshold_fraction", threshold_fraction, "must be in (0, 1)")
    vol = np.asarray(vol, dtype=np.float32)
    if vol.ndim != 3:
        raise param_error("vol", f"array of shape {vol.shape}", "must be a 3-D array")
    vmax = float(vol.max()) if vol.size else 0.0
    if vmax <= 0:
        return 0.0
    mask = vol > threshold_fraction * vmax
    # Only boundary voxels can be extreme points.
    surface = mask & ~ndimage.binary_erosion(mask)
    pts = np.argwhere(surface).astype(np.float64)
    if len(pts) > 64:
        from scipy.spatial import ConvexHull, QhullError

        try:
            pts = pts[ConvexHull(pts).vertices]
        except QhullError:  # flat or degenerate point set: keep all points
            pass
    if len(pts) > 20000:  # degenerate and huge: subsample (bounded memory)
        pts = pts[np.linspace(0, len(pts) - 1, 20000).astype(int)]
    from scipy.spatial.distance import pdist

    dmax = float(pdist(pts).max()) if len(pts) > 1 else 0.0
    return (dmax + 1.0) * pixel_size_a
