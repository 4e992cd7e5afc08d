"""Does the dense CRF help? Networks × CRFs on synthetic micrographs at two SNRs and on real
EMPIAR-10017 micrographs.

    python benchmarks/crf_effect.py [--data-dir DIR] [--work-dir benchmarks/work/crf_effect]
                                    [--networks fcn deeplabv3 unet] [--snrs 0.1 0.03]
                                    [--n-test 4] [--test-size 1024] [--n-real-test 3]
                                    [--epochs 6] [--real-epochs 8] [--samples 640]
                                    [--rnn-epochs 3] [--feature-channels 3] [--threads N]
                                    [--json benchmarks/results/crf_effect.json]
                                    [--markdown benchmarks/results/crf_effect.md]

1. Networks (``train.py``; resumable: a finished run is reused, and so is a finished
   evaluation, ``<work>/<domain>/<network>/evaluation.json``: delete it to evaluate again). For each of ``--networks``
   (``conf/model/*.yaml``: FCN and DeepLabv3 with dilated ResNet-18 backbones, the smp U-Net)
   and each training domain — *synthetic* (on-the-fly simulated 128² crops, default simulator,
   SNR 0.1, ``--epochs`` × ``--samples``) and *EMPIAR-10017* (``data=folder`` on the
   CryoPPP micrographs and masks under ``--data-dir``, when present, 6 train / 1 validation /
   ``--n-real-test`` test micrographs, binned to 7.08 Å/px, the striped JPG border ignored; ``--real-epochs``) — a base network is
   trained, then CRF-as-RNN is fine-tuned on it with the network frozen (``crf=rnn
   model.finetune_from=BASE model.freeze_network=true``, lr 1e-2, ``--rnn-epochs``), once with
   the hand-set intensity feature (``rnn``) and once with ``--feature-channels`` learned
   feature channels replacing it (``rnn+feat``). The frozen network gives the same logits, so
   the rows of one network differ by the CRF only.
2. Test data at the networks' 7.08 Å/px: ``--n-test`` simulated ``--test-size``² micrographs at
   each of ``--snrs`` (seeds disjoint from training) for the synthetic-trained networks; the
   held-out EMPIAR-10017 micrographs (4096² at 1.77 Å/px Fourier-binned 4×; CryoPPP masks
   binned by area majority; true centres recovered from the disc masks by the picker's own
   extraction at the CryoPPP diameter, checked against the one CryoPPP CSV) for the
   real-trained ones, and for the synthetic-trained ones without CRF (the simulation-to-real
   gap, ``transfer_synthetic_to_real`` in the JSON).
3. CRFs on each network's whole-micrograph logits: ``none``; ``dense`` (pydensecrf,
   ``conf/crf/dense.yaml``); ``meanfield`` (ours, the same parameters); ``meanfield*`` (ours
   with ``bilateral_weight``, ``bilateral_sxy`` and ``spatial_weight`` chosen by a grid sweep
   on separate micrographs — two synthetic tuning micrographs at the first SNR, or the real
   validation micrograph — best pick F1, then pixel IoU); ``rnn`` and ``rnn+feat`` (the
   fine-tuned checkpoints, CRF per tile as in ``predict.py``).
4. Metrics pooled over each test set: pixel IoU and F1 of ``P(particle) ≥ 0.5``; picks of the
   picker's extraction at threshold 0.5, matched one-to-one within half a diameter:
   precision, recall, F1, and the average precision of those picks ranked by their score;
   the CRF's seconds per 1024² micrograph (this CPU).

Prints one table per network and test set; writes the JSON (with the sweeps) and a Markdown
table per training domain for the README.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from _common import DATA_DIR_HELP, DEFAULT_DATA_DIR, train_run, write_results  # noqa: E402

from cryoparticle.config import crf_params  # noqa: E402

REAL_PIXEL_SIZE_A = 1.77
REAL_DIAMETER_PX = 108.0          # CryoPPP's diameter for EMPIAR-10017 (pixels at 1.77 Å/px)
REAL_BORDER_PX = 96               # the striped padding of the CryoSegNet JPGs, full-size pixels
PICK_THRESHOLD = 0.5
SWEEP = {"bilateral_weight": [0.25, 0.5, 1.0, 3.0], "bilateral_sxy": [10.0, 20.0],
         "spatial_weight": [1.0, 3.0]}
VARIANTS = ["none", "dense", "meanfield", "meanfield*", "rnn", "rnn+feat"]


# ------------------------------------------------------------------------------- training




def train_domain(args: argparse.Namespace, work: Path, data: list[str], epochs: int,
                 rnn_epochs: int) -> dict[str, dict[str, Any]]:
    """Base network, CRF-as-RNN and CRF-as-RNN with learned features per network, trained
    into ``work/<network>/`` with the ``data`` overrides."""
    runs: dict[str, dict[str, Any]] = {}
    for net in args.networks:
        folder = work / net
        dirs = {k: folder / k for k in ("base", "rnn", "rnn_feat")}
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        common = [f"model={net}", f"seed={args.seed}", *data]
        base, _ = train_run(dirs["base"], [*common, f"trainer.max_epochs={epochs}"],
                            folder / "base.log")
        rnn_common = [*common, "crf=rnn", f"model.finetune_from={base}",
                      "model.freeze_network=true", "model.optimizer.lr=0.01",
                      f"trainer.max_epochs={rnn_epochs}"]
        rnn, _ = train_run(dirs["rnn"], rnn_common, folder / "rnn.log")
        feat, _ = train_run(dirs["rnn_feat"],
                            [*rnn_common, f"crf.feature_channels={args.feature_channels}"],
                            folder / "rnn_feat.log")
        runs[net] = {"base": base, "rnn": rnn, "rnn+feat": feat,
                     "train_s": {k: float((dirs[d] / "DONE").read_text()) for k, d in
                                 (("base", "base"), ("rnn", "rnn"), ("rnn+feat", "rnn_feat"))}}
    return runs


def real_folder(shared: Path, root: Path, n_val: int, n_test: int) -> dict[str, list[str]]:
    """``root/{train,val,test}/`` in the CryoPPP layout for ``data=folder``: the JPGs linked,
    the masks rewritten as PNG with the striped border labelled 255 (ignored); the last
    ``n_test`` micrographs (sorted by name) test, the ``n_val`` before them validate."""
    from cryoparticle.io.mrc import read_micrograph, write_mask_png

    source = shared / "empiar-10017"
    names = sorted(Path(p).stem for p in glob.glob(str(source / "micrographs" / "*.jpg")))
    if len(names) < n_val + n_test + 1:
        sys.exit(f"{source}: {len(names)} micrographs, need at least {n_val + n_test + 1}")
    splits = {"train": names[:len(names) - n_val - n_test],
              "val": names[len(names) - n_val - n_test:len(names) - n_test],
              "test": names[len(names) - n_test:]}
    for split, members in splits.items():
        for sub in ("micrographs", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for name in members:
            link = root / split / "micrographs" / f"{name}.jpg"
            if not link.exists():
                link.symlink_to((source / "micrographs" / f"{name}.jpg").resolve())
            mask_path = root / split / "masks" / f"{name}_mask.png"
            if not mask_path.exists():
                raw, _ = read_micrograph(source / "masks" / f"{name}_mask.jpg")
                mask = (raw > 127).astype(np.uint8)
                b = REAL_BORDER_PX
                mask[:b] = mask[-b:] = 255
                mask[:, :b] = mask[:, -b:] = 255
                write_mask_png(mask_path, mask)
    return splits


# ------------------------------------------------------------------------------ test data


def synthetic_set(snr: float, n: int, size: int, tag: int) -> list[dict[str, Any]]:
    from cryoparticle.config import simulator_config
    from cryoparticle.simulate.micrograph import MicrographSimulator

    sim = MicrographSimulator(simulator_config(overrides=[f"noise.snr={snr}"]))
    out = []
    for i in range(n):
        mic = sim.simulate((7_700, tag, i), size, name=f"snr{snr}_{i:02d}")
        out.append({"name": mic.name, "image": mic.image, "mask": mic.mask,
                    "truth": mic.particles,
                    "diameter_px": float(sim.particle_diameter_px), "border_px": 0})
    return out


def real_set(shared: Path, names: list[str], pixel_size_a: float
             ) -> tuple[list[dict[str, Any]], dict]:
    """EMPIAR-10017 JPGs ``names`` binned to the networks' pixel size, with CryoPPP truth."""
    from cryoparticle.data.preprocess import bin_mask, bin_to_pixel_size, standardise
    from cryoparticle.io.coords import read_cryoppp_csv
    from cryoparticle.io.mrc import read_micrograph
    from cryoparticle.picking.evaluate import precision_recall_f1
    from cryoparticle.picking.extract import extract_particles

    folder = shared / "empiar-10017"
    paths = [folder / "micrographs" / f"{name}.jpg" for name in names]
    out, check = [], {}
    for path in paths:
        name = Path(path).stem
        raw, _ = read_micrograph(path)
        image, factor = bin_to_pixel_size(raw, REAL_PIXEL_SIZE_A, pixel_size_a)
        truth_raw, _ = read_micrograph(folder / "masks" / f"{name}_mask.jpg")
        full = (truth_raw > 127).astype(np.uint8)
        b = REAL_BORDER_PX
        full[:b] = full[-b:] = 255
        full[:, :b] = full[:, -b:] = 255
        mask = bin_mask(full, image.shape)
        diameter = REAL_DIAMETER_PX / factor
        border = int(np.ceil(b / factor))
        # true centres: the discs of the mask, split where they touch (distance transform)
        truth = extract_particles((mask == 1).astype(np.float32), diameter, threshold=0.5,
                                  min_size_fraction=0.25, border_px=border, micrograph=name)
        csv = folder / "picks" / f"{name}.csv"
        if csv.is_file():  # how well the centres recovered from the mask match the CSV
            picks = read_cryoppp_csv(csv)
            picks = picks.assign(x=picks["x"] / factor, y=picks["y"] / factor, micrograph=name)
            inside = ((picks.x >= border) & (picks.y >= border) & (picks.x < image.shape[1] - border)
                      & (picks.y < image.shape[0] - border))
            check = {"micrograph": name, "csv_particles": int(inside.sum()),
                     **precision_recall_f1(truth, picks[inside], radius_px=diameter / 4)}
        out.append({"name": name, "image": standardise(image), "mask": mask,
                    "truth": truth, "diameter_px": diameter,
                    "border_px": border})
    return out, check


# ------------------------------------------------------------------------------ evaluation


def scores(probs: list[np.ndarray], data: list[dict[str, Any]]) -> dict[str, float]:
    """Pooled pixel and pick metrics of particle probability maps against their test set:
    pixels and picks at :data:`PICK_THRESHOLD`; AP of those picks ranked by their score."""
    import pandas as pd

    from cryoparticle.picking.evaluate import average_precision, pixel_metrics, precision_recall_f1
    from cryoparticle.picking.extract import extract_particles

    pred = np.concatenate([p.ravel() >= PICK_THRESHOLD for p in probs])
    true = np.concatenate([d["mask"].ravel() for d in data])
    pixel = pixel_metrics(pred.astype(np.uint8), true, ignore_index=255)
    picks = pd.concat([extract_particles(p, d["diameter_px"], threshold=PICK_THRESHOLD,
                                         border_px=d["border_px"], micrograph=d["name"])
                       for p, d in zip(probs, data)], ignore_index=True)
    truth = pd.concat([d["truth"] for d in data], ignore_index=True)
    radius = data[0]["diameter_px"] / 2
    prf = precision_recall_f1(picks, truth, radius)
    return {"pixel_iou": pixel["iou"], "pixel_f1": pixel["f1"], "precision": prf["precision"],
            "recall": prf["recall"], "pick_f1": prf["f1"],
            "ap": average_precision(picks, truth, radius)}


def network_logits(ckpt: Path, data: list[dict[str, Any]]) -> tuple[list[torch.Tensor], float]:
    from cryoparticle.models.segmenter import load_segmenter

    model = load_segmenter(ckpt).eval()
    out, start = [], time.perf_counter()
    with torch.inference_mode():
        for d in data:
            out.append(model.predict_logits(torch.from_numpy(d["image"])[None]).float())
    return out, (time.perf_counter() - start) / max(1, len(data))


def apply_crf(crf: Any, logits: list[torch.Tensor], data: list[dict[str, Any]]
              ) -> tuple[list[np.ndarray], float]:
    out, seconds = [], 0.0
    with torch.no_grad():
        for lg, d in zip(logits, data):
            image = torch.from_numpy(d["image"])[None, None]
            start = time.perf_counter()
            log_q = crf(lg[None], image)
            seconds += time.perf_counter() - start
            out.append(log_q[0, 1].exp().numpy())
    return out, seconds / max(1, len(data))


def sweep(logits: list[torch.Tensor], data: list[dict[str, Any]]) -> tuple[dict, list[dict]]:
    """Grid over the CRF parameters that matter, scored by pick F1 (then pixel IoU)."""
    from cryoparticle.crf.meanfield import MeanFieldCRF

    base = crf_params("meanfield")
    rows = []
    for values in itertools.product(*SWEEP.values()):
        params = {**base, **dict(zip(SWEEP, values))}
        probs, _ = apply_crf(MeanFieldCRF(**params), logits, data)
        rows.append({**dict(zip(SWEEP, values)), **scores(probs, data)})
    best = max(rows, key=lambda r: (r["pick_f1"], r["pixel_iou"]))
    return {k: best[k] for k in SWEEP}, rows


def evaluate_network(net: str, run: dict[str, Any], sets: dict[str, list[dict[str, Any]]],
                     tune: list[dict[str, Any]]) -> dict[str, Any]:
    """Every CRF variant of one network (trained as ``run``) on each test set; the
    ``meanfield*`` parameters swept on the ``tune`` micrographs."""
    from cryoparticle.crf.dense import DenseCRF
    from cryoparticle.crf.meanfield import MeanFieldCRF

    tune_logits, _ = network_logits(run["base"], tune)
    tuned, grid = sweep(tune_logits, tune)
    print(f"  {net}: tuned meanfield parameters {tuned}", flush=True)
    result: dict[str, Any] = {"checkpoints": {k: str(run[k]) for k in ("base", "rnn", "rnn+feat")},
                              "train_s": run["train_s"], "tuned": tuned, "sweep": grid, "sets": {}}
    for set_name, data in sets.items():
        logits, net_s = network_logits(run["base"], data)
        rows: dict[str, Any] = {}
        probs = [lg.softmax(0)[1].numpy() for lg in logits]
        rows["none"] = {**scores(probs, data), "crf_s": 0.0, "network_s": net_s}
        for name, crf in (("dense", DenseCRF(**crf_params("dense"))),
                          ("meanfield", MeanFieldCRF(**crf_params("meanfield"))),
                          ("meanfield*", MeanFieldCRF(**{**crf_params("meanfield"), **tuned}))):
            probs, crf_s = apply_crf(crf, logits, data)
            rows[name] = {**scores(probs, data), "crf_s": crf_s}
        for name in ("rnn", "rnn+feat"):
            rnn_logits, total_s = network_logits(run[name], data)
            probs = [lg.softmax(0)[1].numpy() for lg in rnn_logits]
            rows[name] = {**scores(probs, data), "crf_s": max(0.0, total_s - net_s)}
        result["sets"][set_name] = rows
        print_table(f"{net} — {set_name}", rows)
    return result


def cached(path: Path, compute: Any) -> Any:
    """``compute()``'s JSON result, stored at ``path`` and reused by a rerun."""
    if path.is_file():
        print(f"  reusing {path}", flush=True)
        return json.loads(path.read_text())
    result = compute()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, default=float))
    os.replace(tmp, path)
    return result


def transfer(run: dict[str, Any], data: list[dict[str, Any]]) -> dict[str, float]:
    """A synthetic-trained network, no CRF, on real micrographs (the simulation-to-real gap)."""
    logits, _ = network_logits(run["base"], data)
    return scores([lg.softmax(0)[1].numpy() for lg in logits], data)


# ---------------------------------------------------------------------------------- report


def print_table(title: str, rows: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}\n  {'CRF':<11}{'pix IoU':>8}{'pix F1':>8}{'P':>7}{'R':>7}{'F1':>7}"
          f"{'AP':>7}{'CRF s':>8}")
    for name, r in rows.items():
        print(f"  {name:<11}{r['pixel_iou']:8.3f}{r['pixel_f1']:8.3f}{r['precision']:7.3f}"
              f"{r['recall']:7.3f}{r['pick_f1']:7.3f}{r['ap']:7.3f}{r['crf_s']:8.2f}", flush=True)


def markdown(report: dict[str, Any]) -> str:
    """One Markdown table per training domain: rows network × CRF, columns per test set."""
    out = []
    for domain, networks in report["domains"].items():
        if not networks:
            continue
        sets = list(next(iter(networks.values()))["sets"])
        out.append(f"Trained on {domain} data:\n")
        out.append("| network | CRF | " + " | ".join(
            f"{s}: pixel IoU | pick F1 | AP" for s in sets) + " |")
        out.append("|" + "---|" * (2 + 3 * len(sets)))
        for net, res in networks.items():
            for variant in VARIANTS:
                cells = []
                for s in sets:
                    r = res["sets"][s][variant]
                    cells += [f"{r['pixel_iou']:.3f}", f"{r['pick_f1']:.3f}", f"{r['ap']:.3f}"]
                out.append(f"| {net} | {variant} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", "--shared", dest="data_dir", type=Path,
                        default=DEFAULT_DATA_DIR, help=DATA_DIR_HELP)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "benchmarks" / "work" / "crf_effect")
    parser.add_argument("--networks", nargs="+", default=["fcn", "deeplabv3", "unet"])
    parser.add_argument("--snrs", type=float, nargs="+", default=[0.1, 0.03])
    parser.add_argument("--n-test", type=int, default=4)
    parser.add_argument("--test-size", type=int, default=1024)
    parser.add_argument("--n-real-test", type=int, default=3,
                        help="held-out EMPIAR micrographs (1 more validates, the rest train)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--real-epochs", type=int, default=8)
    parser.add_argument("--samples", type=int, default=640)
    parser.add_argument("--rnn-epochs", type=int, default=3)
    parser.add_argument("--feature-channels", type=int, default=3)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (evaluation)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "crf_effect.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "benchmarks" / "results" / "crf_effect.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    from cryoparticle.config import simulator_config

    pixel_size_a = float(simulator_config().pixel_size_a)
    has_real = args.n_real_test > 0 and (args.data_dir / "empiar-10017" / "micrographs").is_dir()
    print("training on synthetic data (finished runs are reused):", flush=True)
    synthetic_runs = train_domain(args, work / "synthetic",
                                  [f"data.train_samples_per_epoch={args.samples}"],
                                  args.epochs, args.rnn_epochs)
    real_runs: dict[str, dict[str, Any]] = {}
    splits: dict[str, list[str]] = {}
    if has_real:
        splits = real_folder(args.data_dir, work / "real_data", 1, args.n_real_test)
        print(f"training on EMPIAR-10017 ({len(splits['train'])} train, 1 val, "
              f"{len(splits['test'])} test micrographs):", flush=True)
        real_runs = train_domain(
            args, work / "real",
            ["data=folder", f"data.root={work / 'real_data'}",
             f"data.micrograph_pixel_size_a={REAL_PIXEL_SIZE_A}", "data.crop_size=128",
             "data.batch_size=16", f"data.train_samples_per_epoch={args.samples}"],
            args.real_epochs, args.rnn_epochs)
    else:
        print(f"no real micrographs under {args.data_dir}: synthetic data only", flush=True)

    synthetic_sets = {f"synthetic SNR {snr:g}": synthetic_set(snr, args.n_test, args.test_size, k)
                      for k, snr in enumerate(args.snrs)}
    report: dict[str, Any] = {
        "benchmark": "crf_effect", "command": " ".join(["crf_effect.py", *(argv or sys.argv[1:])]),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "pick_threshold": PICK_THRESHOLD, "match_radius": "0.5 diameter",
        "ap": "of the picks at pick_threshold, ranked by score",
        "crf_dense": crf_params("dense"), "real_splits": splits, "domains": {}}
    test_sets = dict(synthetic_sets)
    tune = synthetic_set(args.snrs[0], 2, args.test_size, 99)
    report["domains"]["synthetic"] = {
        net: cached(work / "synthetic" / net / "evaluation.json",
                    lambda net=net: evaluate_network(net, synthetic_runs[net], synthetic_sets, tune))
        for net in args.networks}
    if has_real:
        real_test, _ = real_set(args.data_dir, splits["test"], pixel_size_a)
        real_val, _ = real_set(args.data_dir, splits["val"], pixel_size_a)
        checks = [real_set(args.data_dir, [Path(p).stem], pixel_size_a)[1] for p in
                  sorted(glob.glob(str(args.data_dir / "empiar-10017" / "picks" / "*.csv")))]
        report["real_truth_check"] = checks
        test_sets["EMPIAR-10017"] = real_test
        report["transfer_synthetic_to_real"] = {
            net: transfer(synthetic_runs[net], real_test) for net in args.networks}
        print("synthetic-trained networks on the real test micrographs:",
              report["transfer_synthetic_to_real"], flush=True)
        report["domains"]["EMPIAR-10017"] = {
            net: cached(work / "real" / net / "evaluation.json",
                        lambda net=net: evaluate_network(net, real_runs[net],
                                                         {"EMPIAR-10017": real_test}, real_val))
            for net in args.networks}
    report["test_sets"] = {k: {"micrographs": len(v),
                               "truth_particles": int(sum(len(d["truth"]) for d in v))}
                           for k, v in test_sets.items()}
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_results(args.json, report, {"DATA_DIR": args.data_dir, "WORK_DIR": work})
    args.markdown.write_text(markdown(report))
    print(f"\nwrote {args.json} and {args.markdown}")
    return report


if __name__ == "__main__":
    main()
