"""JSON records (summaries, metrics, benchmark results): plain values, written atomically.

:func:`jsonable` turns numpy scalars into Python numbers, non-finite floats into ``null``
(JSON has no NaN), tuples into lists, paths into strings and keys into strings, recursively.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from cryoparticle.io.atomic import write_text_atomic


def jsonable(value: Any) -> Any:
    """``value`` with every part a JSON value (NaN/±inf → ``None``)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | Path, value: Any) -> None:
    """``value`` (made :func:`jsonable`) as indented JSON in ``path``, written atomically."""
    write_text_atomic(path, json.dumps(jsonable(value), indent=2) + "\n")


__all__ = ["jsonable", "write_json"]
