"""benchmarks/diameter_cues.py: the region sizes of known discs, the blob scale of known
Gaussian blobs, the size exponent of cues that do and do not follow the size, and a run without
particle_size.py's maps stopping with one line."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import diameter_cues as dc  # noqa: E402


def _discs(shape: tuple[int, int], centres: list[tuple[int, int]], radius: float,
           value: float) -> np.ndarray:
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    out = np.zeros(shape, np.float32)
    for r, c in centres:
        out[np.hypot(rows - r, cols - c) <= radius] = value
    return out


def test_region_cues_measure_the_confident_discs_in_angstrom():
    centres = [(20 + 40 * i, 20 + 40 * j) for i in range(4) for j in range(4)]
    prob = _discs((160, 160), centres, 8.0, 0.9)                   # confident, 16 px across
    prob = np.maximum(prob, _discs((160, 160), [(5, 5)], 3.0, 0.3))  # a faint speck
    cues = dc.region_cues(prob, pixel_size_a=2.0)
    assert cues["equivalent@0.25"] == pytest.approx(2 * 2 * math.sqrt(
        np.count_nonzero(_discs((40, 40), [(20, 20)], 8.0, 1)) / math.pi))
    assert cues["equivalent@0.25"] == pytest.approx(32.0, rel=0.05)   # 16 px × 2 Å
    assert cues["inscribed@0.25"] == pytest.approx(32.0, rel=0.1)
    assert cues["edt_p75@0.25"] == pytest.approx(32.0, rel=0.1)
    # the speck counts at 0.25 (not confident) but not at 0.5; nothing is confident at 0.95
    assert cues["edt_median@0.25"] == pytest.approx(32.0, rel=0.1)
    assert not math.isnan(cues["equivalent@0.5"])
    assert math.isnan(dc.region_cues(prob * 0.5, 2.0)["equivalent@0.125"])  # peaks 0.45


def test_blob_scale_finds_the_width_of_gaussian_blobs_darker_or_brighter():
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:256, :256]
    centres = [(32 + 64 * i, 32 + 64 * j) for i in range(4) for j in range(4)]
    sigmas = np.geomspace(1.0, 20.0, 40)
    for width in (3.0, 6.0):
        image = rng.normal(0, 0.2, (256, 256))
        for r, c in centres:
            image -= np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * width ** 2))
        cy, cx = np.array(centres).T
        responses = dc.log_responses(image, cy, cx, sigmas)
        assert responses[np.argmax(np.abs(responses))] > 0   # dark blob: positive ∇²
        assert dc.blob_scale(responses, sigmas) == pytest.approx(width, rel=0.1)
        flipped = dc.log_responses(-image, cy, cx, sigmas)   # brighter particles: same scale
        assert dc.blob_scale(flipped, sigmas) == pytest.approx(width, rel=0.1)


def test_size_exponent_is_one_for_a_cue_that_follows_the_size_and_zero_for_a_flat_one():
    def row(name, scale, flat):
        return {"set": name, "scale": scale, "estimate_a": flat,
                "regions_a": {"equivalent@0.25": 100.0 * scale}, "log_sigma_a": 10 * scale ** 2}

    rows = [row("A", s, 150.0) for s in (0.6, 1.0, 1.6)] + [row("B", s, 140.0) for s in (1, 2)]
    rows.append(row("C", 1.0, 130.0))                       # one scale: no slope
    exponents = dc.size_exponents(rows)
    assert exponents["estimate"] == pytest.approx({"A": 0.0, "B": 0.0, "mean": 0.0}, abs=1e-9)
    assert exponents["equivalent@0.25"] == pytest.approx({"A": 1.0, "B": 1.0, "mean": 1.0})
    assert exponents["log_sigma"]["mean"] == pytest.approx(2.0)
    text = dc.markdown([], exponents)
    assert "| estimate | 0.00 | 0.00 | 0.00 |" in text


def test_without_particle_size_maps_it_stops_with_one_line(tmp_path):
    data = tmp_path / "data"
    for folder in ("empiar-10017", "empiar-10059", "empiar-10947"):
        (data / folder / "micrographs").mkdir(parents=True)
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "diameter_cues.py"), "--data-dir", str(data),
         "--datasets", "EMPIAR-10017", "--particle-size-work-dir", str(tmp_path / "none"),
         "--work-dir", str(tmp_path / "work"), "--results-dir", str(tmp_path / "results")],
        capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("no maps of particle_size.py")
    assert "Traceback" not in result.stderr and "skipped" in result.stdout
    assert not (tmp_path / "results").exists()
