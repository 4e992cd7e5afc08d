"""Where the Hydra configs live, and composing them from Python (tests, notebooks, benchmarks)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

#: The project's Hydra configuration folder (``conf/`` beside the package).
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with command-line style ``overrides``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides or [])


def simulator_config(name: str = "empiar10017", overrides: list[str] | None = None) -> DictConfig:
    """The ``simulator`` config group option ``name`` with overrides such as ``'noise.snr=0.05'``."""
    cfg = compose("simulate", [f"simulator={name}"] + [f"simulator.{o}" for o in overrides or []])
    return cfg.simulator
