"""benchmarks/run_all.py: its argument handling and the commands it would run (--dry-run)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "run_all.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def commands(result: subprocess.CompletedProcess) -> dict[str, str]:
    lines = [ln for ln in result.stdout.splitlines() if ": python " in ln]
    return dict(ln.split(": python ", 1) for ln in lines)


def test_a_mode_is_required_and_modes_exclude_each_other():
    assert run().returncode == 2
    both = run("--quick", "--full", "--dry-run")
    assert both.returncode == 2 and "not allowed with" in both.stderr
    unknown = run("--quick", "--only", "nonsense", "--dry-run")
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr


def test_quick_dry_run_lists_every_readme_benchmark_without_real_data_or_peers(tmp_path):
    result = run("--quick", "--dry-run", "--data-dir", str(tmp_path), "--results-dir",
                 str(tmp_path / "res"))
    assert result.returncode == 0, result.stderr
    cmds = commands(result)
    # every script of benchmarks/ that writes README numbers, except the real-data ones
    assert set(cmds) == {"simulate_speed", "crf_speed", "pick_speed", "train_throughput",
                         "quickstart", "method_claim", "noise_sweep", "empty_picks"}
    for name in ("crf_effect", "real_data_cv", "real_transfer", "contrast_stats",
                 "sim_ablation", "leave_one_out"):
        assert f"skip {name}: no EMPIAR-10017 data" in result.stdout
    for name, cmd in cmds.items():
        assert cmd.startswith(f"benchmarks/{name}.py "), cmd
        assert (f"--json {tmp_path / 'res' / name}.json" in cmd
                or f"--results-dir {tmp_path / 'res'} --out {name}" in cmd), cmd
    assert "--no-aspire" in cmds["simulate_speed"]
    assert "--no-topaz" in cmds["pick_speed"] or "--topaz " in cmds["pick_speed"]
    assert "--sizes 1024 4096 --repeats 3" in cmds["crf_speed"]
    assert "--train-overrides trainer.max_epochs=2" in cmds["quickstart"]  # quick: fewer epochs
    assert f"--plot {tmp_path / 'res' / 'noise_sweep'}.png" in cmds["noise_sweep"]
    for name in ("method_claim", "noise_sweep", "empty_picks"):  # quick: never the full work
        assert f"--work-dir benchmarks/work/{name}_quick" in cmds[name]
    assert not (tmp_path / "res").exists()          # a dry run writes nothing


def test_only_selects_and_peers_and_real_data_are_passed_on(tmp_path):
    mics = tmp_path / "data" / "empiar-10017" / "micrographs"
    mics.mkdir(parents=True)
    (mics / "a.jpg").write_bytes(b"\xff\xd8")
    aspire = tmp_path / "aspire_python"
    result = run("--full", "--dry-run", "--only", "simulate_speed", "crf_effect",
                 "--data-dir", str(tmp_path / "data"), "--aspire-python", str(aspire))
    assert result.returncode == 0, result.stderr
    cmds = commands(result)
    assert set(cmds) == {"simulate_speed", "crf_effect"}
    assert f"--aspire-python {aspire}" in cmds["simulate_speed"]
    assert f"--data-dir {tmp_path / 'data'}" in cmds["crf_effect"]
    assert "benchmarks/results/crf_effect.md" in cmds["crf_effect"]   # --full: the README's


def test_train_overrides_stay_after_the_double_dash(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import run_all
    finally:
        sys.path.remove(str(SCRIPT.parent))
    # sim_ablation's quick run hands train.py an override after "--"
    bench = next(b for b in run_all.BENCHMARKS if b.name == "sim_ablation")
    cmd = run_all.command(bench, "quick", tmp_path, tmp_path / "data", None, None)
    tail = cmd[cmd.index("--"):]
    assert tail == ["--", "data.train_samples_per_epoch=256"]
    head = cmd[:cmd.index("--")]                      # run_all's own options come before it
    assert head[head.index("--data-dir") + 1] == str(tmp_path / "data")
    assert head[head.index("--results-dir") + 1] == str(tmp_path)


class _Parser(Exception):
    """Raised in place of parsing, carrying the script's parser."""


def script_parser(module) -> argparse.ArgumentParser:
    """The parser a benchmark script's ``main`` builds (stopped before it parses)."""
    def capture(self, *args, **kwargs):
        raise _Parser(self)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = capture
    try:
        module.main([])
    except _Parser as found:
        return found.args[0]
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"{module.__name__}.main parsed no arguments")


def test_every_command_run_all_gives_is_accepted_by_the_script_parser(tmp_path):
    """Each command run_all builds (both modes, with Topaz and ASPIRE given) parses with the
    script's own argparse: options declared, values of the right type and choices."""
    import importlib

    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import run_all
        aspire = tmp_path / "python"
        for bench in run_all.BENCHMARKS:
            parser = script_parser(importlib.import_module(bench.name))
            for mode in ("quick", "full"):
                cmd = run_all.command(bench, mode, tmp_path, tmp_path, tmp_path / "topaz", aspire)
                try:
                    parser.parse_args(cmd[2:])
                except SystemExit:
                    raise AssertionError(f"{bench.name} ({mode}) refuses {cmd[2:]}") from None
        with pytest.raises(SystemExit):  # and the check can fail
            script_parser(importlib.import_module("leave_one_out")).parse_args(["--no-such"])
    finally:
        sys.path.remove(str(SCRIPT.parent))


def test_headlines_summarise_the_results_they_are_given():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import run_all
    finally:
        sys.path.remove(str(SCRIPT.parent))
    quick = {"pick": {"seconds": 16.62, "f1": 0.8537}, "simulate": {"seconds": 15.3},
             "train": {"minutes": 7.07, "test": {"iou": 0.859}}}
    assert run_all._quickstart(quick) == ("pick 16.6 s (F1 0.854), simulate 15.3 s, "
                                          "train 7.1 min (test IoU 0.859)")
    transfer = {"results": {"EMPIAR-10017": {"ours: general": {"f1": 0.848},
                                             "Topaz": {"f1": 0.601}},
                            "EMPIAR-10059": {"ours: general": {"f1": 0.69}, "Topaz": {}}}}
    assert run_all._real_transfer(transfer) == ("F1 (ours: general/Topaz): 10017 0.848/0.601, "
                                                "10059 0.690/n/a")
    crf = {"domains": {"synthetic": {"unet": {"sets": {"SNR 0.1": {
        "none": {"pick_f1": 0.9946}, "dense": {"pick_f1": 0.9884}}}}}}}
    assert run_all._crf_effect(crf) == "pick F1 (unet, SNR 0.1): none 0.995, dense 0.988"
    assert run_all._crf_effect({}) == "n/a"
    cv = {"rows": [{"network": "unet", "init": "sim-only", "target": "ring", "folds": [0, 1],
                    "metrics": {"pick_f1": 0.797}}]}
    assert run_all._real_data_cv(cv) == "CV pick F1: unet sim-only ring 0.797 (folds 2)"
    # every benchmark names a figure, not just the keys of its JSON
    assert all(b.headline is not run_all._keys for b in run_all.BENCHMARKS)
    size = {"rows": [{"modes": {"estimated": {"f1": 0.5}, "matched": {"f1": 0.8}}},
                     {"modes": {"estimated": {"f1": 0.7}, "matched": {"f1": 0.7}}}]}
    assert run_all._particle_size(size) == ("mean F1 over sets and sizes: estimated 0.600, "
                                            "matched 0.750")
    cues = {"size_exponents": {"estimate": {"X": 0.1, "mean": 0.05},
                               "log_sigma": {"X": 1.0, "mean": 1.04}}}
    assert run_all._diameter_cues(cues) == "size exponent: estimate 0.05, log_sigma 1.04"
    assert run_all._diameter_cues({}) == "no size exponent (one scale)"
    coverage = {"summary": {"choice": {"chosen": "a", "mean_f1": 0.61, "shipped": {
        "setting": "b", "f1": {"X": 0.5, "Y": 0.7}}}}}
    assert run_all._coverage_weighting(coverage) == (
        "expected F1 over CryoPPP coverages: best `a` 0.610, shipped `b` 0.600")
    flipped = {"results": {"X": {"runs": {"inverted dark": {"f1": 0.5},
                                          "inverted auto": {"f1": 0.75}}}}}
    assert run_all._polarity(flipped) == "inverted F1 dark → auto: X 0.500 → 0.750"
    relative = {"families": {"fixed": {"best_on_average": "fixed 0.15", "best_score": 0.608},
                             "relative": {"best_on_average": "relative 0.3 × p90, floor 0.05",
                                          "best_score": 0.627}}}
    assert run_all._relative_threshold(relative) == (
        "best score: fixed 0.15 0.608, relative 0.3 × p90, floor 0.05 0.627")


def test_topaz_joins_each_benchmark_only_in_the_modes_it_is_affordable(tmp_path):
    """Quick: Topaz beside pick_speed, real_transfer, noise_sweep and empty_picks, but not
    leave_one_out (Topaz on all ten held-out micrographs takes longer than the whole quick
    budget allows); full: everywhere it is a peer. No Topaz given: nowhere."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import run_all
    finally:
        sys.path.remove(str(SCRIPT.parent))
    topaz = tmp_path / "topaz"
    peers = {"pick_speed", "real_transfer", "noise_sweep", "empty_picks", "leave_one_out"}
    for mode, expected in (("quick", peers - {"leave_one_out"}), ("full", peers)):
        given = {b.name for b in run_all.BENCHMARKS
                 if f"--topaz={topaz}" in "=".join(run_all.command(b, mode, tmp_path, tmp_path,
                                                                   topaz, None))}
        assert given == expected, mode
    speed = next(b for b in run_all.BENCHMARKS if b.name == "pick_speed")
    assert "--no-topaz" in run_all.command(speed, "quick", tmp_path, tmp_path, None, None)
    assert not any("--topaz" in run_all.command(b, "full", tmp_path, tmp_path, None, None)
                   for b in run_all.BENCHMARKS)


def test_quick_runs_work_in_their_own_folders(tmp_path):
    """A quick run never writes into (or reuses) the work folder of a full run: every script
    that caches work in its --work-dir gets benchmarks/work/<name>_quick in quick mode, and
    another in full."""
    import importlib

    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import run_all
        checked = set()
        for bench in run_all.BENCHMARKS:
            parser = script_parser(importlib.import_module(bench.name))
            if "--work-dir" not in parser._option_string_actions or bench.name in (
                    "pick_speed", "quickstart"):   # these start afresh (a temporary folder)
                continue
            quick = run_all.command(bench, "quick", tmp_path, tmp_path, None, None)
            full = run_all.command(bench, "full", tmp_path, tmp_path, None, None)
            folder = f"benchmarks/work/{bench.name}_quick"
            assert quick[quick.index("--work-dir") + 1] == folder, bench.name
            assert folder not in full, bench.name
            checked.add(bench.name)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert {"crf_effect", "real_data_cv", "sim_ablation", "leave_one_out"} <= checked


def test_results_lose_machine_paths_but_keep_the_headlines_separators(tmp_path):
    """``portable`` (every results JSON goes through it): absolute paths become labels or file
    names, while a headline's "picker (x)/picker" separator is not mistaken for a path."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from _common import ROOT, portable
    finally:
        sys.path.remove(str(SCRIPT.parent))
    data = tmp_path / "shared" / "data"
    record = {"command": f"predict.py --data-dir {data}/empiar-10017 --topaz /opt/venv/bin/topaz "
                         f"--json {ROOT}/benchmarks/results/x.json",
              "headline": "F1 (ours: general/Topaz resnet16_u64 (shipped)/Topaz, boxes "
                          "inside): 10017 0.892/0.592/0.592"}
    out = portable(record, {"DATA_DIR": data})
    assert out["command"] == ("predict.py --data-dir DATA_DIR/empiar-10017 --topaz topaz "
                              "--json benchmarks/results/x.json")
    assert out["headline"] == record["headline"]
