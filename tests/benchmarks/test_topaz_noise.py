"""benchmarks/_topaz.py (Topaz's command lines, labels and frames), benchmarks/noise_sweep.py
(SNR parsing, scoring, table, plot) and real_data_cv's Topaz options — without Topaz and
without training."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import _topaz  # noqa: E402
import noise_sweep  # noqa: E402
import real_data_cv  # noqa: E402

from cryoparticle.io.coords import read_topaz, write_topaz  # noqa: E402


def particles(rows: list[tuple[str, float, float]], score: list[float] | None = None
              ) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["micrograph", "x", "y"]).assign(diameter=20.0)
    return df.assign(score=score if score is not None else 1.0)


# ------------------------------------------------------------------------------- _topaz


@pytest.fixture
def topaz_script(tmp_path: Path) -> Path:
    script = tmp_path / "topaz"
    script.write_text("#!/opt/topazenv/bin/python3 -E\nimport sys\nfrom topaz.main import main\n")
    return script


def test_train_command_runs_topaz_seeded_with_the_settings(topaz_script, tmp_path):
    settings = _topaz.TopazTraining(num_epochs=3, epoch_size=40, minibatch_size=128,
                                    train_radius_px=4, threads=2, seed=77, pretrained=False)
    cmd = _topaz.train_command(topaz_script, settings, tmp_path / "images.txt",
                               tmp_path / "targets.txt", 95.75, tmp_path / "model",
                               tmp_path / "curve.txt")
    assert cmd[:2] == ["/opt/topazenv/bin/python3", "-c"]   # the script's interpreter
    assert "torch.manual_seed(s)" in cmd[2] and "numpy.random.seed(s)" in cmd[2]
    compile(cmd[2], "<seeded>", "exec")                        # valid Python
    assert cmd[3:5] == ["77", "train"]                         # the seed, then topaz's argv
    args = cmd[5:]

    def value(flag: str) -> str:
        return args[args.index(flag) + 1]

    assert value("-n") == "95.75" and value("-r") == "4" and value("-m") == "resnet8"
    assert value("--num-epochs") == "3" and value("--epoch-size") == "40"
    assert value("--minibatch-size") == "128" and value("-j") == "2"
    assert value("-d") == "-1" and value("--units") == "32"
    assert value("--train-images") == str(tmp_path / "images.txt")
    assert value("--save-prefix") == str(tmp_path / "model")
    assert "--no-pretrained" in args and "--pretrained" not in args
    with pytest.raises(ValueError, match="expected particles"):
        _topaz.train_command(topaz_script, settings, tmp_path, tmp_path, 0, tmp_path, tmp_path)


def test_preprocess_and_extract_commands_as_real_transfer_ran_them():
    """The shipped-model run of real_transfer: ``-s F -d -1 -o DIR files`` and
    ``-m resnet16_u64 -r R -x F -t -6 -d -1 -o FILE files`` (threads only when asked)."""
    topaz = Path("topaz")
    assert _topaz.preprocess_command(topaz, [Path("a.mrc"), Path("b.mrc")], 4, Path("pre")) \
        == ["topaz", "preprocess", "-s", "4", "-d", "-1", "-o", "pre", "a.mrc", "b.mrc"]
    assert _topaz.extract_command(topaz, "resnet16_u64", 14, 4, [Path("pre/a.mrc")],
                                  Path("picks.txt")) == [
        "topaz", "extract", "-m", "resnet16_u64", "-r", "14", "-x", "4", "-t", "-6", "-d",
        "-1", "-o", "picks.txt", "pre/a.mrc"]
    cmd = _topaz.extract_command(topaz, Path("m.sav"), 13, 1, [], Path("p.txt"), threads=3)
    assert cmd[cmd.index("-j") + 1] == "3" and cmd[cmd.index("-m") + 1] == "m.sav"


def test_scale_and_radius():
    assert _topaz.bin_factor(1.77) == 4           # EMPIAR-10017 → 7.08 Å/px
    assert _topaz.bin_factor(7.08) == 1           # the simulator's scale
    assert _topaz.bin_factor(3.0) == 2
    assert _topaz.bin_factor(20.0) == 1           # never upsampled
    assert _topaz.extract_radius(108.0, 4) == 14  # 13.5 → 14
    assert _topaz.extract_radius(190.0 / 7.08, 1) == 13
    assert _topaz.extract_radius(4.0, 1) == 3     # at least 3 px
    with pytest.raises(ValueError, match="pixel size"):
        _topaz.bin_factor(0.0)


def test_settings_and_interpreter_errors(tmp_path):
    with pytest.raises(ValueError, match="epoch_size"):
        _topaz.TopazTraining(epoch_size=0)
    with pytest.raises(ValueError, match="train_radius_px"):
        _topaz.TopazTraining(train_radius_px=-1)
    plain = tmp_path / "topaz"
    plain.write_bytes(b"\x7fELF binary")
    with pytest.raises(ValueError, match="#!"):
        _topaz.interpreter(plain)
    record = _topaz.TopazTraining(seed=5).record()
    assert record["seed"] == 5 and record["model"] == "resnet8" and record["pretrained"]


def test_targets_in_the_binned_frame_and_expected_particles(tmp_path):
    ours = particles([("m1", 401.0, 99.0), ("m1", 8.0, 4.0), ("m2", 1000.0, 2002.0)])
    theirs = _topaz.topaz_targets(ours, 4)
    assert theirs.columns.tolist() == ["image_name", "x_coord", "y_coord"]
    assert theirs["x_coord"].tolist() == [100, 2, 250]    # 100.25, 2, 250
    assert theirs["y_coord"].tolist() == [25, 1, 500]     # 24.75, 1, 500.5 (to even)
    # a micrograph without labels counts as zero particles
    assert _topaz.expected_particles(ours, ["m1", "m2", "m3"]) == pytest.approx(1.0)
    assert _topaz.expected_particles(ours, ["m1"]) == 2.0
    with pytest.raises(ValueError, match="no training micrographs"):
        _topaz.expected_particles(ours, [])


def test_topaz_picks_come_back_in_our_frame(tmp_path):
    """A Topaz extract table (coordinates already × the binning, ``-x``) read as ours, then
    moved to real_data_cv's binned frame of a micrograph and kept off its border."""
    from PIL import Image

    from cryoparticle.micrograph import Micrograph

    picks = tmp_path / "picks.txt"
    picks.write_text("image_name\tx_coord\ty_coord\tscore\n"
                     "mic_a\t400\t800\t2.5\nmic_a\t20\t800\t1.0\nmic_b\t40\t40\t-3.2\n")
    table = read_topaz(picks, 108.0)
    assert table["micrograph"].tolist() == ["mic_a", "mic_a", "mic_b"]
    assert table["x"].tolist() == [400.0, 20.0, 40.0] and table["diameter"].eq(108.0).all()
    assert table["score"].tolist() == [2.5, 1.0, -3.2]
    original = tmp_path / "mic_a.png"
    Image.fromarray(np.zeros((1024, 1024), np.uint8)).save(original)
    binned = np.zeros((256, 256), np.float32)   # the micrograph at 4× coarser pixels
    mic = Micrograph(image=binned, mask=np.zeros((256, 256), np.uint8),
                     particles=table.iloc[:0], pixel_size_a=7.08, name="mic_a",
                     metadata={"image_path": str(original),
                               "border_px": {"top": 0, "bottom": 0, "left": 10, "right": 0}})
    moved = real_data_cv.in_frame(table, mic, "mic_a")
    assert moved["x"].tolist() == [100.0] and moved["y"].tolist() == [200.0]  # x=5 on border
    assert moved["score"].tolist() == [2.5]
    # and our writer's tables are what Topaz reads (round trip)
    write_topaz(tmp_path / "again.txt", table)
    assert read_topaz(tmp_path / "again.txt", 108.0)[["x", "y"]].equals(table[["x", "y"]])


def test_real_data_cv_topaz_options_refuse_what_cannot_run(tmp_path):
    with pytest.raises(SystemExit, match="--topaz-train needs --topaz"):
        real_data_cv.main(["--data-dir", str(tmp_path), "--topaz-train"])
    with pytest.raises(SystemExit, match="nothing to measure"):
        real_data_cv.main(["--data-dir", str(tmp_path), "--networks"])
    with pytest.raises(SystemExit, match="nothing to measure"):
        real_data_cv.main(["--data-dir", str(tmp_path), "--networks", "--topaz", "t",
                           "--no-topaz-shipped"])


# --------------------------------------------------------------------------- noise_sweep


def test_snr_parsing():
    assert noise_sweep.snr_value("0.005") == 0.005
    for bad in ("abc", "0", "-1", "nan", "inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            noise_sweep.snr_value(bad)
    assert noise_sweep.check_snrs([0.01, 1.0, 0.1, 1.0]) == [1.0, 0.1, 0.01]
    with pytest.raises(ValueError):
        noise_sweep.check_snrs([])
    args = noise_sweep.parser().parse_args(["--snrs", "1", "3e-2"])
    assert args.snrs == [1.0, 0.03] and args.train_snr == [0.005, 1.0]
    assert noise_sweep.parser().parse_args([]).snrs == [1.0, 0.3, 0.1, 0.03, 0.01, 0.005]
    with pytest.raises(SystemExit):
        noise_sweep.parser().parse_args(["--snrs", "0"])
    with pytest.raises(SystemExit, match="nothing to measure"):
        noise_sweep.main(["--networks"])
    with pytest.raises(SystemExit, match="n-test"):
        noise_sweep.main(["--n-test", "0"])
    assert noise_sweep.snr_label(0.005) == "0.005" and noise_sweep.snr_label(1.0) == "1"


TRUTH = particles([("a", 10.0, 10.0), ("a", 50.0, 10.0), ("a", 90.0, 10.0),
                   ("b", 10.0, 10.0)])


def test_score_ours_on_a_hand_made_case():
    """Radius 5. Stored threshold 0.5: 3 of 4 found + 1 false → P = R = F1 = 0.75; the sweep:
    0.3 finds all 4 with 2 false (F1 0.8), 0.7 and 0.9 find 2 (F1 2/3 and 2/3)."""
    at = particles([("a", 11.0, 10.0), ("a", 52.0, 9.0), ("b", 10.0, 13.0), ("b", 60.0, 60.0)])
    more = pd.concat([at, particles([("a", 90.0, 14.0), ("a", 0.0, 90.0)])])
    fewer = at.iloc[:2]
    sweep = {0.3: more, 0.5: at, 0.7: fewer, 0.9: fewer}
    low = particles([("a", 90.0, 10.0), ("a", 10.0, 10.0), ("b", 70.0, 70.0)],
                    score=[0.9, 0.8, 0.1])
    r = noise_sweep.score_ours(at, sweep, low, TRUTH, 5.0, 0.5, intersection=30, union=40)
    assert (r["precision"], r["recall"], r["f1"]) == pytest.approx((0.75, 0.75, 0.75))
    assert r["best_f1"] == pytest.approx(0.8) and r["best_threshold"] == 0.3
    assert r["pixel_iou"] == pytest.approx(0.75)
    assert r["n_picks"] == 4 and r["n_truth"] == 4 and r["threshold"] == 0.5
    # AP of ``low`` ranked by score: hits at ranks 1 and 2 of 4 truths, then a miss → 0.5
    assert r["ap"] == pytest.approx(0.5)
    # ties go to the threshold nearest the stored one
    tie = noise_sweep.score_ours(at, {0.3: fewer, 0.5: at, 0.6: at}, low, TRUTH, 5.0, 0.55,
                                 intersection=0, union=0)
    assert tie["best_threshold"] in (0.5, 0.6) and tie["best_f1"] == pytest.approx(0.75)
    assert np.isnan(tie["pixel_iou"])


def test_score_topaz_at_its_default_and_best_threshold():
    """Scores 3, 1, −1, −2: the first three hit, the last is false. At 0: 2 picks, 2 hits of 4
    truths → P 1, R 0.5, F1 2/3; best at −1: 3 hits, P 1, R 0.75, F1 6/7."""
    picks = particles([("a", 10.0, 10.0), ("a", 50.0, 10.0), ("b", 10.0, 11.0),
                       ("b", 80.0, 80.0)], score=[3.0, 1.0, -1.0, -2.0])
    r = noise_sweep.score_topaz(picks, TRUTH, 5.0)
    assert (r["precision"], r["recall"], r["f1"]) == pytest.approx((1.0, 0.5, 2 / 3))
    assert r["best_f1"] == pytest.approx(6 / 7) and r["best_threshold"] == pytest.approx(-1.0)
    assert r["threshold"] == 0.0 and np.isnan(r["pixel_iou"]) and r["n_picks"] == 2


def record_of_two() -> dict:
    ours = {"threshold": 0.4, "precision": 0.9, "recall": 0.8, "f1": 0.847, "best_f1": 0.85,
            "best_threshold": 0.45, "ap": 0.7, "pixel_iou": 0.61}
    topaz = {"threshold": 0.0, "precision": 0.5, "recall": 0.25, "f1": 1 / 3, "best_f1": 0.6,
             "best_threshold": -1.25, "ap": 0.4, "pixel_iou": float("nan")}
    return {"results": {"1": {"ours: unet": ours, "Topaz resnet8": topaz},
                        "0.01": {"ours: unet": {**ours, "f1": 0.2, "best_f1": 0.3},
                                 "Topaz resnet8": {**topaz, "f1": 0.1, "best_f1": 0.15}}}}


def test_table_and_curves():
    text = noise_sweep.markdown(record_of_two())
    lines = text.splitlines()
    assert lines[0].startswith("| SNR | picker |") and len(lines) == 6
    assert lines[2] == ("| 1 | ours: unet | 0.40 | 0.900 | 0.800 | **0.847** | 0.850 (0.45) | "
                        "0.700 | 0.610 |")
    assert lines[3] == ("| 1 | Topaz resnet8 | 0.00 | 0.500 | 0.250 | **0.333** | 0.600 "
                        "(-1.25) | 0.400 | – |")
    curves = noise_sweep.f1_curves(record_of_two())
    assert curves["Topaz resnet8"] == {"snr": [1.0, 0.01], "f1": [1 / 3, 0.1],
                                       "best_f1": [0.6, 0.15]}


def test_plot_writes_a_png(tmp_path):
    from PIL import Image

    path = tmp_path / "sweep.png"
    noise_sweep.plot(record_of_two(), path)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (768, 504)
        # not a blank canvas: lines in colour
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    assert (np.ptp(pixels, axis=1) > 60).sum() > 500


def test_a_finished_topaz_training_is_reused_only_with_the_same_settings(tmp_path):
    """No Topaz here: a reused run never calls it; a changed setting starts a new training
    (which, without Topaz, fails — after the stale run was invalidated)."""
    images = [tmp_path / "pre" / "m1.mrc", tmp_path / "pre" / "m2.mrc"]
    labels = particles([("m1", 40.0, 40.0), ("m2", 80.0, 80.0), ("m3", 1.0, 1.0)])
    settings = _topaz.TopazTraining(num_epochs=2, epoch_size=5)
    work = tmp_path / "run"
    work.mkdir()
    facts = {**settings.record(), "factor": 1, "micrographs": ["m1", "m2"], "n_labels": 2}
    (work / "run.json").write_text(__import__("json").dumps(facts))
    (work / "model_epoch2.sav").write_bytes(b"weights")
    (work / "DONE").write_text("123.4\n")
    missing = tmp_path / "no-topaz"
    model, seconds = _topaz.train_topaz(missing, images, labels, 1, work, settings)
    assert model == work / "model_epoch2.sav" and seconds == 123.4
    with pytest.raises(FileNotFoundError):
        _topaz.train_topaz(missing, images, labels, 1, work,
                           _topaz.TopazTraining(num_epochs=2, epoch_size=6))
    assert not (work / "DONE").exists() and not (work / "model_epoch2.sav").exists()


def test_noise_sweep_work_dir_refuses_other_settings(tmp_path):
    noise_sweep.guard_work_dir(tmp_path / "w", {"epochs": 8, "n_train": 24})
    noise_sweep.guard_work_dir(tmp_path / "w", {"epochs": 8, "n_train": 24})  # same: resumes
    with pytest.raises(SystemExit, match="other settings \\(epochs\\)"):
        noise_sweep.guard_work_dir(tmp_path / "w", {"epochs": 2, "n_train": 24})


def test_preprocess_skips_micrographs_already_done(tmp_path):
    out = tmp_path / "pre"
    out.mkdir()
    for name in ("a", "b"):
        (out / f"{name}.mrc").write_bytes(b"done")
    paths = [tmp_path / "a.mrc", tmp_path / "b.mrc"]
    assert _topaz.preprocess(tmp_path / "no-topaz", paths, 1, out, skip_existing=True) == \
        [out / "a.mrc", out / "b.mrc"]                      # nothing left: Topaz not called
    with pytest.raises(FileNotFoundError):                 # one missing: Topaz is needed
        _topaz.preprocess(tmp_path / "no-topaz", [*paths, tmp_path / "c.mrc"], 1, out,
                          skip_existing=True)
    cmd = _topaz.preprocess_command(Path("topaz"), paths, 2, out, workers=3)
    assert cmd[cmd.index("-t") + 1] == "3" and "-j" not in cmd
