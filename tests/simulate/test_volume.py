"""Tests for cryoparticle.simulate.volume: atoms -> density, resampling, loading, diameters."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import gemmi
import numpy as np
import pytest
from scipy import ndimage

from cryoparticle.errors import InputError
from cryoparticle.io.mrc import write_mrc
from cryoparticle.simulate.volume import (
    density_from_atoms,
    load_volume,
    resample_volume,
    volume_diameter_a,
)

# Cα-only models of PDB 5A1A and 6Z6U (CC0), made by scripts/make_test_fixtures.py.
FIXTURES = Path(__file__).resolve().parents[1] / "data"


# --------------------------------------------------------------------------- fixtures


def write_pdb(path: Path, atoms: list[tuple[str, float, float, float]], *,
              resname: str = "UNK", b_iso: float = 10.0) -> Path:
    """A minimal PDB file: one atom per residue, ``atoms`` as (element, x, y, z) in Å."""
    lines = []
    for i, (element, x, y, z) in enumerate(atoms, start=1):
        name = element.upper()
        lines.append(f"HETATM{i:5d} {name:<4} {resname:>3} A{i:4d}    "
                     f"{x:8.3f}{y:8.3f}{z:8.3f}{1.0:6.2f}{b_iso:6.2f}          {element:>2}")
    lines.append("END")
    path.write_text("\n".join(lines) + "\n")
    return path


def c4322_integral(element: str) -> float:
    """f_e(0) in Å: the integral of one atom's density (sum of the Gaussian amplitudes)."""
    coefs = gemmi.Element(element).c4322.get_coefs()
    return float(sum(coefs[: len(coefs) // 2]))


def local_peaks(vol: np.ndarray, fraction: float = 0.3) -> set[tuple[int, int, int]]:
    peaks = (vol == ndimage.maximum_filter(vol, size=3)) & (vol > fraction * vol.max())
    return {tuple(int(i) for i in p) for p in np.argwhere(peaks)}


def centre_of_mass(vol: np.ndarray) -> np.ndarray:
    """Centre of mass of the voxels above 1 % of the maximum (ignores faint periodic ringing)."""
    return np.array(ndimage.center_of_mass(np.where(vol > 0.01 * vol.max(), vol, 0)))


def gaussian_blob(box: int, pixel_size_a: float, sigma_a: float,
                  offset_a: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Normalised 3-D Gaussian (integral 1 Å⁻³·Å³) at ``box//2 + offset_a`` ([z, y, x], Å)."""
    axis = (np.arange(box) - box // 2) * pixel_size_a
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    r2 = (z - offset_a[0]) ** 2 + (y - offset_a[1]) ** 2 + (x - offset_a[2]) ** 2
    return (np.exp(-r2 / (2 * sigma_a**2)) / (2 * math.pi * sigma_a**2) ** 1.5).astype(np.float32)


def width_a(vol: np.ndarray, pixel_size_a: float) -> float:
    """RMS width along each axis (mean of the three), in Å."""
    com = centre_of_mass(vol)
    grids = np.indices(vol.shape)
    var = [(vol * (g - c) ** 2).sum() / vol.sum() for g, c in zip(grids, com)]
    return math.sqrt(float(np.mean(var))) * pixel_size_a


# --------------------------------------------------------------------------- atoms


def test_density_peaks_at_atom_positions_in_zyx_order(tmp_path):
    # Centre of mass (3, 2, 1) Å (equal masses); offsets differ on every axis so any axis swap
    # or sign flip moves the peaks.
    pdb = write_pdb(tmp_path / "three.pdb", [("C", 0, 0, 0), ("C", 9, 0, 0), ("C", 0, 6, 3)])
    vol = density_from_atoms(pdb, pixel_size_a=1.0, box_size=32)
    assert vol.shape == (32, 32, 32) and vol.dtype == np.float32
    c = 16
    expected = {(c + z - 1, c + y - 2, c + x - 3) for x, y, z in [(0, 0, 0), (9, 0, 0), (0, 6, 3)]}
    assert local_peaks(vol) == expected


def test_density_voxel_size_and_integral(tmp_path):
    pdb = write_pdb(tmp_path / "pair.pdb", [("C", 10, 20, 30), ("C", 22, 20, 30)])
    fine = density_from_atoms(pdb, pixel_size_a=1.0)
    coarse = density_from_atoms(pdb, pixel_size_a=2.0)
    assert fine.shape[0] % 2 == 0 and coarse.shape[0] % 2 == 0
    for vol, px in [(fine, 1.0), (coarse, 2.0)]:
        peaks = sorted(local_peaks(vol, 0.5))
        assert len(peaks) == 2
        (z0, y0, x0), (z1, y1, x1) = peaks
        assert (z0, y0) == (z1, y1) == (vol.shape[0] // 2,) * 2  # atoms on the x axis of the COM
        assert (x1 - x0) * px == pytest.approx(12.0)
        # Centre of mass exactly at box // 2.
        np.testing.assert_allclose(centre_of_mass(vol), [vol.shape[0] // 2] * 3, atol=0.05)
    integral_fine = fine.sum(dtype=np.float64) * 1.0**3
    integral_coarse = coarse.sum(dtype=np.float64) * 2.0**3
    assert integral_coarse == pytest.approx(integral_fine, rel=0.02)


def test_density_scales_with_atom_count_and_element(tmp_path):
    one_c = density_from_atoms(write_pdb(tmp_path / "c.pdb", [("C", 0, 0, 0)]), 1.0, box_size=24)
    two_c = density_from_atoms(write_pdb(tmp_path / "cc.pdb", [("C", 0, 0, 0), ("C", 7, 3, 1)]),
                               1.0, box_size=32)
    one_o = density_from_atoms(write_pdb(tmp_path / "o.pdb", [("O", 0, 0, 0)]), 1.0, box_size=24)
    s_c, s_cc, s_o = (float(v.sum(dtype=np.float64)) for v in (one_c, two_c, one_o))
    assert s_cc / s_c == pytest.approx(2.0, rel=0.01)
    assert s_o / s_c == pytest.approx(c4322_integral("O") / c4322_integral("C"), rel=0.02)
    # Units: one atom integrates to its electron scattering factor at zero angle, f_e(0) in Å.
    assert s_c == pytest.approx(c4322_integral("C"), rel=0.02)


def test_density_drops_hydrogens_and_reads_mmcif_and_gzip(tmp_path):
    heavy = write_pdb(tmp_path / "heavy.pdb", [("N", 0, 0, 0), ("C", 5, 1, 2)])
    with_h = write_pdb(tmp_path / "with_h.pdb", [("N", 0, 0, 0), ("C", 5, 1, 2), ("H", 1, 0, 0)])
    ref = density_from_atoms(heavy, 1.5, box_size=20)
    np.testing.assert_allclose(density_from_atoms(with_h, 1.5, box_size=20), ref, atol=1e-6)

    st = gemmi.read_structure(str(heavy))
    st.setup_entities()
    cif = tmp_path / "heavy.cif"
    st.make_mmcif_document().write_file(str(cif))
    gz = tmp_path / "heavy.pdb.gz"
    gz.write_bytes(gzip.compress(heavy.read_bytes()))
    for source in (cif, gz):
        np.testing.assert_allclose(load_volume(source, 1.5, box_size=20), ref, atol=1e-6)


def _biomt(serial: int, shift_x: float) -> list[str]:
    lines = []
    for k in range(3):
        row = "  ".join(f"{1.0 if j == k else 0.0:8.6f}" for j in range(3))
        shift = shift_x if k == 0 else 0.0
        lines.append(f"REMARK 350   BIOMT{k + 1}   {serial}  {row}  {shift:14.5f}")
    return lines


def test_density_builds_biological_assembly(tmp_path):
    """BIOMT operators are applied ("auto"), unless that would duplicate chains already present."""
    def header(chains: str) -> list[str]:
        return ["REMARK 350 BIOMOLECULE: 1", f"REMARK 350 APPLY THE FOLLOWING TO CHAINS: {chains}",
                *_biomt(1, 0.0), *_biomt(2, 15.0)]

    dimer = write_pdb(tmp_path / "plain.pdb", [("C", 0, 0, 0), ("N", 1.4, 0, 0)])
    dimer.write_text("\n".join(header("A")) + "\n" + dimer.read_text())
    one = density_from_atoms(dimer, 1.0, box_size=32, assembly=None)
    two = density_from_atoms(dimer, 1.0, box_size=32)
    assert two.sum() == pytest.approx(2 * one.sum(), rel=0.01)
    assert len(local_peaks(two, 0.5)) == 2 * len(local_peaks(one, 0.5))

    # A file already expanded by hand (chain B = chain A + 15 Å) that kept its BIOMT records.
    expanded = tmp_path / "expanded.pdb"
    lines = write_pdb(tmp_path / "tmp.pdb", [("C", 0, 0, 0), ("N", 1.4, 0, 0),
                                             ("C", 15, 0, 0), ("N", 16.4, 0, 0)])
    atoms = lines.read_text().splitlines()
    atoms = [a[:21] + ("A" if i < 2 else "B") + a[22:] for i, a in enumerate(atoms[:-1])]
    expanded.write_text("\n".join(header("A, B") + atoms + ["END"]) + "\n")
    with pytest.warns(UserWarning, match="duplicate"):
        auto = density_from_atoms(expanded, 1.0, box_size=32)
    assert auto.sum() == pytest.approx(two.sum(), rel=0.01)


def test_density_resolution_blurs(tmp_path):
    pdb = write_pdb(tmp_path / "c.pdb", [("C", 0, 0, 0)])
    sharp = density_from_atoms(pdb, 1.0, box_size=32)
    blurred = density_from_atoms(pdb, 1.0, box_size=32, resolution_a=8.0)
    assert width_a(blurred, 1.0) > 2 * width_a(sharp, 1.0)
    assert blurred.sum() == pytest.approx(sharp.sum(), rel=0.02)


# --------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("offset_a", [(0.0, 0.0, 0.0), (8.0, -12.0, 4.0)])
def test_resample_gaussian_2a_to_4a(offset_a):
    sigma = 6.0
    vol = gaussian_blob(64, 2.0, sigma, offset_a)
    out = resample_volume(vol, 2.0, 4.0)
    assert out.shape == (32, 32, 32) and out.dtype == np.float32
    expected_centre = 16 + np.array(offset_a) / 4.0
    np.testing.assert_allclose(centre_of_mass(out), expected_centre, atol=0.02)
    assert width_a(out, 4.0) == pytest.approx(sigma, rel=0.02)
    assert out.sum() * 4.0**3 == pytest.approx(vol.sum() * 2.0**3, rel=0.02)
    assert out.max() == pytest.approx(vol.max(), rel=0.02)  # values are per Å³: kept


@pytest.mark.parametrize("target", [1.0, 3.0, 2.0 * math.sqrt(2.0)])
def test_resample_other_ratios_keep_centre_width_integral(target):
    vol = gaussian_blob(48, 2.0, 5.0, (4.0, 0.0, -6.0))
    out = resample_volume(vol, 2.0, target)
    m = out.shape[0]
    assert out.shape == (m, m, m)
    assert m * target == pytest.approx(48 * 2.0, abs=target)  # same physical extent
    np.testing.assert_allclose(centre_of_mass(out), m // 2 + np.array([4.0, 0.0, -6.0]) / target,
                               atol=0.05)
    assert width_a(out, target) == pytest.approx(5.0, rel=0.02)
    assert out.sum() * target**3 == pytest.approx(vol.sum() * 2.0**3, rel=0.02)


def test_resample_box_size_crops_and_pads_about_centre():
    vol = gaussian_blob(32, 2.0, 4.0)
    for box in (20, 48):
        out = resample_volume(vol, 2.0, 2.0, box_size=box)
        assert out.shape == (box,) * 3
        assert np.unravel_index(out.argmax(), out.shape) == (box // 2,) * 3
    with pytest.raises(InputError):
        resample_volume(vol, 2.0, 2.0, box_size=21)
    with pytest.raises(InputError):
        resample_volume(vol, 0.0, 2.0)


# --------------------------------------------------------------------------- diameter


def test_volume_diameter_of_a_ball():
    axis = np.arange(64) - 32
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    ball = (z**2 + y**2 + x**2 <= 20**2).astype(np.float32)
    assert volume_diameter_a(ball, 2.0) == pytest.approx(2 * 20 * 2.0 + 2.0, abs=2.0)
    rod = np.zeros((40, 40, 40), np.float32)
    rod[20, 20, 5:35] = 1.0  # 30 voxels along x
    assert volume_diameter_a(rod, 1.5) == pytest.approx(30 * 1.5)
    assert volume_diameter_a(np.zeros((8, 8, 8), np.float32), 1.0) == 0.0


# --------------------------------------------------------------------------- default volume


def test_default_volume_is_cubic_centred_and_beta_gal_sized():
    vol = load_volume("default", 3.54)
    assert vol.ndim == 3 and len(set(vol.shape)) == 1 and vol.dtype == np.float32
    box = vol.shape[0]
    np.testing.assert_allclose(centre_of_mass(vol), [box // 2] * 3, atol=1.0)
    diameter = volume_diameter_a(vol, 3.54)
    assert 150.0 <= diameter <= 230.0, diameter  # measured: ~190 Å (5A1A max extent ~182 Å)
    half = load_volume("beta_galactosidase", 7.08)
    assert half.shape == (box // 2,) * 3
    assert half.sum() * 7.08**3 == pytest.approx(vol.sum() * 3.54**3, rel=0.02)
    boxed = load_volume("default", 1.77, box_size=96)
    assert boxed.shape == (96, 96, 96)


# --------------------------------------------------------------------------- errors


def test_missing_files_raise_input_error(tmp_path):
    for name in ("missing.mrc", "missing.pdb", "missing.cif.gz"):
        with pytest.raises(InputError, match=name.replace(".", r"\.") + ".*no such file"):
            load_volume(tmp_path / name, 2.0)
    with pytest.raises(InputError, match="missing.pdb"):
        density_from_atoms(tmp_path / "missing.pdb", 2.0)


def test_corrupt_and_non_cubic_mrc_raise_input_error(tmp_path):
    bad = tmp_path / "corrupt.mrc"
    bad.write_bytes(b"this is not an MRC file" * 10)
    with pytest.raises(InputError, match="corrupt.mrc"):
        load_volume(bad, 2.0)
    flat = tmp_path / "noncubic.mrc"
    write_mrc(flat, np.ones((8, 10, 12), np.float32), 2.0)
    with pytest.raises(InputError, match="noncubic.mrc"):
        load_volume(flat, 2.0)


def test_mrc_roundtrip_through_load_volume(tmp_path):
    vol = gaussian_blob(32, 2.0, 4.0, (2.0, -4.0, 6.0))
    path = tmp_path / "blob.map"
    write_mrc(path, vol, 2.0)
    np.testing.assert_allclose(load_volume(path, 2.0), vol, atol=1e-7)
    out = load_volume(path, 4.0, source_pixel_size_a=1.0)  # header overridden: 1 Å -> 4 Å
    assert out.shape == (8, 8, 8)


def test_empty_or_unusable_models_raise_input_error(tmp_path):
    empty = tmp_path / "empty.pdb"
    empty.write_text("")
    with pytest.raises(InputError, match="empty.pdb"):
        density_from_atoms(empty, 2.0)
    waters = write_pdb(tmp_path / "waters.pdb", [("O", 0, 0, 0), ("O", 3, 0, 0)], resname="HOH")
    with pytest.raises(InputError, match="waters.pdb"):
        load_volume(waters, 2.0)
    hydrogens = write_pdb(tmp_path / "hydrogens.pdb", [("H", 0, 0, 0), ("H", 1, 0, 0)])
    with pytest.raises(InputError, match="hydrogens.pdb"):
        density_from_atoms(hydrogens, 2.0)
    garbage = tmp_path / "garbage.cif"
    garbage.write_text("data_x\nloop_\n_atom_site.id\n'unterminated\n")
    with pytest.raises(InputError, match="garbage.cif"):
        density_from_atoms(garbage, 2.0)


def test_unknown_extension_raises_input_error(tmp_path):
    odd = tmp_path / "volume.xyz"
    odd.write_text("1 2 3\n")
    with pytest.raises(InputError, match="volume.xyz"):
        load_volume(odd, 2.0)
    with pytest.raises(InputError, match="nonexistent_name"):
        load_volume("nonexistent_name", 2.0)


# --------------------------------------------------------------------------- real models


def test_beta_galactosidase_5a1a_at_7a_has_expected_diameter():
    vol = density_from_atoms(FIXTURES / "5a1a_beta_galactosidase_ca.cif.gz", 7.08)
    np.testing.assert_allclose(centre_of_mass(vol), [vol.shape[0] // 2] * 3, atol=1.0)
    assert 175.0 <= volume_diameter_a(vol, 7.08) <= 215.0  # measured ~196 Å (blurred to 14 Å)


def test_apoferritin_6z6u_is_a_120a_shell():
    vol = density_from_atoms(FIXTURES / "6z6u_apoferritin_ca.pdb.gz", 3.54)
    # Outermost atoms are 134 Å apart; the density adds its blur and one voxel: measured ~141 Å
    # with every atom, ~139 Å with the Cα atoms of the fixture.
    assert 125.0 <= volume_diameter_a(vol, 3.54) <= 150.0
    c = vol.shape[0] // 2
    assert vol[c, c, c] < 0.05 * vol.max()  # hollow: no density at the centre
