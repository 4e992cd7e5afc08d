"""benchmarks/gpu_check.sh and its Python pieces, on the CPU in a tiny setting: the shell script
parses, runs every check it can here, and writes records whose numbers match the runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from cryoparticle.config import simulator_config
from cryoparticle.simulate.micrograph import MicrographSimulator

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
PY = ROOT / "benchmarks" / "gpu_check.py"
MODEL_PX = 14.16
pytestmark = pytest.mark.filterwarnings("ignore:.*(val_dataloader|LeafSpec).*")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny U-Net after 4 training steps on simulated 64² crops (14.16 Å/px)."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from cryoparticle.models.segmenter import Segmenter

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    sim = MicrographSimulator(simulator_config(overrides=[f"pixel_size_a={MODEL_PX}"]))
    crops = [sim.simulate((0, i), 64, name=f"c{i}") for i in range(8)]
    data = [(torch.from_numpy(c.image)[None], torch.from_numpy(c.mask.astype(np.int64)))
            for c in crops]
    seg = Segmenter({"name": "unet", "backbone": "resnet18", "encoder_depth": 3,
                     "decoder_channels": [32, 16, 8]},
                    optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
                    tile_size=64, tile_overlap=16, pixel_size_a=MODEL_PX,
                    particle_diameter_a=190.0)
    trainer = pl.Trainer(accelerator="cpu", max_steps=4, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(seg, DataLoader(data, batch_size=2))
    path = tmp_path_factory.mktemp("model") / "tiny.ckpt"
    trainer.save_checkpoint(path)
    torch.set_num_threads(before)
    return path


def test_shell_script_parses_and_wants_an_output_folder():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 2 and "usage" in result.stderr


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils timeout")
def test_cpu_run_of_the_whole_check_writes_its_records(ckpt, tmp_path):
    out = tmp_path / "out"
    env = {**ENV, "DEVICE": "cpu", "CRF_SIZE": "192", "PICK_N": "2", "PICK_SIZE": "256"}
    result = subprocess.run(["bash", str(SCRIPT), str(out), str(ckpt)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((out / "gpu_check.json").read_text())
    steps = {s["step"]: s for s in record["steps"]}
    assert set(steps) == {"crf", "pick"} | ({"ddp"} if record["gpus"] >= 2 else set())
    assert all(s["rc"] == 0 for s in steps.values())

    crf = record["crf"]
    assert crf == json.loads((out / "crf.json").read_text())
    assert crf["size"] == 192 and crf["device"] == "cpu" and crf["iterations"] == 10
    assert len(crf["all_seconds"]) == 3
    assert crf["seconds"] == sorted(crf["all_seconds"])[1]        # the median of three
    assert 0 < crf["particle_iou"] <= 1

    pick = record["pick"]
    assert pick["n"] == 2 and pick["size"] == 256 and pick["device"] == "cpu"
    assert pick["micrographs_per_s_process"] == pytest.approx(2 / pick["process_wall_s"])
    assert pick["micrographs_per_s_steady"] >= pick["micrographs_per_s_process"]
    assert {"sim_000.star", "sim_001.star"} <= set(pick["written"])
    assert f"CRF 192²: {crf['seconds']:.3f} s" in result.stdout
    assert str(tmp_path) not in json.dumps(record)    # no machine paths in the record


def test_pick_micrographs_are_simulated_at_the_requested_size_and_pixel_size(tmp_path):
    sys.path.insert(0, str(PY.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(PY.parent))
    paths = gpu_check.simulate_micrographs(1, 96, 3.54, tmp_path)
    with mrcfile.open(paths[0]) as mrc:
        assert mrc.data.shape == (96, 96) and mrc.data.dtype == np.float32
        assert float(mrc.voxel_size.x) == pytest.approx(3.54)


def test_pick_without_a_checkpoint_is_a_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, str(PY), "pick", "--ckpt",
                             str(tmp_path / "missing.ckpt"), "--json", str(tmp_path / "p.json")],
                            capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == 2
    assert "missing.ckpt: no such checkpoint" in result.stderr
    assert "Traceback" not in result.stderr
