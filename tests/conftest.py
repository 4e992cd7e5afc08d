"""Shared fixtures: configs composed with Hydra, as the entry points compose them."""

from __future__ import annotations

import pytest

from cryoparticle.config import simulator_config
from cryoparticle.simulate.micrograph import MicrographSimulator


@pytest.fixture(scope="session")
def sim_cfg():
    """The default simulator config (EMPIAR-10017-like, 7.08 Å/px)."""
    return simulator_config()


@pytest.fixture(scope="session")
def simulator(sim_cfg):
    return MicrographSimulator(sim_cfg)


@pytest.fixture
def tick_clock(monkeypatch: pytest.MonkeyPatch):
    """``tick_clock(module)``: make ``module.datetime.now()`` advance a minute per call, so that
    any timestamp a writer embeds would make two writes differ."""
    return lambda module: _tick_clock(monkeypatch, module)


def _tick_clock(monkeypatch: pytest.MonkeyPatch, module) -> None:
    import datetime as _dt
    import itertools

    ticks = itertools.count()

    class _Clock(_dt.datetime):
        @classmethod
        def now(cls, tz=None):  # noqa: ANN001, ANN206
            return _dt.datetime(2020, 1, 1) + _dt.timedelta(minutes=next(ticks))

    monkeypatch.setattr(module, "datetime", _Clock)
