"""benchmarks/method_claim.py: NAME[:BACKBONE] parsing, the scores of a hand-made micrograph
against pixel counts, and the > 90 % verdict and its Markdown."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import method_claim  # noqa: E402


def test_network_specs_take_the_methods_backbones_by_default():
    args = method_claim.parser().parse_args(["--networks", "fcn", "deeplabv3:resnet18", "unet"])
    assert args.networks == [("fcn", "resnet101"), ("deeplabv3", "resnet18"), ("unet", "resnet18")]
    assert method_claim.parser().parse_args([]).networks == [
        ("fcn", "resnet101"), ("deeplabv3", "resnet50"), ("unet", "resnet18")]


@pytest.mark.parametrize("spec", ["segnet", "fcn:", "FCN:resnet50"])
def test_unknown_network_or_empty_backbone_is_a_usage_error(spec, capsys):
    with pytest.raises(SystemExit) as exc:
        method_claim.parser().parse_args(["--networks", spec])
    assert exc.value.code == 2
    assert "--networks" in capsys.readouterr().err


def _disc(shape, centre, radius):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def test_claim_scores_match_pixel_counts_and_picks():
    """Two true particles (discs of radius 5), one predicted as a disc of radius 6 → pixels and
    picks scored against hand counts; a band of ignored pixels (true negatives otherwise) never
    counts."""
    shape = (64, 64)
    a, b = _disc(shape, (20, 20), 5), _disc(shape, (44, 44), 5)
    mask = (a | b).astype(np.uint8)
    mask[:, 60:] = 255                                   # ignored band
    pred = _disc(shape, (20, 20), 6)
    prob = pred.astype(np.float32) * 0.9
    truth = pd.DataFrame({"micrograph": "m", "x": [20.0, 44.0], "y": [20.0, 44.0],
                          "diameter": 10.0, "score": 1.0})
    data = [{"name": "m", "image": np.zeros(shape, np.float32), "mask": mask, "truth": truth,
             "diameter_px": 10.0, "border_px": 0}]
    r = method_claim.claim_scores([prob], data)

    valid = mask != 255
    p, t = pred[valid], mask[valid] == 1
    tp, fp, fn = np.sum(p & t), np.sum(p & ~t), np.sum(~p & t)
    tn = valid.sum() - tp - fp - fn
    assert r["pixel_precision"] == pytest.approx(tp / (tp + fp))
    assert r["pixel_recall"] == pytest.approx(tp / (tp + fn))
    assert r["pixel_recall"] == pytest.approx(0.5)      # all of disc a, none of disc b
    assert r["pixel_iou"] == pytest.approx(tp / (tp + fp + fn))
    assert r["pixel_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert r["pixel_accuracy"] == pytest.approx((tp + tn) / valid.sum())
    assert (r["precision"], r["recall"]) == (1.0, 0.5)  # one pick, on particle a
    assert r["pick_f1"] == pytest.approx(2 / 3)
    assert r["ap"] == pytest.approx(0.5)


def _row(**pixel):
    r = {f"pixel_{m}": pixel.get(m, 0.95) for m in method_claim.PIXEL_METRICS}
    return {**r, "precision": 1.0, "recall": 1.0, "pick_f1": 1.0, "ap": 1.0, "crf_s": 0.5}


def test_verdict_names_the_rows_above_90_percent_and_markdown_marks_them():
    results = {"fcn/resnet101": {"train_s": {"base": 100.0, "rnn": 10.0},
                                 "rows": {"none": _row(iou=0.6, f1=0.75),
                                          "rnn": _row(iou=0.91, f1=0.75)}},
               "unet/resnet18": {"train_s": {"base": 50.0, "rnn": 5.0},
                                 "rows": {"none": _row(iou=0.5, f1=0.9)}}}
    v = method_claim.verdict(results)
    assert v == {"accuracy": "yes", "precision": "yes", "recall": "yes",
                 "iou": "fcn/resnet101/rnn", "f1": "no",      # 0.9 itself is not above 90 %
                 "all five": "no"}
    text = method_claim.markdown({"results": results, "verdict": v})
    rows = [ln for ln in text.splitlines() if ln.startswith("| fcn") or ln.startswith("| unet")]
    assert len(rows) == 3
    assert "| 0.910 ✓ |" in rows[1] and "| 110 |" in rows[1]   # rnn: base + rnn training s
    assert "| 0.600 |" in rows[0] and "| 0.900 |" in rows[2]
    assert "- iou: fcn/resnet101/rnn" in text and "- f1: no" in text


def test_precision_of_an_empty_prediction_does_not_meet_the_claim():
    empty = _row(precision=1.0, recall=0.0, iou=0.0, f1=0.0, accuracy=0.9)
    results = {"unet/resnet18": {"train_s": {"base": 1.0, "rnn": 1.0},
                                 "rows": {"none": empty, "dense": _row()}}}
    v = method_claim.verdict(results)
    assert v["precision"] == "unet/resnet18/dense" and v["all five"] == "unet/resnet18/dense"
    text = method_claim.markdown({"results": results, "verdict": v})
    none_row = next(ln for ln in text.splitlines() if ln.startswith("| unet/resnet18 | none"))
    assert "✓" not in none_row
