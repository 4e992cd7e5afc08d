"""``python -m cryoparticle.simulate``: files a person can open, reproducible, resumable."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import starfile
from PIL import Image

ARGS = ["n_micrographs=4", "micrograph_size=128", "seed=7", "splits.train=0.5",
        "splits.val=0.25", "splits.test=0.25"]


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cryoparticle.simulate", f"out_dir={out}", *ARGS,
                           *extra], capture_output=True, text=True, timeout=300)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_writes_dataset_reproducibly_and_resumes(tmp_path):
    out = tmp_path / "sim"
    r = _run(out)
    assert r.returncode == 0, r.stderr
    assert "4 micrographs written" in r.stdout
    assert sorted(p.name for p in (out / "train").glob("*.mrc")) == ["sim_00000.mrc", "sim_00001.mrc"]
    assert [p.name for p in (out / "val").glob("*.mrc")] == ["sim_00002.mrc"]
    assert [p.name for p in (out / "test").glob("*.mrc")] == ["sim_00003.mrc"]

    with mrcfile.open(out / "train" / "sim_00000.mrc") as m:
        img = m.data.copy()
        assert img.dtype == np.float32 and img.shape == (128, 128)
        assert float(m.voxel_size.x) == np.float32(7.08)
    mask = np.array(Image.open(out / "train" / "sim_00000_mask.png")) > 127
    star = starfile.read(out / "train" / "sim_00000.star")
    star = star["particles"] if isinstance(star, dict) else star
    x, y = star["rlnCoordinateX"].to_numpy(), star["rlnCoordinateY"].to_numpy()
    assert len(x) > 0 and mask[y.astype(int), x.astype(int)].all()  # x = column, y = row
    meta = json.loads((out / "train" / "sim_00000.json").read_text())
    assert meta["n_particles"] == len(x) and meta["pixel_size_a"] == 7.08
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["simulator"]["noise"]["snr"] == 0.1 and len(manifest["micrographs"]) == 4

    # same seed elsewhere: byte-identical files
    other = tmp_path / "again"
    assert _run(other).returncode == 0
    assert _digest(out) == _digest(other)

    # rerun skips finished micrographs; a deleted one is redone identically
    before = _digest(out)
    (out / "val" / "sim_00002.mrc").unlink()
    r = _run(out)
    assert r.returncode == 0 and "1 micrographs written, 3 already there" in r.stdout
    assert _digest(out) == before


def test_bad_parameter_is_one_line_error(tmp_path):
    r = _run(tmp_path / "x", "simulator.noise.snr=0")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "snr" in r.stderr and "Traceback" not in r.stderr
