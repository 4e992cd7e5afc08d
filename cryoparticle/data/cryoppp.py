"""CryoPPP datasets (Dhakal et al. 2023, *Scientific Data* 10:392): the packaged table, and
download + safe extraction of one dataset's archive.

    python -m cryoparticle.data.cryoppp list
    python -m cryoparticle.data.cryoppp download 10017 root=DIR [lite=true] [base_url=URL]

Every option lives in ``cryoparticle/conf/cryoppp.yaml``. A download fetches ``<base_url>/<ID>.tar.gz``
(``lite_base_url`` with ``lite=true``: 8-bit JPG micrographs) into ``root/<ID>.tar.gz.part``
with a progress bar, resumes an interrupted transfer with an HTTP ``Range`` request (also
on the next call), checks the size against ``Content-Length`` (and ``archive_bytes`` when known),
then extracts with tarfile's ``data`` filter — links refused as well — into a temporary folder
renamed to ``root/<ID>`` (``root/<ID>_lite``) only when complete, and writes the completion
marker :data:`MARKER` last. A folder with the marker is a cache hit: nothing is transferred.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import pandas as pd

from cryoparticle.errors import InputError, exit_on_input_error, file_error, param_error
from cryoparticle.io.atomic import write_text_atomic

MARKER = ".cryoppp_complete.json"
"""Written last into an extracted dataset folder: its presence means the dataset is complete."""

_TABLE = "tables/cryoppp.csv"
_INT_COLUMNS = ("empiar_id", "particle_diameter_px", "n_micrographs", "n_particles",
                "archive_bytes")


# --------------------------------------------------------------------------- table


def load_table() -> pd.DataFrame:
    """The packaged CryoPPP table, one row per dataset (see ``data/tables/README.md``).

    Columns: ``empiar_id`` (int), ``protein``, ``pixel_size_a`` (Å/px; NaN where the source
    gives none), ``particle_diameter_px``, ``particle_diameter_a`` (NaN where the pixel size is
    unknown), ``n_micrographs``, ``micrograph_size_px``, ``data_size_tb``, ``archive_bytes``
    (<NA>: unpublished), ``structure_weight_kda``, ``n_particles``, ``notes``.
    """
    with files("cryoparticle.data").joinpath(_TABLE).open("r", encoding="utf-8") as handle:
        table = pd.read_csv(handle, keep_default_na=True)
    for column in _INT_COLUMNS:
        table[column] = table[column].astype("Int64")
    table["notes"] = table["notes"].fillna("")
    return table


def empiar_number(empiar_id: Any) -> int:
    """``10017``, ``'10017'``, ``'EMPIAR-10017'`` or ``'empiar-10017'`` → ``10017``."""
    text = str(empiar_id).strip().lower().removeprefix("empiar").lstrip("-_ ")
    if not text.isdigit():
        raise param_error("empiar_id", empiar_id, "expected an EMPIAR number such as 10017")
    return int(text)


def dataset_info(empiar_id: Any) -> dict[str, Any]:
    """The table row of one dataset as a dict (missing values as None); unknown ID →
    :class:`InputError` listing the known ones."""
    number = empiar_number(empiar_id)
    table = load_table()
    row = table[table["empiar_id"] == number]
    if row.empty:
        known = ", ".join(str(v) for v in sorted(table["empiar_id"]))
        raise param_error("empiar_id", empiar_id, f"not a CryoPPP dataset (known: {known})")
    record = row.iloc[0].to_dict()
    out: dict[str, Any] = {}
    for key, value in record.items():
        if pd.isna(value):
            out[key] = None
        elif key in _INT_COLUMNS:
            out[key] = int(value)
        else:
            out[key] = value.item() if hasattr(value, "item") else value
    return out


def print_table(table: pd.DataFrame | None = None) -> None:
    """Print the CryoPPP table with rich (unknown values as '—')."""
    from rich.console import Console
    from rich.table import Table

    table = load_table() if table is None else table
    view = Table(title="CryoPPP datasets (Dhakal et al. 2023, Sci Data 10:392)")
    columns = [("empiar_id", "EMPIAR"), ("protein", "protein"), ("pixel_size_a", "Å/px"),
               ("particle_diameter_px", "diameter px"), ("particle_diameter_a", "diameter Å"),
               ("n_micrographs", "micrographs"), ("micrograph_size_px", "size px"),
               ("data_size_tb", "data TB"), ("n_particles", "particles")]
    for _, title in columns:
        view.add_column(title, justify="left" if title == "protein" else "right")
    for _, row in table.iterrows():
        cells = []
        for key, _ in columns:
            value = row[key]
            cells.append("—" if pd.isna(value) else str(value))
        view.add_row(*cells)
    Console(width=140).print(view)
    print("—: not given by the source table (see cryoparticle/data/tables/README.md)")


# --------------------------------------------------------------------------- download


def archive_url(base_url: str, empiar_id: int) -> str:
    return f"{str(base_url).rstrip('/')}/{int(empiar_id)}.tar.gz"


def _content_total(response: Any, offset: int) -> int | None:
    """Total archive size from ``Content-Range: bytes a-b/N`` or ``Content-Length``."""
    content_range = response.headers.get("Content-Range")
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        if total.isdigit():
            return int(total)
    length = response.headers.get("Content-Length")
    if length is not None and length.strip().isdigit():
        return int(length) + (offset if response.status == 206 else 0)
    return None


def _looks_like_html(head: bytes) -> bool:
    text = head.lstrip()[:512].lower()
    return text.startswith(b"<") and (b"<html" in text or b"<!doctype" in text)


def _transfer(url: str, part: Path, *, expected_bytes: int | None, timeout_s: float,
              chunk_bytes: int, progress: bool) -> tuple[int, bool]:
    """One request: append to ``part`` from its current size. Returns (total, complete)."""
    from tqdm import tqdm

    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "cryoparticle"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset and expected_bytes == offset:
            return offset, True  # the part is already the whole archive
        if exc.code == 416:  # the part is longer than the archive, or the server says so
            part.unlink()
            return _transfer(url, part, expected_bytes=expected_bytes, timeout_s=timeout_s,
                             chunk_bytes=chunk_bytes, progress=progress)
        raise file_error(url, f"the server answered HTTP {exc.code} ({exc.reason})") from None
    with response:
        if "html" in (response.headers.get("Content-Type") or "").lower():
            raise file_error(url, "the server sent an HTML page, not a .tar.gz archive "
                                  "(check base_url and the EMPIAR ID)")
        if offset and response.status != 206:
            offset = 0  # the server ignored Range: start again
        total = _content_total(response, offset)
        if expected_bytes is not None and total is not None and total != expected_bytes:
            raise file_error(url, f"the server offers {total} bytes, expected {expected_bytes} "
                                  "(a different or damaged file; nothing kept)")
        total = total if total is not None else expected_bytes
        received = offset
        with open(part, "ab" if offset else "wb") as out, \
                tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                     desc=Path(url).name, disable=not progress, file=sys.stderr) as bar:
            try:
                while True:
                    chunk = response.read(chunk_bytes)
                    if not chunk:
                        break
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException):
                pass  # connection lost: the caller resumes
    if total is None:
        return received, True  # no size announced: the end of the stream is the end
    if received > total:
        part.unlink()
        raise file_error(url, f"received {received} bytes, more than the announced {total} "
                              "(nothing kept)")
    return total, received == total


def fetch(url: str, archive: Path, *, expected_bytes: int | None = None, retries: int = 3,
          timeout_s: float = 30.0, chunk_bytes: int = 1 << 20, progress: bool = True) -> int:
    """Download ``url`` to ``archive`` (via ``archive.part``, resumed with HTTP Range).

    Up to ``retries`` resumptions after a lost connection; still incomplete → InputError
    (the ``.part`` file stays for the next call to resume). Returns the archive's size.
    """
    part = archive.with_name(archive.name + ".part")
    archive.parent.mkdir(parents=True, exist_ok=True)
    total, complete = 0, False
    for _ in range(max(0, int(retries)) + 1):
        try:
            total, complete = _transfer(url, part, expected_bytes=expected_bytes,
                                        timeout_s=timeout_s, chunk_bytes=chunk_bytes,
                                        progress=progress)
        except urllib.error.URLError as exc:
            reason = getattr(exc, "reason", exc)
            raise file_error(url, f"cannot reach the server ({reason}); are you offline? "
                                  "(base_url in cryoparticle/conf/cryoppp.yaml)") from None
        except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            raise file_error(url, f"cannot reach the server ({exc}); are you offline?") from None
        if complete:
            break
    have = part.stat().st_size if part.exists() else 0
    if not complete:
        raise file_error(url, f"transfer interrupted at {have} of {total} bytes after "
                              f"{retries} resumptions; run the command again to resume")
    with open(part, "rb") as handle:
        head = handle.read(1024)
    if _looks_like_html(head) or (head[:2] != b"\x1f\x8b" and not _is_plain_tar(part)):
        part.unlink()
        raise file_error(url, "is not a .tar.gz archive (an HTML page or another file); "
                              "nothing kept")
    if have != total:
        part.unlink()
        raise file_error(url, f"received {have} bytes, expected {total} (nothing kept)")
    os.replace(part, archive)
    return total


def _is_plain_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _refuse_links(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """tarfile's ``data`` filter (no ``..``, devices, unsafe modes), plus: no links at all and
    no absolute paths (the ``data`` filter would only strip the leading ``/``): a dataset holds
    regular files and folders with relative names."""
    if member.issym() or member.islnk():
        raise tarfile.FilterError(f"{member.name!r} is a link")  # type: ignore[attr-defined]
    if member.name.startswith(("/", "\\")) or os.path.isabs(member.name):
        raise tarfile.AbsolutePathError(member)  # type: ignore[attr-defined]
    return tarfile.data_filter(member, dest)


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Extract ``archive`` into the folder ``dest`` (which must not exist), atomically.

    Members go to a temporary folder beside ``dest``; a single top-level folder in the archive
    (e.g. ``10017/``) becomes ``dest``, otherwise the temporary folder does. Unsafe members
    (absolute paths, ``..``, links, devices), a truncated or corrupt archive → InputError and
    nothing left behind.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise file_error(dest, "already exists; remove it to extract again")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extracting-", dir=dest.parent))
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(tmp, filter=_refuse_links)
        entries = [p for p in tmp.iterdir()]
        source = entries[0] if len(entries) == 1 and entries[0].is_dir() \
            and not entries[0].is_symlink() else tmp
        if not any(source.iterdir()):
            raise file_error(archive, "the archive is empty")
        os.replace(source, dest)
    except tarfile.FilterError as exc:  # type: ignore[attr-defined]
        raise file_error(archive, f"unsafe archive member refused ({exc}); nothing "
                                  "extracted") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise file_error(archive, f"truncated or corrupt archive ({exc}); nothing "
                                  "extracted") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def dataset_folder(root: str | Path, empiar_id: Any, lite: bool = False) -> Path:
    """Where ``download`` puts a dataset: ``root/<ID>`` or ``root/<ID>_lite``."""
    return Path(root) / f"{empiar_number(empiar_id)}{'_lite' if lite else ''}"


def is_complete(folder: str | Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def download(empiar_id: Any, root: str | Path, *, base_url: str, lite_base_url: str | None = None,
             lite: bool = False, archive_bytes: int | None = None, retries: int = 3,
             timeout_s: float = 30.0, chunk_bytes: int = 1 << 20, keep_archive: bool = False,
             progress: bool = True) -> Path:
    """Download and extract one CryoPPP dataset; returns its folder (cached: a complete folder
    is returned at once, without network). ``archive_bytes`` overrides the table's size."""
    info = dataset_info(empiar_id)
    number = int(info["empiar_id"])
    root = Path(root)
    folder = dataset_folder(root, number, lite)
    if is_complete(folder):
        return folder
    if folder.exists():
        raise file_error(folder, "exists but is not a complete download (no "
                                 f"{MARKER}); remove it and run again")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise file_error(root, f"cannot create the folder ({exc.strerror or exc})") from None
    base = lite_base_url if lite else base_url
    if not base:
        raise param_error("lite_base_url" if lite else "base_url", base, "must be a URL")
    url = archive_url(base, number)
    archive = root / f"{number}{'_lite' if lite else ''}.tar.gz"
    expected = archive_bytes if archive_bytes is not None else (None if lite
                                                                else info["archive_bytes"])
    if archive.is_file() and (expected is None or archive.stat().st_size == expected):
        size = archive.stat().st_size  # downloaded earlier, extraction did not finish
    else:
        size = fetch(url, archive, expected_bytes=expected, retries=retries,
                     timeout_s=timeout_s, chunk_bytes=chunk_bytes, progress=progress)
    try:
        extract_archive(archive, folder)
    except InputError:
        archive.unlink(missing_ok=True)  # a corrupt archive is not a cache
        raise
    write_text_atomic(folder / MARKER, json.dumps(
        {"empiar_id": number, "lite": bool(lite), "url": url, "archive_bytes": size},
        indent=2) + "\n")
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return folder


# --------------------------------------------------------------------------- CLI


_USAGE = ("usage: python -m cryoparticle.data.cryoppp list | download EMPIAR_ID root=DIR "
          "[lite=true] [base_url=URL] [...overrides of cryoparticle/conf/cryoppp.yaml]")


@exit_on_input_error
def main(argv: Sequence[str] | None = None) -> Path | None:
    """``list`` prints the table; ``download ID key=value...`` downloads one dataset."""
    from cryoparticle.config import compose

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_USAGE)
        return None
    command, rest = args[0], args[1:]
    if command == "list":
        if rest:
            raise InputError(f"list takes no arguments (got {' '.join(rest)})")
        print_table()
        return None
    if command != "download":
        raise InputError(f"{command}: unknown command; {_USAGE}")
    positional = [a for a in rest if "=" not in a]
    overrides = [a for a in rest if "=" in a]
    if len(positional) > 1:
        raise InputError(f"download takes one EMPIAR ID (got {' '.join(positional)})")
    if positional:
        overrides.append(f"empiar_id={positional[0]}")
    try:
        cfg = compose("cryoppp", overrides)
    except Exception as exc:  # Hydra's override errors are multi-line
        raise InputError(f"{' '.join(overrides)}: {str(exc).splitlines()[0]}") from None
    if cfg.empiar_id is None:
        raise InputError(f"download needs an EMPIAR ID; {_USAGE}")
    folder = download(cfg.empiar_id, cfg.root, base_url=cfg.base_url,
                      lite_base_url=cfg.lite_base_url, lite=bool(cfg.lite),
                      archive_bytes=cfg.archive_bytes, retries=int(cfg.retries),
                      timeout_s=float(cfg.timeout_s), chunk_bytes=int(cfg.chunk_bytes),
                      keep_archive=bool(cfg.keep_archive), progress=bool(cfg.progress))
    print(f"{folder}: EMPIAR-{empiar_number(cfg.empiar_id)} ready")
    return folder


__all__ = ["MARKER", "dataset_folder", "dataset_info", "download", "empiar_number",
           "extract_archive", "fetch", "is_complete", "load_table", "main", "print_table"]


if __name__ == "__main__":
    main()
