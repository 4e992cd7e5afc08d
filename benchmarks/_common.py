"""What the benchmark scripts share: where the real data is, and results JSON without the paths
of the machine that ran them.

Real data: ``--data-dir DIR`` holds ``empiar-10017/{micrographs,picks,masks}`` (EMPIAR-10017
as redistributed by CryoSegNet, CryoPPP picks; see the README's "Data and attribution");
the default, :data:`DEFAULT_DATA_DIR`, is an optional ``data/`` folder of a ``shared/`` folder
beside the repository (``../shared/data``); without real data the benchmarks use simulated
micrographs only.

Results: :func:`write_results` stores paths relative to the repository; paths under the data
or work folder as ``DATA_DIR/...`` / ``WORK_DIR/...``; the interpreter as ``python``; any other
absolute path by its file name only.
"""

from __future__ import annotations

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
# An absolute POSIX path (or a Windows user folder) inside a string.
_ABSOLUTE = re.compile(r"(?<![\w.~$:/-])(?:/(?:[\w.@+*-]+/)*[\w.@+*-]+|[A-Za-z]:\\[^\s\"']+)")


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


def write_results(path: Path, record: Any, folders: dict[str, Path | str | None] | None = None
                  ) -> None:
    """``record`` as JSON in ``path`` (atomically), without machine paths (:func:`portable`)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from cryoparticle.io.jsonfile import write_json

    write_json(path, portable(record, folders))


def train_run(run_dir: Path, overrides: list[str], log: Path | None = None
              ) -> tuple[Path, float]:
    """Run ``train.py`` into ``run_dir`` (its output to ``log``, default ``run_dir/train.log``)
    unless a finished run is there (``run_dir/DONE``); (best checkpoint, training seconds)."""
    done = run_dir / "DONE"
    log = log or run_dir / "train.log"
    if not done.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run_dir}",
               "print_config=false", "test=false", "logger=csv", *overrides]
        print("  $", " ".join(cmd[1:]), flush=True)
        start = time.perf_counter()
        with open(log, "w") as out:
            result = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        if result.returncode:
            sys.exit(f"training failed (exit {result.returncode}); see {log}")
        done.write_text(f"{time.perf_counter() - start:.1f}\n")
    found = sorted((run_dir / "checkpoints").glob("epoch_*.ckpt"))
    if not found:
        sys.exit(f"training wrote no best checkpoint in {run_dir}")
    return found[-1], float(done.read_text())


__all__ = ["DATA_DIR_HELP", "DEFAULT_DATA_DIR", "ROOT", "portable", "train_run",
           "write_results"]
