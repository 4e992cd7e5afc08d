"""extract_particles on hand-made probability maps with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoparticle.errors import InputError
from cryoparticle.io.coords import COLUMNS
from cryoparticle.picking.extract import extract_particles, extract_particles_by_min_size

H, W = 120, 200  # non-square: rows ≠ columns
D = 20.0  # particle diameter (px)


def disc(prob: np.ndarray, x: float, y: float, radius: float = D / 2,
         value: float = 0.9) -> np.ndarray:
    """Paint a disc of probability ``value`` centred on column ``x``, row ``y``."""
    rows, cols = np.mgrid[: prob.shape[0], : prob.shape[1]]
    prob[(cols - x) ** 2 + (rows - y) ** 2 <= radius**2] = value
    return prob


def blank() -> np.ndarray:
    return np.zeros((H, W), dtype=np.float32)


def nearest(df, x, y) -> float:
    return float(np.hypot(df["x"] - x, df["y"] - y).min())


def test_discs_at_known_positions_x_is_column():
    centres = [(40.0, 30.0), (150.0, 85.0), (100.0, 60.0)]  # (x, y), x ≠ y
    prob = blank()
    for x, y in centres:
        disc(prob, x, y)
    df = extract_particles(prob, D, micrograph="mic")
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == 3
    for x, y in centres:
        assert nearest(df, x, y) < 1.0
    assert (df["micrograph"] == "mic").all() and (df["diameter"] == D).all()
    # orientation: the pick near column 150 sits in row 85, not the other way round
    row = df.loc[(df["x"] - 150).abs().idxmin()]
    assert abs(row["y"] - 85) < 1.0


def test_touching_discs_are_split():
    prob = disc(disc(blank(), 60, 60), 78, 60)  # centres 18 px apart, discs overlap
    df = extract_particles(prob, D)
    assert len(df) == 2
    assert nearest(df, 60, 60) < 1.5 and nearest(df, 78, 60) < 1.5
    assert len(extract_particles(prob, D, split_touching=False)) == 1
    # too big to be one particle: split even without split_touching
    big = blank()
    for x in (30, 48, 66, 84):
        disc(big, x, 60)
    assert len(extract_particles(big, D, split_touching=False, max_size_fraction=3.0)) == 4


def test_speck_is_dropped():
    prob = disc(blank(), 50, 50)
    prob[100:103, 150:153] = 1.0  # 9 px, far below a quarter of the disc area (~79 px)
    df = extract_particles(prob, D)
    assert len(df) == 1 and nearest(df, 50, 50) < 1.0
    assert len(extract_particles(prob, D, min_size_fraction=0.0)) == 2


def test_close_picks_suppressed_keep_higher_score():
    # a disc cut in half by a background row: two regions whose centres are ~9.5 px apart
    prob = disc(blank(), 100, 60, value=0.6)
    prob[:60, :] = np.where(prob[:60, :] > 0, 0.95, 0)
    prob[60, :] = 0
    df = extract_particles(prob, D, min_distance_fraction=0.5)  # 10 px
    assert len(df) == 1
    assert df["score"].iloc[0] == pytest.approx(0.95) and df["y"].iloc[0] < 60
    both = extract_particles(prob, D, min_distance_fraction=0.3)  # 6 px
    assert len(both) == 2


def test_border_exclusion():
    prob = disc(disc(disc(blank(), 14, 60), 186, 60), 100, 60)
    assert len(extract_particles(prob, D)) == 3
    df = extract_particles(prob, D, border_px=15)
    assert len(df) == 1 and nearest(df, 100, 60) < 1.0
    assert len(extract_particles(prob, D, border_px=13)) == 3


def test_empty_map_gives_empty_table():
    for prob in (blank(), np.full((H, W), 0.2), np.zeros((0, 0))):
        df = extract_particles(prob, D)
        assert df.empty and list(df.columns) == list(COLUMNS)
        assert df["x"].dtype == np.float64


def test_scores_in_unit_interval_and_sorted():
    prob = blank()
    for x, value in ((30, 0.6), (100, 0.95), (170, 0.8)):
        disc(prob, x, 60, value=value)
    df = extract_particles(prob, D)
    assert df["score"].between(0, 1).all()
    assert df["score"].tolist() == pytest.approx([0.95, 0.8, 0.6])
    assert df["x"].tolist() == pytest.approx([100, 170, 30], abs=1.0)
    assert len(extract_particles(prob, D, threshold=0.7)) == 2


def test_weighted_centroid_and_torch_input():
    prob = disc(blank(), 80, 50, value=0.6)
    prob[40:61, 80:91] = np.where(prob[40:61, 80:91] > 0, 1.0, 0)  # heavier right half
    df = extract_particles(torch.from_numpy(prob)[None, None], D)
    assert len(df) == 1 and df["x"].iloc[0] > 80.5 and abs(df["y"].iloc[0] - 50) < 0.5
    assert df.equals(extract_particles(prob, D))


@pytest.mark.parametrize("kwargs", [
    {"prob": np.full((10, 10), 2.0)},          # logits, not probabilities
    {"prob": np.zeros((2, 10, 10))},           # not 2-D
    {"particle_diameter_px": 0},
    {"threshold": 1.5},
    {"border_px": -1},
])
def test_bad_arguments_raise_input_error(kwargs):
    args = {"prob": blank(), "particle_diameter_px": D} | kwargs
    with pytest.raises(InputError):
        extract_particles(args.pop("prob"), args.pop("particle_diameter_px"), **args)


def test_several_minimum_sizes_at_once_equal_one_extraction_each():
    """The sweep helper (one watershed per threshold) gives exactly the tables of separate
    calls, on a map with particles of several sizes, touching pairs, specks and a border."""
    prob = blank()
    for x, y, r in [(30, 30, 10), (48, 30, 10), (100, 60, 5), (160, 90, 7), (150, 20, 2.5)]:
        disc(prob, x, y, radius=r, value=0.8)
    rng = np.random.default_rng(3)
    prob = np.clip(prob + rng.uniform(0, 0.3, prob.shape), 0, 1).astype(np.float32)
    sizes = (0.0, 0.05, 0.2, 0.5)
    for threshold in (0.3, 0.6):
        for split in (True, False):
            options = dict(threshold=threshold, border_px=8, split_touching=split,
                           micrograph="m")
            swept = extract_particles_by_min_size(prob, D, sizes, **options)
            assert list(swept) == list(sizes)
            counts = []
            for size in sizes:
                alone = extract_particles(prob, D, min_size_fraction=size, **options)
                assert swept[size].equals(alone), (threshold, split, size)
                counts.append(len(alone))
            assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    assert extract_particles_by_min_size(blank(), D, (0.1, 0.2))[0.2].empty
    generated = extract_particles_by_min_size(prob, D, (s for s in sizes), threshold=0.3)
    assert list(generated) == list(sizes)   # an iterator is read once, every size answered
    with pytest.raises(InputError, match="min_size_fraction"):
        extract_particles_by_min_size(prob, D, (0.1, -1.0))


def test_the_peak_level_is_the_quantile_of_the_particle_heights():
    """Discs of known heights on a faint noisy background: the Gaussian of σ = d/8 leaves a
    disc's centre at its height (1 − e⁻⁸), so the level is the median (or the asked quantile)
    of the discs' heights; background maxima below ``min_peak`` are not peaks."""
    from cryoparticle.picking.extract import particle_peak_level

    rng = np.random.default_rng(0)
    heights = [0.2, 0.3, 0.3, 0.5, 0.6, 0.6, 0.9]
    prob = (rng.random((H, W)) * 0.04).astype(np.float32)
    for i, h in enumerate(heights):
        disc(prob, 20 + 26 * i, 30 + 50 * (i % 2), value=h)
    assert particle_peak_level(prob, D) == pytest.approx(0.5, abs=0.005)
    assert particle_peak_level(prob, D, quantile=1.0) == pytest.approx(0.9, abs=0.005)
    assert particle_peak_level(prob, D, quantile=0.0) == pytest.approx(0.2, abs=0.005)
    assert particle_peak_level(torch.from_numpy(prob), D) == particle_peak_level(prob, D)
    assert particle_peak_level(blank(), D) == 0.0      # nothing above min_peak
    # the background's maxima count only when min_peak lets them in: they pull the level down
    assert particle_peak_level(prob, D, min_peak=0.0) < 0.1
    with pytest.raises(InputError, match="quantile"):
        particle_peak_level(prob, D, quantile=1.5)


def test_a_plateau_is_one_peak_so_a_flat_background_does_not_outvote_the_particles():
    """Discs of 0.9 on a perfectly flat background of 0.1: every background pixel is a maximum
    of its window, but the plateau counts once, so the 90th percentile is the particles'."""
    from cryoparticle.picking.extract import particle_peak_level

    prob = np.full((H, W), 0.1, np.float32)
    for i in range(7):
        disc(prob, 20 + 26 * i, 30 + 50 * (i % 2), value=0.9)
    assert particle_peak_level(prob, D, quantile=0.9) == pytest.approx(0.9, abs=0.01)
    assert particle_peak_level(prob, D, quantile=0.0) == pytest.approx(0.1, abs=0.001)


def test_the_polarity_is_the_one_whose_particle_peaks_are_higher_beyond_the_margin():
    """Confident particles in one map and only weak gap peaks in the other: that map's
    polarity; levels within the margin: dark, the polarity the network learnt."""
    from cryoparticle.picking.extract import choose_polarity

    rng = np.random.default_rng(0)
    strong = (rng.random((H, W)) * 0.04).astype(np.float32)
    weak = strong.copy()
    for i in range(7):
        disc(strong, 20 + 26 * i, 30 + 50 * (i % 2), value=0.9)
        disc(weak, 20 + 26 * i, 30 + 50 * (i % 2), value=0.4)
    polarity, dark, light = choose_polarity(weak, strong, D, quantile=0.9)
    assert polarity == "light"
    assert (dark, light) == pytest.approx((0.4, 0.9), abs=0.01)
    assert choose_polarity(strong, weak, D)[0] == "dark"
    almost = weak * 1.02   # 2 % higher: within the margin 1.03
    assert choose_polarity(weak, almost, D, quantile=0.9)[0] == "dark"
    assert choose_polarity(weak, almost, D, quantile=0.9, margin=1.0)[0] == "light"
    assert choose_polarity(blank(), blank(), D)[0] == "dark"       # nothing either way
    with pytest.raises(InputError, match="polarity_margin"):
        choose_polarity(weak, strong, D, margin=0.5)


def test_a_relative_threshold_is_a_fraction_of_the_level_never_below_the_floor():
    from cryoparticle.picking.extract import relative_threshold

    assert relative_threshold(0.6, 0.5, 0.125) == pytest.approx(0.3)
    assert relative_threshold(0.2, 0.5, 0.125) == 0.125          # the floor
    assert relative_threshold(0.6, 0.0, 0.125) == 0.125          # fraction 0: fixed
    for bad in [(1.2, 0.5, 0.1), (0.5, -0.1, 0.1), (0.5, 0.5, float("nan"))]:
        with pytest.raises(InputError):
            relative_threshold(*bad)
