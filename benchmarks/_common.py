"""What the benchmark scripts share: where the real data is, and results JSON without the paths
of the machine that ran them.

Real data: ``--data-dir DIR`` holds ``empiar-10017/{micrographs,picks,masks}`` (EMPIAR-10017
as redistributed by CryoSegNet, CryoPPP picks; see the README's "Data and attribution");
the default, :data:`DEFAULT_DATA_DIR`, is an optional ``data/`` folder of a ``shared/`` folder
beside the repository (``../shared/data``); without real data the benchmarks use simulated
micrographs only.

Truth on real data (:data:`DATASETS`): :func:`mask_truth` recovers the CryoPPP disc centres of
a micrograph from its mask and the striped border artefact from the image; :func:`inside` keeps
the picks (or truth) off that border.

Results: :func:`write_results` stores paths relative to the repository; paths under the data
or work folder as ``DATA_DIR/...`` / ``WORK_DIR/...``; the interpreter as ``python``; any other
absolute path by its file name only.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: Default of ``--data-dir``: ``../shared/data`` beside the repository (optional).
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data"
DATA_DIR_HELP = ("folder with empiar-10017/{micrographs,picks,masks} (default: ../shared/data "
                 "beside the repository, if present; otherwise simulated data only)")
# An absolute POSIX path (or a Windows user folder) inside a string; not a "/" that follows a
# closing bracket (e.g. the separator of "A (x)/B" in a headline).
_ABSOLUTE = re.compile(r"(?<![\w.~$:/)\]-])(?:/(?:[\w.@+*-]+/)*[\w.@+*-]+|[A-Za-z]:\\[^\s\"']+)")


def portable(value: Any, folders: dict[str, Path | str | None] | None = None) -> Any:
    """``value`` (nested dicts/lists/strings) with machine paths replaced: the repository's
    by relative ones, ``folders`` (label → folder) by ``label/...``, the interpreter by
    ``python`` and any other absolute path by its file name."""
    pairs = [(str(Path(sys.executable)), "python"), (sys.executable, "python")]
    pairs += [(str(Path(folder).resolve()), label) for label, folder in (folders or {}).items()
              if folder is not None]
    pairs += [(str(folder), label) for label, folder in (folders or {}).items()
              if folder is not None]
    pairs.append((str(ROOT), "."))
    pairs = sorted(set(pairs), key=lambda pair: -len(pair[0]))

    def rewrite(text: str) -> str:
        for prefix, label in pairs:
            text = text.replace(prefix + "/", "" if label == "." else label + "/")
            text = text.replace(prefix, label)
        return _ABSOLUTE.sub(lambda m: Path(m.group()).name or m.group(), text)

    if isinstance(value, dict):
        return {portable(k, folders): portable(v, folders) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, folders) for v in value]
    if isinstance(value, Path):
        value = str(value)
    return rewrite(value) if isinstance(value, str) else value


#: name → (folder, pixel size Å/px of the files, disc diameter px of the files, mask scale,
#: {split: micrograph} of data=general's explicit validation and test micrographs; the others
#: of the folder are training micrographs of the general model)
DATASETS = {
    "EMPIAR-10017": ("empiar-10017", 1.77, 108.0, 1,
                     {"test": "Falcon_2012_06_12-15_41_22_0",
                      "val": "Falcon_2012_06_12-14_57_34_0"}),
    "EMPIAR-10059": ("empiar-10059", 191.0 / 36.0, 36.0, 4,
                     {"test": "stack_0255_2x_dfpt_10059", "val": "stack_0005_2x_dfpt_10059"}),
    "EMPIAR-10947": ("empiar-10947", 212.0 / 60.0, 60.0, 4,
                     {"test": "FoilHole_15962087_Data_15972812_15972814_20211215_190400_EER_10947",
                      "val": "FoilHole_15960851_Data_15972821_15972823_20211215_175446_EER_10947"}),
}


def require_datasets(data_dir: Path) -> None:
    """Exit with a one-line message unless ``data_dir`` holds every folder of ``DATASETS``."""
    if not all((data_dir / DATASETS[d][0]).is_dir() for d in DATASETS):
        sys.exit(f"{data_dir}: expected {', '.join(v[0] for v in DATASETS.values())} "
                 "here; give --data-dir")


def general_split(dataset: str, micrograph: str) -> str:
    """``test``, ``val`` or ``train``: the role of ``micrograph`` in ``data=general``."""
    held_out = DATASETS[dataset][4]
    return next((split for split, name in held_out.items() if name == micrograph), "train")


def mask_truth(image: Any, mask_file: Path, diameter_px: float, scale: int, micrograph: str
               ) -> tuple[Any, Any]:
    """(truth, border) of one micrograph: the centres of the CryoPPP discs of ``mask_file``
    (drawn ``scale``× coarser than ``image``; JPEG masks thresholded at 127) as a particle
    table, and the boolean mask of ``image``'s striped border artefact."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import numpy as np

    from cryoparticle.data.borders import border_mask, border_widths
    from cryoparticle.data.masks import centres_from_mask
    from cryoparticle.io.mrc import read_mask, read_micrograph

    mask = read_mask(mask_file) if scale == 1 else None
    if mask is None or not set(np.unique(mask)) <= {0, 1, 255}:
        raw = np.asarray(read_micrograph(mask_file)[0])
        mask = (raw > 127).astype(np.uint8)
    if scale > 1:
        mask = np.kron(mask, np.ones((scale, scale), np.uint8))
    truth = centres_from_mask(mask, diameter_px, tolerance_px=max(0.75, scale),
                              micrograph=micrograph)
    return truth, border_mask(np.shape(image), border_widths(image))


def inside(picks: Any, borders: dict[str, Any]) -> Any:
    """Picks (or truth; a particle table) not on a micrograph's border artefact
    (``borders``: micrograph → boolean mask of :func:`mask_truth`)."""
    import numpy as np

    keep = np.ones(len(picks), bool)
    for mic, rows in picks.groupby("micrograph").indices.items():
        border = borders[mic]
        r = np.clip(np.round(picks["y"].to_numpy()[rows]).astype(int), 0, border.shape[0] - 1)
        c = np.clip(np.round(picks["x"].to_numpy()[rows]).astype(int), 0, border.shape[1] - 1)
        keep[rows] = ~border[r, c]
    return picks[keep].reset_index(drop=True)


def load_average() -> list[float]:
    """The machine's 1, 5 and 15-minute load averages (2 decimals), for results JSON."""
    import os

    return [round(v, 2) for v in os.getloadavg()]


def write_results(path: Path, record: Any, folders: dict[str, Path | str | None] | None = None
                  ) -> None:
    """``record`` as JSON in ``path`` (atomically), without machine paths (:func:`portable`)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from cryoparticle.io.jsonfile import write_json

    write_json(path, portable(record, folders))


def cached_json(path: Path, compute: Any) -> Any:
    """The JSON in ``path`` when it exists (a rerun resumes); else ``compute()``, written there
    atomically (:func:`write_results`) and returned."""
    import json

    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_results(path, value)
    return value


def write_report(results_dir: Path, out: str, record: Any, text: str,
                 folders: dict[str, Path | str | None] | None = None) -> None:
    """``results_dir/out.json`` (:func:`write_results`) and ``results_dir/out.md`` (``text``),
    both written atomically."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from cryoparticle.io.atomic import write_text_atomic

    results_dir.mkdir(parents=True, exist_ok=True)
    write_results(results_dir / f"{out}.json", record, folders)
    write_text_atomic(results_dir / f"{out}.md", text)


def add_training_options(parser: Any, name: str, checkpoint: str = "best") -> None:
    """The options of the benchmarks that train the general recipe per run (``sim_ablation``,
    ``leave_one_out``): ``--data-dir``, ``--epochs``, ``--checkpoint`` (default
    ``checkpoint``), ``--seed``, ``--work-dir`` (``benchmarks/work/<name>``), ``--out``
    (``<name>``), ``--results-dir`` and the trailing ``train.py`` overrides. Add a script's own
    options before calling this."""
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=DATA_DIR_HELP)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--checkpoint", choices=CHECKPOINTS, default=checkpoint,
                        help="the training's checkpoint to measure: the best by validation pick "
                        "F1, or the last epoch's (the shipped general model's; default: "
                        f"{checkpoint})")
    parser.add_argument("--seed", type=int, default=12345)
    add_output_options(parser, name)
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides for every run")


def add_held_out_options(parser: Any, what: str) -> None:
    """``--data-dir`` and ``--loo-work-dir`` (``leave_one_out.py``'s work dir, default its
    own): the benchmarks that reuse the held-out models (``particle_size``,
    ``coverage_weighting``); ``what`` says what they take from it."""
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=DATA_DIR_HELP)
    parser.add_argument("--loo-work-dir", type=Path,
                        default=ROOT / "benchmarks" / "work" / "leave_one_out",
                        help=f"leave_one_out.py's work dir: {what}")


def write_held_out_report(args: Any, record: Any, text: str) -> None:
    """:func:`write_report` of a benchmark of :func:`add_held_out_options` (its data, work and
    held-out work folders made portable), and the text printed."""
    write_report(args.results_dir, args.out, record, text,
                 {"DATA_DIR": args.data_dir, "WORK_DIR": args.work_dir,
                  "LOO_WORK_DIR": args.loo_work_dir})
    print(text)


def add_output_options(parser: Any, name: str) -> None:
    """``--work-dir`` (default ``benchmarks/work/<name>``), ``--out`` (``<name>``) and
    ``--results-dir`` (``benchmarks/results``): where a benchmark works and what it writes."""
    parser.add_argument("--work-dir", type=Path, default=ROOT / "benchmarks" / "work" / name)
    parser.add_argument("--out", default=name)
    parser.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")


CHECKPOINTS = ("best", "last")
"""Which checkpoint of a training :func:`train_run` returns."""


def _trained_seconds(segment: Path, last: Path) -> float:
    """Seconds an interrupted training spent up to its last saved epoch (``last``'s time):
    the parts before the interrupted one and the interrupted one's own, from ``segment``
    (0 when a run of an older version left no record)."""
    try:
        record = json.loads(segment.read_text())
        return float(record["before_s"]) + max(0.0, last.stat().st_mtime - record["started"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def train_run(run_dir: Path, overrides: list[str], log: Path | None = None,
              checkpoint: str = "best") -> tuple[Path, float]:
    """Run ``train.py`` into ``run_dir`` (its output to ``log``, default ``run_dir/train.log``)
    unless a finished run is there (``run_dir/DONE``); (checkpoint, training seconds): the best
    by the monitored validation metric, or with ``checkpoint="last"`` the last epoch's. An
    interrupted run (``checkpoints/last.ckpt`` written, no ``DONE``) of the same overrides resumes
    from its last finished epoch (``ckpt_path=``); its seconds are those of every part, each
    counted up to its last saved epoch (``run_dir/segment.json`` records when a part started).

    The overrides are recorded in ``run_dir/overrides.txt``: a finished run trained with other
    overrides is never reused for these (an error names the folder)."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, not {checkpoint!r}")
    done, recorded = run_dir / "DONE", run_dir / "overrides.txt"
    log = log or run_dir / "train.log"
    wanted = "\n".join(overrides) + "\n"
    if done.is_file() and recorded.is_file() and recorded.read_text() != wanted:
        sys.exit(f"{run_dir}: a finished training with other overrides (see overrides.txt); "
                 "delete it or give another --work-dir")
    if not done.is_file():
        interrupted = run_dir / "checkpoints" / "last.ckpt"
        resume = interrupted.is_file() and recorded.is_file() and recorded.read_text() == wanted
        run_dir.mkdir(parents=True, exist_ok=True)
        recorded.write_text(wanted)
        segment = run_dir / "segment.json"
        before_s = _trained_seconds(segment, interrupted) if resume else 0.0
        segment.write_text(json.dumps({"before_s": before_s, "started": time.time()}))
        cmd = [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run_dir}",
               "print_config=false", "test=false", "logger=csv", *overrides]
        if resume:
            cmd.append(f"ckpt_path={interrupted}")
        print("  $", " ".join(cmd[1:]), flush=True)
        start = time.perf_counter()
        with open(log, "a" if resume else "w") as out:
            result = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        if result.returncode:
            sys.exit(f"training failed (exit {result.returncode}); see {log}")
        done.write_text(f"{before_s + time.perf_counter() - start:.1f}\n")
    if checkpoint == "last":
        last = run_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            sys.exit(f"training wrote no last checkpoint in {run_dir}")
        return last, float(done.read_text())
    best = best_checkpoint(run_dir / "checkpoints")
    if best is None:
        sys.exit(f"training wrote no best checkpoint in {run_dir}")
    return best, float(done.read_text())


def best_checkpoint(folder: Path) -> Path | None:
    """The best checkpoint in a training's ``checkpoints`` folder, as Lightning's monitoring
    ``ModelCheckpoint`` recorded it in ``last.ckpt`` (``best_model_path``, looked up by name in
    ``folder`` so that a moved run still resolves); without that record, the only
    ``epoch_*.ckpt`` there; None when there is none. Several ``epoch_*.ckpt`` (``save_top_k`` >
    1) and no record: an error, rather than a guess by file name."""
    import torch

    found = sorted(folder.glob("epoch_*.ckpt"))
    last = folder / "last.ckpt"
    try:
        state = torch.load(last, map_location="cpu", weights_only=False).get("callbacks") or {}
    except Exception:  # noqa: BLE001 - no readable last.ckpt: no record
        state = {}
    if isinstance(state, dict):
        for key, value in state.items():
            if not isinstance(value, dict):
                continue
            recorded = Path(str(value.get("best_model_path") or "")).name
            if str(key).startswith("ModelCheckpoint") and value.get("monitor") and recorded \
                    and (folder / recorded).is_file():
                return folder / recorded
    if len(found) > 1:
        sys.exit(f"{folder}: {len(found)} epoch_*.ckpt and no best_model_path in last.ckpt; "
                 "name the checkpoint to use")
    return found[0] if found else None


__all__ = ["CHECKPOINTS", "DATASETS", "DATA_DIR_HELP", "DEFAULT_DATA_DIR", "ROOT",
           "best_checkpoint", "general_split", "inside", "load_average",
           "mask_truth", "portable", "require_datasets", "train_run", "write_report",
           "write_results"]
