"""Reading weights from files: one loader for checkpoints and ``state_dict`` files.

:func:`read_checkpoint` unpickles a file written by ``torch.save`` (a Lightning checkpoint, a
``state_dict``) or reads a ``.safetensors`` file; :func:`state_dict_of` unwraps a training
checkpoint (``{"state_dict": ...}``) to its tensors. Every problem is an
:class:`~cryoparticle.errors.InputError` naming the file and what it was read for.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cryoparticle.errors import file_error
from cryoparticle.models.compact import decode_checkpoint


def read_checkpoint(path: str | Path, what: str = "checkpoint",
                    weights_only: bool = True, decode: bool = True) -> Any:
    """The object stored in ``path`` (on the CPU), a compact export's weights decoded to float
    (:func:`~cryoparticle.models.compact.decode_checkpoint`; ``decode=False``: as stored, for a
    caller that reads no weights). ``what`` names the file in errors (e.g. ``"pretrained
    weights"``); ``weights_only``: unpickle tensors and plain values only."""
    path = Path(path)
    if not path.is_file():
        raise file_error(path, f"{what} file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        stored = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise file_error(path, f"{what}: not a readable PyTorch file ({type(exc).__name__}"
                               + (f": {first}" if first else "") + ")"
                               + ("; if the file is trusted, try weights_only=False"
                                  if weights_only and path.suffix != ".safetensors" else "")
                         ) from exc
    try:
        return decode_checkpoint(stored) if decode else stored
    except ValueError as exc:
        raise file_error(path, f"{what}: malformed compact weights ({exc})") from None


def state_dict_of(stored: Any, path: str | Path, what: str = "checkpoint") -> dict[str, Tensor]:
    """The tensors of a ``state_dict`` or of a training checkpoint's ``"state_dict"``."""
    if isinstance(stored, Mapping) and isinstance(stored.get("state_dict"), Mapping):
        stored = stored["state_dict"]  # a Lightning / training checkpoint
    tensors = ({str(k): v for k, v in stored.items() if isinstance(v, Tensor)}
               if isinstance(stored, Mapping) else {})
    if not tensors:
        raise file_error(path, f"{what}: does not hold a state_dict (a dict of tensors)")
    return tensors


def read_state_dict(path: str | Path, what: str = "checkpoint") -> dict[str, Tensor]:
    """:func:`read_checkpoint` then :func:`state_dict_of`."""
    return state_dict_of(read_checkpoint(path, what), path, what)


__all__ = ["read_checkpoint", "read_state_dict", "state_dict_of"]
