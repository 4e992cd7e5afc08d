"""Contrast polarity: the picker on real micrographs as given and inverted (light particles).

    python benchmarks/polarity.py --data-dir DATA [--micrographs test|val|all]
        [--ckpt general] [--datasets EMPIAR-10017 ...] [--predict KEY=VALUE ...]
        [--work-dir benchmarks/work/polarity] [--out polarity] [--results-dir benchmarks/results]

The networks learn particles darker than the ice, as raw bright-field micrographs show them;
some data sets reach a picker inverted (light particles: a processing step, a display
convention). For each real set (``real_transfer.py``'s micrographs, CryoPPP truth, borders
excluded, Hungarian matching within half the diameter) the micrographs are picked by
``predict.py`` as a user runs it, as given and inverted (every pixel negated), each with
``polarity=dark`` (segmented as given) and ``polarity=auto`` (segmented both ways, each
micrograph picked in the polarity whose particle peak level is higher,
:func:`~cryoparticle.picking.extract.choose_polarity`). Reported per set: P / R / F1 of the
four runs, how many micrographs ``auto`` picked as light, and the smallest ratio of the right
polarity's peak level to the wrong one's (how close ``auto`` came to a wrong choice; ``auto``
needs the ratio above ``polarity_margin``). Writes ``<results-dir>/<out>.json`` and ``.md``.
Nothing is trained; about 15 minutes for ``--micrographs all`` on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (DATA_DIR_HELP, DATASETS, DEFAULT_DATA_DIR, ROOT,  # noqa: E402
                     add_output_options, inside, load_average, require_datasets, write_report)

#: ``(micrographs, polarity)`` of the four runs per set.
RUNS = (("given", "dark"), ("given", "auto"), ("inverted", "dark"), ("inverted", "auto"))


def inverted_copies(paths: list[Path], out: Path) -> list[Path]:
    """MRC copies of ``paths`` with every pixel negated (the header's pixel size kept)."""
    from cryoparticle.io.mrc import read_mrc, write_mrc

    out.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in paths:
        copy = out / path.name
        if not copy.is_file():
            data, pixel_size_a = read_mrc(path, mmap=False)
            write_mrc(copy, -np.asarray(data, np.float32), pixel_size_a)
        copies.append(copy)
    return copies


def pick(ckpt: str, paths: list[Path], out: Path, polarity: str, overrides: list[str]
         ) -> tuple[Any, dict[str, Any], float]:
    """``predict.py`` on ``paths`` with ``polarity``: its picks (micrograph = file stem), its
    summary's per-micrograph records by name, and seconds per micrograph (wall)."""
    import real_transfer

    cmd = [sys.executable, str(ROOT / "predict.py"), f"input=[{','.join(map(str, paths))}]",
           f"output_dir={out}", f"ckpt_path={ckpt}", f"polarity={polarity}", "overwrite=true",
           "progress_bar=false", *overrides]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"predict.py failed ({polarity}, {out}):\n{done.stderr[-2000:]}")
    picks = real_transfer.predict_picks(out, paths)
    records = {m["name"]: m for m in json.loads((out / "predict_summary.json").read_text())
               ["micrographs"]}
    return picks, records, wall / len(paths)


def level_ratio(records: dict[str, Any], right: str) -> float | None:
    """The smallest ratio, over the micrographs of one ``auto`` run, of the ``right``
    polarity's peak level to the other's (None without levels)."""
    ratios = []
    for record in records.values():
        levels = record.get("polarity_levels")
        if levels:
            dark, light = (float(v) for v in levels)
            mine, other = (dark, light) if right == "dark" else (light, dark)
            ratios.append(mine / other if other > 0 else float("inf"))
    return float(min(ratios)) if ratios else None


def score_set(name: str, data_dir: Path, which: str, ckpt: str, work: Path,
              overrides: list[str]) -> dict[str, Any]:
    """The four runs of :data:`RUNS` on one set, scored."""
    import real_transfer

    from cryoparticle.picking.evaluate import precision_recall_f1

    data = real_transfer.dataset_inputs(name, data_dir, which, work / "inputs")
    inputs = {"given": data["paths"],
              "inverted": inverted_copies(data["paths"], work / "inverted" / name)}
    truth = inside(data["truth"], data["borders"])
    radius = data["diameter_px"] / 2
    out: dict[str, Any] = {"n_micrographs": len(data["paths"]), "runs": {}}
    for micrographs, polarity in RUNS:
        picks, records, seconds = pick(ckpt, inputs[micrographs],
                                       work / "picks" / name / f"{micrographs}_{polarity}",
                                       polarity, overrides)
        scores = precision_recall_f1(inside(picks, data["borders"]), truth, radius)
        chosen = [r.get("polarity") for r in records.values()]
        right = "dark" if micrographs == "given" else "light"
        out["runs"][f"{micrographs} {polarity}"] = {
            "precision": float(scores["precision"]), "recall": float(scores["recall"]),
            "f1": float(scores["f1"]), "s_per_micrograph": seconds,
            "n_light": chosen.count("light"), "n_dark": chosen.count("dark"),
            "min_level_ratio": level_ratio(records, right) if polarity == "auto" else None,
            "levels": {k: r.get("polarity_levels") for k, r in records.items()}}
        print(f"{name:14s} {micrographs:8s} {polarity:4s} F1 {scores['f1']:.3f} "
              f"(light {chosen.count('light')}/{len(chosen)})", flush=True)
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = ["| set (micrographs) | as given: dark | as given: auto | inverted: dark | "
             "inverted: auto | auto picked as light (given / inverted) | smallest level ratio, "
             "right / wrong (given / inverted) |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        runs = r["runs"]
        cells = [f"{runs[k]['f1']:.3f} ({runs[k]['precision']:.3f} / {runs[k]['recall']:.3f})"
                 for k in ("given dark", "given auto", "inverted dark", "inverted auto")]
        ratio = " / ".join("–" if runs[k]["min_level_ratio"] is None
                           else f"{runs[k]['min_level_ratio']:.3f}"
                           for k in ("given auto", "inverted auto"))
        lines.append(f"| {name} ({r['n_micrographs']}) | " + " | ".join(cells) + " | "
                     f"{runs['given auto']['n_light']} / {runs['inverted auto']['n_light']} | "
                     f"{ratio} |")
    return "\n".join(lines) + ("\n\nF1 (P / R) of predict.py's picks; `auto` segments each "
                               "micrograph both ways and picks the polarity whose particle "
                               "peak level is higher.\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=DATA_DIR_HELP)
    parser.add_argument("--micrographs", choices=("test", "val", "all"), default="all")
    parser.add_argument("--ckpt", default="general",
                        help="checkpoint (default: the packaged general model)")
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--predict", nargs="*", default=[], metavar="KEY=VALUE",
                        help="further predict.py overrides for every run")
    add_output_options(parser, "polarity")
    args = parser.parse_args(argv)
    require_datasets(args.data_dir)
    before = load_average()
    results = {name: score_set(name, args.data_dir, args.micrographs, args.ckpt,
                               args.work_dir, args.predict) for name in args.datasets}
    record = {"micrographs": args.micrographs, "ckpt": args.ckpt, "predict": args.predict,
              "matching": "Hungarian, radius d/2, pooled, borders excluded",
              "load_before": before, "load_after": load_average(), "results": results}
    text = markdown(results)
    write_report(args.results_dir, args.out, record, text,
                 {"DATA_DIR": args.data_dir, "WORK": args.work_dir})
    print(text)
    return record


if __name__ == "__main__":
    main()
