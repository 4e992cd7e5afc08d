"""Cross-validation of real-data pickers on the 10 shared EMPIAR-10017 micrographs.

    python benchmarks/real_data_cv.py [--data-dir ../shared/data] [--folds 5] [--only-folds 0 1]
                                      [--networks unet fcn deeplabv3] [--targets disc refined ring]
                                      [--epochs 12] [--samples 320] [--seed 12345]
                                      [--init scratch | --init NAME=CKPT] [--topaz TOPAZ]
                                      [--work-dir benchmarks/work/real_data_cv]
                                      [--json benchmarks/results/real_data_cv.json]
                                      [--markdown benchmarks/results/real_data_cv.md]
                                      [-- extra train.py overrides]

The micrographs, sorted by name, are cut into ``--folds`` folds (5: 2 test micrographs each).
For every fold, network and target, ``train.py experiment=empiar10017`` trains on the other
micrographs (the first of them after the test fold, cyclically, validates and calibrates the
picking threshold; the rest train) into ``<work>/<network>/<target>/fold<k>`` — a finished run
is reused. Targets: ``disc`` (CryoPPP discs), ``refined`` (particle-shaped inside each disc),
``ring`` (discs with a 2 px ignore ring), ``far`` (discs, background farther than one diameter
from every pick ignored).

Each best checkpoint picks its test micrographs as ``predict.py`` does (binned to the
checkpoint's pixel size, tiled network, :func:`~cryoparticle.picking.extract.extract_particles`)
at the threshold stored in the checkpoint. Truth: the micrograph's CryoPPP CSV where there is
one, else centres recovered from its disc mask (:func:`~cryoparticle.data.masks.centres_from_mask`,
99 % agreement with the CSV at this scale). Picks and truth on the striped border
(:mod:`cryoparticle.data.borders`) are excluded. Metrics, pooled over all test micrographs of
all folds (:mod:`cryoparticle.picking.evaluate`, match radius half a diameter): pick precision,
recall and F1 at the stored threshold; AP of the picks extracted at threshold 0.05 ranked by
score; pixel IoU of ``P ≥ 0.5`` against the disc masks (border ignored).

``--init NAME=CKPT`` fine-tunes every run from a checkpoint's network (``model.finetune_from``),
e.g. a simulation-only one (no real pixel seen: an honest start for a cross-validation on real
micrographs; the shipped general model has seen 8 of these 10); runs go to
``<work>/<NAME>/...``. ``--topaz`` adds Topaz's shipped general picker (``resnet16_u64``, run once
on all 10 micrographs as :mod:`real_transfer` runs it) scored on every fold's test micrographs
with the same truth, border and matching: at its default threshold 0, best F1 and AP in the JSON.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from _common import DATA_DIR_HELP, DEFAULT_DATA_DIR, train_run, write_results  # noqa: E402

TARGETS = {"disc": ["data.target.kind=disc", "data.target.ring_px=0"],
           "refined": ["data.target.kind=refined", "data.target.ring_px=0"],
           "ring": ["data.target.kind=disc", "data.target.ring_px=2"],
           "far": ["data.target.kind=disc", "data.target.ring_px=0",
                   "data.target.far_ignore_px=27"]}
AP_THRESHOLD = 0.05


def folds(names: list[str], n_folds: int) -> list[dict[str, list[str]]]:
    """Test folds of consecutive sorted names; validation: the next name after the fold."""
    if not 2 <= n_folds <= len(names) // 2:
        sys.exit(f"--folds must be in 2..{len(names) // 2} for {len(names)} micrographs")
    parts = np.array_split(np.arange(len(names)), n_folds)
    out = []
    for part in parts:
        test = [names[i] for i in part]
        val = [names[(int(part[-1]) + 1) % len(names)]]
        out.append({"test": test, "val": val,
                    "train": [n for n in names if n not in test and n not in val]})
    return out




def evaluate_fold(ckpt: Path, dataset_root: Path, test: list[str],
                  topaz: Any = None) -> dict[str, Any]:
    """Picks, truth and pixel counts of one checkpoint on its test micrographs; with ``topaz``
    (picks in pixels of the original micrographs, with scores), also Topaz's picks there in the
    same frame, border and truth (``"topaz"``); ``topaz`` is a ``pandas.DataFrame``."""
    import pandas as pd

    from cryoparticle.data.borders import drop_border_picks, BorderWidths
    from cryoparticle.data.cryoppp_module import CryoPPPDataModule
    from cryoparticle.models.segmenter import load_segmenter
    from cryoparticle.picking.extract import extract_particles

    model = load_segmenter(ckpt).eval()
    hp = model.hparams
    data = CryoPPPDataModule([{"root": dataset_root, "empiar_id": 10017}],
                             pixel_size_a=float(hp.pixel_size_a),
                             normalisation=hp.normalisation,   # as the checkpoint was trained
                             split={"test": test}, split_file=None)
    diameter = float(hp.particle_diameter_a) / float(hp.pixel_size_a)
    threshold = float(hp.picking_threshold)
    picks, low, truth, inter, union, peer = [], [], [], 0, 0, []
    for name in test:
        mic = data.load(f"empiar-10017/{name}", train=False)
        if topaz is not None:  # original → binned pixels, as the truth
            from PIL import Image

            with Image.open(mic.metadata["image_path"]) as original:
                scale = mic.image.shape[-1] / original.size[0]
            theirs = topaz[topaz["micrograph"] == name]
            theirs = theirs.assign(x=theirs["x"] * scale, y=theirs["y"] * scale)
            peer.append(drop_border_picks(theirs, mic.image.shape[-2:],
                                          BorderWidths(**mic.metadata["border_px"])))
        with torch.inference_mode():
            logits = model.predict_logits(torch.from_numpy(mic.image)[None])
        prob = logits.float().softmax(0)[1].numpy()
        widths = BorderWidths(**mic.metadata["border_px"])
        for out, t in ((picks, threshold), (low, AP_THRESHOLD)):
            found = extract_particles(prob, diameter, threshold=t, micrograph=name)
            out.append(drop_border_picks(found, prob.shape, widths))
        truth.append(drop_border_picks(mic.particles.assign(micrograph=name), prob.shape, widths))
        valid = mic.mask != 255
        pred, true = prob >= 0.5, mic.mask == 1
        inter += int((pred & true & valid).sum())
        union += int(((pred | true) & valid).sum())
    extra = {"topaz": pd.concat(peer, ignore_index=True)} if peer else {}
    return {**extra, "picks": pd.concat(picks, ignore_index=True),
            "low": pd.concat(low, ignore_index=True),
            "truth": pd.concat(truth, ignore_index=True), "intersection": inter, "union": union,
            "threshold": threshold, "diameter_px": diameter}


def pooled(results: list[dict[str, Any]]) -> dict[str, float]:
    import pandas as pd

    from cryoparticle.picking.evaluate import average_precision, precision_recall_f1

    picks = pd.concat([r["picks"] for r in results], ignore_index=True)
    low = pd.concat([r["low"] for r in results], ignore_index=True)
    truth = pd.concat([r["truth"] for r in results], ignore_index=True)
    radius = results[0]["diameter_px"] / 2
    prf = precision_recall_f1(picks, truth, radius)
    union = sum(r["union"] for r in results)
    return {"precision": prf["precision"], "recall": prf["recall"], "pick_f1": prf["f1"],
            "ap": average_precision(low, truth, radius),
            "pixel_iou": sum(r["intersection"] for r in results) / union if union else 0.0,
            "n_truth": int(len(truth)), "n_picks": int(len(picks)),
            "thresholds": [r["threshold"] for r in results]}


def pooled_topaz(results: list[dict[str, Any]]) -> dict[str, float]:
    """Topaz's picks pooled over the folds' test micrographs, scored as
    :func:`real_transfer.scores` scores it: at its default threshold 0, its best F1 over its
    scores, and the AP of every candidate."""
    import pandas as pd
    from real_transfer import scores

    every = pd.concat([r["topaz"] for r in results], ignore_index=True)
    truth = pd.concat([r["truth"] for r in results], ignore_index=True)
    s = scores(every, truth, results[0]["diameter_px"] / 2, 0.0)
    return {"precision": s["precision"], "recall": s["recall"], "pick_f1": s["f1"],
            "best_f1": s["best_f1"], "best_threshold": s["best_threshold"], "ap": s["ap"],
            "pixel_iou": float("nan"), "n_truth": int(s["n_truth"]), "n_picks": s["n_picks"],
            "thresholds": [0.0]}


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| picker | start | target | folds | pick P | pick R | pick F1 | AP | pixel IoU | "
             "train min/fold |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["metrics"]
        minutes = f"{np.mean(r['train_s']) / 60:.1f}" if r["train_s"] else "–"
        iou = "–" if np.isnan(m["pixel_iou"]) else f"{m['pixel_iou']:.3f}"
        lines.append(f"| {r['network']} | {r.get('init', 'scratch')} | {r['target']} | "
                     f"{len(r['folds'])} | {m['precision']:.3f} | {m['recall']:.3f} | "
                     f"**{m['pick_f1']:.3f}** | {m['ap']:.3f} | {iou} | {minutes} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", "--shared", dest="data_dir", type=Path,
                        default=DEFAULT_DATA_DIR, help=DATA_DIR_HELP)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only-folds", type=int, nargs="+", default=None)
    parser.add_argument("--networks", nargs="+", default=["unet"])
    parser.add_argument("--targets", nargs="+", default=["disc"], choices=sorted(TARGETS))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--samples", type=int, default=320)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--init", default="scratch", metavar="scratch|NAME=CKPT",
                        help="the networks' starting weights: scratch, or a checkpoint to "
                             "fine-tune (model.finetune_from), e.g. sim-only=PATH; it names "
                             "the runs' folder and the table's 'start' column")
    parser.add_argument("--topaz", type=Path, default=None,
                        help="the topaz executable (pip install topaz-em): its shipped general "
                             "picker on the same test micrographs, same truth and matching")
    parser.add_argument("--work-dir", type=Path,
                        default=ROOT / "benchmarks" / "work" / "real_data_cv")
    parser.add_argument("--json", type=Path,
                        default=ROOT / "benchmarks" / "results" / "real_data_cv.json")
    parser.add_argument("--markdown", type=Path,
                        default=ROOT / "benchmarks" / "results" / "real_data_cv.md")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides (after --)")
    args = parser.parse_args(argv)

    from cryoparticle.io.atomic import write_text_atomic

    dataset = (args.data_dir / "empiar-10017").resolve()
    names = sorted(p.stem for p in (dataset / "micrographs").glob("*.jpg"))
    if not names:
        sys.exit(f"{dataset}: no micrographs")
    all_folds = folds(names, args.folds)
    chosen = args.only_folds if args.only_folds is not None else list(range(args.folds))
    init, init_overrides = "scratch", []
    if args.init != "scratch":
        init, _, path = args.init.partition("=")
        if not path or not Path(path).is_file():
            sys.exit(f"--init {args.init}: expected NAME=CKPT of an existing checkpoint")
        init_overrides = [f"model.finetune_from={Path(path).resolve()}"]
    topaz = None
    if args.topaz is not None:  # once, on every micrograph (the folds' test sets cover them)
        from real_transfer import dataset_inputs, run_topaz

        from cryoparticle.io.coords import read_topaz

        inputs = dataset_inputs("EMPIAR-10017", args.data_dir, "all",
                                args.work_dir / "topaz" / "inputs")
        done = args.work_dir / "topaz" / "picks_all.txt"   # a rerun reuses Topaz's picks
        if done.is_file():
            topaz = read_topaz(done, inputs["diameter_px"])
        else:
            topaz, _ = run_topaz(args.topaz, inputs, args.work_dir / "topaz" / "picks")
            shutil.copyfile(args.work_dir / "topaz" / "picks" / "picks.txt", done)
    rows, peer = [], []
    for net in args.networks:
        for target in args.targets:
            results, seconds = [], []
            for k in chosen:
                fold = all_folds[k]
                run_dir = args.work_dir.resolve() / init / net / target / f"fold{k}"
                overrides = ["experiment=empiar10017", f"model={net}", f"seed={args.seed}",
                             f"data.datasets.0.root={dataset}",
                             f"data.split.test=[{','.join(fold['test'])}]",
                             f"data.split.val=[{','.join(fold['val'])}]",
                             f"trainer.max_epochs={args.epochs}",
                             f"data.train_samples_per_epoch={args.samples}",
                             *TARGETS[target], *init_overrides, *args.overrides]
                ckpt, train_s = train_run(run_dir, overrides)
                result = evaluate_fold(ckpt, dataset, fold["test"], topaz)
                results.append(result)
                seconds.append(train_s)
                print(f"  {net}/{target} fold {k}: {pooled([result])}", flush=True)
            metrics = pooled(results)
            if topaz is not None and not peer:
                peer.append({"network": "Topaz resnet16_u64 (shipped)", "init": "shipped",
                             "target": "–", "folds": chosen, "metrics": pooled_topaz(results),
                             "train_s": [], "splits": [all_folds[k] for k in chosen]})
            rows.append({"network": net, "init": init, "target": target, "folds": chosen,
                         "metrics": metrics,
                         "train_s": seconds,
                         "splits": [all_folds[k] for k in chosen]})
            print(f"{net}/{target}: {metrics}", flush=True)
    report = {"dataset": "EMPIAR-10017 (10 CryoSegNet JPGs, CryoPPP picks)",
              "n_folds": args.folds, "epochs": args.epochs, "samples": args.samples,
              "seed": args.seed, "init": args.init.partition("=")[0],
              "extra_overrides": args.overrides,
              "machine": {"cpu_count": __import__("os").cpu_count(),
                          "python": platform.python_version(), "torch": torch.__version__},
              "rows": rows + peer}
    write_results(args.json, report, {"DATA_DIR": args.data_dir, "WORK_DIR": args.work_dir})
    write_text_atomic(args.markdown, markdown(rows + peer))
    print(markdown(rows + peer))
    return report


if __name__ == "__main__":
    main()
