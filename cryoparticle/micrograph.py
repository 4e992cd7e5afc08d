"""The record every data source produces: a micrograph, its segmentation map and its particles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class Micrograph:
    """One micrograph with its ground truth.

    ``image`` is float32 ``(H, W)``; ``mask`` is uint8 ``(H, W)`` with 1 = particle, 0 = background
    and 255 = ignore; ``instances`` (optional) is int32 ``(H, W)`` with 0 = background and
    ``k`` = the particle in row ``k − 1`` of ``particles``. ``particles`` has the columns of
    :mod:`cryoparticle.io.coords` (``micrograph, x, y, diameter, score``; pixels of this image).
    """

    name: str
    image: np.ndarray
    mask: np.ndarray
    pixel_size_a: float
    particles: pd.DataFrame
    instances: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
