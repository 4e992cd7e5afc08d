"""Model tests run single-threaded: on a shared 2-core machine, two torch threads fighting other
processes make small convolutions 10× slower than one thread."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
