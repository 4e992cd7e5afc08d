"""predict.py end to end: particles at known positions in simulated non-square micrographs,
every output format re-read with plain readers, tiling, reruns, bad input."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch
from omegaconf import OmegaConf
from PIL import Image

from cryoparticle.config import compose, simulator_config
from cryoparticle.errors import InputError
from cryoparticle.io.mrc import write_mrc
from cryoparticle.models.segmenter import Segmenter
from cryoparticle.picking.inputs import list_micrographs, micrograph_names
from cryoparticle.picking.module import fitted_tile
from cryoparticle.picking.predict import run
from cryoparticle.simulate.micrograph import MicrographSimulator

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*(does not have many workers|LeafSpec|dataloader).*")

ROOT = Path(__file__).resolve().parents[2]
MODEL_PX = 14.16          # the checkpoint's pixel size (Å/px)
MIC_PX = 7.08             # the micrographs' pixel size: predict bins them 2×
DIAMETER_A = 190.0
DIAMETER_PX = DIAMETER_A / MIC_PX  # ≈ 27 px in the original micrographs
TOLERANCE_PX = 5.0        # a pick matches a particle within this distance (original pixels)
# name: (rows, columns, number of particles); both non-square, one wide and one tall
MICROGRAPHS = {"wide": (256, 384, 8), "tall": (320, 224, 6)}
FORMATS = "[star,box,csv,topaz]"
EASY = ["noise.snr=5", "noise.ice_gradient=0", "contaminants.ice_blobs.probability=0",
        "contaminants.aggregates.probability=0", "contaminants.carbon_edge.probability=0"]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    """A tiny U-Net trained for 48 steps (8 epochs of 6 batches) on easy simulated crops at
    14.16 Å/px; its validation at the end calibrates the picking threshold stored in the
    checkpoint."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from cryoparticle.data.datasets import MicrographDataset
    from cryoparticle.models.segmenter import Segmenter

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    sim = MicrographSimulator(simulator_config(overrides=[f"pixel_size_a={MODEL_PX}", *EASY]))
    crops = [sim.simulate((0, 0, i), 64, name=f"crop{i}") for i in range(48)]
    train = [(torch.from_numpy(c.image)[None], torch.from_numpy(c.mask.astype(np.int64)))
             for c in crops]
    val = MicrographDataset([sim.simulate((1, 0), 256, name="val")])
    seg = Segmenter({"name": "unet", "backbone": "resnet18", "encoder_depth": 3,
                     "decoder_channels": [32, 16, 8]},
                    optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 5e-3},
                    tile_size=64, tile_overlap=16, pixel_size_a=MODEL_PX,
                    particle_diameter_a=DIAMETER_A)
    trainer = pl.Trainer(accelerator="cpu", max_steps=48, logger=False, num_sanity_val_steps=0,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, check_val_every_n_epoch=8)  # at the end
    trainer.fit(seg, DataLoader(train, batch_size=8, shuffle=True),
                DataLoader(val, batch_size=1))
    path = tmp_path_factory.mktemp("model") / "tiny.ckpt"
    trainer.save_checkpoint(path)
    torch.set_num_threads(before)
    return path


@pytest.fixture(scope="session")
def sims(tmp_path_factory) -> tuple[Path, dict[str, pd.DataFrame]]:
    """``in/``: two non-square micrographs (MRC, 7.08 Å/px in the header) and a corrupt one;
    returns the folder and the true particle tables (pixels of the written micrographs)."""
    folder = tmp_path_factory.mktemp("in")
    sim = MicrographSimulator(simulator_config(overrides=[
        f"pixel_size_a={MIC_PX}", *EASY, "particles.min_distance_a=420"]))
    truth = {}
    for seed, (name, (rows, cols, count)) in enumerate(MICROGRAPHS.items()):
        mic = sim.simulate((11, seed), rows, cols, name=name, n_particles=count)
        assert mic.image.shape == (rows, cols)
        write_mrc(folder / f"{name}.mrc", mic.image, MIC_PX)
        truth[name] = mic.particles[["x", "y"]].reset_index(drop=True)
    (folder / "broken.mrc").write_bytes(b"this is not an MRC file" * 20)
    return folder, truth


def _predict_cmd(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "predict.py"), *args]


_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="session")
def missing_ckpt_run(tmp_path_factory):
    """``python predict.py`` with a missing checkpoint, started first: it runs while the
    checkpoint is trained. Returns a function waiting for ``(rc, stdout, stderr, out)``."""
    tmp = tmp_path_factory.mktemp("bad_cli")
    (tmp / "mic.mrc").write_bytes(b"x")
    out = tmp / "never"
    proc = subprocess.Popen(
        _predict_cmd(f"ckpt_path={tmp / 'missing.ckpt'}", f"input={tmp / 'mic.mrc'}",
                     f"output_dir={out}"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp, env=_ENV)

    def result():
        stdout, stderr = proc.communicate(timeout=600)
        return proc.returncode, stdout, stderr, out

    yield result
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="session")
def full_run(missing_ckpt_run, ckpt, sims, tmp_path_factory):
    """``python predict.py`` in a subprocess on the folder (every format and option)."""
    folder, _ = sims
    out = tmp_path_factory.mktemp("run") / "out"
    good = subprocess.run(
        _predict_cmd(f"ckpt_path={ckpt}", f"input={folder}", f"output_dir={out}",
                     f"formats={FORMATS}", "write_probability=true", "write_mask=true",
                     "write_overlay=true", "num_workers=1", "num_threads=1"),
        capture_output=True, text=True, cwd=out.parent, env=_ENV, timeout=600, check=False)
    return {"out": out, "rc": good.returncode, "stdout": good.stdout, "stderr": good.stderr}


# ------------------------------------------------------------------------------- helpers


def match(picks: np.ndarray, truth: np.ndarray, tol: float = TOLERANCE_PX) -> tuple[float, float]:
    """(precision, recall) of picks ``(N, 2)`` against truth ``(M, 2)``, greedy by distance."""
    if not len(picks) or not len(truth):
        return float(not len(picks)), float(not len(truth))
    dist = np.hypot(*(picks[:, None, :] - truth[None, :, :]).transpose(2, 0, 1))
    used_p, used_t, tp = set(), set(), 0
    for flat in np.argsort(dist, axis=None):
        i, j = np.unravel_index(flat, dist.shape)
        if dist[i, j] > tol:
            break
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            tp += 1
    return tp / len(picks), tp / len(truth)


def read_every_format(out: Path, name: str) -> dict[str, np.ndarray]:
    """Pick centres ``(x, y)`` from each output file, read without cryoparticle."""
    star = starfile.read(out / f"{name}.star", always_dict=True)[""]  # one table, like RELION's
    box_rows = np.loadtxt(out / f"{name}.box", ndmin=2)
    with open(out / f"{name}.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    topaz = pd.read_csv(out / f"{name}.txt", sep="\t")
    return {
        "star": star[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float),
        "box": box_rows[:, :2] + box_rows[:, 2:4] / 2,  # corner + half the box = centre
        "csv": np.array([[float(r["X-Coordinate"]), float(r["Y-Coordinate"])] for r in rows]
                        ).reshape(-1, 2),
        "topaz": topaz[["x_coord", "y_coord"]].to_numpy(float),
    }


def config(ckpt: Path, input_: Path | str, out: Path, *extra: str):
    return compose("predict", [f"ckpt_path={ckpt}", f"input={input_}", f"output_dir={out}",
                               "progress_bar=false", "num_workers=0", *extra])


def digests(folder: Path, name: str) -> dict[str, tuple[int, str]]:
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.glob(f"{name}*"))}


def entry_point():
    spec = importlib.util.spec_from_file_location("predict_entry", ROOT / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def call_main(monkeypatch, *args: str) -> int:
    """``predict.py`` run in this process (the real Hydra entry point); its exit code."""
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["predict.py", *args])
    with pytest.raises(SystemExit) as exit_info:
        entry_point().main()
    return exit_info.value.code


# ------------------------------------------------------------------------------- the full run


def test_full_run_picks_reports_the_corrupt_micrograph_and_prints_a_summary(full_run, ckpt):
    out = full_run["out"]
    assert full_run["rc"] == 1, full_run["stderr"][-2000:]
    failures = [line for line in full_run["stderr"].splitlines() if "broken.mrc" in line]
    assert len(failures) == 1 and failures[0].startswith("failed: ")
    assert "not a readable MRC file" in failures[0]
    assert "Traceback" not in full_run["stderr"]
    stdout = full_run["stdout"]
    for text in ("picking summary", "micrographs", "failed", "particles per micrograph",
                 "time per micrograph"):
        assert text in stdout
    assert not list(out.glob("broken*"))
    summary = __import__("json").loads((out / "predict_summary.json").read_text())
    assert (summary["n_micrographs"], summary["n_picked"], summary["n_failed"]) == (3, 2, 1)
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert summary["threshold"] == stored["hyper_parameters"]["picking_threshold"]
    assert not list(out.glob(".*tmp*"))  # no temporary files left behind


@pytest.mark.parametrize("name", list(MICROGRAPHS))
def test_coordinates_in_every_format_are_original_pixels_x_column_y_row(full_run, sims, name):
    out = full_run["out"]
    truth = sims[1][name].to_numpy(float)
    rows, cols, _ = MICROGRAPHS[name]
    formats = read_every_format(out, name)
    assert set(formats) == {"star", "box", "csv", "topaz"}
    # by default no box sticks out of the micrograph: particles that close to an edge are not
    # picked, the others are
    margin = 1.5 * DIAMETER_PX / 2
    size = np.array([cols, rows], float)
    clear = ((truth >= margin + TOLERANCE_PX) & (truth <= size - 1 - margin - TOLERANCE_PX)
             ).all(axis=1)
    for fmt, picks in formats.items():
        precision = match(picks, truth)[0]
        recall = match(picks, truth[clear])[1]
        assert recall >= 0.8 and precision >= 0.8, (fmt, precision, recall, picks, truth)
        assert ((picks >= margin - 0.5) & (picks <= size - 1 - margin + 0.5)).all(), fmt
        # x is a column (< width), y a row (< height): on a non-square micrograph a transposed
        # table would not match
        assert (picks[:, 0] < cols).all() and (picks[:, 1] < rows).all()
        assert match(picks[:, ::-1], truth)[1] < 0.5
    # every format holds the same picks (CSV and BOX in whole pixels)
    np.testing.assert_allclose(formats["topaz"], formats["star"], atol=1e-3)
    np.testing.assert_allclose(formats["csv"], formats["star"], atol=0.5 + 1e-6)
    np.testing.assert_allclose(formats["box"], formats["star"], atol=0.5 + 1e-6)
    box_size = np.loadtxt(out / f"{name}.box", ndmin=2)[:, 2]
    assert (box_size == round(1.5 * DIAMETER_PX)).all()
    with open(out / f"{name}.csv", newline="") as handle:
        assert {int(r["Diameter"]) for r in csv.DictReader(handle)} == {round(DIAMETER_PX)}
    star = starfile.read(out / f"{name}.star", always_dict=True)
    assert list(star) == [""]  # RELION's coordinate reader takes the first table: no optics
    assert star[""]["rlnAutopickFigureOfMerit"].between(0, 1).all()
    assert f"rlnMicrographPixelSize {MIC_PX}" in (out / f"{name}.star").read_text()  # comment
    assert (pd.read_csv(out / f"{name}.txt", sep="\t")["image_name"] == name).all()

    combined = starfile.read(out / "particles.star", always_dict=True)
    assert combined["optics"]["rlnMicrographPixelSize"].iloc[0] == pytest.approx(MIC_PX)
    combined = combined["particles"]
    mine = combined[combined["rlnMicrographName"] == str(sims[0] / f"{name}.mrc")]
    np.testing.assert_allclose(mine[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float),
                               formats["star"], atol=1e-5)


def test_probability_mask_and_overlay_are_written_on_the_binned_grid(full_run):
    out = full_run["out"]
    for name, (rows, cols, _) in MICROGRAPHS.items():
        with mrcfile.open(out / f"{name}_prob.mrc") as mrc:
            prob = mrc.data.copy()
            assert float(mrc.voxel_size.x) == pytest.approx(MODEL_PX, rel=1e-4)
        assert prob.shape == (rows // 2, cols // 2) and prob.min() >= 0 and prob.max() <= 1
        mask = np.asarray(Image.open(out / f"{name}_mask.png"))
        assert mask.shape == prob.shape and mask.any()
        with Image.open(out / f"{name}_overlay.png") as overlay:
            assert overlay.format == "PNG" and overlay.size[0] > 100


# ------------------------------------------------------------------------------- reruns


def test_rerun_skips_finished_micrographs_and_overwrite_redoes_them(full_run, sims, ckpt,
                                                                    tmp_path):
    out = tmp_path / "out"
    shutil.copytree(full_run["out"], out)
    same = [f"formats={FORMATS}", "write_probability=true", "write_mask=true",
            "write_overlay=true"]
    before = {name: digests(out, name) for name in MICROGRAPHS}
    summary = run(config(ckpt, sims[0], out, *same))
    assert (summary.n_skipped, summary.n_picked, summary.n_failed) == (2, 0, 1)
    assert summary.exit_code == 1
    assert {name: digests(out, name) for name in MICROGRAPHS} == before  # untouched
    assert summary.n_particles == len(starfile.read(out / "particles.star",
                                                    always_dict=True)["particles"])
    assert summary.n_particles == sum(len(starfile.read(out / f"{n}.star", always_dict=True)
                                          [""]) for n in MICROGRAPHS)

    summary = run(config(ckpt, sims[0] / "wide.mrc", out, *same, "overwrite=true"))
    assert (summary.n_picked, summary.n_skipped, summary.exit_code) == (1, 0, 0)
    after = digests(out, "wide")
    assert after.keys() == before["wide"].keys()
    for file, (mtime, digest) in after.items():
        assert mtime != before["wide"][file][0]
        if not file.endswith(".png"):  # same checkpoint, same micrograph: same bytes
            assert digest == before["wide"][file][1], file


def test_tiled_inference_equals_whole_image_inference(ckpt, sims, tmp_path):
    """The binned micrograph (128 × 192) in small overlapping tiles (the checkpoint's 64 px
    overlapping by 16, or by 32 without fitting) against the network applied to the whole
    micrograph at once (a tile as large as the micrograph: no tiling): the same probabilities
    within a small tolerance, no seams, and the same picks."""
    from cryoparticle.data.preprocess import bin_to_pixel_size, standardise
    from cryoparticle.data.tiling import tile_starts
    from cryoparticle.io.mrc import read_micrograph
    from cryoparticle.models.segmenter import load_segmenter

    mic = sims[0] / "wide.mrc"
    results = {}
    for label, tiling in {"whole": ["tile_size=256"],
                          "tiles": [],  # the checkpoint's: 64 px, overlap 16
                          "tiles32": ["tile_overlap=32", "fit_tiles=false",
                                      "tile_batch_size=3"]}.items():
        out = tmp_path / label
        summary = run(config(ckpt, mic, out, "write_probability=true", *tiling))
        assert summary.exit_code == 0
        assert summary.micrographs[0]["tile_size"] == (192 if label == "whole" else 64)
        results[label] = (mrcfile.read(out / "wide_prob.mrc"),
                          starfile.read(out / "wide.star", always_dict=True)[""])
    # the whole-image path is the network on the binned, standardised micrograph
    seg = load_segmenter(ckpt).eval()
    image, pixel_size_a = read_micrograph(mic)
    binned, factor = bin_to_pixel_size(image, pixel_size_a, MODEL_PX)
    assert factor == 2.0
    with torch.no_grad():
        direct = seg(torch.from_numpy(standardise(binned))[None, None]).softmax(1)[0, 1]
    whole, whole_picks = results["whole"]
    np.testing.assert_allclose(whole, direct.numpy(), atol=1e-5)
    ref = whole_picks[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float)
    for label, overlap, tolerance in (("tiles", 16, 0.2), ("tiles32", 32, 0.06)):
        prob, picks = results[label]
        diff = np.abs(prob - whole)
        assert diff.max() < tolerance and diff.mean() < 0.005, (label, diff.max())
        # no seams: the error along the tile edges is no larger than elsewhere
        edges = [sorted(e for s in tile_starts(n, 64, overlap) for e in (s, s + 63)
                        if 0 < e < n - 1) for n in diff.shape]
        band = np.concatenate([diff[edges[0], :].ravel(), diff[:, edges[1]].ravel()])
        assert band.mean() <= 2 * diff.mean() + 1e-4, (label, band.mean(), diff.mean())
        xy = picks[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float)
        assert len(ref) >= 4 and match(xy, ref, tol=2.0) == (1.0, 1.0), (label, xy, ref)


def test_test_time_augmentation_averages_the_views_and_makes_picking_equivariant(ckpt, sims,
                                                                                  tmp_path):
    """``tta=dihedral``: the probability is the softmax of the network's logits averaged over
    the 8 turned/mirrored views mapped back (numpy reference), so turning the micrograph turns
    the probability map exactly — which the plain network does not; predict.py's ``tta=flips``
    writes the 4-view average; an unknown ``tta`` is refused."""
    from cryoparticle.data.preprocess import bin_to_pixel_size, standardise
    from cryoparticle.io.mrc import read_micrograph
    from cryoparticle.models.segmenter import load_segmenter
    from cryoparticle.picking.module import PickingModule
    from cryoparticle.picking.segment import MicrographSegmenter

    seg = load_segmenter(ckpt).eval()
    image, pixel_size_a = read_micrograph(sims[0] / "wide.mrc")
    binned = standardise(bin_to_pixel_size(image, pixel_size_a, MODEL_PX)[0])   # 128 × 192

    def network_logits(img: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return seg(torch.from_numpy(np.ascontiguousarray(img))[None, None])[0].numpy()

    views = []
    for turns in range(4):
        for mirrored in (False, True):
            view = np.rot90(binned, turns)
            view = np.fliplr(view) if mirrored else view
            out = network_logits(view)
            out = out[:, :, ::-1] if mirrored else out
            views.append(np.rot90(out, -turns, axes=(1, 2)))
    mean = np.mean(views, axis=0)
    expected = (np.exp(mean) / np.exp(mean).sum(0))[1]

    def picker(tta: str, img: np.ndarray) -> np.ndarray:
        module = PickingModule(MicrographSegmenter(seg, 256, 16, tta=tta)).eval()
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(img))[None]).numpy()

    dihedral = picker("dihedral", binned)
    np.testing.assert_allclose(dihedral, expected, atol=1e-5)
    np.testing.assert_allclose(picker("dihedral", np.rot90(binned)), np.rot90(dihedral),
                               atol=1e-5)
    plain = picker("none", binned)
    assert np.abs(picker("none", np.rot90(binned)) - np.rot90(plain)).max() > 1e-3

    out = tmp_path / "flips"
    summary = run(config(ckpt, sims[0] / "wide.mrc", out, "tta=flips", "tile_size=256",
                         "write_probability=true"))
    assert summary.exit_code == 0
    flips = np.mean([views[0], views[1], views[4], views[5]], axis=0)  # 0°, mirror, 180°, both
    np.testing.assert_allclose(mrcfile.read(out / "wide_prob.mrc"),
                               (np.exp(flips) / np.exp(flips).sum(0))[1], atol=1e-5)
    with pytest.raises(InputError, match="tta"):
        MicrographSegmenter(seg, 256, 16, tta="rot45")


def test_polarity_auto_picks_an_inverted_micrograph_as_light_particles(ckpt, sims, tmp_path):
    """The network learnt dark particles. On the micrograph inverted (light particles),
    ``polarity=dark`` picks badly; ``auto`` segments both polarities, finds the network surer
    of the inverted one (higher particle peak level), picks it there — the same picks as the
    original micrograph — and says so in the summary; on the original it keeps dark."""
    image, _ = mrcfile.read(sims[0] / "wide.mrc"), None
    write_mrc(tmp_path / "light.mrc", -np.asarray(image, np.float32), MIC_PX)
    truth = sims[1]["wide"].to_numpy(float)
    picks, summaries = {}, {}
    for label, mic, polarity in (("original", sims[0] / "wide.mrc", "dark"),
                                 ("original_auto", sims[0] / "wide.mrc", "auto"),
                                 ("light_dark", tmp_path / "light.mrc", "dark"),
                                 ("light_auto", tmp_path / "light.mrc", "auto")):
        out = tmp_path / label
        summary = run(config(ckpt, mic, out, f"polarity={polarity}"))
        assert summary.exit_code == 0
        summaries[label] = summary.micrographs[0]
        picks[label] = starfile.read(out / f"{mic.stem}.star", always_dict=True)[""][
            ["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float)
    assert summaries["original"]["polarity"] == "dark"
    assert summaries["original"]["polarity_levels"] is None       # one polarity segmented
    assert summaries["original_auto"]["polarity"] == "dark"
    dark, light = summaries["light_auto"]["polarity_levels"]
    assert summaries["light_auto"]["polarity"] == "light" and light > 1.03 * dark
    # inverting the micrograph swaps the two levels
    assert (dark, light) == pytest.approx(summaries["original_auto"]["polarity_levels"][::-1],
                                          abs=1e-4)
    np.testing.assert_allclose(picks["light_auto"], picks["original"], atol=1e-3)
    np.testing.assert_allclose(picks["original_auto"], picks["original"], atol=1e-3)
    f1 = {k: 2 * np.prod(match(v, truth)) / max(sum(match(v, truth)), 1e-9)
          for k, v in picks.items()}
    assert f1["original"] >= 0.6 and f1["light_dark"] < f1["original"] - 0.3, f1
    for bad in ("polarity=both", "polarity_margin=0.9", "polarity_quantile=2"):
        with pytest.raises(InputError, match=bad.split("=")[0]):
            run(config(ckpt, sims[0] / "wide.mrc", tmp_path / "bad", bad))


def test_particle_diameter_px_stands_in_for_an_unknown_pixel_size(ckpt, sims, tmp_path):
    """A TIFF (no pixel size) picked with ``particle_diameter_px`` (the diameter in its pixels)
    is resampled as if its pixel size were the checkpoint's diameter over it: the same picks as
    the MRC copy with its header's 7.08 Å/px; with a pixel size too, the two give the diameter
    in Å that is written."""
    import tifffile

    image = mrcfile.read(sims[0] / "wide.mrc")
    tifffile.imwrite(tmp_path / "wide.tif", image)
    xy = {}
    for label, mic, extra in (("mrc", sims[0] / "wide.mrc", []),
                              ("tif", tmp_path / "wide.tif",
                               [f"particle_diameter_px={DIAMETER_A / 7.08}"])):
        out = tmp_path / label
        assert run(config(ckpt, mic, out, *extra)).exit_code == 0
        xy[label] = starfile.read(out / "wide.star", always_dict=True)[""][
            ["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float)
    assert len(xy["mrc"]) >= 4
    np.testing.assert_allclose(xy["tif"], xy["mrc"], atol=1e-3)
    out = tmp_path / "both"
    summary = run(config(ckpt, tmp_path / "wide.tif", out, "micrograph_pixel_size_a=7.08",
                         "particle_diameter_px=30"))
    assert summary.exit_code == 0
    assert summary.micrographs[0]["particle_diameter_a"] == pytest.approx(30 * 7.08)


def test_post_hoc_crf_runs_on_the_whole_micrograph(ckpt, sims, tmp_path):
    """``crf=meanfield`` (and ``crf=dense``): the CRF of conf/crf/*.yaml applied to the whole
    micrograph's logits, computed here independently; picks at threshold 0.5."""
    from cryoparticle.crf.dense import DenseCRF
    from cryoparticle.crf.meanfield import MeanFieldCRF
    from cryoparticle.data.preprocess import bin_to_pixel_size, standardise
    from cryoparticle.io.mrc import read_micrograph
    from cryoparticle.models.segmenter import load_segmenter

    mic = sims[0] / "wide.mrc"
    seg = load_segmenter(ckpt).eval()
    image, pixel_size_a = read_micrograph(mic)
    binned, _ = bin_to_pixel_size(image, pixel_size_a, MODEL_PX)
    x = torch.from_numpy(standardise(binned))[None, None]
    with torch.no_grad():
        logits = seg(x)
    plain = logits.softmax(1)[0, 1].numpy()
    for name, cls in (("meanfield", MeanFieldCRF), ("dense", DenseCRF)):
        out = tmp_path / name
        summary = run(config(ckpt, mic, out, "write_probability=true", "tile_size=256",
                             f"crf={name}", "crf.bilateral_weight=1.0"))
        assert summary.exit_code == 0
        written = mrcfile.read(out / "wide_prob.mrc")
        cfg = OmegaConf.to_container(compose("predict", [f"crf={name}", "ckpt_path=x",
                                                         "input=x", "output_dir=x"]).crf,
                                     resolve=False)
        cfg.pop("_target_")
        cfg.pop("num_classes", None)
        cfg["bilateral_weight"] = 1.0
        with torch.no_grad():
            expected = cls(**cfg)(logits, x).exp()[0, 1].numpy()
        np.testing.assert_allclose(written, expected, atol=1e-4)
        assert np.abs(written - plain).max() > 0.05           # the CRF changed the map
        assert summary.threshold == 0.5
    # a checkpoint whose CRF-as-RNN was fine-tuned on the frozen network: crf=meanfield
    # replaces that CRF and gives the same map as on the plain checkpoint
    rnn_cfg = OmegaConf.to_container(compose("train", ["crf=rnn"]).crf, resolve=False)
    rnn_cfg["num_classes"] = 2
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    raw["hyper_parameters"].update(crf=rnn_cfg, freeze_network=True)
    crf_state = MeanFieldCRF(**{k: v for k, v in rnn_cfg.items() if k != "_target_"}).state_dict()
    raw["state_dict"].update({f"crf.{k}": v for k, v in crf_state.items()})
    frozen = tmp_path / "rnn_frozen.ckpt"
    torch.save(raw, frozen)
    out = tmp_path / "frozen"
    summary = run(config(frozen, mic, out, "write_probability=true", "tile_size=256",
                         "crf=meanfield", "crf.bilateral_weight=1.0"))
    assert summary.exit_code == 0
    np.testing.assert_allclose(mrcfile.read(out / "wide_prob.mrc"),
                               mrcfile.read(tmp_path / "meanfield" / "wide_prob.mrc"), atol=1e-6)


def test_one_device_loop_and_lightning_give_the_same_picks_and_files(ckpt, sims, tmp_path):
    """The default (one device) picks in a plain loop; any other Trainer option goes through
    Lightning's ``Trainer.predict`` (PickingModule + PickWriter): the same probability maps,
    picks and summary either way."""
    outputs = {}
    for label, extra in (("plain", []), ("lightning", ["+trainer.deterministic=false"])):
        out = tmp_path / label
        good = ",".join(str(sims[0] / f"{name}.mrc") for name in MICROGRAPHS)
        summary = run(config(ckpt, f"[{good}]", out, "write_probability=true", *extra))
        assert summary.exit_code == 0 and summary.device == "cpu × 1"
        outputs[label] = (summary, out)
    (plain, a), (lightning, b) = outputs["plain"], outputs["lightning"]
    assert plain.n_picked == lightning.n_picked == len(MICROGRAPHS)
    assert plain.n_particles == lightning.n_particles > 0
    for name in MICROGRAPHS:
        np.testing.assert_allclose(mrcfile.read(a / f"{name}_prob.mrc"),
                                   mrcfile.read(b / f"{name}_prob.mrc"), atol=1e-6)
        assert (a / f"{name}.csv").read_text() == (b / f"{name}.csv").read_text()
    assert (starfile.read(a / "particles.star", always_dict=True)["particles"].equals(
        starfile.read(b / "particles.star", always_dict=True)["particles"]))


def test_the_trainer_config_decides_between_one_device_and_lightning(monkeypatch):
    from cryoparticle.picking.predict import single_device

    base = {"_target_": "pytorch_lightning.Trainer", "accelerator": "auto", "devices": 1,
            "strategy": "auto", "num_nodes": 1, "precision": "32-true"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert single_device(base) == torch.device("cpu")
    assert single_device({**base, "accelerator": "cpu", "devices": "auto"}).type == "cpu"
    for lightning in ({"devices": 2}, {"strategy": "ddp"}, {"num_nodes": 2},
                      {"precision": "bf16-mixed"}, {"deterministic": True},
                      {"_target_": "my.Trainer"}, {"accelerator": "tpu"}):
        assert single_device({**base, **lightning}) is None, lightning
    with pytest.raises(InputError, match="no CUDA GPU"):
        single_device({**base, "accelerator": "gpu"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert single_device(base) == torch.device("cuda")          # auto with GPUs: one GPU
    assert single_device({**base, "accelerator": "gpu", "devices": "auto"}) is None  # all 4


def test_picking_one_device_never_imports_lightning(ckpt, sims, tmp_path):
    """A ``predict.py`` process on one device imports neither PyTorch Lightning nor
    torchmetrics (1–1.5 s of start-up on a 2-core CPU: pick_speed.py --lightning)."""
    out = tmp_path / "out"
    code = ("import sys\nfrom cryoparticle.cli import pick\n"
            f"sys.argv = ['predict.py', 'ckpt_path={ckpt}', 'input={sims[0] / 'wide.mrc'}', "
            f"'output_dir={out}', 'progress_bar=false', 'num_workers=0']\n"
            "try:\n    pick()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print('IMPORTED', sorted({m.split('.')[0] for m in sys.modules} & "
            "{'pytorch_lightning', 'lightning', 'lightning_fabric', 'torchmetrics'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, env=_ENV, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "IMPORTED []" in result.stdout
    assert (out / "wide.star").is_file()


@pytest.mark.slow
def test_two_processes_split_the_micrographs_under_ddp(ckpt, sims, tmp_path):
    """DDP with two CPU processes (as several GPUs would): each micrograph picked once, the
    summary and the combined STAR gathered from both ranks. Slow (two more interpreters)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        shutil.copy(sims[0] / "wide.mrc", folder / f"wide{i}.mrc")
    out = tmp_path / "out"
    result = subprocess.run(
        _predict_cmd(f"ckpt_path={ckpt}", f"input={folder}", f"output_dir={out}",
                     "trainer.accelerator=cpu", "trainer.devices=2",
                     "trainer.strategy=ddp_spawn", "num_workers=0", "progress_bar=false"),
        capture_output=True, text=True, cwd=tmp_path, env=_ENV, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = __import__("json").loads((out / "predict_summary.json").read_text())
    assert (summary["n_picked"], summary["device"]) == (3, "cpu × 2")
    counts = [len(starfile.read(out / f"wide{i}.star", always_dict=True)[""])
              for i in range(3)]
    combined = starfile.read(out / "particles.star", always_dict=True)["particles"]
    assert len(combined) == sum(counts) == summary["n_particles"]
    assert result.stdout.count("picking summary") == 1


# ------------------------------------------------------------------------------- bad input


def test_missing_checkpoint_through_the_command_line_is_one_line_exit_2(missing_ckpt_run):
    rc, _, stderr, out = missing_ckpt_run()
    assert rc == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing.ckpt" in lines[0]
    assert not out.exists()  # nothing written


@pytest.fixture
def bad_files(tmp_path, sims) -> Path:
    folder = tmp_path / "bad"
    folder.mkdir()
    good = (sims[0] / "wide.mrc").read_bytes()
    (folder / "truncated.mrc").write_bytes(good[: len(good) // 2])
    (folder / "empty.mrc").write_bytes(b"")
    write_mrc(folder / "stack.mrcs", np.random.default_rng(0).normal(size=(3, 32, 40)), 7.08)
    nan = np.random.default_rng(1).normal(size=(40, 48)).astype(np.float32)
    nan[5, 7] = np.nan
    inf = np.random.default_rng(2).normal(size=(40, 48)).astype(np.float32)
    inf[3, 3] = np.inf
    with warnings.catch_warnings():  # mrcfile warns about the values we mean to write
        warnings.simplefilter("ignore", RuntimeWarning)
        write_mrc(folder / "nan.mrc", nan, 7.08)
        write_mrc(folder / "inf.mrc", inf, 7.08)
    write_mrc(folder / "constant.mrc", np.full((40, 48), 3.0, np.float32), 7.08)
    write_mrc(folder / "no_pixel_size.mrc", np.random.default_rng(3).normal(size=(40, 48)), None)
    return folder


def test_unusable_micrographs_are_reported_one_line_each_and_nothing_is_lost(
        ckpt, bad_files, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "nan.star").write_text("earlier result\n")  # from an earlier run: must survive
    code = call_main(monkeypatch, f"ckpt_path={ckpt}", f"input={bad_files}",
                     f"output_dir={out}", "overwrite=true", "progress_bar=false",
                     "num_workers=0")
    assert code == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("failed: ")]
    reasons = {"truncated.mrc": "MRC", "empty.mrc": "", "stack.mrcs": "stack of 3",
               "nan.mrc": "non-finite", "inf.mrc": "non-finite", "constant.mrc": "constant",
               "no_pixel_size.mrc": "micrograph_pixel_size_a"}
    assert len(lines) == len(reasons), captured.err
    for file, reason in reasons.items():
        hits = [line for line in lines if f"{file}:" in line]
        assert len(hits) == 1 and reason in hits[0], (file, hits)
    assert "picking summary" in captured.out
    assert (out / "nan.star").read_text() == "earlier result\n"
    assert sorted(p.name for p in out.iterdir()) == ["coordinate_files.star", "nan.star",
                                                     "particles.star", "predict_summary.json"]


def test_micrograph_smaller_than_a_particle_is_one_line_and_the_others_are_picked(
        ckpt, sims, tmp_path, monkeypatch, capsys):
    """An 8×8 micrograph (56 Å across, the particle 190 Å) is reported like other unusable
    micrographs; the good micrograph of the same run is still picked."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(sims[0] / "wide.mrc", folder / "wide.mrc")
    write_mrc(folder / "tiny.mrc", np.random.default_rng(4).normal(size=(8, 8)), MIC_PX)
    out = tmp_path / "out"
    code = call_main(monkeypatch, f"ckpt_path={ckpt}", f"input={folder}", f"output_dir={out}",
                     "progress_bar=false", "num_workers=0", "extraction.border_px=0")
    assert code == 1
    lines = [line for line in capsys.readouterr().err.splitlines()
             if line.startswith("failed: ")]
    assert len(lines) == 1 and "tiny.mrc:" in lines[0] and "smaller than one particle" in \
        lines[0], lines
    assert not (out / "tiny.star").exists()
    picks = next(iter(starfile.read(out / "wide.star", always_dict=True).values()))
    precision, recall = match(picks[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float),
                              sims[1]["wide"][["x", "y"]].to_numpy(float))
    assert precision >= 0.8 and recall >= 0.8


@pytest.fixture
def no_pixel_size_ckpt(ckpt, tmp_path) -> Path:
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    raw["hyper_parameters"]["pixel_size_a"] = None
    raw["cryoparticle"]["pixel_size_a"] = None
    path = tmp_path / "no_pixel_size.ckpt"
    torch.save(raw, path)
    return path


@pytest.fixture
def old_layout_ckpt(ckpt, tmp_path) -> Path:
    """The checkpoint as an older version with other layer names would have written it."""
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    raw["state_dict"] = {k.replace("network.", "net.", 1): v
                         for k, v in raw["state_dict"].items()}
    path = tmp_path / "old_layout.ckpt"
    torch.save(raw, path)
    return path


BAD_CASES = {
    # name: (arguments replacing the defaults, text expected in the error line)
    "not a checkpoint": ({"ckpt_path": "{tmp}/text.ckpt"}, "text.ckpt"),
    "checkpoint without pixel size": ({"ckpt_path": "{no_px}"}, "pixel size"),
    "empty folder": ({"input": "{tmp}/empty_dir"}, "contains no micrographs"),
    "glob without match": ({"input": "{tmp}/empty_dir/*.mrc"}, "no micrograph matches"),
    "missing input": ({"input": "{tmp}/nowhere.mrc"}, "no such file"),
    "unsupported input": ({"input": "{tmp}/text.ckpt"}, "unsupported micrograph format"),
    "output under a file": ({"output_dir": "{tmp}/text.ckpt/out"}, "output folder"),
    "jpg without pixel size": ({"input": "{tmp}/mic.jpg"},
                               ("set micrograph_pixel_size_a (Å/px), or particle_diameter_px "
                                "(the particles' diameter in pixels): the network was trained "
                                f"at {MODEL_PX:g} Å/px")),
    "three inconsistent sizes": ({"micrograph_pixel_size_a": "7.08", "particle_diameter_px": "20",
                                  "particle_diameter_a": "190"}, "give two of the three"),
    "pixel size over 2× coarser": ({"micrograph_pixel_size_a": "40"},
                                   "at most 2× is resampled"),
    "another network's weights": ({"ckpt_path": "{tmp}/weights.pt"},
                                  "not a cryoparticle Segmenter checkpoint"),
    "older checkpoint layout": ({"ckpt_path": "{old}"}, "cannot load it into a Segmenter"),
    "unknown format": ({"formats": "[star,pdf]"}, "formats"),
    "threshold out of range": ({"threshold": "1.5"}, "threshold"),
    "no output_dir": ({"output_dir": None}, "output_dir"),
    "learnable crf post hoc": ({"crf": "rnn"}, "crf"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, ckpt, sims, no_pixel_size_ckpt,
                                                         old_layout_ckpt, tmp_path, monkeypatch,
                                                         capsys):
    (tmp_path / "text.ckpt").write_text("not a checkpoint\n")
    torch.save({"conv.weight": torch.zeros(4, 1, 3, 3)}, tmp_path / "weights.pt")
    (tmp_path / "empty_dir").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50), np.uint8)).save(
        tmp_path / "mic.jpg")
    args = {"ckpt_path": str(ckpt), "input": str(sims[0] / "wide.mrc"),
            "output_dir": str(tmp_path / "out")}
    changes, expected = BAD_CASES[case]
    for key, value in changes.items():
        if value is None:
            args.pop(key)
        else:
            args[key] = value.format(tmp=tmp_path, no_px=no_pixel_size_ckpt,
                                     old=old_layout_ckpt)
    code = call_main(monkeypatch, *(f"{k}={v}" for k, v in args.items()), "progress_bar=false")
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    if "ckpt_path" in changes:  # says what to do
        assert "omit ckpt_path to pick with the packaged general model" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_read_only_output_folder_is_one_line_exit_2(ckpt, sims, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        code = call_main(monkeypatch, f"ckpt_path={ckpt}", f"input={sims[0] / 'wide.mrc'}",
                         f"output_dir={out}", "progress_bar=false")
    finally:
        out.chmod(0o700)
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "cannot write" in lines[0]


# ------------------------------------------------------------------------------- pieces


def test_input_listing_folders_globs_lists_and_names(tmp_path):
    for name in ("b.mrc", "a.tif", "c.png", "a_mask.png", "c_prob.mrc", "d_overlay.png",
                 ".hidden.mrc", "notes.txt", "x_instances.tif"):
        (tmp_path / name).write_bytes(b"x")
    listed = list_micrographs(str(tmp_path))
    assert [p.name for p in listed] == ["a.tif", "b.mrc", "c.png"]
    assert [p.name for p in list_micrographs(f"{tmp_path}/*.mrc")] == ["b.mrc"]
    both = list_micrographs([str(tmp_path / "b.mrc"), f"{tmp_path}/*.mrc", str(tmp_path)])
    assert [p.name for p in both] == ["b.mrc", "a.tif", "c.png"]  # duplicates dropped
    (tmp_path / "b.tif").write_bytes(b"x")
    with pytest.raises(InputError, match="same name 'b'"):
        micrograph_names(list_micrographs(str(tmp_path)), "particles.star")
    (tmp_path / "particles.mrc").write_bytes(b"x")
    with pytest.raises(InputError, match="combined STAR"):
        micrograph_names([tmp_path / "particles.mrc"], "particles.star")


def test_fitted_tiles_cover_each_axis_with_as_few_tiles_and_pixels():
    from cryoparticle.data.tiling import tile_starts

    assert fitted_tile((1024, 1024), 512, 32) == 384  # 3 tiles per side either way
    assert len(tile_starts(1024, 384, 32)) == len(tile_starts(1024, 512, 32)) == 3
    assert fitted_tile((1023, 1440), 512, 32) == 512  # the long side needs the full tile
    assert fitted_tile((128, 192), 256, 0) == 192  # one tile: the micrograph, rounded up to 32
    assert fitted_tile((100, 90), 100, 10) == 100  # never larger than the tile
    for shape, tile, overlap in [((700, 333), 256, 32), ((4096, 2900), 512, 64), ((97, 1500),
                                                                                 128, 16)]:
        fitted = fitted_tile(shape, tile, overlap)
        assert fitted % 32 == 0 or fitted == tile
        for length in shape:
            if length > tile:
                assert len(tile_starts(length, fitted, overlap)) <= \
                    len(tile_starts(length, tile, overlap))


def test_config_holds_every_parameter():
    cfg = compose("predict", ["ckpt_path=a", "input=b", "output_dir=c"])
    for key, value in {"ckpt_path": "a", "estimate_diameter": None,
                       "diameter_range": [0.4, 2.5], "drop_border": True,
                       "micrograph_pixel_size_a": None, "threshold": None,
                       "particle_diameter_a": None, "box_size": None,
                       "formats": ["star", "box", "csv"], "write_probability": False,
                       "write_mask": False, "write_overlay": False, "overwrite": False,
                       "tile_batch_size": None, "fit_tiles": True,
                       "num_workers": 2}.items():
        assert cfg[key] == value, key
    assert cfg.extraction.min_distance_fraction is None and cfg.extraction.border_px is None
    assert {"accelerator", "devices", "strategy"} <= set(cfg.trainer)
    missing = compose("predict")
    from omegaconf import OmegaConf
    assert all(OmegaConf.is_missing(missing, k) for k in ("input", "output_dir"))
    assert missing.ckpt_path is None  # the packaged general model


# ---------------------------------------------------------------- RELION reads our picks unchanged

RELION_PREPROCESS = shutil.which("relion_preprocess")
RELION_BOX = 40            # extraction box (px): 1.5 × the particle diameter, even as RELION needs
CENTRED = 3.0              # centre-vs-rim contrast (rim standard deviations) of a centred average


def _relion_micrographs_star(path: Path, names: list[str]) -> None:
    """The micrographs STAR file RELION 3.1 extracts from (optics + micrographs)."""
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                           "rlnMicrographPixelSize": [MIC_PX], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]})
    mics = pd.DataFrame({"rlnMicrographName": names, "rlnOpticsGroup": [1] * len(names)})
    starfile.write({"optics": optics, "micrographs": mics}, path)


def _relion_extract(project: Path, coord_dir: str, tag: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Run the real ``relion_preprocess --extract`` in ``project``; its particles table and
    the average of the boxes it extracted (read from its ``.mrcs`` stacks)."""
    part_dir = f"Extract_{tag}/"
    cmd = [RELION_PREPROCESS, "--i", "micrographs.star", "--coord_dir", coord_dir,
           "--coord_suffix", ".star", "--part_dir", part_dir,
           "--part_star", f"{part_dir}particles.star", "--extract",
           "--extract_size", str(RELION_BOX)]
    done = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    table = starfile.read(project / part_dir / "particles.star", always_dict=True)["particles"]
    boxes = []
    for image_name in table["rlnImageName"]:
        index, stack = str(image_name).split("@")
        with mrcfile.open(project / stack) as mrc:
            boxes.append(np.asarray(mrc.data[int(index) - 1], dtype=np.float64))
    return table, np.mean(boxes, axis=0)


def _centre_contrast(average: np.ndarray, diameter_px: float) -> float:
    """|mean of the central disc (radius d/4) − mean of the rim (beyond d/2 + 2 px)| of a box
    average, in units of the rim's standard deviation: large for a centred particle."""
    size = average.shape[0]
    yy, xx = np.mgrid[:size, :size] - size // 2   # RELION's box centre: pixel size/2
    radius = np.hypot(yy, xx)
    centre, rim = average[radius <= diameter_px / 4], average[radius >= diameter_px / 2 + 2]
    return float(abs(centre.mean() - rim.mean()) / rim.std())


@pytest.mark.skipif(RELION_PREPROCESS is None,
                    reason="relion_preprocess not found: apt-get install relion")
def test_relion_extracts_our_picks_unchanged_and_centred(ckpt, tmp_path, monkeypatch):
    """predict.py's NAME.star into the real ``relion_preprocess --extract`` (RELION 3.1):
    every pick is extracted, the box average is a centred particle, and the same picks with x
    and y swapped (or y flipped) give no centred particle; the combined STAR files name the
    micrograph as it was given (relative)."""
    project = tmp_path / "project"
    (project / "mics").mkdir(parents=True)
    sim = MicrographSimulator(simulator_config(overrides=[
        f"pixel_size_a={MIC_PX}", *EASY, "particles.min_distance_a=420"]))
    mic = sim.simulate((12, 0), 256, 256, name="square", n_particles=10)
    write_mrc(project / "mics" / "square.mrc", mic.image, MIC_PX)
    monkeypatch.chdir(project)
    # the README's recipe: picks of mics/NAME.mrc in picks/mics/ → --coord_dir picks/
    summary = run(config(ckpt, "mics/", "picks/mics", "formats=[star]"))
    assert summary.exit_code == 0 and summary.n_particles >= 6

    ours = starfile.read(project / "picks" / "mics" / "square.star", always_dict=True)
    assert list(ours) == [""]              # one table, as RELION's autopick writes it
    picks = ours[""]
    assert list(picks.columns[:2]) == ["rlnCoordinateX", "rlnCoordinateY"]
    assert {"rlnAutopickFigureOfMerit", "rlnClassNumber", "rlnAnglePsi"} <= set(picks.columns)
    combined = starfile.read(project / "picks" / "mics" / "particles.star", always_dict=True)
    assert combined["optics"]["rlnMicrographPixelSize"].iloc[0] == pytest.approx(MIC_PX)
    assert set(combined["particles"]["rlnMicrographName"]) == {"mics/square.mrc"}
    listing = starfile.read(project / "picks" / "mics" / "coordinate_files.star")
    assert listing.to_dict("list") == {"rlnMicrographName": ["mics/square.mrc"],
                                       "rlnMicrographCoordinates": ["picks/mics/square.star"]}

    _relion_micrographs_star(project / "micrographs.star", ["mics/square.mrc"])
    extracted, average = _relion_extract(project, "picks/", "ours")
    assert len(extracted) == len(picks) == summary.n_particles
    np.testing.assert_allclose(extracted[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float),
                               picks[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float),
                               atol=1e-4)
    contrast = _centre_contrast(average, DIAMETER_PX)

    wrong = {"swapped": picks.rename(columns={"rlnCoordinateX": "rlnCoordinateY",
                                              "rlnCoordinateY": "rlnCoordinateX"}),
             "flipped": picks.assign(rlnCoordinateY=255 - picks["rlnCoordinateY"])}
    contrasts = {}
    for tag, table in wrong.items():
        (project / tag / "mics").mkdir(parents=True)
        starfile.write({"": table}, project / tag / "mics" / "square.star")
        extracted_wrong, average_wrong = _relion_extract(project, f"{tag}/", tag)
        assert len(extracted_wrong) == len(picks)
        contrasts[tag] = _centre_contrast(average_wrong, DIAMETER_PX)
    print(f"centre contrast: ours {contrast:.2f}, "
          + ", ".join(f"{k} {v:.2f}" for k, v in contrasts.items()))
    assert contrast >= CENTRED, (contrast, contrasts)    # measured: 19.9
    assert all(value < CENTRED for value in contrasts.values()), contrasts  # 0.05, 0.07


def test_extraction_options_come_from_the_checkpoint_unless_given(tmp_path):
    """A checkpoint trained with its own extraction options (e.g. smaller particle cores) is
    picked with them; an option given on the command line wins; the rest keep the defaults."""
    from cryoparticle.picking.settings import build_settings

    facts = {"pixel_size_a": 7.08, "particle_diameter_a": 190.0, "picking_threshold": 0.4,
             "normalisation": "per_micrograph_standardise",
             "extraction": {"min_size_fraction": 0.05, "min_distance_fraction": 0.4}}
    cfg = compose("predict", ["ckpt_path=a", "input=b", f"output_dir={tmp_path}"])
    settings = build_settings(cfg, facts, tmp_path / "a.ckpt")
    assert settings.extraction.min_size_fraction == 0.05
    assert settings.extraction.min_distance_fraction == 0.4
    assert settings.extraction.max_size_fraction == 3.0 and settings.extraction.split_touching
    cfg = compose("predict", ["ckpt_path=a", "input=b", f"output_dir={tmp_path}",
                              "extraction.min_size_fraction=0.3"])
    assert build_settings(cfg, facts, tmp_path / "a.ckpt").extraction.min_size_fraction == 0.3
    with pytest.raises(InputError, match="extraction"):
        Segmenter(network={"name": "unet", "backbone": "resnet18"},
                  extraction={"min_size_fraction": -1.0})


# ------------------------------------------ the packaged general model, diameters, borders, pixels

EXAMPLE = ROOT / "examples" / "empiar10017_example.mrc"
EXAMPLE_TRUTH = ROOT / "examples" / "truth" / "empiar10017_example.csv"


@pytest.fixture
def packaged_tiny(ckpt, tmp_path, monkeypatch) -> Path:
    """The tiny checkpoint exported as the general model is (half precision, estimating the
    diameter) and installed as the packaged ``general`` model."""
    from cryoparticle.models import packaged

    path = packaged.export_checkpoint(ckpt, tmp_path / "general.ckpt",
                                      extra={"estimate_diameter": True})
    monkeypatch.setitem(packaged.PACKAGED, "general", str(path.resolve()))
    assert packaged.resolve_checkpoint(None) == path.resolve()
    return path


def test_readme_example_is_picked_with_the_packaged_model_without_ckpt_path(
        packaged_tiny, tmp_path, monkeypatch, capsys):
    """The README's first command: no ckpt_path, no pixel size (the MRC header's 3.54 Å/px),
    STAR and overlay written; the diameter is estimated per micrograph (the export says so)
    and reported."""
    out = tmp_path / "picks"
    code = call_main(monkeypatch, f"input={EXAMPLE}", f"output_dir={out}", "write_overlay=true",
                     "progress_bar=false", "num_workers=0")
    assert code == 0, capsys.readouterr().err
    star = starfile.read(out / "empiar10017_example.star", always_dict=True)[""]
    xy = star[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float)
    assert len(xy) and (xy >= 0).all() and (xy < 1024).all()
    overlay = Image.open(out / "empiar10017_example_overlay.png")
    assert overlay.size[0] >= 256 and overlay.mode in ("RGB", "RGBA")
    summary = __import__("json").loads((out / "predict_summary.json").read_text())
    record = summary["micrographs"][0]
    assert record["pixel_size_a"] == pytest.approx(3.54)
    assert record["diameter_estimated"] is True
    assert 0.4 * DIAMETER_A <= record["particle_diameter_a"] <= 2.5 * DIAMETER_A
    stdout = capsys.readouterr().out   # the summary says the diameter was a guess, and why
    assert f"{record['particle_diameter_a']:.0f} (estimated)" in stdout
    assert "give it (particle_diameter_a, Å)" in stdout
    box = np.loadtxt(out / "empiar10017_example.box", ndmin=2)[:, 2]
    assert (box == round(1.5 * record["particle_diameter_a"] / 3.54)).all()
    assert len(pd.read_csv(EXAMPLE_TRUTH)) == 185  # the committed truth, CryoPPP columns


def test_missing_packaged_model_is_one_line_exit_2(sims, tmp_path, monkeypatch, capsys):
    from cryoparticle.models import packaged

    monkeypatch.setitem(packaged.PACKAGED, "general", "no_such_model.ckpt")
    for extra in ([], ["ckpt_path=general"]):
        code = call_main(monkeypatch, f"input={sims[0] / 'wide.mrc'}",
                         f"output_dir={tmp_path / 'out'}", "progress_bar=false", *extra)
        assert code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "packaged 'general' model is missing" in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_shipped_general_model_picks_the_example(tmp_path):
    """The real shipped weights on the README's example (skipped until they are committed)."""
    from cryoparticle.models import packaged

    try:
        packaged.packaged_checkpoint("general")
    except InputError:
        pytest.skip("cryoparticle/models/weights/general.ckpt is not in this checkout")
    out = tmp_path / "picks"
    summary = run(compose("predict", [f"input={EXAMPLE}", f"output_dir={out}",
                                      "progress_bar=false", "num_workers=0"]))
    assert summary.exit_code == 0
    star = starfile.read(out / "empiar10017_example.star", always_dict=True)[""]
    truth = pd.read_csv(EXAMPLE_TRUTH)
    precision, recall = match(star[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float),
                              truth[["X-Coordinate", "Y-Coordinate"]].to_numpy(float),
                              tol=truth["Diameter"].median() / 2)
    assert 2 * precision * recall / max(precision + recall, 1e-9) >= 0.6, (precision, recall)
    # it picks at its export's threshold relative to the micrograph's peak level
    record = summary.micrographs[0]
    assert summary.relative_threshold > 0 and record["peak_level"] > 0
    assert record["threshold"] == pytest.approx(max(
        summary.threshold, summary.relative_threshold * record["peak_level"]))


def _settings(out: Path, *extra: str, estimate: bool | None = None):
    """Settings of a checkpoint trained at 7.08 Å/px on 190 Å particles."""
    from cryoparticle.picking.settings import build_settings

    facts = {"pixel_size_a": 7.08, "particle_diameter_a": 190.0, "picking_threshold": 0.5,
             "normalisation": None, "export": {} if estimate is None else
             {"estimate_diameter": estimate}}
    cfg = compose("predict", ["input=x", f"output_dir={out}", "formats=[star,box,csv]", *extra])
    return build_settings(cfg, facts, Path("model.ckpt"))


def _pick_map(settings, prob: np.ndarray, factor: float, border=None) -> tuple[pd.DataFrame,
                                                                            dict]:
    """:class:`PickRecorder` on one probability map (binned grid, ``factor`` × coarser than the
    7.08/factor Å/px micrograph): the CSV it wrote and its summary record."""
    from cryoparticle.picking.writers import PickRecorder

    settings.output_dir.mkdir(parents=True, exist_ok=True)
    shape = tuple(round(n * factor) for n in prob.shape)
    record = {"index": 0, "name": "discs", "path": "discs.mrc", "image":
              torch.zeros(1, *prob.shape), "original_shape": shape, "factor": (factor, factor),
              "pixel_size_a": 7.08 / factor, "read_s": 0.0, "skipped": False, "error": None,
              "border": border}
    recorder = PickRecorder(settings, [Path("discs.mrc")], ["discs"])
    recorder.start()
    recorder.record(record, {"prob": torch.from_numpy(prob), "segment_s": 0.0, "tile": 64})
    summary = recorder.finish()
    assert summary.n_failed == 0, summary.failures
    return (pd.read_csv(settings.output_dir / "discs.csv"), summary.micrographs[0])


def _discs(shape: tuple[int, int], centres: np.ndarray, diameter: float) -> np.ndarray:
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    inside = np.zeros(shape, bool)
    for x, y in centres:
        inside |= np.hypot(cols - x, rows - y) <= diameter / 2
    return np.where(inside, 0.95, 0.02).astype(np.float32)


def _match_once(picks: np.ndarray, truth: np.ndarray, tol: float) -> None:
    """Every true centre picked exactly once, nothing else."""
    dist = np.hypot(*(picks[:, None, :] - truth[None, :, :]).transpose(2, 0, 1))
    assert (dist.min(axis=0) <= tol).all(), "a particle was missed"
    assert ((dist <= tol).sum(axis=0) == 1).all(), "a particle was picked twice"
    assert len(picks) == len(truth)


@pytest.mark.parametrize("estimate", [True, None])
def test_estimated_diameter_drives_extraction_and_what_is_written(tmp_path, estimate):
    """Discs 40 binned px across (283 Å at 7.08 Å/px, the checkpoint says 190 Å): with the
    diameter estimated (asked for, or the checkpoint's export says so) every disc is picked
    once, including two touching pairs, and the written diameter/BOX size are the discs'."""
    rng = np.random.default_rng(5)
    grid = np.array([(x, y) for y in (40, 110, 180) for x in (40, 110, 180, 250)], float)
    centres = np.vstack([grid + rng.uniform(-4, 4, grid.shape),
                         [[330, 50], [370, 50], [330, 160], [330, 200]]])  # touching pairs
    prob = _discs((224, 400), centres, 40.0)
    factor = 2.0  # the micrograph at 3.54 Å/px: everything written in its pixels
    extra = ["estimate_diameter=true"] if estimate else []
    extra.append("extraction.border_px=0")  # a touching pair sits at the edge
    settings = _settings(tmp_path / "est", *extra, estimate=True if estimate is None else None)
    assert settings.estimate_diameter
    csv_picks, record = _pick_map(settings, prob, factor)
    assert record["diameter_estimated"] is True
    assert record["particle_diameter_a"] == pytest.approx(40 * 7.08, rel=0.1)
    assert csv_picks["Diameter"].between(0.9 * 80, 1.1 * 80).all()
    box = np.loadtxt(settings.output_dir / "discs.box", ndmin=2)
    assert np.allclose(box[:, 2], round(1.5 * record["particle_diameter_a"] / 3.54))
    _match_once(csv_picks[["X-Coordinate", "Y-Coordinate"]].to_numpy(float), centres * factor,
                tol=4.0)

    # An explicit particle_diameter_a always wins: no estimate, the diameter written as given.
    given = _settings(tmp_path / "given", "estimate_diameter=true", "particle_diameter_a=150",
                      "extraction.border_px=0", estimate=True)
    assert not given.estimate_diameter
    csv_given, record = _pick_map(given, prob, factor)
    assert record["particle_diameter_a"] == 150.0 and record["diameter_estimated"] is False
    assert (csv_given["Diameter"] == round(150 / 3.54)).all()


@pytest.mark.parametrize("extra, margin", [([], 0.75 * 40), (["box_size=100"], 50.0),
                                           (["extraction.border_px=12"], 12.0),
                                           (["extraction.border_px=0"], 0.0)])
def test_picks_whose_box_would_be_cut_off_are_dropped_by_default(tmp_path, extra, margin):
    """Discs of 20 binned px (40 px of the micrograph, binned 2×) on a grid reaching the edges:
    by default a pick is kept only if its box (1.5 diameters, or box_size) lies inside the
    micrograph, i.e. its centre is at least half the box from every edge;
    extraction.border_px sets that margin itself (0: every disc is picked)."""
    factor, diameter = 2.0, 40.0
    step = np.arange(6.0, 250.0, 24.0)  # binned centres from 6 px of the edge inwards
    centres = np.array([(x, y) for y in step for x in step])
    prob = _discs((256, 256), centres, diameter / factor)
    settings = _settings(tmp_path / "out", f"particle_diameter_a={diameter * 7.08 / factor}",
                         *extra)
    csv_picks, record = _pick_map(settings, prob, factor)
    assert record["edge_margin_px"] == pytest.approx(margin)
    xy = csv_picks[["X-Coordinate", "Y-Coordinate"]].to_numpy(float)
    original = centres * factor
    size = 256 * factor
    inside = ((original >= margin - 2) & (original <= size - 1 - margin + 2)).all(axis=1)
    clear = ((original >= margin + 2) & (original <= size - 1 - margin - 2)).all(axis=1)
    assert len(xy) >= clear.sum() and len(xy) <= inside.sum()
    edge = np.minimum(xy, size - 1 - xy).min(axis=1)
    assert (edge >= margin - 1e-6).all()
    if margin == 0:
        assert len(xy) == len(centres)


def test_the_diameter_is_estimated_at_the_exports_diameter_threshold(tmp_path):
    """Discs of 20 binned px (p 0.95) in a faint halo out to 30 px (p 0.3), picked at 0.2:
    estimated at the picking threshold the halo counts (≈ 30 px); at the export's
    diameter_threshold 0.5 only the discs do (≈ 20 px). Out of [0, 1] it is a one-line error."""
    from cryoparticle.errors import InputError
    from cryoparticle.picking.settings import build_settings

    centres = np.array([(x, y) for y in (30, 80, 130, 180) for x in (30, 80, 130, 180)], float)
    prob = np.maximum(_discs((210, 210), centres, 20.0), 0.3 * (_discs((210, 210), centres,
                                                                       30.0) > 0.5))
    found = {}
    for label, export in [("picking", {}), ("export", {"diameter_threshold": 0.5})]:
        facts = {"pixel_size_a": 7.08, "particle_diameter_a": 190.0, "picking_threshold": 0.2,
                 "normalisation": None, "export": {"estimate_diameter": True, **export}}
        cfg = compose("predict", ["input=x", f"output_dir={tmp_path / label}",
                                  "extraction.border_px=0"])
        _, record = _pick_map(build_settings(cfg, facts, Path("m.ckpt")), prob, 1.0)
        found[label] = record["particle_diameter_a"] / 7.08
    assert found["picking"] == pytest.approx(30, rel=0.1)
    assert found["export"] == pytest.approx(20, rel=0.1)
    facts["export"]["diameter_threshold"] = 1.5
    with pytest.raises(InputError, match="m.ckpt: export.diameter_threshold=1.5"):
        build_settings(cfg, facts, Path("m.ckpt"))


def test_too_little_foreground_falls_back_to_the_checkpoint_diameter(tmp_path):
    settings = _settings(tmp_path / "few", "estimate_diameter=true")
    prob = _discs((128, 128), np.array([[40.0, 40.0], [90.0, 90.0]]), 30.0)  # 2 discs: < 5 peaks
    csv_picks, record = _pick_map(settings, prob, 1.0)
    assert record["particle_diameter_a"] == 190.0 and len(csv_picks) == 2
    assert (csv_picks["Diameter"] == round(190 / 7.08)).all()


def test_padding_of_replicated_rows_and_columns_gets_no_pick(sims, tmp_path):
    """A micrograph padded like CryoSegNet's JPGs (30 replicated rows on top, 24 replicated
    columns on the right): the reader finds the padding, and the writer picks nothing there
    even where the probability map has particles; drop_border=false keeps them."""
    from cryoparticle.io.mrc import read_micrograph
    from cryoparticle.picking.inputs import MicrographFiles

    image, px = read_micrograph(sims[0] / "wide.mrc")
    padded = np.pad(image, ((30, 0), (0, 24)), mode="edge")
    write_mrc(tmp_path / "padded.mrc", padded, px)
    settings = _settings(tmp_path / "out", "border_margin_px=10", "extraction.border_px=0")
    record = MicrographFiles([tmp_path / "padded.mrc"], ["padded"], settings)[0]
    assert record["error"] is None
    assert record["border"] == (40, 0, 0, 34)  # top, bottom, left, right (+ the 10 px margin)
    # Discs everywhere on the binned grid (factor 2), padding included.
    height, width = padded.shape
    centres = np.array([(x, y) for y in range(8, height // 2, 34)
                        for x in range(8, width // 2, 34)], float)
    prob = _discs((height // 2, width // 2), centres, 27.0)
    kept, _ = _pick_map(settings, prob, 2.0, border=record["border"])
    xy = kept[["X-Coordinate", "Y-Coordinate"]].to_numpy(float)
    assert len(xy) and (xy[:, 1] >= 40 - 0.5).all() and (xy[:, 0] < width - 34 + 0.5).all()
    everything, _ = _pick_map(_settings(tmp_path / "all", "drop_border=false",
                                        "extraction.border_px=0"), prob, 2.0,
                              border=record["border"])
    inner = ((everything["Y-Coordinate"] >= 40) & (everything["X-Coordinate"] < width - 34))
    assert (~inner).sum() > 0 and inner.sum() == len(xy)


def test_coarser_micrograph_is_fourier_padded_and_picked_in_its_own_pixels(ckpt, sims,
                                                                          tmp_path):
    """The wide micrograph Fourier-binned 3× (21.24 Å/px, 1.5× coarser than the checkpoint's
    14.16): predict upsamples it 1.5× and writes picks in the coarse micrograph's pixels,
    x = column and y = row (a transposed table would not match)."""
    from cryoparticle.data.preprocess import fourier_bin

    image, px = __import__("cryoparticle.io.mrc", fromlist=["read_micrograph"]
                           ).read_micrograph(sims[0] / "wide.mrc")
    coarse = fourier_bin(image, 3.0)
    assert coarse.shape == (85, 128)
    write_mrc(tmp_path / "coarse.mrc", coarse, px * 3)
    truth = sims[1]["wide"].to_numpy(float) * np.array([128 / 384, 85 / 256])
    out = tmp_path / "out"
    summary = run(config(ckpt, tmp_path / "coarse.mrc", out,
                         "extraction.border_px=0"))  # 85 px: most particles near an edge
    assert summary.exit_code == 0, summary.failures
    record = summary.micrographs[0]
    assert record["original_shape"] == (85, 128)
    assert record["bin_factor"] == pytest.approx(1 / 1.5, rel=0.01)  # upsampled 1.5×
    picks = starfile.read(out / "coarse.star", always_dict=True)[""][
        ["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float)
    precision, recall = match(picks, truth, tol=TOLERANCE_PX / 3 + 0.5)
    assert precision >= 0.8 and recall >= 0.8, (precision, recall, picks, truth)
    assert (picks[:, 0] < 128).all() and (picks[:, 1] < 85).all()
    assert match(picks[:, ::-1], truth, tol=TOLERANCE_PX / 3 + 0.5)[1] < 0.5


def test_estimated_diameter_of_a_core_trained_network_is_the_whole_particle(tmp_path):
    """A network trained on particle cores (export core_fraction 0.5) marks discs of half the
    diameter: the estimate reports the whole particle's diameter."""
    import pandas as pd

    from cryoparticle.data.masks import disc_mask
    from cryoparticle.picking.settings import build_settings
    from cryoparticle.picking.writers import picking_diameter_a

    facts = {"pixel_size_a": 7.08, "particle_diameter_a": 190.0, "picking_threshold": 0.5,
             "normalisation": "per_micrograph_standardise",
             "export": {"estimate_diameter": True, "core_fraction": 0.5}}
    cfg = compose("predict", ["input=b", f"output_dir={tmp_path}"])
    settings = build_settings(cfg, facts, tmp_path / "a.ckpt")
    assert settings.estimate_diameter and settings.core_fraction == 0.5
    xy = [(x, y) for x in range(20, 300, 40) for y in range(20, 300, 40)]
    cores = disc_mask((320, 320), pd.DataFrame({"micrograph": "m", "x": [p[0] for p in xy],
                                                "y": [p[1] for p in xy], "diameter": 15.0,
                                                "score": 1.0})).astype(float)
    assert picking_diameter_a(cores, settings, 7.08) == pytest.approx(30 * 7.08, rel=0.1)
    facts["export"]["core_fraction"] = 2.0
    with pytest.raises(InputError, match="core_fraction"):
        build_settings(cfg, facts, tmp_path / "a.ckpt")


def test_a_relative_threshold_estimates_the_diameter_at_its_own_level_not_its_floor(tmp_path):
    """An export with a relative threshold and no diameter_threshold: the diameter is
    estimated at the micrograph's threshold (0.25 × its peak level), not at the floor 0.05,
    below which a background of probability 0.1 would make one region of the whole map."""
    import pandas as pd

    from cryoparticle.data.masks import disc_mask
    from cryoparticle.picking.settings import build_settings
    from cryoparticle.picking.writers import picking_diameter_a

    facts = {"pixel_size_a": 7.08, "particle_diameter_a": 190.0, "picking_threshold": 0.05,
             "normalisation": "per_micrograph_standardise",
             "export": {"estimate_diameter": True, "core_fraction": 0.5,
                        "relative_threshold": 0.25, "peak_quantile": 0.9}}
    cfg = compose("predict", ["input=b", f"output_dir={tmp_path}"])
    settings = build_settings(cfg, facts, tmp_path / "a.ckpt")
    assert settings.diameter_threshold is None and settings.relative_threshold == 0.25
    xy = [(x, y) for x in range(20, 300, 40) for y in range(20, 300, 40)]
    cores = disc_mask((320, 320), pd.DataFrame({"micrograph": "m", "x": [p[0] for p in xy],
                                                "y": [p[1] for p in xy], "diameter": 15.0,
                                                "score": 1.0})).astype(float)
    prob = 0.1 + 0.04 * np.random.default_rng(0).random(cores.shape) + 0.8 * cores
    assert picking_diameter_a(prob, settings, 7.08) == pytest.approx(30 * 7.08, rel=0.1)
    fixed = build_settings(cfg, {**facts, "export": {**facts["export"],
                                                      "relative_threshold": 0.0}},
                           tmp_path / "a.ckpt")
    # at the fixed floor the background is foreground: the estimate is not the particles'
    assert picking_diameter_a(prob, fixed, 7.08) != pytest.approx(30 * 7.08, rel=0.1)


@pytest.mark.parametrize("extra, side", [
    ([], 128),                                              # the checkpoint's 7.08 Å/px
    (["particle_diameter_a=95"], 256),                      # half the size: 3.54 Å/px
    (["particle_diameter_a=95", "match_diameter=false"], 128),
    (["particle_diameter_a=380"], 64),                      # twice the size: 14.16 Å/px
    (["particle_diameter_a=47.5"], 512),                    # 1.77 Å/px: 2× upsampled
    (["particle_diameter_a=30"], 512),                      # would need 3.2×: at most 2×
    (["particle_diameter_px=13.4"], 512),                   # with the pixel size: 47.4 Å
    (["particle_diameter_px=26.8"], 256),                   # 94.9 Å
    (["estimate_diameter=true"], 128),                      # estimated: never matched
])
def test_a_given_diameter_resamples_particles_to_the_size_the_network_learnt(tmp_path, extra,
                                                                             side):
    """A micrograph of 3.54 Å/px, 256² px, picked with a checkpoint of 7.08 Å/px and 190 Å:
    with a given particle diameter d (match_diameter, default true) it is resampled to
    7.08 × d / 190 Å/px (so the particles are 190/7.08 px across, as in training), never
    upsampled more than 2×; otherwise to the checkpoint's 7.08 Å/px. The normalised image
    and the original-pixel factor follow."""
    from cryoparticle.picking.inputs import MicrographFiles

    path = tmp_path / "mic.mrc"
    rng = np.random.default_rng(0)
    write_mrc(path, rng.normal(size=(256, 256)).astype(np.float32), 3.54)
    settings = _settings(tmp_path / "out", "micrograph_pixel_size_a=3.54", *extra)
    record = MicrographFiles([path], ["mic"], settings)[0]
    assert record["error"] is None
    assert tuple(record["image"].shape) == (1, side, side)
    assert record["factor"] == pytest.approx((256 / side, 256 / side))
    assert record["pixel_size_a"] == 3.54 and record["original_shape"] == (256, 256)
    assert float(record["image"].std()) == pytest.approx(1.0, abs=0.05)


def test_the_summary_reports_the_diameter_picked_with_and_notes_an_estimate(capsys):
    from cryoparticle.picking.writers import (ESTIMATED_DIAMETER_NOTE, PredictSummary,
                                              picking_diameters, print_summary)

    def summary(*micrographs):
        return PredictSummary(
            n_micrographs=len(micrographs), n_picked=len(micrographs), n_skipped=0,
            n_failed=0, n_particles=0, n_particles_new=0, particles_per_micrograph=0.0,
            seconds_per_micrograph=1.0, wall_seconds_per_micrograph=1.0, wall_s=1.0,
            threshold=0.125, device="cpu × 1", output_dir=".", combined_star="p.star",
            micrographs=list(micrographs))

    given = {"status": "picked", "particle_diameter_a": 190.0, "diameter_estimated": False}
    assert picking_diameters(summary(given, given)) == ("190", False)
    estimates = [{"status": "picked", "particle_diameter_a": d, "diameter_estimated": True}
                 for d in (150.4, 181.0, 166.0)]
    failed = {"status": "failed", "particle_diameter_a": None, "diameter_estimated": False}
    assert picking_diameters(summary(*estimates, failed)) == ("166 (estimated; 150–181)", True)
    assert picking_diameters(summary(estimates[0])) == ("150 (estimated)", True)
    assert picking_diameters(summary(failed)) == ("–", False)

    print_summary(summary(*estimates))
    out = capsys.readouterr().out
    assert "166 (estimated; 150–181)" in out and ESTIMATED_DIAMETER_NOTE in out
    print_summary(summary(given))
    out = capsys.readouterr().out
    assert "particle diameter (Å)" in out and ESTIMATED_DIAMETER_NOTE not in out


def _two_populations(shape, true_xy, true_p, false_xy, false_p, diameter):
    """Discs of ``diameter`` at probability ``true_p`` (the particles) and ``false_p``
    (weaker blobs) on a 0.02 background."""
    prob = np.full(shape, 0.02, np.float32)
    for centres, value in ((true_xy, true_p), (false_xy, false_p)):
        inside = _discs(shape, centres, diameter) > 0.5
        prob[inside] = value
    return prob


@pytest.mark.parametrize("case", ["faint", "confident"])
def test_a_relative_threshold_follows_how_sure_the_network_is_of_each_micrograph(tmp_path, case):
    """16 particles and 4 weaker blobs, picked by a checkpoint with a fixed threshold 0.125
    and by one whose export picks at max(0.05, 0.5 × peak level). Faint (particles at 0.11,
    blobs at 0.03, as on data unlike the training data): the fixed threshold finds nothing,
    the relative one (0.055) every particle. Confident (particles at 0.9, blobs at 0.3): the
    fixed threshold picks the blobs too, the relative one (0.45) only the particles. The
    threshold and the peak level are recorded per micrograph."""
    from cryoparticle.picking.settings import build_settings

    true_xy = np.array([(x, y) for y in (30, 80, 130, 180) for x in (30, 80, 130, 180)], float)
    false_xy = np.array([(55, 55), (155, 55), (55, 155), (155, 155)], float)
    p_true, p_false = (0.11, 0.03) if case == "faint" else (0.9, 0.3)
    prob = _two_populations((210, 210), true_xy, p_true, false_xy, p_false, 20.0)
    picked = {}
    for rule, threshold, export in [("fixed", 0.125, {}),
                                    ("relative", 0.05, {"relative_threshold": 0.5})]:
        facts = {"pixel_size_a": 7.08, "particle_diameter_a": 20 * 7.08,
                 "picking_threshold": threshold, "normalisation": None, "export": export}
        cfg = compose("predict", ["input=x", f"output_dir={tmp_path / rule}",
                                  "extraction.border_px=0"])
        csv_picks, record = _pick_map(build_settings(cfg, facts, Path("m.ckpt")), prob, 1.0)
        picked[rule] = csv_picks[["X-Coordinate", "Y-Coordinate"]].to_numpy(float)
        if rule == "relative":
            assert record["peak_level"] == pytest.approx(p_true, abs=0.005)
            assert record["threshold"] == pytest.approx(0.5 * p_true, abs=0.005)
        else:
            assert record["threshold"] == 0.125 and record["peak_level"] is None
    _match_once(picked["relative"], true_xy, 3.0)
    assert len(picked["fixed"]) == (0 if case == "faint" else 20)


def test_a_given_threshold_is_fixed_unless_a_relative_one_is_given_too(tmp_path):
    """The export's relative rule applies to its own threshold: threshold=0.3 alone is used as
    it is; with relative_threshold it is the floor; crf= (which replaces the threshold the
    rule was chosen with) and relative_threshold=0 turn the rule off; out of [0, 1] is a
    one-line error."""
    from cryoparticle.errors import InputError
    from cryoparticle.picking.settings import build_settings

    facts = {"pixel_size_a": 7.08, "particle_diameter_a": 190.0, "picking_threshold": 0.05,
             "normalisation": None, "export": {"relative_threshold": 0.5, "peak_quantile": 0.75}}

    def settings(*extra):
        cfg = compose("predict", ["input=x", f"output_dir={tmp_path}", *extra])
        return build_settings(cfg, facts, Path("m.ckpt"))

    default = settings()
    assert (default.threshold, default.relative_threshold, default.peak_quantile) == \
        (0.05, 0.5, 0.75)
    assert default.picking_threshold(0.6) == pytest.approx(0.3)
    assert default.picking_threshold(0.06) == 0.05
    given = settings("threshold=0.3")
    assert given.relative_threshold == 0 and given.picking_threshold(0.9) == 0.3
    both = settings("threshold=0.2", "relative_threshold=0.4", "peak_quantile=0.5")
    assert both.picking_threshold(0.9) == pytest.approx(0.36) and both.peak_quantile == 0.5
    assert settings("relative_threshold=0").picking_threshold(0.9) == 0.05
    for bad in ("relative_threshold=1.5", "peak_quantile=-1", "relative_threshold=true"):
        with pytest.raises(InputError, match=bad.split("=")[0]):
            settings(bad)
    facts["export"]["relative_threshold"] = 2.0
    with pytest.raises(InputError, match="m.ckpt: export.relative_threshold=2.0"):
        settings()


def test_post_hoc_crf_turns_the_exports_relative_threshold_off(ckpt, sims, tmp_path):
    """The relative rule (like the stored threshold) was chosen for the checkpoint's own
    output: with crf= replacing it, picking is at 0.5, fixed."""
    from cryoparticle.models import packaged

    relative = packaged.export_checkpoint(ckpt, tmp_path / "relative.ckpt",
                                          extra={"relative_threshold": 0.5})
    cfg = compose("predict", [f"input={sims[0]}", f"output_dir={tmp_path / 'out'}",
                              f"ckpt_path={relative}", "crf=meanfield", "progress_bar=false",
                              "num_workers=0"])
    summary = run(cfg)
    assert summary.relative_threshold == 0 and summary.threshold == 0.5
    picked = [m for m in summary.micrographs if m["status"] == "picked"]
    assert len(picked) == 2
    assert all(m["threshold"] == 0.5 and m["peak_level"] is None for m in picked)


def test_the_summary_reports_relative_thresholds_as_median_rule_and_range(capsys):
    from cryoparticle.picking.writers import PredictSummary, picking_thresholds, print_summary

    picked = [{"status": "picked", "threshold": t} for t in (0.13, 0.21, 0.17)]
    summary = PredictSummary(
        n_micrographs=4, n_picked=3, n_skipped=0, n_failed=1, n_particles=0,
        n_particles_new=0, particles_per_micrograph=0.0, seconds_per_micrograph=1.0,
        wall_seconds_per_micrograph=1.0, wall_s=1.0, threshold=0.125, device="cpu × 1",
        output_dir=".", combined_star="p.star", relative_threshold=0.5, peak_quantile=0.9,
        micrographs=[*picked, {"status": "failed", "threshold": None}])
    text = ("0.17 (0.13–0.21)", "max(0.125, 0.5 × p90 peak)")
    assert picking_thresholds(summary) == text
    print_summary(summary)
    out = capsys.readouterr().out
    assert all(part in out for part in text)
    again = PredictSummary.from_json(summary.to_json())
    assert again.relative_threshold == 0.5 and picking_thresholds(again) == text
    summary.peak_quantile = 0.5
    assert picking_thresholds(summary)[1] == "max(0.125, 0.5 × median peak)"
    summary.relative_threshold = 0.0
    assert picking_thresholds(summary) == ("0.125", None)
    print_summary(summary)
    assert "peak" not in capsys.readouterr().out


def test_the_summary_counts_the_polarities_auto_chose_and_flags_a_mixed_run(capsys):
    from cryoparticle.picking.writers import (MIXED_POLARITY_NOTE, PredictSummary,
                                              picking_polarities, print_summary)

    chosen = [{"status": "picked", "threshold": 0.1, "polarity": p}
              for p in ("dark", "light", "dark")]
    summary = PredictSummary(
        n_micrographs=4, n_picked=3, n_skipped=0, n_failed=1, n_particles=0,
        n_particles_new=0, particles_per_micrograph=0.0, seconds_per_micrograph=1.0,
        wall_seconds_per_micrograph=1.0, wall_s=1.0, threshold=0.1, device="cpu × 1",
        output_dir=".", combined_star="p.star", polarity="auto",
        micrographs=[*chosen, {"status": "failed", "polarity": None}])
    assert picking_polarities(summary) == ("auto: dark 2, light 1", True)
    print_summary(summary)
    out = capsys.readouterr().out
    assert "auto: dark 2, light 1" in out and MIXED_POLARITY_NOTE.split(";")[0] in out
    again = PredictSummary.from_json(summary.to_json())
    assert picking_polarities(again) == ("auto: dark 2, light 1", True)
    summary.micrographs = chosen[:1]
    assert picking_polarities(summary) == ("auto: dark 1", False)
    print_summary(summary)
    assert MIXED_POLARITY_NOTE.split(";")[0] not in capsys.readouterr().out
    summary.polarity = "light"
    assert picking_polarities(summary) == ("light", False)
