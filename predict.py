"""Pick particles: ``python predict.py ckpt_path=CKPT input=PATH output_dir=DIR [threshold=...]``.

A thin Hydra entry point: composes ``conf/predict.yaml`` and runs
:func:`cryoparticle.picking.predict.run`. Exit code 0: every micrograph picked (or already
done); 1: some micrographs failed (each reported on one line); 2: a configuration, checkpoint
or input problem (one line, nothing written).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from cryoparticle.config import CONF_DIR, check_group_overrides
from cryoparticle.errors import exit_on_input_error


@hydra.main(config_path=str(CONF_DIR), config_name="predict", version_base="1.3")
@exit_on_input_error
def main(cfg: DictConfig) -> None:
    from cryoparticle.picking.predict import run

    summary = run(cfg)
    sys.exit(summary.exit_code)


if __name__ == "__main__":
    exit_on_input_error(check_group_overrides)("predict", sys.argv[1:])
    main()
