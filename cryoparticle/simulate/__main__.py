"""``python -m cryoparticle.simulate out_dir=DIR n_micrographs=N micrograph_size=S seed=K``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from cryoparticle.config import CONF_DIR
from cryoparticle.errors import exit_on_input_error


@hydra.main(config_path=str(CONF_DIR), config_name="simulate", version_base="1.3")
@exit_on_input_error
def main(cfg: DictConfig) -> None:
    from cryoparticle.simulate.dataset_writer import write_dataset

    counts = write_dataset(cfg)
    print(f"{cfg.out_dir}: {counts['written']} micrographs written, "
          f"{counts['skipped']} already there (skipped)")


if __name__ == "__main__":
    main()
