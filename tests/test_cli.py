"""Console entry points: declared in pyproject.toml, composing the packaged configs from any
folder (the installed package's ``cryoparticle-train``/``-pick``/``-simulate``/``-evaluate``)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import cryoparticle
from cryoparticle.config import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"cryoparticle-train", "cryoparticle-pick", "cryoparticle-simulate",
           "cryoparticle-evaluate"}


def _entry(tmp_path: Path, function: str, *argv: str) -> subprocess.CompletedProcess:
    """``cryoparticle.cli.<function>()`` with ``argv``, as its console script would call it,
    in a fresh interpreter whose working folder is ``tmp_path`` (nothing of the repo there)."""
    code = (f"import sys; sys.argv = ['cryoparticle-x', *{list(argv)!r}]; "
            f"from cryoparticle.cli import {function}; {function}()")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_pyproject_declares_every_entry_point_and_they_resolve():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    scripts = project["project"]["scripts"]
    assert set(scripts) == SCRIPTS
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target
    # the configs are package data: inside the package and listed for the wheel
    assert CONF_DIR.parent == Path(cryoparticle.__file__).parent
    data = project["tool"]["setuptools"]["package-data"]["cryoparticle"]
    assert "conf/*.yaml" in data and "conf/**/*.yaml" in data
    assert (CONF_DIR / "train.yaml").is_file() and (CONF_DIR / "predict.yaml").is_file()


@pytest.mark.parametrize("function, argv, expected", [
    ("pick", ["ckpt_path=a.ckpt", "input=mics", "output_dir=out", "threshold=0.3"],
     ["ckpt_path: a.ckpt", "threshold: 0.3", "formats:"]),
    ("train", ["model=deeplabv3", "crf=meanfield"],
     ["name: deeplabv3", "_target_: cryoparticle.crf.meanfield.MeanFieldCRF"]),
    ("simulate", ["n_micrographs=3"], ["n_micrographs: 3", "pixel_size_a: 7.08"]),
])
def test_entry_point_composes_the_packaged_config_from_another_folder(tmp_path, function, argv,
                                                                      expected):
    result = _entry(tmp_path, function, *argv, "--cfg", "job")
    assert result.returncode == 0, result.stderr
    for text in expected:
        assert text in result.stdout, (text, result.stdout[-2000:])
    assert list(tmp_path.iterdir()) == []  # printing the config writes nothing


def test_entry_point_bad_option_is_one_line_exit_2(tmp_path):
    result = _entry(tmp_path, "train", "model=deeplabv4")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "model=deeplabv4" in lines[0] and "unknown option" in lines[0]


def test_evaluate_entry_point_writes_metrics_from_another_folder(tmp_path):
    truth = tmp_path / "m1.csv"
    truth.write_text("X-Coordinate,Y-Coordinate,Diameter\n10,20,8\n50,60,8\n")
    picks = tmp_path / "picks.star"
    from cryoparticle.io.coords import read_cryoppp_csv, write_star

    write_star(picks, read_cryoppp_csv(truth).assign(micrograph="m1").iloc[:1], 1.0)
    result = _entry(tmp_path, "evaluate", "--picks", "picks.star", "--truth", "m1.csv",
                    "--json", "metrics.json")
    assert result.returncode == 0, result.stderr
    import json

    pooled = json.loads((tmp_path / "metrics.json").read_text())["pooled"]
    assert (pooled["tp"], pooled["fp"], pooled["fn"]) == (1, 0, 1)
