"""Particle coordinate tables in and out: RELION STAR, EMAN BOX, CryoPPP CSV, Topaz.

In memory a particle table is a :class:`pandas.DataFrame` with columns :data:`COLUMNS`:

* ``micrograph`` (str): micrograph name;
* ``x``, ``y`` (float): particle centre in pixels of the original (unbinned) micrograph,
  ``x`` = column, ``y`` = row, origin at the first stored pixel (RELION ``rlnCoordinateX/Y``,
  CryoPPP ``X-Coordinate/Y-Coordinate``);
* ``diameter`` (float): particle diameter in pixels, NaN when unknown;
* ``score`` (float): picking score, NaN when unknown.

Optional extra columns (kept, and written to STAR): ``angle_rot``, ``angle_tilt``,
``angle_psi`` (degrees), ``defocus_u_a``, ``defocus_v_a`` (Å), ``defocus_angle_deg``.
Corner-based BOX coordinates and binned frames exist only at the edges, in this module.

RELION layouts (what RELION reads unchanged):

* a per-micrograph coordinate file (:func:`write_relion_coordinates`) is ONE table, as RELION's
  autopick writes it: ``rlnCoordinateX/Y``, ``rlnAutopickFigureOfMerit``, ``rlnClassNumber``,
  ``rlnAnglePsi`` (RELION 3.1's ``relion_preprocess --coord_suffix`` reads only the first
  table of a coordinate file, so no ``data_optics`` block may precede it);
* ``coordinate_files.star`` (:func:`write_coordinate_files_star`): ``rlnMicrographName`` →
  ``rlnMicrographCoordinates``, the coordinate list of RELION 4/5 (``--coord_list``);
* a combined ``particles.star`` (:func:`write_star`): ``data_optics`` + ``data_particles`` with
  ``rlnMicrographName``.

Readers take all of these, RELION's ``particles.star`` (any number of micrographs), EMAN BOX,
CryoPPP CSV, Topaz tables and cryoSPARC particle CSVs (:func:`read_particles` picks the reader).

Every writer is atomic and deterministic; every reader raises a one-line
:class:`~cryoparticle.errors.InputError` naming the file for an unusable file.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import starfile

from cryoparticle.io.checks import one_line, require_file
from cryoparticle.errors import file_error, param_error
from cryoparticle.io.atomic import write_text_atomic

COLUMNS: tuple[str, ...] = ("micrograph", "x", "y", "diameter", "score")
_NUMERIC: tuple[str, ...] = ("x", "y", "diameter", "score")

STAR_EXTRA_LABELS: dict[str, str] = {
    "angle_rot": "rlnAngleRot",
    "angle_tilt": "rlnAngleTilt",
    "angle_psi": "rlnAnglePsi",
    "defocus_u_a": "rlnDefocusU",
    "defocus_v_a": "rlnDefocusV",
    "defocus_angle_deg": "rlnDefocusAngle",
}
"""Optional table columns and the RELION labels they are written as."""

CRYOPPP_COLUMNS: tuple[str, str, str] = ("X-Coordinate", "Y-Coordinate", "Diameter")
TOPAZ_COLUMNS: tuple[str, ...] = ("image_name", "x_coord", "y_coord", "score")
_STAR_HEADER = "# Written by cryoparticle"
_STAR_VERSION = "# version 30001"  # RELION 3.1's STAR dialect (RELION 4/5 read it too)
# A comment RELION ignores: the micrograph's pixel size (Å) in a per-micrograph coordinate file.
_PIXEL_SIZE_COMMENT = "# cryoparticle rlnMicrographPixelSize"

RELION_COORDINATE_LABELS: tuple[str, ...] = (
    "rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit", "rlnClassNumber",
    "rlnAnglePsi")
"""The one table of a RELION autopick coordinate file, in RELION's order (``rlnClassNumber``
0 and ``rlnAnglePsi`` 0 are the values RELION's own pickers write for "no class, no angle")."""
COORDINATE_FILES_NAME = "coordinate_files.star"
"""RELION 4/5's list of coordinate files (block ``coordinate_files``)."""
COORDINATE_LIST_LABELS: tuple[str, str] = ("rlnMicrographName", "rlnMicrographCoordinates")
CRYOSPARC_COLUMNS: tuple[str, ...] = (
    "location/micrograph_path", "location/center_x_frac", "location/center_y_frac")
"""Columns of a cryoSPARC particle table (a ``.cs`` file exported as CSV) that locate a
particle; the micrograph size comes from ``location/micrograph_shape`` (rows, columns)."""
CRYOSPARC_SHAPE = "location/micrograph_shape"
CRYOSPARC_SCORE = "pick_stats/ncc_score"
# cryoSPARC prefixes the micrographs it imports with a numeric uid: "0123…789_mic01.mrc".
_CRYOSPARC_UID = re.compile(r"^\d{12,}_")


# --------------------------------------------------------------------------- table


def empty_particles() -> pd.DataFrame:
    """A particle table with no rows and the standard columns and dtypes."""
    return pd.DataFrame({
        "micrograph": pd.Series([], dtype=object).astype(str),
        **{name: pd.Series([], dtype=np.float64) for name in _NUMERIC},
    })


def _numeric(values: Any, source: str | Path, column: str, *, allow_nan: bool) -> np.ndarray:
    """``values`` as float64; a non-numeric (or, unless allowed, missing) value is an error."""
    series = pd.Series(values).reset_index(drop=True)
    numbers = pd.to_numeric(series, errors="coerce").astype(np.float64)
    bad = numbers.isna() & series.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise file_error(source, f"non-numeric value {series.iloc[row]!r} in column "
                                 f"{column!r} (row {row + 1})")
    if not allow_nan and numbers.isna().any():
        row = int(np.flatnonzero(numbers.isna().to_numpy())[0])
        raise file_error(source, f"missing value in column {column!r} (row {row + 1})")
    return numbers.to_numpy()


def _table(micrograph: Any, x: np.ndarray, y: np.ndarray, diameter: Any = np.nan,
           score: Any = np.nan) -> pd.DataFrame:
    """Assemble a particle table (scalars broadcast over the rows)."""
    n = len(x)
    names = [micrograph] * n if isinstance(micrograph, str) else list(micrograph)
    return pd.DataFrame({
        "micrograph": pd.Series(names, dtype=object).astype(str),
        "x": np.asarray(x, dtype=np.float64),
        "y": np.asarray(y, dtype=np.float64),
        "diameter": np.broadcast_to(np.asarray(diameter, dtype=np.float64), (n,)).copy(),
        "score": np.broadcast_to(np.asarray(score, dtype=np.float64), (n,)).copy(),
    })


def validate_particles(df: pd.DataFrame, source: str | Path) -> pd.DataFrame:
    """Check a particle table; return a normalised copy (standard columns first, floats).

    Raises :class:`InputError` naming ``source`` for missing columns, non-numeric values or
    missing ``x``/``y``.
    """
    if not isinstance(df, pd.DataFrame):
        raise file_error(source, f"expected a pandas DataFrame, got {type(df).__name__}")
    missing = [name for name in COLUMNS if name not in df.columns]
    if missing:
        raise file_error(source, f"particle table is missing column(s) {', '.join(missing)}")
    out = df.reset_index(drop=True).copy()
    out["micrograph"] = out["micrograph"].astype(str)
    for name in _NUMERIC:
        out[name] = _numeric(out[name], source, name, allow_nan=name in ("diameter", "score"))
    extras = [name for name in out.columns if name not in COLUMNS]
    return out[list(COLUMNS) + extras]


def scale_coordinates(df: pd.DataFrame, factor: float) -> pd.DataFrame:
    """A copy with ``x``, ``y`` and ``diameter`` multiplied by ``factor``.

    Binned frame from original: ``factor = 1 / bin``; original from binned: ``factor = bin``.
    """
    if not (isinstance(factor, (int, float, np.number)) and math.isfinite(factor)
            and factor > 0):
        raise param_error("factor", factor, "must be a positive finite number")
    out = validate_particles(df, "particle table")
    for name in ("x", "y", "diameter"):
        out[name] = out[name] * float(factor)
    return out


def _check_diameter(diameter: float | None) -> float:
    """Optional diameter argument (pixels) -> float, NaN when None."""
    if diameter is None:
        return math.nan
    try:
        value = float(diameter)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise param_error("diameter", diameter, "must be a positive number of pixels")
    return value


def _check_pixel_size(pixel_size_a: float) -> None:
    try:
        ok = math.isfinite(float(pixel_size_a)) and float(pixel_size_a) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise param_error("pixel_size_a", pixel_size_a, "must be a positive number of Å")


def _single_micrograph(parts: pd.DataFrame, path: Path, fmt: str) -> None:
    names = parts["micrograph"].unique()
    if len(names) > 1:
        raise file_error(path, f"particle table holds {len(names)} micrographs; "
                               f"a {fmt} file holds one (write one file per micrograph)")


def _round_half_up(values: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, halves up (68.5 -> 69, -0.5 -> 0)."""
    return np.floor(np.asarray(values, dtype=np.float64) + 0.5).astype(np.int64)


def _fmt(value: float, decimals: int = 3) -> str:
    """Compact fixed-point text: 3752 -> '3752', 10.25 -> '10.25', NaN -> 'nan'."""
    if not math.isfinite(value):
        return "nan"
    return np.format_float_positional(value, precision=decimals, trim="-")


# --------------------------------------------------------------------------- file helpers


def _require_content(path: Path) -> str:
    """The file's text; an empty (or blank) file is an error."""
    require_file(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise file_error(path, f"cannot read as text ({one_line(exc)})") from exc
    if not text.strip():
        raise file_error(path, "is empty")
    return text


def _read_csv(path: Path, sep: str, string_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """A delimited table with a header row; column names stripped of spaces."""
    _require_content(path)
    try:
        table = pd.read_csv(path, sep=sep, skipinitialspace=True,
                            dtype={name: str for name in string_columns})
    except Exception as exc:  # pandas ParserError / ValueError / ...
        raise file_error(path, f"cannot parse table ({one_line(exc)})") from exc
    table.columns = [str(name).strip() for name in table.columns]
    return table


def _require_columns(table: pd.DataFrame, path: Path, names: tuple[str, ...]) -> None:
    missing = [name for name in names if name not in table.columns]
    if missing:
        found = ", ".join(map(str, table.columns))
        raise file_error(path, f"missing column(s) {', '.join(missing)} (found: {found})")


# --------------------------------------------------------------------------- RELION STAR


def write_star(path: str | Path, df: pd.DataFrame, pixel_size_a: float | None = None) -> None:
    """Write particles as a RELION STAR file (block ``data_particles``), atomically.

    Labels: ``rlnMicrographName``, ``rlnCoordinateX/Y`` (pixels), ``rlnAutopickFigureOfMerit``
    (score, when any is known) and the optional columns of :data:`STAR_EXTRA_LABELS`.
    RELION has no per-particle diameter label, so the diameter is not written. With
    ``pixel_size_a`` (Å) a RELION 3.1 ``data_optics`` block carries ``rlnMicrographPixelSize``.
    """
    path = Path(path)
    parts = validate_particles(df, path)
    columns: dict[str, Any] = {
        "rlnMicrographName": parts["micrograph"].to_numpy(dtype=object),
        "rlnCoordinateX": parts["x"].to_numpy(),
        "rlnCoordinateY": parts["y"].to_numpy(),
    }
    if parts["score"].notna().any():
        columns["rlnAutopickFigureOfMerit"] = parts["score"].to_numpy()
    for name, label in STAR_EXTRA_LABELS.items():
        if name in parts.columns:
            values = _numeric(parts[name], path, name, allow_nan=True)
            if not np.isnan(values).all():
                columns[label] = values
    blocks: dict[str, pd.DataFrame] = {}
    if pixel_size_a is not None:
        _check_pixel_size(pixel_size_a)
        blocks["optics"] = pd.DataFrame({
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnMicrographPixelSize": [float(pixel_size_a)],
        })
        columns["rlnOpticsGroup"] = np.ones(len(parts), dtype=np.int64)
    blocks["particles"] = pd.DataFrame(columns)
    write_text_atomic(path, _star_text(blocks))


def _star_text(blocks: Mapping[str, pd.DataFrame], comments: Iterable[str] = ()) -> str:
    """STAR text of ``blocks`` (6 decimals), headed by our comment lines instead of starfile's
    time stamp, so that the output is reproducible."""
    text = starfile.to_string(dict(blocks), float_format="%.6f", na_rep="nan")
    lines = text.split("\n")
    if lines and lines[0].startswith("# Created by the starfile"):
        lines = lines[1:]
    return "\n".join([_STAR_VERSION, _STAR_HEADER, *comments, *lines])


def write_relion_coordinates(path: str | Path, df: pd.DataFrame,
                             pixel_size_a: float | None = None) -> None:
    """Write one micrograph's particles as RELION's autopick does, atomically.

    One unnamed table (``data_``) with :data:`RELION_COORDINATE_LABELS`: coordinates in pixels
    of the micrograph, the score as ``rlnAutopickFigureOfMerit`` (left out when no particle has
    one), ``rlnClassNumber`` 0 and ``rlnAnglePsi`` (the table's ``angle_psi``, else 0), then the
    other optional columns of :data:`STAR_EXTRA_LABELS` (e.g. the simulator's angles and
    defocus). ``relion_preprocess --extract --coord_suffix`` and RELION 4/5's coordinate
    lists read it unchanged. ``pixel_size_a`` (Å) goes into a comment line (RELION ignores
    comments; :func:`read_star` puts it in ``df.attrs["pixel_size_a"]``).
    """
    path = Path(path)
    parts = validate_particles(df, path)
    _single_micrograph(parts, path, "RELION coordinate")
    n = len(parts)
    columns: dict[str, Any] = {"rlnCoordinateX": parts["x"].to_numpy(),
                               "rlnCoordinateY": parts["y"].to_numpy()}
    if parts["score"].notna().any():
        columns["rlnAutopickFigureOfMerit"] = parts["score"].to_numpy()
    columns["rlnClassNumber"] = np.zeros(n, dtype=np.int64)
    columns["rlnAnglePsi"] = np.zeros(n)
    for name, label in STAR_EXTRA_LABELS.items():
        if name in parts.columns:
            values = _numeric(parts[name], path, name, allow_nan=True)
            if not np.isnan(values).all():
                columns[label] = values
    comments = []
    if pixel_size_a is not None:
        _check_pixel_size(pixel_size_a)
        comments.append(f"{_PIXEL_SIZE_COMMENT} {_fmt(float(pixel_size_a), 6)}")
    write_text_atomic(path, _star_text({"": pd.DataFrame(columns)}, comments))


def write_coordinate_files_star(path: str | Path,
                                rows: Iterable[tuple[str | Path, str | Path]]) -> None:
    """Write RELION 4/5's coordinate list (block ``coordinate_files``), atomically.

    ``rows``: ``(micrograph, coordinate file)`` pairs, written as given (``rlnMicrographName``
    must be the micrograph's name in RELION's micrographs STAR file; paths are relative to
    the RELION project directory, as RELION writes them).
    """
    path = Path(path)
    pairs = [(str(mic), str(coords)) for mic, coords in rows]
    table = pd.DataFrame({COORDINATE_LIST_LABELS[0]: [m for m, _ in pairs],
                          COORDINATE_LIST_LABELS[1]: [c for _, c in pairs]}, dtype=object)
    write_text_atomic(path, _star_text({"coordinate_files": table}))


def _star_blocks(path: Path) -> tuple[dict[str, Any], str]:
    """The file's data blocks (by name) and its text."""
    text = _require_content(path)
    try:
        blocks = starfile.read(path, always_dict=True,
                               parse_as_string=["rlnMicrographName", "rlnOpticsGroupName",
                                                "rlnMicrographCoordinates"])
    except Exception as exc:  # starfile/pandas errors for malformed files
        raise file_error(path, f"cannot parse STAR file ({one_line(exc)})") from exc
    return blocks, text


def _as_table(block: Any) -> Any:
    """A one-row simple block (a dict) as a one-row table; anything else unchanged."""
    return pd.DataFrame([block]) if isinstance(block, dict) else block


def _coordinate_block(blocks: Mapping[str, Any], path: Path) -> pd.DataFrame:
    """The data block holding particle coordinates (a one-row simple block becomes a table)."""
    for block in map(_as_table, blocks.values()):
        if isinstance(block, pd.DataFrame) and "rlnCoordinateX" in block.columns:
            if "rlnCoordinateY" not in block.columns:
                raise file_error(path, "has rlnCoordinateX but no rlnCoordinateY")
            return block
    raise file_error(path, "has no data block with rlnCoordinateX and rlnCoordinateY")


def _star_pixel_size(blocks: Mapping[str, Any], text: str) -> float | None:
    """``rlnMicrographPixelSize`` of the optics block (one value), else of our comment line."""
    optics = _as_table(blocks.get("optics"))
    if isinstance(optics, pd.DataFrame) and "rlnMicrographPixelSize" in optics.columns:
        sizes = pd.to_numeric(optics["rlnMicrographPixelSize"], errors="coerce").unique()
        if len(sizes) == 1 and math.isfinite(sizes[0]) and sizes[0] > 0:
            return float(sizes[0])
    for line in text.splitlines():
        if line.startswith(_PIXEL_SIZE_COMMENT):
            try:
                value = float(line[len(_PIXEL_SIZE_COMMENT):])
            except ValueError:
                return None
            return value if math.isfinite(value) and value > 0 else None
    return None


def _coordinate_list(blocks: Mapping[str, Any]) -> pd.DataFrame | None:
    """The RELION 4/5 coordinate list block (rlnMicrographName, rlnMicrographCoordinates)."""
    for block in map(_as_table, blocks.values()):
        if isinstance(block, pd.DataFrame) and all(label in block.columns
                                                   for label in COORDINATE_LIST_LABELS):
            return block
    return None


def _listed_file(listed: str, index: Path) -> Path:
    """A coordinate file named in ``index``: as given (relative to the working directory, as
    RELION resolves it), else relative to the index's folder."""
    for candidate in (Path(listed), index.parent / listed, index.parent / Path(listed).name):
        if candidate.is_file():
            return candidate
    raise file_error(index, f"lists coordinate file {listed!r}, which does not exist (looked "
                            f"relative to the working directory and to {index.parent})")


def _read_coordinate_list(path: Path, listing: pd.DataFrame, diameter: float | None
                          ) -> pd.DataFrame:
    names = listing[COORDINATE_LIST_LABELS[0]].astype(str).tolist()
    files = listing[COORDINATE_LIST_LABELS[1]].astype(str).tolist()
    tables = [read_star(_listed_file(listed, path), diameter, micrograph=name)
              for name, listed in zip(names, files, strict=True)]
    tables = [t for t in tables if len(t)]
    out = (pd.concat(tables, ignore_index=True) if tables else empty_particles())
    out.attrs["micrographs"] = list(dict.fromkeys(names))
    return out


def read_star(path: str | Path, diameter: float | None = None, *,
              micrograph: str | None = None) -> pd.DataFrame:
    """Read particles from a RELION STAR file: a coordinate file (one micrograph), a
    ``particles.star`` (any number of micrographs, with or without ``data_optics``) or a
    RELION 4/5 coordinate list (``coordinate_files.star``: the files it lists are read).

    The block with ``rlnCoordinateX`` is used. ``diameter`` (pixels) fills the diameter column
    (NaN if None); ``micrograph`` names the micrograph when the file has no
    ``rlnMicrographName`` (default: the file's stem). The pixel size (Å) of the optics block's
    ``rlnMicrographPixelSize`` (or of the comment :func:`write_relion_coordinates` writes), if
    any, is put in ``df.attrs["pixel_size_a"]``; a coordinate list's micrographs (with or
    without particles) in ``df.attrs["micrographs"]``.
    """
    path = Path(path)
    size = _check_diameter(diameter)
    blocks, text = _star_blocks(path)
    listing = _coordinate_list(blocks)
    if listing is not None and not any(
            isinstance(b, pd.DataFrame) and "rlnCoordinateX" in b.columns
            for b in map(_as_table, blocks.values())):
        return _read_coordinate_list(path, listing, diameter)
    block = _coordinate_block(blocks, path).reset_index(drop=True)
    if "rlnMicrographName" in block.columns:
        names: Any = block["rlnMicrographName"].astype(str).tolist()
    else:
        names = micrograph if micrograph is not None else path.stem
    score = (_numeric(block["rlnAutopickFigureOfMerit"], path, "rlnAutopickFigureOfMerit",
                      allow_nan=True)
             if "rlnAutopickFigureOfMerit" in block.columns else np.nan)
    out = _table(names,
                 _numeric(block["rlnCoordinateX"], path, "rlnCoordinateX", allow_nan=False),
                 _numeric(block["rlnCoordinateY"], path, "rlnCoordinateY", allow_nan=False),
                 size, score)
    for name, label in STAR_EXTRA_LABELS.items():
        if label in block.columns:
            out[name] = _numeric(block[label], path, label, allow_nan=True)
    pixel_size_a = _star_pixel_size(blocks, text)
    if pixel_size_a is not None:
        out.attrs["pixel_size_a"] = pixel_size_a
    return out


# --------------------------------------------------------------------------- EMAN BOX


def write_box(path: str | Path, df: pd.DataFrame, box_size: int) -> None:
    """Write one micrograph's particles as an EMAN ``.box`` file, atomically.

    Each line is ``x_corner<TAB>y_corner<TAB>box<TAB>box`` with the box's first corner
    ``round(x - box / 2)`` (halves rounded up), in pixels.
    """
    path = Path(path)
    if isinstance(box_size, bool) or not float(box_size).is_integer() or box_size <= 0:
        raise param_error("box_size", box_size, "must be a positive whole number of pixels")
    box = int(box_size)
    parts = validate_particles(df, path)
    _single_micrograph(parts, path, "BOX")
    corner_x = _round_half_up(parts["x"].to_numpy() - box / 2)
    corner_y = _round_half_up(parts["y"].to_numpy() - box / 2)
    lines = [f"{cx}\t{cy}\t{box}\t{box}\n" for cx, cy in zip(corner_x, corner_y, strict=True)]
    write_text_atomic(path, "".join(lines))


def read_box(path: str | Path, diameter: float | None = None, *,
             micrograph: str | None = None) -> pd.DataFrame:
    """Read an EMAN ``.box`` file: centre = corner + box size / 2 (pixels).

    Extra columns after the four standard ones are ignored. An empty file means a
    micrograph without particles (that is what :func:`write_box` writes for one).
    ``micrograph`` defaults to the file's stem; ``diameter`` (pixels) to NaN.
    """
    path = Path(path)
    size = _check_diameter(diameter)
    require_file(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise file_error(path, f"cannot read as text ({one_line(exc)})") from exc
    rows: list[list[float]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 4:
            raise file_error(path, f"line {number} has {len(fields)} field(s), expected "
                                   "x y width height")
        try:
            rows.append([float(field) for field in fields[:4]])
        except ValueError as exc:
            raise file_error(path, f"line {number}: non-numeric value in {line.strip()!r}") \
                from exc
    values = np.array(rows, dtype=np.float64).reshape(-1, 4)
    if not np.isfinite(values).all():
        raise file_error(path, "contains non-finite values")
    x = values[:, 0] + values[:, 2] / 2
    y = values[:, 1] + values[:, 3] / 2
    return _table(micrograph if micrograph is not None else path.stem, x, y, size)


# --------------------------------------------------------------------------- CryoPPP CSV


def write_cryoppp_csv(path: str | Path, df: pd.DataFrame) -> None:
    """Write one micrograph's particles as a CryoPPP CSV, atomically.

    Columns ``X-Coordinate,Y-Coordinate,Diameter``, whole pixels (halves rounded up), as in
    CryoPPP's own files. Every particle needs a diameter.
    """
    path = Path(path)
    parts = validate_particles(df, path)
    _single_micrograph(parts, path, "CryoPPP CSV")
    if parts["diameter"].isna().any():
        raise file_error(path, f"{int(parts['diameter'].isna().sum())} particle(s) have no "
                               "diameter; CryoPPP CSV needs one per particle")
    x = _round_half_up(parts["x"].to_numpy())
    y = _round_half_up(parts["y"].to_numpy())
    d = _round_half_up(parts["diameter"].to_numpy())
    lines = [",".join(CRYOPPP_COLUMNS) + "\n"]
    lines += [f"{a},{b},{c}\n" for a, b, c in zip(x, y, d, strict=True)]
    write_text_atomic(path, "".join(lines))


def read_cryoppp_csv(path: str | Path, micrograph: str | None = None) -> pd.DataFrame:
    """Read a CryoPPP picks CSV (``X-Coordinate,Y-Coordinate[,Diameter]``, pixels).

    ``micrograph`` defaults to the file's stem (CryoPPP names the CSV after the micrograph).
    Extra columns are ignored; without ``Diameter`` the diameter is NaN.
    """
    path = Path(path)
    table = _read_csv(path, ",")
    _require_columns(table, path, CRYOPPP_COLUMNS[:2])
    diameter = (_numeric(table["Diameter"], path, "Diameter", allow_nan=True)
                if "Diameter" in table.columns else np.nan)
    return _table(micrograph if micrograph is not None else path.stem,
                  _numeric(table["X-Coordinate"], path, "X-Coordinate", allow_nan=False),
                  _numeric(table["Y-Coordinate"], path, "Y-Coordinate", allow_nan=False),
                  diameter)


# --------------------------------------------------------------------------- Topaz


def write_topaz(path: str | Path, df: pd.DataFrame) -> None:
    """Write particles as a Topaz coordinate table (tab-separated), atomically.

    Columns ``image_name x_coord y_coord score`` (pixels); the score column is left out when
    no particle has a score. Whole-pixel coordinates are written without decimals.
    """
    path = Path(path)
    parts = validate_particles(df, path)
    with_score = bool(parts["score"].notna().any())
    header = TOPAZ_COLUMNS if with_score else TOPAZ_COLUMNS[:3]
    lines = ["\t".join(header) + "\n"]
    for row in parts.itertuples(index=False):
        fields = [row.micrograph, _fmt(row.x), _fmt(row.y)]
        if with_score:
            fields.append("nan" if math.isnan(row.score) else f"{row.score:.6g}")
        lines.append("\t".join(fields) + "\n")
    write_text_atomic(path, "".join(lines))


def read_topaz(path: str | Path, diameter: float | None = None) -> pd.DataFrame:
    """Read a Topaz coordinate table (``image_name x_coord y_coord [score]``, pixels)."""
    path = Path(path)
    size = _check_diameter(diameter)
    table = _read_csv(path, "\t", string_columns=("image_name",))
    _require_columns(table, path, TOPAZ_COLUMNS[:3])
    score = (_numeric(table["score"], path, "score", allow_nan=True)
             if "score" in table.columns else np.nan)
    return _table(table["image_name"].astype(str).tolist(),
                  _numeric(table["x_coord"], path, "x_coord", allow_nan=False),
                  _numeric(table["y_coord"], path, "y_coord", allow_nan=False),
                  size, score)


# --------------------------------------------------------------------------- cryoSPARC


def _cryosparc_shape(table: pd.DataFrame, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Micrograph (rows, columns) per particle: one ``location/micrograph_shape`` column of
    pairs (``[4096 4096]``, ``(4096, 4096)``, ``4096 4096``) or two columns ``…/0``, ``…/1``."""
    split = (f"{CRYOSPARC_SHAPE}/0", f"{CRYOSPARC_SHAPE}/1")
    if all(name in table.columns for name in split):
        return (_numeric(table[split[0]], path, split[0], allow_nan=False),
                _numeric(table[split[1]], path, split[1], allow_nan=False))
    if CRYOSPARC_SHAPE not in table.columns:
        raise file_error(path, f"cryoSPARC table without {CRYOSPARC_SHAPE} (the micrograph's "
                               "rows and columns): the fractional coordinates cannot be "
                               "turned into pixels")
    rows, cols = [], []
    for number, cell in enumerate(table[CRYOSPARC_SHAPE].astype(str), start=1):
        values = re.findall(r"\d+(?:\.\d+)?", cell)
        if len(values) != 2:
            raise file_error(path, f"row {number}: {CRYOSPARC_SHAPE} {cell!r} is not a pair "
                                   "(rows, columns)")
        rows.append(float(values[0]))
        cols.append(float(values[1]))
    return np.array(rows), np.array(cols)


def cryosparc_micrograph_name(name: str) -> str:
    """A cryoSPARC micrograph path without the numeric uid cryoSPARC prefixes to imported
    files (``J1/imported/009270517818331954156_mic01.mrc`` → ``J1/imported/mic01.mrc``)."""
    head, _, base = str(name).replace("\\", "/").rpartition("/")
    base = _CRYOSPARC_UID.sub("", base)
    return f"{head}/{base}" if head else base


def read_cryosparc_csv(path: str | Path, diameter: float | None = None) -> pd.DataFrame:
    """Read a cryoSPARC particle table exported as CSV (a ``.cs`` file through pandas or
    cryosparc-tools), holding any number of micrographs.

    Columns :data:`CRYOSPARC_COLUMNS` and ``location/micrograph_shape`` (rows, columns; one
    column of pairs or ``…/0``, ``…/1``): ``x = center_x_frac × columns``, ``y =
    center_y_frac × rows`` (pixels). The score is ``pick_stats/ncc_score`` when present; the
    micrograph is ``location/micrograph_path`` without cryoSPARC's uid prefix
    (:func:`cryosparc_micrograph_name`); a single ``location/micrograph_psize_A`` goes into
    ``df.attrs["pixel_size_a"]``.
    """
    path = Path(path)
    size = _check_diameter(diameter)
    table = _read_csv(path, ",", string_columns=(CRYOSPARC_COLUMNS[0], CRYOSPARC_SHAPE))
    _require_columns(table, path, CRYOSPARC_COLUMNS)
    rows, cols = _cryosparc_shape(table, path)
    fx = _numeric(table[CRYOSPARC_COLUMNS[1]], path, CRYOSPARC_COLUMNS[1], allow_nan=False)
    fy = _numeric(table[CRYOSPARC_COLUMNS[2]], path, CRYOSPARC_COLUMNS[2], allow_nan=False)
    score = (_numeric(table[CRYOSPARC_SCORE], path, CRYOSPARC_SCORE, allow_nan=True)
             if CRYOSPARC_SCORE in table.columns else np.nan)
    names = [cryosparc_micrograph_name(n) for n in table[CRYOSPARC_COLUMNS[0]].astype(str)]
    out = _table(names, fx * cols, fy * rows, size, score)
    if "location/micrograph_psize_A" in table.columns:
        sizes = pd.to_numeric(table["location/micrograph_psize_A"], errors="coerce").unique()
        if len(sizes) == 1 and math.isfinite(sizes[0]) and sizes[0] > 0:
            out.attrs["pixel_size_a"] = float(sizes[0])
    return out


# --------------------------------------------------------------------------- any format

MICROGRAPH_EXTENSIONS: tuple[str, ...] = (
    "_autopick.star", "_manualpick.star", ".mrc", ".mrcs", ".tif", ".tiff", ".png", ".jpg",
    ".jpeg", ".star", ".box", ".csv", ".txt", ".tsv")
"""Endings stripped from micrograph names by :func:`micrograph_key` (RELION's pick-file
suffixes first)."""
PARTICLE_EXTENSIONS: tuple[str, ...] = (".star", ".box", ".csv", ".txt", ".tsv")
"""Particle file extensions."""


def micrograph_key(name: str) -> str:
    """The name a micrograph is matched by: the base name without a known image/coordinate
    ending (``Micrographs/mic_01.mrc`` → ``mic_01``, ``mic_01_autopick.star`` → ``mic_01``;
    other dots are kept)."""
    base = os.path.basename(str(name).replace("\\", "/"))
    lower = base.lower()
    for ext in MICROGRAPH_EXTENSIONS:
        if lower.endswith(ext) and len(base) > len(ext):
            return base[: -len(ext)]
    return base


def particle_format(path: str | Path) -> str:
    """``"star"``, ``"box"``, ``"cryoppp"``, ``"topaz"`` or ``"cryosparc"``: by extension, and
    for ``.csv``/``.txt``/``.tsv`` by the header (``X-Coordinate`` → CryoPPP, ``image_name`` →
    Topaz, ``location/center_x_frac`` → cryoSPARC). Raises an ``InputError`` for a missing,
    empty or unrecognised file."""
    path = Path(path)
    suffix = path.suffix.lower()
    require_file(path)
    if suffix == ".star":
        return "star"
    if suffix == ".box":
        return "box"
    if suffix in (".csv", ".txt", ".tsv"):
        try:
            with path.open(encoding="utf-8") as handle:
                header = next((line for line in handle if line.strip()), "")
        except (OSError, UnicodeDecodeError) as exc:
            raise file_error(path, f"cannot read as text ({one_line(exc)})") from exc
        if "X-Coordinate" in header:
            return "cryoppp"
        if "image_name" in header:
            return "topaz"
        if CRYOSPARC_COLUMNS[1] in header:
            return "cryosparc"
        if not header:
            raise file_error(path, "is empty")
        raise file_error(path, "unrecognised particle table (expected a CryoPPP header "
                               "'X-Coordinate,Y-Coordinate[,Diameter]', a Topaz header "
                               "'image_name x_coord y_coord [score]' or cryoSPARC columns "
                               f"{', '.join(CRYOSPARC_COLUMNS)})")
    raise file_error(path, f"unknown particle file type {suffix or '(no extension)'!r} "
                           "(expected .star, .box, .csv, .txt or .tsv)")


def read_particles(path: str | Path, diameter: float | None = None) -> pd.DataFrame:
    """Read a particle file in any supported format (see :func:`particle_format`).

    ``diameter`` (pixels) fills the diameter column where the file gives none. Per-micrograph
    formats (BOX, CryoPPP, STAR without ``rlnMicrographName``) name the micrograph after the
    file's stem. Unknown or unusable files raise a one-line ``InputError``.
    """
    fmt = particle_format(path)
    if fmt == "star":
        return read_star(path, diameter)
    if fmt == "box":
        return read_box(path, diameter)
    if fmt == "topaz":
        return read_topaz(path, diameter)
    if fmt == "cryosparc":
        return read_cryosparc_csv(path, diameter)
    table = read_cryoppp_csv(path)
    if diameter is not None:
        table["diameter"] = table["diameter"].fillna(float(diameter))
    return table


__all__ = [
    "COLUMNS", "COORDINATE_FILES_NAME", "COORDINATE_LIST_LABELS", "CRYOPPP_COLUMNS",
    "CRYOSPARC_COLUMNS", "MICROGRAPH_EXTENSIONS", "PARTICLE_EXTENSIONS",
    "RELION_COORDINATE_LABELS", "STAR_EXTRA_LABELS", "TOPAZ_COLUMNS",
    "cryosparc_micrograph_name", "empty_particles", "micrograph_key", "particle_format",
    "read_box", "read_cryoppp_csv", "read_cryosparc_csv", "read_particles", "read_star",
    "read_topaz", "scale_coordinates", "validate_particles", "write_box",
    "write_coordinate_files_star", "write_cryoppp_csv", "write_relion_coordinates",
    "write_star", "write_topaz",
]
