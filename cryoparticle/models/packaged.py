"""Checkpoints that ship with the package, and the export that makes them small.

The general model (``general``) is a Segmenter trained by ``python train.py
experiment=general`` on simulation and real labelled micrographs; ``predict.py`` uses it when
no ``ckpt_path`` is given. :func:`export_checkpoint` turns a training checkpoint into a
shippable one: the weights (half precision by default; 8-bit rows with ``int8``, as the general
model ships), the hyperparameters and the inference facts, without optimizer state or callbacks;
``members`` adds other trainings of the same network (an ensemble, averaged by ``predict.py``).
Its model card is ``cryoparticle/models/weights/general.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from cryoparticle.errors import exit_on_input_error, file_error, param_error

PACKAGED = {"general": "general.ckpt"}
"""Name → file in ``cryoparticle/models/weights/`` of every checkpoint the package ships."""

# Keys of a Lightning checkpoint that inference and fine-tuning need.
_KEEP = ("state_dict", "hyper_parameters", "cryoparticle", "pytorch-lightning_version",
         "epoch", "global_step")


def packaged_checkpoint(name: str = "general") -> Path:
    """The path of a checkpoint shipped in the package (``general``)."""
    if name not in PACKAGED:
        raise param_error("ckpt_path", name, f"not a packaged model; choose from {sorted(PACKAGED)}"
                                             " or give a checkpoint file")
    path = Path(str(resources.files("cryoparticle.models") / "weights" / PACKAGED[name]))
    if not path.is_file():
        raise file_error(path, f"the packaged {name!r} model is missing from this installation "
                               "(reinstall cryoparticle, or give ckpt_path=FILE)")
    return path


def resolve_checkpoint(ckpt_path: str | os.PathLike[str] | None) -> Path:
    """``None`` or a packaged name (``general``) → the packaged file; else the path itself."""
    if ckpt_path is None or str(ckpt_path) in PACKAGED:
        return packaged_checkpoint("general" if ckpt_path is None else str(ckpt_path))
    return Path(ckpt_path)


def _read_training_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint to export (float weights; a compact export decoded), or InputError."""
    from cryoparticle.models.compact import decode_checkpoint

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise file_error(path, "checkpoint not found") from None
    except Exception as exc:
        raise file_error(path, f"not a readable checkpoint ({type(exc).__name__})") from exc
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise file_error(path, "not a Lightning checkpoint (no state_dict)")
    try:
        return decode_checkpoint(checkpoint)
    except ValueError as exc:
        raise file_error(path, f"malformed compact weights ({exc})") from None


def _member_weights(path: Path, network: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network weights of an ensemble member ``path``, which must hold ``network``."""
    from cryoparticle.models.segmenter import normalise_network_config, same_network

    checkpoint = _read_training_checkpoint(path)
    stored = (checkpoint.get("hyper_parameters") or {}).get("network")
    if stored is None or not same_network(stored, network):
        raise file_error(path, "an ensemble member must hold the first checkpoint's network "
                               f"({normalise_network_config(network)}), not "
                               f"{stored and normalise_network_config(stored)}")
    return {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("network.")}


def _stored_weights(state: dict[str, torch.Tensor], half: bool, int8: bool
                    ) -> dict[str, Any]:
    """``{"state_dict": ...}`` as exported: float16 (``half``), int8 rows with their
    ``weight_scales`` (``int8``), else as trained."""
    from cryoparticle.models.compact import quantise_state_dict

    if int8:
        stored, scales = quantise_state_dict(state, half=half)
        return {"state_dict": stored, "weight_scales": scales}
    if half:
        return {"state_dict": {k: v.half() if v.is_floating_point() else v
                               for k, v in state.items()}}
    return {"state_dict": dict(state)}


def export_checkpoint(source: str | os.PathLike[str], target: str | os.PathLike[str], *,
                      half: bool = True, extra: dict[str, Any] | None = None,
                      threshold: float | None = None,
                      extraction: dict[str, Any] | None = None, int8: bool = False,
                      members: Sequence[str | os.PathLike[str]] = ()) -> Path:
    """Write ``target``: ``source``'s weights (float16 when ``half``), hyperparameters and
    inference facts, without optimizer/scheduler/callback state; atomically.

    ``int8``: weight matrices as 8-bit rows (:mod:`cryoparticle.models.compact`; half the
    bytes of float16). ``members``: further checkpoints of the same network (trained with
    other seeds) whose networks are stored beside ``source``'s: ``predict.py`` then averages
    the members' probabilities (an ensemble); ``source``'s settings (pixel size, threshold,
    extraction) are the ensemble's. Re-exporting an ensemble keeps its members.
    Loading casts the weights back to the model's float32 parameters. ``extra`` is stored
    under ``checkpoint["cryoparticle"]["export"]`` (e.g. the training command and scores).
    ``threshold`` and ``extraction`` (options of
    :func:`~cryoparticle.picking.extract.extract_particles`, e.g. ``{"min_size_fraction": 0.2}``)
    replace the trained ones, which the export keeps as ``trained_threshold`` and
    ``trained_extraction``.
    """
    source, target = Path(source), Path(target)
    check_export_facts(extra or {})
    checkpoint = _read_training_checkpoint(source)
    slim = {k: checkpoint[k] for k in _KEEP if k in checkpoint}
    others = list(checkpoint.get("ensemble") or [])   # re-exporting an ensemble keeps it
    network = dict((checkpoint.get("hyper_parameters") or {}).get("network") or {})
    others += [_member_weights(Path(m), network) for m in members]
    slim.update(_stored_weights(checkpoint["state_dict"], half, int8))
    if others:
        slim["ensemble"] = [_stored_weights(m, half, int8) for m in others]
    facts = dict(slim.get("cryoparticle") or {})
    previous = facts.get("export") or {}  # re-exporting an export: keep what training stored
    facts["export"] = {"half": bool(half), "int8": bool(int8), **(extra or {})}
    for key in ("trained_threshold", "trained_extraction", "source", "members"):
        if key in previous:
            facts["export"][key] = previous[key]
    if members:
        facts["export"]["members"] = [*facts["export"].get("members", []),
                                      *(Path(m).name for m in members)]
    if threshold is not None:  # the picking threshold, wherever a loader reads it
        if not 0.0 <= float(threshold) <= 1.0:
            raise param_error("threshold", threshold, "must be a probability in [0, 1]")
        facts["export"].setdefault("trained_threshold", facts.get("picking_threshold"))
        facts["picking_threshold"] = float(threshold)
        slim["hyper_parameters"] = {**slim.get("hyper_parameters", {}),
                                    "picking_threshold": float(threshold)}
    if extraction:
        from cryoparticle.picking.extract import check_extraction_options

        merged = {**(facts.get("extraction") or {}), **check_extraction_options(extraction)}
        facts["export"].setdefault("trained_extraction", facts.get("extraction"))
        facts["extraction"] = merged
        slim["hyper_parameters"] = {**slim.get("hyper_parameters", {}), "extraction": merged}
    slim["cryoparticle"] = facts
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(slim, tmp)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shipped model from other users
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def check_export_facts(export: dict[str, Any]) -> None:
    """The facts ``predict.py`` reads from an export (``checkpoint["cryoparticle"]["export"]``),
    checked by the exporter before anything is written and by the picker on loading:
    ``core_fraction`` in (0, 1]; ``diameter_threshold``, ``relative_threshold`` and
    ``peak_quantile`` in [0, 1]."""
    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    core = export.get("core_fraction")
    if core is not None and not (number(core) and 0.0 < core <= 1.0):
        raise param_error("export.core_fraction", core, "must be in (0, 1]")
    for key in ("diameter_threshold", "relative_threshold", "peak_quantile"):
        value = export.get(key)
        if value is not None and not (number(value) and 0.0 <= value <= 1.0):
            raise param_error(f"export.{key}", value, "must be in [0, 1]")


def export_facts(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What :func:`export_checkpoint` stored as ``extra`` (``checkpoint["cryoparticle"]
    ["export"]``, e.g. ``{"half": True, "estimate_diameter": True}``); ``{}`` for a training
    checkpoint that was never exported."""
    from cryoparticle.models.checkpoints import read_checkpoint

    checkpoint = read_checkpoint(Path(path), "checkpoint", decode=False)  # facts, no weights
    facts = checkpoint.get("cryoparticle") if isinstance(checkpoint, dict) else None
    export = facts.get("export") if isinstance(facts, dict) else None
    return dict(export) if isinstance(export, dict) else {}


def _option(item: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--extraction``: ``true``/``false`` as booleans, else a number."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise param_error("--extraction", item, "must be KEY=VALUE, e.g. min_size_fraction=0.2")
    if value.lower() in ("true", "false"):
        return key, value.lower() == "true"
    try:
        return key, float(value)
    except ValueError:
        raise param_error(f"--extraction {key}", value, "must be a number or true/false") \
            from None


@exit_on_input_error
def main(argv: Sequence[str] | None = None) -> Path:
    """``python -m cryoparticle.models.packaged export SOURCE [TARGET] [--full-precision]
    [--int8] [--member CKPT ...] [--estimate-diameter] [--core-fraction F] [--threshold T]
    [--extraction KEY=VALUE ...]``:
    a shippable checkpoint (default target: the packaged general
    model's file in this checkout)."""
    parser = argparse.ArgumentParser(prog="python -m cryoparticle.models.packaged",
                                     description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="slim a training checkpoint for shipping")
    export.add_argument("source", type=Path)
    export.add_argument("target", type=Path, nargs="?", default=None)
    export.add_argument("--full-precision", action="store_true",
                        help="keep float32 weights (default: float16)")
    export.add_argument("--estimate-diameter", action="store_true",
                        help="predict.py estimates the particle diameter per micrograph")
    export.add_argument("--threshold", type=float, default=None,
                        help="the picking threshold to store (e.g. calibrated on real "
                             "validation micrographs: benchmarks/real_transfer.py "
                             "--micrographs val); default: the checkpoint's")
    export.add_argument("--core-fraction", type=float, default=None,
                        help="the network marks this share of each diameter (core targets)")
    export.add_argument("--diameter-threshold", type=float, default=None,
                        help="with --estimate-diameter: estimate at this probability threshold "
                             "(where the network's regions are the cores of --core-fraction) "
                             "instead of the picking threshold")
    export.add_argument("--relative-threshold", type=float, default=None, metavar="FRACTION",
                        help="pick each micrograph at max(threshold, FRACTION x its particle "
                             "peak level) (benchmarks/relative_threshold.py)")
    export.add_argument("--peak-quantile", type=float, default=None,
                        help="with --relative-threshold: the quantile of the particle peak "
                             "heights that is the level (default 0.5, the median)")
    export.add_argument("--int8", action="store_true",
                        help="weight matrices as 8-bit rows with a scale each (half the size "
                             "of float16)")
    export.add_argument("--member", action="append", default=[], type=Path, metavar="CKPT",
                        help="another training of the same network (e.g. another seed) to "
                             "store beside SOURCE: predict.py averages their probabilities "
                             "(repeatable)")
    export.add_argument("--extraction", action="append", default=[], metavar="KEY=VALUE",
                        help="an extraction option to store (repeatable), e.g. "
                             "min_size_fraction=0.2; default: the checkpoint's")
    args = parser.parse_args(argv)
    extraction = dict(_option(item) for item in args.extraction)
    target = args.target or Path(str(resources.files("cryoparticle.models") / "weights"
                                     / PACKAGED["general"]))
    out = export_checkpoint(args.source, target, half=not args.full_precision,
                            threshold=args.threshold, extraction=extraction,
                            int8=args.int8, members=args.member,
                            extra={"estimate_diameter": bool(args.estimate_diameter),
                                   "source": args.source.name,
                                   **({} if args.core_fraction is None
                                      else {"core_fraction": args.core_fraction}),
                                   **{key: value for key, value in (
                                       ("diameter_threshold", args.diameter_threshold),
                                       ("relative_threshold", args.relative_threshold),
                                       ("peak_quantile", args.peak_quantile))
                                      if value is not None}})
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB", file=sys.stdout)
    return out


if __name__ == "__main__":
    main()


__all__ = ["PACKAGED", "check_export_facts", "export_checkpoint", "export_facts", "main",
           "packaged_checkpoint", "resolve_checkpoint"]
