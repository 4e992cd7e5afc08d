"""Error convention: bad input raises :class:`InputError` naming the file or parameter.

Entry points catch it and print one line (``error: <message>``) and exit with status 2,
so a user never sees a bare traceback for a problem in their own data or configuration.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class InputError(ValueError):
    """Invalid user input: a file that cannot be used or a parameter out of range."""


def file_error(path: str | Path, reason: str) -> InputError:
    """Build an :class:`InputError` of the form ``'<path>: <reason>'``."""
    return InputError(f"{path}: {reason}")


def param_error(name: str, value: Any, reason: str) -> InputError:
    """Build an :class:`InputError` of the form ``'<name>=<value>: <reason>'``."""
    return InputError(f"{name}={value!r}: {reason}")


def exit_on_input_error(func: F) -> F:
    """Decorate an entry point: an :class:`InputError` becomes one line on stderr and exit 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def check_positive(name: str, value: Any, *, optional: bool = False) -> float | None:
    """``value`` as a finite float > 0 (``None`` passes when ``optional``), else an InputError."""
    import math

    if value is None and optional:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if isinstance(value, bool) or not (math.isfinite(v) and v > 0):
        raise param_error(name, value, "must be a positive number" + (" or null" if optional
                                                                      else ""))
    return v
