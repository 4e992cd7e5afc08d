"""Small checks shared by the readers: the file exists, and library errors as one line."""

from __future__ import annotations

from pathlib import Path

from cryoparticle.errors import file_error


def one_line(exc: BaseException) -> str:
    """A library exception as one short line (pandas/mrcfile messages may span lines)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def require_file(path: Path) -> None:
    """Raise an :class:`InputError` unless ``path`` is an existing regular file."""
    if not path.exists():
        raise file_error(path, "no such file")
    if not path.is_file():
        raise file_error(path, "is not a regular file")
