"""benchmarks/sim_ablation.py: each variant removes exactly its ingredient from the composed
training config, the table's differences, and the checks made before anything trains."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import sim_ablation  # noqa: E402


def _simulator(overrides: list[str]):
    with initialize_config_dir(str(ROOT / "cryoparticle" / "conf"), version_base=None):
        cfg = compose("train", overrides=[*sim_ablation.BASE, *overrides])
    assert cfg.data.weights.real == 0 and list(cfg.data.eval_sources) == ["sim"]
    return cfg.data.sources.sim.simulator


def get(cfg, key: str):
    value = OmegaConf.select(cfg, key)
    return OmegaConf.to_object(value) if OmegaConf.is_config(value) else value


def test_each_variant_removes_its_ingredient_and_nothing_else():
    full = _simulator([])
    expected = {  # variant -> (config key, value in the full mix, value once removed)
        "no_looks": ("look.quantise.probability", 0.7, 0.0),
        "fixed_snr": ("noise.snr", [0.005, 0.5], 0.1),
        "white_noise": ("noise.pink_fraction", [0.0, 0.5], 0.0),
        "no_crowding": ("particles.aggregation.probability", 0.3, 0.0),
        "fixed_size": ("pixel_size_scale", [0.77, 1.3], 1.0),
    }
    for name, (key, before, after) in expected.items():
        sim = _simulator(sim_ablation.variant_overrides(name))
        assert get(full, key) == before and get(sim, key) == after, name
        others = [k for n, (k, _, _) in expected.items() if n != name]
        assert all(get(sim, k) == get(full, k) for k in others), name
    one = _simulator(sim_ablation.variant_overrides("one_protein"))
    assert [s.source for s in one.volume.species] == ["default"]
    assert len(full.volume.species) == 3
    everything = _simulator(sim_ablation.variant_overrides(sim_ablation.ALL_REMOVED))
    assert everything.noise.snr == 0.1 and everything.look.quantise.probability == 0.0
    assert everything.particles.coverage is None and len(everything.volume.species) == 1
    assert get(everything, "contrast") is None


def test_calibrated_contrast_adds_back_what_the_mix_no_longer_has():
    full = _simulator([])
    assert get(full, "contrast") is None          # the shipped mix: the CTF's contrast only
    calibrated = _simulator(sim_ablation.variant_overrides("calibrated_contrast"))
    assert get(calibrated, "contrast") == {"low_frequency_gain": [-0.2, 0.4],
                                           "low_frequency_cutoff_diameters": 0.5,
                                           "flip_probability": 0.05}
    rest = OmegaConf.to_container(calibrated)
    rest.pop("contrast")
    assert rest == OmegaConf.to_container(full)


def _row(name: str, f1s: list[float]) -> dict:
    return {"variant": name, "removed": name, "train_minutes": 1.0,
            "datasets": {f"D{i}": {"f1": f, "best_f1": f} for i, f in enumerate(f1s)},
            "mean_f1": sum(f1s) / len(f1s), "mean_best_f1": sum(f1s) / len(f1s)}


def test_table_gives_each_variant_against_the_full_mix_and_the_seed_spread():
    text = sim_ablation.markdown([_row("full", [0.8, 0.6]), _row("no_looks", [0.5, 0.5])],
                                 floor=0.02)
    lines = text.splitlines()
    assert lines[0].count("|") == 2 + 4 + 1
    assert lines[2].startswith("| full: ") and lines[2].endswith("| – |")
    assert "**0.500**" in lines[3] and lines[3].endswith("| -0.200 |")
    assert "0.020" in text


@pytest.mark.parametrize("args", [["--variants", "nonsense"], []])
def test_bad_arguments_stop_before_training(tmp_path, args):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sim_ablation.py"),
                             "--data-dir", str(tmp_path / "missing"),
                             "--work-dir", str(tmp_path / "work"), *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert ("invalid choice" in result.stderr) if args else ("give --data-dir" in result.stderr)
    assert not (tmp_path / "work").exists()


def test_repeated_variants_get_the_following_seeds_and_their_own_runs():
    runs = sim_ablation.plan_runs(["full", "calibrated_contrast"], 7,
                                  ["full", "calibrated_contrast"], 2)
    assert runs == [("full", "full", 7), ("calibrated_contrast", "calibrated_contrast", 7),
                    ("full_seed8", "full", 8), ("full_seed9", "full", 9),
                    ("calibrated_contrast_seed8", "calibrated_contrast", 8),
                    ("calibrated_contrast_seed9", "calibrated_contrast", 9)]
    assert sim_ablation.plan_runs(["no_looks"], 1, ["full"], 0) == [("no_looks", "no_looks", 1)]


@pytest.mark.parametrize("which,cache", [("all", "no_looks"), ("test", "no_looks_test")])
def test_scoring_uses_the_selected_micrographs_and_caches_each_selection_apart(
        tmp_path, monkeypatch, which, cache):
    import argparse

    import real_transfer

    calls = []

    def fake_cached_main(results_dir, out, argv):
        calls.append((results_dir, out, argv))
        return {"results": {"EMPIAR-10017": {}}}

    monkeypatch.setattr(real_transfer, "cached_main", fake_cached_main)
    args = argparse.Namespace(work_dir=tmp_path, data_dir=tmp_path / "data", micrographs=which)
    assert sim_ablation.score_variant("no_looks", tmp_path / "a.ckpt", args) == \
        {"EMPIAR-10017": {}}
    (results_dir, out, argv), = calls
    assert results_dir == tmp_path / "scores" and out == cache
    assert argv[argv.index("--micrographs") + 1] == which
    assert argv[argv.index("--ckpt") + 1] == f"no_looks={tmp_path / 'a.ckpt'}"
