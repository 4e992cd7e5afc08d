"""Pick particles on micrographs of any size with a trained segmenter (``python predict.py``).

The flow, one micrograph at a time (``cryoparticle/conf/predict.yaml`` holds every parameter;
the settings are checked by :mod:`~cryoparticle.picking.settings`):

1. **list** the input (a file, a folder, a glob or a list of them):
   :func:`~cryoparticle.picking.inputs.list_micrographs`; **load** ``ckpt_path``, or the
   packaged general model when it is null or ``general``
   (:func:`~cryoparticle.models.packaged.resolve_checkpoint`), with its facts
   (:func:`load_picker`: ``inference_facts()`` and the export's, e.g. ``estimate_diameter``);
2. **read and resample** in DataLoader workers
   (:class:`~cryoparticle.picking.inputs.MicrographFiles`): the micrograph is read (MRC/MRCS
   single image, TIFF, PNG, JPEG), its padding border detected (``drop_border``),
   Fourier-binned to the checkpoint's pixel size (Fourier-padded when up to 2× coarser; the
   micrograph's own from ``micrograph_pixel_size_a`` or the MRC header) and normalised as in
   training. A micrograph that cannot be used (corrupt,
   truncated, a stack, NaN/Inf, constant, no pixel size, smaller than one particle) becomes an
   *error record*, not an exception, so the rest go on;
3. **segment** (:class:`~cryoparticle.picking.segment.MicrographSegmenter`): overlapping
   tiles in batches, blended without seams (:func:`cryoparticle.data.tiling.predict_tiled`),
   the particle probability map. On one device (the default ``trainer`` config: CPU, or one
   GPU) in a plain loop, without importing PyTorch Lightning (:func:`single_device`); with
   several devices, nodes or another strategy through ``Trainer.predict``
   (:class:`~cryoparticle.picking.module.PickingModule`), several GPUs splitting the
   micrographs under DDP;
4. **extract and write** (:class:`~cryoparticle.picking.writers.PickRecorder`; under
   Lightning inside :class:`~cryoparticle.picking.module.PickWriter`, a
   ``BasePredictionWriter``): nothing on the padding border; the particle diameter given,
   the checkpoint's, or estimated from the map (``estimate_diameter``);
   :func:`~cryoparticle.picking.extract.extract_particles` on the binned map, coordinates
   scaled back to the original micrograph (binned pixel ``i`` sits at original ``i × factor``,
   the sampling grid of
   :func:`~cryoparticle.data.preprocess.fourier_bin`), every format written atomically,
   ``NAME.star`` last: it marks the micrograph done, so a rerun skips it;
5. **combine and report**: ``particles.star`` (every finished micrograph, including those
   skipped as already done), ``predict_summary.json`` and a table on stdout; each failure as
   one line on stderr. :func:`run` returns the
   :class:`~cryoparticle.picking.writers.PredictSummary`; its ``exit_code`` is 0
   when every micrograph was picked (or already done), 1 when some failed (a configuration or
   checkpoint problem raises :class:`~cryoparticle.errors.InputError`: exit code 2).

Outputs per micrograph ``NAME`` in ``output_dir`` (coordinates in pixels of the original
micrograph, ``x`` = column, ``y`` = row): ``NAME.star`` (RELION ``rlnCoordinateX/Y``,
``rlnAutopickFigureOfMerit``), ``NAME.box`` (EMAN, box corner, ``box_size``), ``NAME.csv``
(CryoPPP ``X-Coordinate,Y-Coordinate,Diameter``), ``NAME.txt`` (Topaz ``image_name x_coord
y_coord score``); optionally ``NAME_prob.mrc``, ``NAME_mask.png`` and ``NAME_overlay.png`` on
the network's (binned) pixel grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from cryoparticle.errors import InputError, file_error, param_error
from cryoparticle.io.checks import one_line
from cryoparticle.models.packaged import export_facts, resolve_checkpoint
from cryoparticle.picking.inputs import (
    MicrographFiles,
    check_pixel_sizes,
    first_record,
    list_micrographs,
    micrograph_names,
    worker_init,
)
from cryoparticle.picking.segment import MicrographSegmenter, post_hoc_crf
from cryoparticle.picking.settings import CHECKPOINT_ADVICE, build_settings, flag, plain, whole
from cryoparticle.picking.writers import (
    SUMMARY_NAME,
    PickRecorder,
    PredictSummary,
    prepare_output_dir,
    print_summary,
)


def _optional(cfg: Mapping[str, Any], key: str) -> Any:
    try:
        value = cfg.get(key)
    except Exception:  # noqa: BLE001 - omegaconf MissingMandatoryValue (???): not given
        return None
    return None if value is None or str(value).strip() == "" else str(value).strip()


def load_picker(ckpt_path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The segmenter of ``ckpt_path`` (an :class:`~cryoparticle.models.inference.
    InferenceSegmenter`: no Lightning) and its facts: ``inference_facts()`` plus ``export``
    (:func:`~cryoparticle.models.packaged.export_facts`: e.g. the general model's
    ``estimate_diameter``). A file that is not a Segmenter checkpoint of this version (another
    network, an older layout) raises one-line :class:`InputError` saying what to do."""
    from cryoparticle.models.inference import load_inference_segmenter

    if not ckpt_path.is_file():
        raise file_error(ckpt_path, "checkpoint not found")
    try:
        segmenter = load_inference_segmenter(ckpt_path)
    except InputError as exc:
        raise InputError(f"{one_line(exc)}; {CHECKPOINT_ADVICE}") from None
    return segmenter, {**segmenter.inference_facts(), "export": export_facts(ckpt_path)}


def run(cfg: Mapping[str, Any]) -> PredictSummary:
    """Pick particles as ``cfg`` (``cryoparticle/conf/predict.yaml``) says; returns the
    summary (printed).

    Configuration and checkpoint problems, an empty input and an unwritable ``output_dir``
    raise :class:`InputError` before anything is written; problems with single micrographs
    are reported in the summary (``exit_code`` 1) and the others are picked.
    """
    for key in ("input", "output_dir"):
        try:
            value = cfg.get(key)
        except Exception:  # noqa: BLE001 - omegaconf MissingMandatoryValue: the value is ???
            value = None
        if value is None or str(value).strip() == "":
            raise param_error(key, value, "is required: python predict.py input=PATH "
                                          "output_dir=DIR [ckpt_path=CKPT]")
    ckpt_path = resolve_checkpoint(_optional(cfg, "ckpt_path"))
    paths = list_micrographs(cfg["input"])
    segmenter, facts = load_picker(ckpt_path)
    crf_cfg = cfg.get("crf")
    crf = None
    if crf_cfg is not None:  # crf=...: replaces the checkpoint's own CRF (loaded as trained)
        crf = post_hoc_crf(crf_cfg, int(segmenter.hparams.network.get("num_classes", 2)))
        segmenter.crf = None
        facts["picking_threshold"] = 0.5   # the calibrated one is for the checkpoint's output
        facts["export"] = {**facts["export"], "relative_threshold": 0.0}   # so is this rule
    settings = build_settings(cfg, facts, ckpt_path)
    names = micrograph_names(paths, settings.combined_star)
    check_pixel_sizes(paths, settings)
    overrides = {"tile_size": whole("tile_size", cfg.get("tile_size"), 1, optional=True),
                 "tile_overlap": whole("tile_overlap", cfg.get("tile_overlap"), 0,
                                        optional=True)}
    tile = overrides["tile_size"] or segmenter.hparams.tile_size
    overlap = overrides["tile_overlap"] if overrides["tile_overlap"] is not None else \
        min(segmenter.hparams.tile_overlap, tile - 1)
    if not 0 <= overlap < tile:
        raise param_error("tile_overlap", overlap, f"must be in [0, tile_size={tile})")
    tile_batch = whole("tile_batch_size", cfg.get("tile_batch_size"), 1, optional=True)
    fit_tiles = flag("fit_tiles", cfg.get("fit_tiles", True))
    num_workers = whole("num_workers", cfg.get("num_workers", 0), 0)
    threads = whole("num_threads", cfg.get("num_threads"), 1, optional=True)
    if threads is not None:
        torch.set_num_threads(threads)
    trainer_cfg = dict(plain(cfg.get("trainer")) or {"_target_": "pytorch_lightning.Trainer"})
    device = single_device(trainer_cfg)   # None: several devices, through Lightning
    prepare_output_dir(settings.output_dir)

    progress = flag("progress_bar", cfg.get("progress_bar", True))
    dataset = MicrographFiles(paths, names, settings)
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=num_workers,
                        collate_fn=first_record, worker_init_fn=worker_init,
                        persistent_workers=False)
    picker = MicrographSegmenter(segmenter, tile, overlap, tile_batch, fit_tiles, crf=crf,
                                 tta=str(cfg.get("tta") or "none"), polarity=settings.polarity)
    if device is not None:
        summary = _pick_on(device, picker, loader, PickRecorder(
            settings, paths, names, device=f"{device.type} × 1"), progress)
        print_summary(summary)
        return summary
    return _pick_with_lightning(trainer_cfg, picker, loader, settings, paths, names, progress)


#: The ``trainer`` options a one-device run understands; any other goes to Lightning.
_PLAIN_TRAINER_KEYS = {"_target_", "accelerator", "devices", "strategy", "num_nodes", "precision"}
_TRAINERS = ("pytorch_lightning.Trainer", "lightning.pytorch.Trainer", "lightning.Trainer")


def single_device(trainer_cfg: Mapping[str, Any]) -> torch.device | None:
    """The device of a one-device run of the ``trainer`` config (predict.yaml's default: one
    device, strategy ``auto``, one node, ``32-true``): ``cpu``, ``cuda`` (accelerator ``gpu``
    or ``cuda``, or ``auto`` with a GPU) or ``mps``. ``None`` when the config asks for more
    (several devices or nodes, a strategy, mixed precision, other Trainer options): that run
    goes through Lightning's ``Trainer.predict``. A GPU asked for but absent is an
    :class:`InputError`."""
    if str(trainer_cfg.get("_target_")) not in _TRAINERS or \
            not set(trainer_cfg) <= _PLAIN_TRAINER_KEYS:
        return None
    if str(trainer_cfg.get("strategy", "auto")).lower() not in ("auto", "none") or \
            str(trainer_cfg.get("num_nodes", 1)) != "1" or \
            str(trainer_cfg.get("precision", "32-true")).lower() not in ("32-true", "32",
                                                                          "none"):
        return None
    accelerator = str(trainer_cfg.get("accelerator", "auto")).lower()
    devices = str(trainer_cfg.get("devices", "auto")).lower()
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if accelerator == "auto":
        accelerator = "cuda" if cuda else "mps" if mps else "cpu"
    if accelerator in ("gpu", "cuda"):
        if not cuda:
            raise param_error("trainer.accelerator", trainer_cfg.get("accelerator"),
                              "no CUDA GPU is available here (trainer.accelerator=cpu)")
        one = devices == "1" or (devices in ("auto", "-1") and torch.cuda.device_count() == 1)
        return torch.device("cuda") if one else None
    if accelerator in ("cpu", "mps"):
        if accelerator == "mps" and not mps:
            raise param_error("trainer.accelerator", "mps", "no MPS device is available here")
        return torch.device(accelerator) if devices in ("1", "auto") else None
    return None


def _pick_on(device: torch.device, picker: MicrographSegmenter, loader: DataLoader,
             recorder: PickRecorder, progress: bool) -> PredictSummary:
    """Segment, pick and write every micrograph of ``loader`` on ``device``, one at a time."""
    from tqdm import tqdm

    picker = picker.to(device).eval()
    recorder.start()
    with torch.inference_mode():
        for record in tqdm(loader, desc="Picking", unit="micrograph", disable=not progress,
                           dynamic_ncols=True, leave=False):
            recorder.record(record, picker.predict_record(record))
    return recorder.finish()


def _pick_with_lightning(trainer_cfg: dict[str, Any], picker: MicrographSegmenter,
                         loader: DataLoader, settings: Any, paths: list[Path],
                         names: list[str], progress: bool) -> PredictSummary:
    """The run through Lightning's ``Trainer.predict`` (several GPUs split the micrographs)."""
    from hydra.utils import instantiate

    from cryoparticle.picking.module import PickingModule, PickWriter, quiet_lightning

    quiet_lightning()
    try:
        trainer = instantiate(trainer_cfg, logger=False, enable_checkpointing=False,
                              enable_model_summary=False, enable_progress_bar=progress,
                              callbacks=[], inference_mode=True)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - Lightning's many configuration errors
        raise param_error("trainer", {k: v for k, v in trainer_cfg.items() if k != "_target_"},
                          f"cannot build the Trainer ({one_line(exc)})") from None
    device = f"{type(trainer.accelerator).__name__.replace('Accelerator', '').lower()}" \
             f" × {trainer.num_devices * trainer.num_nodes}"
    writer = PickWriter(settings, paths, names, device=device)
    trainer.callbacks.append(writer)
    trainer.predict(PickingModule(picker), dataloaders=loader, return_predictions=False)

    summary = writer.summary
    if summary is None:  # spawned ranks (ddp_spawn): rank zero wrote it to disk
        summary_path = settings.output_dir / SUMMARY_NAME
        try:
            summary = PredictSummary.from_json(summary_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError) as exc:
            raise file_error(summary_path, f"the run left no readable summary "
                                           f"({one_line(exc)})") from None
    if trainer.is_global_zero:
        print_summary(summary)
    return summary


__all__ = ["load_picker", "run", "single_device"]
