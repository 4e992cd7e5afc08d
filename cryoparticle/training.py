"""Training and evaluation of a segmenter from a composed Hydra config
(``cryoparticle/conf/train.yaml``).

``train.py`` only composes the config and calls :func:`run`; everything here is instantiated
from the config: data module, model, callbacks, loggers and trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from cryoparticle.config import instantiate
from omegaconf import DictConfig, OmegaConf
from rich import print as rprint
from rich.syntax import Syntax
from rich.table import Table

from cryoparticle.errors import file_error, param_error


def print_config(cfg: DictConfig) -> None:
    """Print the composed config as YAML (the run's single source of truth)."""
    text = OmegaConf.to_yaml(cfg, resolve=False)
    rprint(Syntax(text, "yaml", theme="ansi_dark", background_color="default"))


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a callbacks/logger group that has a ``_target_``."""
    if not group:
        return []
    return [instantiate(c) for c in group.values() if c is not None and "_target_" in c]


def _data_facts(datamodule: pl.LightningDataModule) -> dict[str, Any]:
    return {"pixel_size_a": float(datamodule.pixel_size_a),
            "particle_diameter_a": float(datamodule.particle_diameter_a),
            "normalisation": str(datamodule.normalisation)}


def build_model(cfg: DictConfig, datamodule: pl.LightningDataModule) -> pl.LightningModule:
    """The segmenter: from the checkpoint when only evaluating, else from the config.

    Resuming (``train=true ckpt_path=...``) checks that the checkpoint holds the same network
    as the config, so a checkpoint from another network is a clear error, not a state-dict dump.
    """
    from cryoparticle.models.segmenter import load_segmenter

    if not cfg.train:
        if not cfg.ckpt_path:
            raise param_error("ckpt_path", None, "train=false evaluates a checkpoint: give ckpt_path")
        return load_segmenter(cfg.ckpt_path)
    model = instantiate(cfg.model, **_data_facts(datamodule))
    if cfg.ckpt_path:
        load_segmenter(cfg.ckpt_path, expect_network=model.hparams.network)
    return model


def run(cfg: DictConfig) -> tuple[dict[str, float], str | None]:
    """Fit and/or test as the config says; returns the final metrics and the best checkpoint."""
    if cfg.print_config:
        print_config(cfg)
    if cfg.ckpt_path and not Path(cfg.ckpt_path).is_file():
        raise file_error(cfg.ckpt_path, "no such checkpoint file")
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = build_model(cfg, datamodule)
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    if cfg.train:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    best = None
    if trainer.checkpoint_callback is not None:
        best = trainer.checkpoint_callback.best_model_path or None
    if cfg.test:
        ckpt = best if cfg.train else cfg.ckpt_path
        if cfg.train and best is None:
            ckpt = None  # no checkpointing (e.g. fast_dev_run): test the weights in memory
        tester = trainer
        if trainer.world_size > 1:
            # Test on one device: a distributed sampler would pad the test set with repeats.
            _leave_process_group()
            if not trainer.is_global_zero:
                return metrics, best
            tester = instantiate(cfg.trainer, devices=1, num_nodes=1, strategy="auto",
                                 callbacks=[], logger=loggers or False)
        tester.test(model, datamodule=datamodule, ckpt_path=ckpt)
        metrics.update({k: float(v) for k, v in tester.callback_metrics.items()})
    if trainer.is_global_zero:
        _print_summary(metrics, best)
    return metrics, best


def _leave_process_group() -> None:
    """End this process's DDP group after fitting (ranks > 0 then stop; rank 0 tests alone)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _print_summary(metrics: dict[str, float], best: str | None) -> None:
    table = Table(title="metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in sorted(metrics):
        table.add_row(k, f"{metrics[k]:.4f}")
    rprint(table)
    if best:
        rprint(f"best checkpoint: {best}")


def optimized_value(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The metric a sweeper (Optuna) maximises, when the run produced it."""
    value = metrics.get(cfg.get("optimized_metric") or "")
    return None if value is None else float(value)


__all__ = ["run", "build_model", "optimized_value", "print_config", "instantiate_group"]
