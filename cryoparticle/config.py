"""Where the Hydra configs live, and composing them from Python (tests, notebooks, benchmarks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

#: The Hydra configuration folder, inside the package (installed with it: entry points work
#: from any folder).
CONF_DIR = Path(__file__).resolve().parent / "conf"


def compose(config_name: str, overrides: list[str] | None = None,
            return_hydra_config: bool = False) -> DictConfig:
    """Compose ``cryoparticle/conf/<config_name>.yaml`` with command-line style ``overrides``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides or [],
                             return_hydra_config=return_hydra_config)


def simulator_config(name: str = "empiar10017", overrides: list[str] | None = None) -> DictConfig:
    """The ``simulator`` config group option ``name`` with overrides such as ``'noise.snr=0.05'``
    (Hydra's ``+``/``++``/``~`` prefixes add, force or delete a key:
    ``'++contrast.flip_probability=1'``)."""
    def scoped(override: str) -> str:
        key = override.lstrip("+~")
        return f"{override[:len(override) - len(key)]}simulator.{key}"

    cfg = compose("simulate", [f"simulator={name}"] + [scoped(o) for o in overrides or []])
    return cfg.simulator


def crf_params(name: str = "dense", **overrides: Any) -> dict[str, Any]:
    """The CRF energy's parameters in ``cryoparticle/conf/crf/<name>.yaml`` (those every
    implementation shares, :func:`cryoparticle.crf.checks.check_params`), with ``overrides``
    applied; the keyword arguments of :class:`~cryoparticle.crf.DenseCRF` and
    :class:`~cryoparticle.crf.MeanFieldCRF` alike."""
    import inspect

    from omegaconf import OmegaConf

    from cryoparticle.crf.checks import check_params
    from cryoparticle.errors import param_error

    path = CONF_DIR / "crf" / f"{name}.yaml"
    if not path.is_file():
        raise param_error("crf", name, "no such CRF config in cryoparticle/conf/crf/")
    cfg = OmegaConf.load(path)
    cfg = cfg.get("crf", cfg)  # crf=rnn is a global package: its CRF is under crf:
    keys = inspect.signature(check_params).parameters
    params = {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k in keys}
    return {**params, **overrides}


def check_group_overrides(config_name: str, argv: list[str]) -> None:
    """Reject ``group=option`` arguments naming no file in ``cryoparticle/conf/<group>/``, in
    one line.

    Hydra reports an unknown option with a multi-line message; this runs first so a typo in
    ``model=deeplabv4`` gives ``InputError: model=deeplabv4: unknown option ...``. Groups that
    Hydra's plugins provide (``hydra/...`` other than ours) are left to Hydra.
    """
    from cryoparticle.errors import InputError

    del config_name  # all our entry points share cryoparticle/conf/
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        group = key.lstrip("+~").split("@", 1)[0]
        folder = CONF_DIR / group
        if not folder.is_dir() or "." in group:
            continue
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        if group.startswith("hydra/") and not any(
                (folder / f"{v.strip()}.yaml").exists() for v in value.split(",")):
            continue  # a plugin's option (e.g. hydra/sweeper=optuna)
        for option in value.split(","):
            option = option.strip()
            if option and option != "null" and option not in options:
                raise InputError(f"{group}={option}: unknown option; choose from "
                                 f"{', '.join(options)}")


def instantiate(config: Any, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, letting an :class:`InputError` from the target through.

    Hydra wraps every exception of a target in an ``InstantiationException`` whose message
    spans several lines; bad input must stay a one-line :class:`InputError`.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    from cryoparticle.errors import InputError

    try:
        return hydra_instantiate(config, *args, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, InputError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise
