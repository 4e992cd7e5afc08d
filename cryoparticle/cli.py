"""Console entry points (``[project.scripts]`` of ``pyproject.toml``), usable from any folder.

``cryoparticle-train`` and ``cryoparticle-pick`` compose ``cryoparticle/conf/train.yaml`` and
``predict.yaml`` (the configs are package data, so an installed package finds them wherever it
runs) and call :func:`cryoparticle.training.run` / :func:`cryoparticle.picking.predict.run`;
``train.py`` and ``predict.py`` at the repository root are the same functions.
``cryoparticle-simulate`` is ``python -m cryoparticle.simulate`` and ``cryoparticle-evaluate``
``python -m cryoparticle.picking.evaluate``. Bad input: one line on stderr, exit code 2.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from cryoparticle.config import CONF_DIR, check_group_overrides
from cryoparticle.errors import exit_on_input_error


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
@exit_on_input_error
def _train(cfg: DictConfig) -> float | None:
    from cryoparticle.training import optimized_value, run

    metrics, _ = run(cfg)
    return optimized_value(cfg, metrics)


@hydra.main(config_path=str(CONF_DIR), config_name="predict", version_base="1.3")
@exit_on_input_error
def _pick(cfg: DictConfig) -> None:
    from cryoparticle.picking.predict import run

    summary = run(cfg)
    sys.exit(summary.exit_code)


def train() -> None:
    """``cryoparticle-train [model=deeplabv3] [crf=rnn] [-m sweeps]`` (= ``python train.py``)."""
    exit_on_input_error(check_group_overrides)("train", sys.argv[1:])
    _train()


def pick() -> None:
    """``cryoparticle-pick input=PATH output_dir=DIR [ckpt_path=CKPT]`` (= ``python predict.py``).
    Exit code 0: every micrograph picked (or already done); 1: some failed; 2: bad input."""
    exit_on_input_error(check_group_overrides)("predict", sys.argv[1:])
    _pick()


def evaluate() -> None:
    """``cryoparticle-evaluate --picks ... --truth ...`` (metrics printed, ``--json``)."""
    from cryoparticle.picking.evaluate import main

    main()


def simulate() -> None:
    """``cryoparticle-simulate out_dir=DIR n_micrographs=N``
    (= ``python -m cryoparticle.simulate``)."""
    from cryoparticle.simulate.__main__ import main

    main()


__all__ = ["evaluate", "pick", "simulate", "train"]
