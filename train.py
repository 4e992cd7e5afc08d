"""Train a particle picker: ``python train.py [model=deeplabv3] [crf=rnn] [-m sweeps]``.

A thin Hydra entry point: composes ``conf/train.yaml`` and runs :mod:`cryoparticle.training`.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from cryoparticle.config import CONF_DIR, check_group_overrides
from cryoparticle.errors import exit_on_input_error


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
@exit_on_input_error
def main(cfg: DictConfig) -> float | None:
    from cryoparticle.training import optimized_value, run

    metrics, _ = run(cfg)
    return optimized_value(cfg, metrics)


if __name__ == "__main__":
    exit_on_input_error(check_group_overrides)("train", sys.argv[1:])
    main()
