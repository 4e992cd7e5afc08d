"""benchmarks/real_data_cv.py --train-micrographs: the checks made before anything trains."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "real_data_cv.py"


def _data(tmp_path: Path) -> Path:
    mics = tmp_path / "data" / "empiar-10017" / "micrographs"
    mics.mkdir(parents=True)
    for i in range(10):
        (mics / f"mic_{i:02d}.jpg").write_bytes(b"")   # names only: nothing is read before
    return tmp_path / "data"


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--data-dir", str(_data(tmp_path)),
                           "--work-dir", str(tmp_path / "work"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_zero_training_micrographs_needs_a_checkpoint_to_score(tmp_path):
    result = run(tmp_path, "--train-micrographs", "0")
    assert result.returncode != 0
    assert "--train-micrographs 0 evaluates the --init checkpoint" in result.stderr
    assert not (tmp_path / "work").exists()


def test_more_training_micrographs_than_a_fold_has_is_refused(tmp_path):
    # 10 micrographs, 5 folds: 2 test + 1 validation, so 7 train per fold
    result = run(tmp_path, "--train-micrographs", "8")
    assert result.returncode != 0 and "must be in 0..7" in result.stderr
    assert not (tmp_path / "work").exists()
