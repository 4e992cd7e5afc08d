"""Tests for cryoparticle.io.coords: STAR, BOX, CryoPPP CSV and Topaz particle tables."""

from __future__ import annotations

import datetime as _dt
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from cryoparticle.errors import InputError
from cryoparticle.io.coords import (
    COLUMNS,
    RELION_COORDINATE_LABELS,
    cryosparc_micrograph_name,
    empty_particles,
    micrograph_key,
    particle_format,
    read_box,
    read_cryoppp_csv,
    read_cryosparc_csv,
    read_particles,
    read_star,
    read_topaz,
    scale_coordinates,
    validate_particles,
    write_box,
    write_coordinate_files_star,
    write_cryoppp_csv,
    write_relion_coordinates,
    write_star,
    write_topaz,
)

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "cryoppp_picks_sample.csv"


def _particles() -> pd.DataFrame:
    """Two micrographs; x != y everywhere, non-integer and edge (0, negative) values."""
    return pd.DataFrame({
        "micrograph": ["mic_001", "mic_001", "mic_001", "0002"],
        "x": [10.25, 3000.5, 0.0, 7.125],
        "y": [200.75, 5.0, -1.5, 4095.875],
        "diameter": [108.0, 108.0, 96.5, np.nan],
        "score": [0.5, np.nan, 1e-3, -2.25],
    })


def _one_micrograph() -> pd.DataFrame:
    return _particles().iloc[:3].reset_index(drop=True)


@pytest.fixture
def ticking_clock(tick_clock) -> None:
    """Make starfile's ``datetime.now()`` advance a minute per call (timestamps would differ)."""
    tick_clock(starfile.writer)


# --------------------------------------------------------------------------- table


def test_empty_particles_and_validate() -> None:
    empty = empty_particles()
    assert tuple(empty.columns) == COLUMNS and len(empty) == 0
    assert validate_particles(empty, "t").shape == (0, 5)
    with pytest.raises(InputError, match="picks.star: particle table is missing column"
                                         r"\(s\) diameter, score"):
        validate_particles(_particles().drop(columns=["diameter", "score"]), "picks.star")
    bad = _particles()
    bad["x"] = bad["x"].astype(object)
    bad.loc[2, "x"] = "abc"
    with pytest.raises(InputError, match="non-numeric value 'abc' in column 'x' \\(row 3\\)"):
        validate_particles(bad, "t")


def test_scale_coordinates() -> None:
    df = _particles()
    binned = scale_coordinates(df, 0.25)
    np.testing.assert_allclose(binned["x"], df["x"] / 4)
    np.testing.assert_allclose(binned["y"], df["y"] / 4)
    np.testing.assert_allclose(binned["diameter"], df["diameter"] / 4)
    np.testing.assert_array_equal(binned["score"], df["score"])
    assert df.loc[0, "x"] == 10.25  # input untouched
    np.testing.assert_allclose(scale_coordinates(binned, 4)["x"], df["x"])
    for factor in (0, -2, float("nan")):
        with pytest.raises(InputError, match="factor"):
            scale_coordinates(df, factor)


# --------------------------------------------------------------------------- STAR


def test_star_round_trip(tmp_path: Path) -> None:
    df = _particles()
    df["angle_psi"] = [10.0, 20.0, 30.5, -45.0]
    df["defocus_u_a"] = [15000.0, 15000.0, 15000.0, 21000.5]
    write_star(tmp_path / "p.star", df)
    back = read_star(tmp_path / "p.star", diameter=108)
    assert list(back["micrograph"]) == ["mic_001", "mic_001", "mic_001", "0002"]
    np.testing.assert_allclose(back["x"], df["x"])
    np.testing.assert_allclose(back["y"], df["y"])
    np.testing.assert_allclose(back["score"], df["score"])  # NaN kept as NaN
    np.testing.assert_array_equal(back["diameter"], 108.0)
    np.testing.assert_allclose(back["angle_psi"], df["angle_psi"])
    np.testing.assert_allclose(back["defocus_u_a"], df["defocus_u_a"])
    assert "pixel_size_a" not in back.attrs


def test_star_read_by_starfile_directly(tmp_path: Path) -> None:
    df = _particles()
    df["angle_rot"] = [1.0, 2.0, 3.0, 4.0]
    write_star(tmp_path / "p.star", df, pixel_size_a=1.06)
    blocks = starfile.read(tmp_path / "p.star", always_dict=True)
    assert set(blocks) == {"optics", "particles"}
    assert blocks["optics"]["rlnMicrographPixelSize"].iloc[0] == pytest.approx(1.06)
    table = blocks["particles"]
    assert {"rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY",
            "rlnAutopickFigureOfMerit", "rlnAngleRot"} <= set(table.columns)
    assert "rlnDiameter" not in table.columns
    row = table.iloc[0]
    assert (row["rlnCoordinateX"], row["rlnCoordinateY"]) == (10.25, 200.75)
    assert row["rlnMicrographName"] == "mic_001"
    assert table["rlnCoordinateY"].iloc[3] == 4095.875
    assert table["rlnAutopickFigureOfMerit"].iloc[3] == -2.25
    assert read_star(tmp_path / "p.star").attrs["pixel_size_a"] == pytest.approx(1.06)


def test_star_without_scores_omits_the_column(tmp_path: Path) -> None:
    df = _particles()
    df["score"] = np.nan
    write_star(tmp_path / "p.star", df)
    assert "rlnAutopickFigureOfMerit" not in starfile.read(tmp_path / "p.star").columns
    assert read_star(tmp_path / "p.star")["score"].isna().all()


def test_star_is_byte_identical(tmp_path: Path, ticking_clock: None) -> None:
    write_star(tmp_path / "a.star", _particles(), pixel_size_a=1.0)
    write_star(tmp_path / "b.star", _particles(), pixel_size_a=1.0)
    assert (tmp_path / "a.star").read_bytes() == (tmp_path / "b.star").read_bytes()


def test_star_empty_table_round_trip(tmp_path: Path) -> None:
    write_star(tmp_path / "none.star", empty_particles())
    back = read_star(tmp_path / "none.star")
    assert len(back) == 0 and tuple(back.columns) == COLUMNS


def test_read_star_relion_multi_block(tmp_path: Path) -> None:
    text = """
# version 30001

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnImagePixelSize #3
1 opticsGroup1 3.54

# version 30001

data_particles

loop_
_rlnImageName #1
_rlnMicrographName #2
_rlnCoordinateX #3
_rlnCoordinateY #4
_rlnAnglePsi #5
_rlnOpticsGroup #6
000001@Extract/a.mrcs MotionCorr/job002/Movies/a.mrc 135.458824 2336.664720 37.5 1
000002@Extract/a.mrcs MotionCorr/job002/Movies/a.mrc 3612.235315 2991.382371 -114.5 1
"""
    (tmp_path / "run_data.star").write_text(text)
    back = read_star(tmp_path / "run_data.star", diameter=150)
    assert list(back["micrograph"]) == ["MotionCorr/job002/Movies/a.mrc"] * 2
    assert (back.loc[0, "x"], back.loc[0, "y"]) == (135.458824, 2336.664720)
    np.testing.assert_array_equal(back["angle_psi"], [37.5, -114.5])
    assert back["score"].isna().all() and (back["diameter"] == 150).all()


def test_read_star_relion_coordinate_file(tmp_path: Path) -> None:
    """RELION autopick writes one block per micrograph without rlnMicrographName."""
    text = ("data_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n"
            "_rlnAutopickFigureOfMerit #3\n 1024.0 36.5 0.8\n 12.0 400.0 1.25\n")
    (tmp_path / "mic7_autopick.star").write_text(text)
    back = read_star(tmp_path / "mic7_autopick.star")
    assert list(back["micrograph"]) == ["mic7_autopick"] * 2
    np.testing.assert_array_equal(back["x"], [1024.0, 12.0])
    np.testing.assert_array_equal(back["y"], [36.5, 400.0])
    np.testing.assert_array_equal(back["score"], [0.8, 1.25])
    named = read_star(tmp_path / "mic7_autopick.star", micrograph="mic7")
    assert set(named["micrograph"]) == {"mic7"}


@pytest.mark.parametrize(("content", "message"), [
    ("", "is empty"),
    ("   \n\n", "is empty"),
    ("data_\n\nloop_\n_rlnMicrographName #1\n_rlnAnglePsi #2\na.mrc 3.0\n",
     "no data block with rlnCoordinateX"),
    ("data_\n\nloop_\n_rlnCoordinateX #1\n_rlnAnglePsi #2\n1.0 3.0\n", "no rlnCoordinateY"),
    ("data_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n1.0 abc\n",
     "non-numeric value 'abc' in column 'rlnCoordinateY'"),
    ("hello world\nthis is not a star file\n", "no data block"),
])
def test_read_star_malformed(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "bad.star").write_text(content)
    with pytest.raises(InputError, match="bad.star") as info:
        read_star(tmp_path / "bad.star")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_read_star_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope.star: no such file"):
        read_star(tmp_path / "nope.star")


# --------------------------------------------------------------------------- BOX


def test_box_corners_hand_computed(tmp_path: Path) -> None:
    df = pd.DataFrame({"micrograph": ["m"] * 3, "x": [100.4, 100.5, 31.0],
                       "y": [250.6, 20.0, 0.0], "diameter": [50.0] * 3,
                       "score": [np.nan] * 3})
    write_box(tmp_path / "m.box", df, 64)
    # x - 32: 68.4 -> 68, 68.5 -> 69 (halves up), -1 -> -1; y - 32: 218.6 -> 219, -12, -32
    assert (tmp_path / "m.box").read_text() == (
        "68\t219\t64\t64\n69\t-12\t64\t64\n-1\t-32\t64\t64\n")
    back = read_box(tmp_path / "m.box")
    np.testing.assert_array_equal(back["x"], [100.0, 101.0, 31.0])
    np.testing.assert_array_equal(back["y"], [251.0, 20.0, 0.0])
    assert list(back["micrograph"]) == ["m"] * 3
    assert back["diameter"].isna().all() and back["score"].isna().all()
    assert (read_box(tmp_path / "m.box", diameter=50)["diameter"] == 50).all()


def test_box_round_trip_odd_box(tmp_path: Path) -> None:
    df = _one_micrograph()
    write_box(tmp_path / "a.box", df, 65)
    back = read_box(tmp_path / "a.box", micrograph="mic_001")
    # integer corners: centres come back within half a pixel, rows in order, x/y not swapped
    np.testing.assert_allclose(back["x"], df["x"], atol=0.5)
    np.testing.assert_allclose(back["y"], df["y"], atol=0.5)
    assert list(back["micrograph"]) == ["mic_001"] * 3


def test_box_eman_extra_column_and_empty(tmp_path: Path) -> None:
    (tmp_path / "e.box").write_text("10\t20\t40\t40\t-3\n\n30 50 40 40\n")
    back = read_box(tmp_path / "e.box")
    np.testing.assert_array_equal(back["x"], [30.0, 50.0])
    np.testing.assert_array_equal(back["y"], [40.0, 70.0])
    write_box(tmp_path / "none.box", empty_particles(), 64)
    assert (tmp_path / "none.box").read_text() == ""
    assert len(read_box(tmp_path / "none.box")) == 0


@pytest.mark.parametrize(("content", "message"), [
    ("10 20 40\n", "line 1 has 3 field(s)"),
    ("10 20 40 40\n1 2 x 4\n", "line 2: non-numeric value"),
    ("10 20 nan 40\n", "non-finite"),
])
def test_read_box_malformed(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "bad.box").write_text(content)
    with pytest.raises(InputError, match="bad.box") as info:
        read_box(tmp_path / "bad.box")
    assert message in str(info.value)


def test_write_box_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="holds 2 micrographs"):
        write_box(tmp_path / "two.box", _particles(), 64)
    for box in (0, -4, 10.5):
        with pytest.raises(InputError, match="box_size"):
            write_box(tmp_path / "a.box", _one_micrograph(), box)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- CryoPPP CSV


def test_cryoppp_fixture_first_row() -> None:
    df = read_cryoppp_csv(FIXTURE)
    assert len(df) == 20
    assert tuple(df.loc[0, ["x", "y", "diameter"]]) == (3752.0, 693.0, 108.0)
    assert df.loc[0, "micrograph"] == "cryoppp_picks_sample"
    assert df["score"].isna().all()
    assert read_cryoppp_csv(FIXTURE, micrograph="Falcon_0").loc[0, "micrograph"] == "Falcon_0"


def test_cryoppp_round_trip(tmp_path: Path) -> None:
    df = read_cryoppp_csv(FIXTURE)
    write_cryoppp_csv(tmp_path / "out.csv", df)
    assert (tmp_path / "out.csv").read_text() == FIXTURE.read_text()  # same bytes as CryoPPP

    frac = _one_micrograph()
    write_cryoppp_csv(tmp_path / "frac.csv", frac.assign(diameter=[108.0, 108.4, 96.5]))
    lines = (tmp_path / "frac.csv").read_text().splitlines()
    assert lines == ["X-Coordinate,Y-Coordinate,Diameter", "10,201,108", "3001,5,108",
                     "0,-1,97"]
    back = read_cryoppp_csv(tmp_path / "frac.csv")
    np.testing.assert_array_equal(back["x"], [10, 3001, 0])
    np.testing.assert_array_equal(back["y"], [201, 5, -1])


def test_write_cryoppp_needs_diameters(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="1 particle\\(s\\) have no diameter"):
        write_cryoppp_csv(tmp_path / "a.csv", _particles().iloc[3:])
    with pytest.raises(InputError, match="holds 2 micrographs"):
        write_cryoppp_csv(tmp_path / "a.csv", _particles())


@pytest.mark.parametrize(("content", "message"), [
    ("", "is empty"),
    ("a,b,c\n1,2,3\n", "missing column(s) X-Coordinate, Y-Coordinate"),
    ("X-Coordinate Y-Coordinate Diameter\n1 2 3\n", "missing column(s)"),
    ("X-Coordinate,Y-Coordinate,Diameter\n1,2,108\n3,four,108\n",
     "non-numeric value 'four' in column 'Y-Coordinate' (row 2)"),
    ("X-Coordinate,Y-Coordinate,Diameter\n1,,108\n", "missing value in column 'Y-Coordinate'"),
    ('X-Coordinate,Y-Coordinate,Diameter\n1,2,3,4,5\n"unterminated\n', "cannot parse"),
])
def test_read_cryoppp_malformed(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(InputError, match="bad.csv") as info:
        read_cryoppp_csv(tmp_path / "bad.csv")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_cryoppp_header_only_is_no_particles(tmp_path: Path) -> None:
    (tmp_path / "none.csv").write_text("X-Coordinate,Y-Coordinate,Diameter\n")
    assert len(read_cryoppp_csv(tmp_path / "none.csv")) == 0


# --------------------------------------------------------------------------- Topaz


def test_topaz_round_trip(tmp_path: Path) -> None:
    df = _particles()
    write_topaz(tmp_path / "t.txt", df)
    lines = (tmp_path / "t.txt").read_text().splitlines()
    assert lines[0] == "image_name\tx_coord\ty_coord\tscore"
    assert lines[1] == "mic_001\t10.25\t200.75\t0.5"
    assert lines[2] == "mic_001\t3000.5\t5\tnan"
    back = read_topaz(tmp_path / "t.txt", diameter=40)
    assert list(back["micrograph"]) == list(df["micrograph"])  # '0002' stays a string
    np.testing.assert_allclose(back["x"], df["x"])
    np.testing.assert_allclose(back["y"], df["y"])
    np.testing.assert_allclose(back["score"], df["score"])
    assert (back["diameter"] == 40).all()


def test_topaz_without_scores(tmp_path: Path) -> None:
    write_topaz(tmp_path / "t.txt", _particles().assign(score=np.nan))
    assert (tmp_path / "t.txt").read_text().splitlines()[0] == "image_name\tx_coord\ty_coord"
    assert read_topaz(tmp_path / "t.txt")["score"].isna().all()


@pytest.mark.parametrize(("content", "message"), [
    ("", "is empty"),
    ("image_name,x_coord,y_coord\na,1,2\n", "missing column(s)"),
    ("image_name\tx_coord\ty_coord\na\t1\tb\n", "non-numeric value 'b' in column 'y_coord'"),
])
def test_read_topaz_malformed(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "bad.txt").write_text(content)
    with pytest.raises(InputError, match="bad.txt") as info:
        read_topaz(tmp_path / "bad.txt")
    assert message in str(info.value)


# --------------------------------------------------------------------------- writers


@pytest.mark.parametrize("write", [
    lambda p, df: write_star(p, df), lambda p, df: write_box(p, df, 64),
    write_cryoppp_csv, write_topaz,
])
def test_writers_reject_tables_without_columns(tmp_path: Path, write) -> None:  # noqa: ANN001
    with pytest.raises(InputError, match="out.txt: particle table is missing column"):
        write(tmp_path / "out.txt", pd.DataFrame({"x": [1.0], "y": [2.0]}))
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- RELION layouts


def test_relion_coordinates_are_one_table_as_autopick_writes_them(tmp_path: Path) -> None:
    """RELION 3.1's coordinate reader takes the first table: nothing may precede it."""
    write_relion_coordinates(tmp_path / "mic_001.star", _one_micrograph(), pixel_size_a=1.77)
    text = (tmp_path / "mic_001.star").read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[0] == "# version 30001"
    data = [line for line in lines if line.startswith("data_")]
    assert data == ["data_"]  # one unnamed block, no data_optics
    labels = [line.split()[0] for line in lines if line.startswith("_rln")]
    assert labels == ["_" + label for label in RELION_COORDINATE_LABELS]
    rows = [line.split() for line in lines if not line.startswith(("#", "_", "data_", "loop_"))]
    assert [float(v) for v in rows[0]] == [10.25, 200.75, 0.5, 0, 0]  # class 0, psi 0
    assert rows[1][2] == "nan"  # an unknown score stays unknown
    blocks = starfile.read(tmp_path / "mic_001.star", always_dict=True)
    assert list(blocks) == [""]
    back = read_star(tmp_path / "mic_001.star", diameter=108)
    assert list(back["micrograph"]) == ["mic_001"] * 3  # named after the file
    np.testing.assert_allclose(back[["x", "y"]], _one_micrograph()[["x", "y"]])
    np.testing.assert_allclose(back["score"], _one_micrograph()["score"])
    assert back.attrs["pixel_size_a"] == pytest.approx(1.77)  # from the comment line
    with pytest.raises(InputError, match="holds 2 micrographs"):
        write_relion_coordinates(tmp_path / "two.star", _particles())


def test_relion_coordinates_keep_the_simulators_angles_and_defocus(tmp_path: Path) -> None:
    df = _one_micrograph().assign(score=np.nan, angle_rot=[1.0, 2.0, 3.0],
                                  angle_tilt=[4.0, 5.0, 6.0], angle_psi=[7.0, 8.0, -9.5],
                                  defocus_u_a=[15000.0] * 3)
    write_relion_coordinates(tmp_path / "sim.star", df)
    table = starfile.read(tmp_path / "sim.star", always_dict=True)[""]
    assert list(table.columns) == ["rlnCoordinateX", "rlnCoordinateY", "rlnClassNumber",
                                   "rlnAnglePsi", "rlnAngleRot", "rlnAngleTilt", "rlnDefocusU"]
    np.testing.assert_allclose(table["rlnAnglePsi"], [7.0, 8.0, -9.5])
    back = read_star(tmp_path / "sim.star")
    np.testing.assert_allclose(back["angle_tilt"], [4.0, 5.0, 6.0])
    assert "pixel_size_a" not in back.attrs and back["score"].isna().all()


def test_coordinate_files_star_lists_and_is_followed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "picks").mkdir()
    write_relion_coordinates(Path("picks/a.star"), _one_micrograph())
    write_relion_coordinates(Path("picks/b.star"), empty_particles())
    write_coordinate_files_star("picks/coordinate_files.star",
                                [("mics/a.mrc", Path("picks/a.star")),
                                 ("mics/b.mrc", "picks/b.star")])
    listing = starfile.read(tmp_path / "picks" / "coordinate_files.star", always_dict=True)
    assert list(listing) == ["coordinate_files"]
    assert listing["coordinate_files"].to_dict("list") == {
        "rlnMicrographName": ["mics/a.mrc", "mics/b.mrc"],
        "rlnMicrographCoordinates": ["picks/a.star", "picks/b.star"]}
    back = read_star("picks/coordinate_files.star")
    assert list(back["micrograph"]) == ["mics/a.mrc"] * 3
    np.testing.assert_allclose(back["x"], _one_micrograph()["x"])
    assert back.attrs["micrographs"] == ["mics/a.mrc", "mics/b.mrc"]  # b has no particles
    # listed paths relative to the project (RELION) or to the list's folder both resolve
    monkeypatch.chdir(tmp_path / "picks")
    assert len(read_particles("coordinate_files.star")) == 3
    (tmp_path / "picks" / "b.star").unlink()
    with pytest.raises(InputError, match="coordinate_files.star: lists coordinate file "
                                         "'picks/b.star', which does not exist"):
        read_star("coordinate_files.star")


# --------------------------------------------------------------------------- cryoSPARC


def _cryosparc_records() -> np.ndarray:
    """A cryoSPARC particle dataset (``.cs`` structured array) on a 3072 × 4096 micrograph."""
    dtype = [("uid", "<u8"), ("location/micrograph_uid", "<u8"),
             ("location/exp_group_id", "<u4"), ("location/micrograph_path", "S64"),
             ("location/micrograph_shape", "<u4", (2,)), ("location/micrograph_psize_A", "<f4"),
             ("location/center_x_frac", "<f4"), ("location/center_y_frac", "<f4"),
             ("pick_stats/ncc_score", "<f4")]
    records = np.zeros(3, dtype=dtype)
    records["uid"] = [11, 12, 13]
    records["location/micrograph_path"] = [
        b"J2/imported/009270517818331954156_mic01.mrc",
        b"J2/imported/009270517818331954156_mic01.mrc", b"J2/imported/017_mic02.mrc"]
    records["location/micrograph_shape"] = [3072, 4096]  # rows, columns
    records["location/micrograph_psize_A"] = 1.06
    records["location/center_x_frac"] = [0.25, 0.5, 0.75]
    records["location/center_y_frac"] = [0.5, 0.125, 0.25]
    records["pick_stats/ncc_score"] = [0.5, 0.25, 0.125]
    return records


def _cs_frame(records: np.ndarray) -> pd.DataFrame:
    """The structured array as pandas holds it (array fields as array cells, paths as text)."""
    frame = pd.DataFrame({name: list(records[name]) for name in records.dtype.names})
    frame["location/micrograph_path"] = [p.decode() for p in records["location/micrograph_path"]]
    return frame


def test_read_cryosparc_csv_fractions_to_pixels(tmp_path: Path) -> None:
    records = _cryosparc_records()
    _cs_frame(records).to_csv(tmp_path / "P1_J5_particles_exported.csv", index=False)
    assert particle_format(tmp_path / "P1_J5_particles_exported.csv") == "cryosparc"
    back = read_particles(tmp_path / "P1_J5_particles_exported.csv", diameter=100)
    # x = fraction × columns (4096), y = fraction × rows (3072): a non-square micrograph
    np.testing.assert_allclose(back["x"], [1024.0, 2048.0, 3072.0])
    np.testing.assert_allclose(back["y"], [1536.0, 384.0, 768.0])
    np.testing.assert_allclose(back["score"], [0.5, 0.25, 0.125])
    assert list(back["micrograph"]) == ["J2/imported/mic01.mrc"] * 2 + ["J2/imported/017_mic02.mrc"]
    assert back.attrs["pixel_size_a"] == pytest.approx(1.06)
    assert (back["diameter"] == 100).all()
    # the shape as two columns (…/0 rows, …/1 columns), as a flattened export writes it
    split = _cs_frame(records).drop(columns="location/micrograph_shape")
    split["location/micrograph_shape/0"] = 3072
    split["location/micrograph_shape/1"] = 4096
    split.to_csv(tmp_path / "split.csv", index=False)
    pd.testing.assert_frame_equal(read_cryosparc_csv(tmp_path / "split.csv")[["x", "y"]],
                                  back[["x", "y"]])


def test_read_cryosparc_csv_errors(tmp_path: Path) -> None:
    frame = _cs_frame(_cryosparc_records()).drop(columns="location/micrograph_shape")
    frame.to_csv(tmp_path / "noshape.csv", index=False)
    with pytest.raises(InputError, match="noshape.csv: cryoSPARC table without "
                                         "location/micrograph_shape"):
        read_cryosparc_csv(tmp_path / "noshape.csv")
    frame.drop(columns="location/center_y_frac").to_csv(tmp_path / "noy.csv", index=False)
    with pytest.raises(InputError, match="noy.csv: missing column.*center_y_frac"):
        read_cryosparc_csv(tmp_path / "noy.csv")


def test_micrograph_names_match_across_formats() -> None:
    assert micrograph_key("AutoPick/job006/Movies/mic_01_autopick.star") == "mic_01"
    assert micrograph_key("mic_01_manualpick.star") == "mic_01"
    assert micrograph_key("MotionCorr/job002/Movies/mic_01.mrc") == "mic_01"
    assert cryosparc_micrograph_name("J1/imported/012345678901234_mic.mrc") == "J1/imported/mic.mrc"
    assert cryosparc_micrograph_name("123_mic.mrc") == "123_mic.mrc"  # short numbers are names
