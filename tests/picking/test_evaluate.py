"""Matching, P/R/F1, PR curve, AP, pixel metrics and the evaluation CLI on hand-made cases."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import linear_sum_assignment

from cryoparticle.errors import InputError
from cryoparticle.io.coords import write_cryoppp_csv, write_star
from cryoparticle.picking.evaluate import (
    CURVE_COLUMNS,
    average_precision,
    best_f1_threshold,
    evaluate_micrographs,
    main,
    match_picks,
    micrograph_key,
    pixel_metrics,
    precision_recall_curve,
    precision_recall_f1,
)


def table(xy, score=None, micrograph="m", diameter=10.0) -> pd.DataFrame:
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    return pd.DataFrame({"micrograph": micrograph, "x": xy[:, 0], "y": xy[:, 1],
                         "diameter": diameter,
                         "score": np.nan if score is None else np.asarray(score, float)})


# --------------------------------------------------------------------------- matching


def test_match_is_one_to_one_and_maximal():
    # nearest-first matching would pair pick 0 with truth 0 and leave pick 1 unmatched
    truth = table([[4, 0], [-1, 0]])
    picks = table([[0, 0], [6, 0]], [0.9, 0.8])
    pairs, dist = match_picks(picks, truth, 5)
    assert pairs.tolist() == [[0, 1], [1, 0]]
    assert dist.tolist() == [1.0, 2.0]


def test_tie_two_picks_equidistant_one_tp():
    truth = table([[50, 50]])
    picks = table([[47, 50], [53, 50]], [0.5, 0.5])
    pairs, _ = match_picks(picks, truth, 5)
    assert len(pairs) == 1
    assert precision_recall_f1(picks, truth, 5) == {
        "tp": 1, "fp": 1, "fn": 0, "precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3)}


def test_radius_boundary_is_inclusive():
    truth, picks = table([[10, 10]]), table([[13, 14]], [1.0])  # distance exactly 5
    assert len(match_picks(picks, truth, 5.0)[0]) == 1
    assert len(match_picks(picks, truth, 4.999)[0]) == 0


def test_micrographs_never_match_each_other():
    truth = table([[10, 10]], micrograph="a")
    picks = table([[10, 10]], [1.0], micrograph="b")
    assert len(match_picks(picks, truth, 5)[0]) == 0


def test_hungarian_minimises_total_distance_like_dense_assignment():
    rng = np.random.default_rng(0)
    truth = table(rng.uniform(0, 60, (25, 2)))
    picks = table(rng.uniform(0, 60, (30, 2)), rng.uniform(size=30))
    radius = 9.0
    pairs, dist = match_picks(picks, truth, radius)
    d = np.hypot(picks["x"].to_numpy()[:, None] - truth["x"].to_numpy(),
                 picks["y"].to_numpy()[:, None] - truth["y"].to_numpy())
    big = 1e6
    r, c = linear_sum_assignment(np.where(d <= radius, d, big))
    ok = d[r, c] <= radius
    assert len(pairs) == ok.sum()
    assert dist.sum() == pytest.approx(d[r, c][ok].sum())
    assert len(set(pairs[:, 0])) == len(pairs) == len(set(pairs[:, 1]))


# --------------------------------------------------------------------------- P/R/F1


def test_empty_conventions():
    truth, picks = table([[1, 1], [20, 20]]), table([[1, 1]], [0.9])
    none = table(np.zeros((0, 2)))
    assert precision_recall_f1(none, truth, 5) == {
        "tp": 0, "fp": 0, "fn": 2, "precision": 1.0, "recall": 0.0, "f1": 0.0}
    assert precision_recall_f1(picks, none, 5) == {
        "tp": 0, "fp": 1, "fn": 0, "precision": 0.0, "recall": 1.0, "f1": 0.0}
    assert precision_recall_f1(none, none, 5) == {
        "tp": 0, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert average_precision(none, none, 5) == 1.0
    assert average_precision(none, truth, 5) == 0.0
    assert average_precision(picks, none, 5) == 0.0
    assert best_f1_threshold(picks, none, 5) == (math.inf, 1.0)
    assert precision_recall_curve(none, truth, 5).columns.tolist() == list(CURVE_COLUMNS)


def test_threshold_keeps_score_at_least_threshold():
    truth = table([[0, 0], [50, 50]])
    picks = table([[0, 0], [50, 50], [90, 90]], [0.9, 0.5, 0.4])
    assert precision_recall_f1(picks, truth, 5, threshold=0.5)["tp"] == 2
    assert precision_recall_f1(picks, truth, 5, threshold=0.51) == {
        "tp": 1, "fp": 0, "fn": 1, "precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3)}


# --------------------------------------------------------------------------- curve / AP

TRUTH3 = [[0, 0], [100, 0], [200, 0]]


def test_ap_perfect_ranking_is_one():
    picks = table([[1, 0], [101, 0], [199, 0], [500, 500], [600, 600]], [0.9, 0.8, 0.7, 0.2, 0.1])
    assert average_precision(picks, table(TRUTH3), 5) == pytest.approx(1.0)


def test_ap_small_case_by_hand():
    # scores: 0.9 TP, 0.8 FP, 0.7 TP, 0.6 FP; 3 particles, one never found
    picks = table([[0, 0], [400, 0], [100, 0], [500, 0]], [0.9, 0.8, 0.7, 0.6])
    curve = precision_recall_curve(picks, table(TRUTH3), 5)
    assert curve["tp"].tolist() == [1, 1, 2, 2]
    assert curve["precision"].tolist() == pytest.approx([1, 1 / 2, 2 / 3, 1 / 2])
    assert curve["recall"].tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])
    # AP = 1/3 · 1 + 0 + 1/3 · 2/3 + 0 = 5/9
    assert average_precision(picks, table(TRUTH3), 5) == pytest.approx(5 / 9)


def test_curve_uses_maximum_matching_at_every_threshold():
    # pick A (0.9) reaches both particles but is nearer the first; B (0.8) reaches only the
    # first. Greedy matching would give 1 TP at 0.8; the maximum matching gives 2.
    truth = table([[0, 0], [8, 0]])
    picks = table([[3, 0], [-2, 0]], [0.9, 0.8])
    curve = precision_recall_curve(picks, truth, 5)
    assert curve["tp"].tolist() == [1, 2]
    assert average_precision(picks, truth, 5) == pytest.approx(1.0)


def test_curve_agrees_with_thresholded_matching_and_merges_tied_scores():
    rng = np.random.default_rng(3)
    picks = pd.concat([table(rng.uniform(0, 80, (40, 2)), np.round(rng.uniform(size=40), 1)),
                       table(rng.uniform(0, 80, (20, 2)), rng.uniform(size=20), "n")])
    truth = pd.concat([table(rng.uniform(0, 80, (30, 2))), table(rng.uniform(0, 80, (10, 2)),
                                                                 micrograph="n")])
    curve = precision_recall_curve(picks, truth, 10)
    assert curve["threshold"].is_unique and curve["threshold"].is_monotonic_decreasing
    for row in curve.itertuples():
        ref = precision_recall_f1(picks, truth, 10, threshold=row.threshold)
        assert (row.tp, row.fp, row.fn) == (ref["tp"], ref["fp"], ref["fn"])
        assert row.f1 == pytest.approx(ref["f1"])


def test_best_f1_threshold_constructed():
    # 0.9 TP, 0.8 TP, 0.7 FP, 0.6 TP, 0.5 FP; F1 peaks at 0.6 with P = 3/4, R = 1 → 6/7
    picks = table([[0, 0], [100, 0], [400, 0], [200, 0], [500, 0]], [0.9, 0.8, 0.7, 0.6, 0.5])
    threshold, f1 = best_f1_threshold(picks, table(TRUTH3), 5)
    assert threshold == 0.6 and f1 == pytest.approx(6 / 7)


def test_unscored_picks_rejected_by_curve():
    with pytest.raises(InputError, match="score"):
        precision_recall_curve(table([[0, 0]]), table([[0, 0]]), 5)


# --------------------------------------------------------------------------- per micrograph


def test_evaluate_micrographs_per_micrograph_and_pooled():
    picks = pd.concat([table([[0, 0], [50, 50]], [0.9, 0.3], "a"),
                       table([[10, 10]], [0.8], "b")])
    truth = pd.concat([table([[1, 0]], micrograph="a"), table([[10, 12], [70, 70]],
                                                              micrograph="b")])
    per, pooled = evaluate_micrographs(picks, truth, 5, micrographs=["a", "b", "c"])
    assert per["micrograph"].tolist() == ["a", "b", "c"]
    assert per[["tp", "fp", "fn"]].to_numpy().tolist() == [[1, 1, 0], [1, 0, 1], [0, 0, 0]]
    assert per["precision"].tolist() == [0.5, 1.0, 1.0]
    assert per["recall"].tolist() == [1.0, 0.5, 1.0]
    assert per["ap"].tolist() == pytest.approx([1.0, 0.5, 1.0])
    assert pooled["tp"] == 2 and pooled["fp"] == 1 and pooled["fn"] == 1
    assert pooled["precision"] == pytest.approx(2 / 3) and pooled["recall"] == pytest.approx(2 / 3)
    # pooled ranking: 0.9 TP, 0.8 TP, 0.3 FP over 3 particles → AP = 2/3
    assert pooled["ap"] == pytest.approx(2 / 3)
    assert pooled["best_threshold"] == 0.8 and pooled["best_f1"] == pytest.approx(0.8)
    _, pooled_t = evaluate_micrographs(picks, truth, 5, threshold=0.5)
    assert pooled_t["fp"] == 0 and pooled_t["ap"] == pooled["ap"]
    _, unscored = evaluate_micrographs(table([[0, 0]]), table([[0, 0]]), 5)
    assert unscored["tp"] == 1 and math.isnan(unscored["ap"])


# --------------------------------------------------------------------------- pixels


def test_pixel_metrics_with_ignore():
    pred = np.array([[1, 1, 0, 0, 1]], dtype=np.uint8)
    true = np.array([[1, 0, 0, 1, 255]], dtype=np.uint8)  # tp 1, fp 1, fn 1, tn 1
    m = pixel_metrics(pred, true)
    assert m == pytest.approx({"iou": 1 / 3, "f1": 0.5, "precision": 0.5, "recall": 0.5,
                               "accuracy": 0.5})
    assert pixel_metrics(pred.astype(np.float32) * 0.8, true) == pytest.approx(m)
    empty = pixel_metrics(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8))
    assert empty == pytest.approx({"iou": 1, "f1": 1, "precision": 1, "recall": 1,
                                   "accuracy": 1})
    with pytest.raises(InputError):
        pixel_metrics(np.zeros((4, 4)), np.zeros((4, 5)))


# --------------------------------------------------------------------------- CLI


def write_case(tmp_path):
    picks = pd.concat([table([[100, 200], [300, 300], [900, 900]], [0.9, 0.6, 0.2],
                             "Micrographs/mic_a.mrc"),
                       table([[50, 60]], [0.7], "Micrographs/mic_b.mrc"),
                       table([[5, 5]], [0.99], "Micrographs/mic_unannotated.mrc")])
    write_star(tmp_path / "picks.star", picks)
    (tmp_path / "truth").mkdir()
    write_cryoppp_csv(tmp_path / "truth" / "mic_a.csv",
                      table([[102, 201], [300, 330]], micrograph="mic_a", diameter=40.0))
    write_cryoppp_csv(tmp_path / "truth" / "mic_b.csv",
                      table(np.zeros((0, 2)), micrograph="mic_b", diameter=40.0))
    return tmp_path / "picks.star", tmp_path / "truth"


def test_cli_star_picks_vs_cryoppp_truth(tmp_path, capsys):
    picks, truth = write_case(tmp_path)
    out = tmp_path / "metrics.json"
    main(["--picks", str(picks), "--truth", str(truth / "*.csv"), "--json", str(out)])
    captured = capsys.readouterr()
    assert "mic_a" in captured.out and "(pooled)" in captured.out
    assert "ignored 1 pick(s)" in captured.err
    record = json.loads(out.read_text())
    assert record["radius_px"] == 20.0  # half the CryoPPP diameter
    rows = {row["micrograph"]: row for row in record["micrographs"]}
    assert set(rows) == {"mic_a", "mic_b"}  # mic_b has no particles but is evaluated
    assert (rows["mic_a"]["tp"], rows["mic_a"]["fp"], rows["mic_a"]["fn"]) == (1, 2, 1)
    assert (rows["mic_b"]["tp"], rows["mic_b"]["fp"], rows["mic_b"]["fn"]) == (0, 1, 0)
    assert record["pooled"]["tp"] == 1 and record["pooled"]["fp"] == 3
    # 0.9 TP, 0.7 FP, 0.6 FP, 0.2 FP; 2 particles → AP = 1/2
    assert record["pooled"]["ap"] == pytest.approx(0.5)
    main(["--picks", str(picks), "--truth", str(truth), "--radius-px", "40",
          "--threshold", "0.5", "--json", str(out)])
    record = json.loads(out.read_text())
    assert record["pooled"]["tp"] == 2 and record["pooled"]["fp"] == 1
    assert record["threshold"] == 0.5


@pytest.mark.parametrize("bad", ["missing.star", "garbage.csv", "nothing_*.star"])
def test_cli_bad_files_exit_2(tmp_path, capsys, bad):
    _, truth = write_case(tmp_path)
    (tmp_path / "garbage.csv").write_text("this is not,a particle table\n1,2\n")
    with pytest.raises(SystemExit) as info:
        main(["--picks", str(tmp_path / bad), "--truth", str(truth)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and bad.split("*")[0] in err


def test_cli_module_entry_point(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cryoparticle.picking.evaluate",
                             "--picks", str(tmp_path / "none.star"), "--truth", str(tmp_path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and result.stderr.startswith("error: ")


def test_micrograph_key():
    assert micrograph_key("Micrographs/mic_01.mrc") == "mic_01"
    assert micrograph_key("14sep05c_00024sq.frames") == "14sep05c_00024sq.frames"
    assert micrograph_key("mic_01") == "mic_01"


def test_cli_reads_relion_and_cryosparc_and_counts_a_pick_once(tmp_path, capsys):
    """Picks as predict.py leaves them (per-micrograph coordinate files, particles.star and
    coordinate_files.star in one folder) against cryoSPARC truth: each pick counts once."""
    from cryoparticle.io.coords import write_coordinate_files_star, write_relion_coordinates

    picks = tmp_path / "picks"
    picks.mkdir()
    a = table([[100, 200], [300, 300], [900, 900]], [0.9, 0.6, 0.2], "mics/mic_a.mrc")
    b = table([[50, 60]], [0.7], "mics/mic_b.mrc")
    write_relion_coordinates(picks / "mic_a.star", a)
    write_relion_coordinates(picks / "mic_b.star", b)
    write_star(picks / "particles.star", pd.concat([a, b]), pixel_size_a=1.0)
    write_coordinate_files_star(picks / "coordinate_files.star",
                                [("mics/mic_a.mrc", picks / "mic_a.star"),
                                 ("mics/mic_b.mrc", picks / "mic_b.star")])
    # cryoSPARC truth on 1000 × 2000 (rows × columns) micrographs: x = frac × 2000
    pd.DataFrame({"location/micrograph_path": ["J3/imported/0123456789012345_mic_a.mrc"] * 2
                  + ["J3/imported/0123456789012345_mic_b.mrc"],
                  "location/micrograph_shape": ["[1000 2000]"] * 3,
                  "location/center_x_frac": [102 / 2000, 300 / 2000, 48 / 2000],
                  "location/center_y_frac": [201 / 1000, 330 / 1000, 61 / 1000]}
                 ).to_csv(tmp_path / "truth.csv", index=False)
    out = tmp_path / "metrics.json"
    for given in ([str(picks)], [str(picks / "coordinate_files.star")],
                  [str(picks / "particles.star")]):
        main(["--picks", *given, "--truth", str(tmp_path / "truth.csv"), "--radius-px", "20",
              "--json", str(out)])
        rows = {row["micrograph"]: row for row in json.loads(out.read_text())["micrographs"]}
        assert (rows["mic_a"]["tp"], rows["mic_a"]["fp"], rows["mic_a"]["fn"]) == (1, 2, 1)
        assert (rows["mic_b"]["tp"], rows["mic_b"]["fp"], rows["mic_b"]["fn"]) == (1, 0, 0)
    capsys.readouterr()


def test_cli_reads_one_file_per_micrograph_of_a_predict_folder(tmp_path, capsys):
    """A predict.py folder holds NAME.star, NAME.box and NAME.csv (whole pixels, so not equal
    to the STAR's coordinates) with the same picks, plus particles.star: each pick counts once,
    read from the STAR; without the STAR, from the CSV, then the BOX; the table says which."""
    from cryoparticle.io.coords import (write_box, write_coordinate_files_star,
                                        write_relion_coordinates)

    picks, truth = tmp_path / "picks", tmp_path / "truth"
    picks.mkdir()
    truth.mkdir()
    xy = {"mic_a": [[100.4, 200.6], [300.3, 310.7], [900.2, 900.9]], "mic_b": [[50.6, 60.4]]}
    tables = {}
    for name, coords in xy.items():
        tables[name] = table(coords, np.linspace(0.9, 0.5, len(coords)), name, diameter=40.0)
        write_relion_coordinates(picks / f"{name}.star", tables[name])
        write_box(picks / f"{name}.box", tables[name], 60)
        write_cryoppp_csv(picks / f"{name}.csv", tables[name])
    write_star(picks / "particles.star", pd.concat(tables.values()), pixel_size_a=1.0)
    write_coordinate_files_star(picks / "coordinate_files.star",
                                [(f"mics/{n}.mrc", picks / f"{n}.star") for n in xy])
    write_cryoppp_csv(truth / "mic_a.csv", table([[101, 201], [600, 600]], None, "mic_a", 40.0))
    write_cryoppp_csv(truth / "mic_b.csv", table([[51, 61]], None, "mic_b", 40.0))
    out = tmp_path / "metrics.json"

    def evaluate() -> tuple[dict[str, dict], str]:
        main(["--picks", str(picks), "--truth", str(truth), "--json", str(out)])
        record = json.loads(out.read_text())
        return {row["micrograph"]: row for row in record["micrographs"]}, \
            capsys.readouterr().err

    for removed, used in ((None, ".star"), (".star", ".csv"), (".csv", ".box")):
        if removed is not None:
            for name in xy:
                (picks / f"{name}{removed}").unlink()
            if removed == ".star":
                (picks / "particles.star").unlink()
                (picks / "coordinate_files.star").unlink()
        rows, err = evaluate()
        assert (rows["mic_a"]["n_picks"], rows["mic_b"]["n_picks"]) == (3, 1)  # not 6 or 9
        assert (rows["mic_a"]["tp"], rows["mic_a"]["fp"], rows["mic_a"]["fn"]) == (1, 2, 1)
        assert (rows["mic_b"]["tp"], rows["mic_b"]["fn"]) == (1, 0)
        assert {Path(rows[n]["picks_file"]).name for n in xy} == {f"mic_a{used}",
                                                                  f"mic_b{used}"}
        assert Path(rows["mic_a"]["truth_file"]).name == "mic_a.csv"
        if used != ".box":
            assert "not used" in err and "star > topaz > cryosparc > cryoppp > box" in err
    # only a multi-micrograph file for mic_b: mic_a from its own file, mic_b from particles.star
    write_relion_coordinates(picks / "mic_a.star", tables["mic_a"])
    write_star(picks / "particles.star", tables["mic_b"], pixel_size_a=1.0)
    rows, _ = evaluate()
    assert Path(rows["mic_a"]["picks_file"]).name == "mic_a.star"
    assert Path(rows["mic_b"]["picks_file"]).name == "particles.star"
    assert (rows["mic_a"]["n_picks"], rows["mic_b"]["n_picks"]) == (3, 1)
