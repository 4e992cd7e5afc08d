"""Particle contrast of simulated and real micrographs: do the simulator's micrographs span the
real ones?

    python benchmarks/contrast_stats.py [--data ../shared/data] [--config general]
        [--override KEY=VALUE ...] [--n 200] [--size 512]
        [--json benchmarks/results/contrast_stats.json]
        [--montage benchmarks/results/simulated_general_montage.png]

The statistic: the mean of the pixels inside the particle discs minus the mean outside, in
units of the micrograph's standard deviation (negative = particles darker than the ice).
Contaminants (dark ice blobs, carbon) lie outside the discs and push the statistic up, so
simulated micrographs are also summarised without them.
Simulated micrographs (``--config``, ``--n`` of ``--size``², seeds ``(7, i)``) use discs of their
particles' diameters; the real sets in ``--data`` (default ``../shared/data`` relative to the
repository root; any subset of them may be missing):

* ``empiar-10017/``: 4096² denoised JPGs, masks ``*_mask.jpg`` (threshold 127), measured
  without the ~90 px striped border (and with it, the ``with_border`` column);
* ``empiar-10059/``, ``empiar-10947/``: 1024² raw-looking PNGs, masks ``*_mask.png`` at 256²
  (nearest-neighbour upsampled).

Prints a table of quantiles per source (and per simulated look) and writes the JSON; with
``--montage``, a PNG of simulated micrographs of different looks with their labels outlined,
above crops of the real sets at the simulator's scale.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from cryoparticle.config import simulator_config  # noqa: E402
from cryoparticle.data.masks import disc_mask  # noqa: E402
from cryoparticle.data.preprocess import fourier_bin  # noqa: E402
from cryoparticle.io.atomic import write_text_atomic  # noqa: E402
from cryoparticle.simulate.micrograph import MicrographSimulator  # noqa: E402

EMPIAR10017_BORDER_PX = 90
QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def contrast(image: np.ndarray, mask: np.ndarray) -> float:
    """(mean inside − mean outside) / std of the micrograph; NaN without both classes."""
    inside = mask.astype(bool)
    if inside.all() or not inside.any():
        return float("nan")
    x = np.asarray(image, dtype=np.float64)
    return float((x[inside].mean() - x[~inside].mean()) / x.std())


def _grey(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.float32)


def real_sets(data: Path) -> dict[str, list[dict[str, Any]]]:
    """Per real set: ``{name, contrast, with_border, particle_fraction}`` per micrograph."""
    out: dict[str, list[dict[str, Any]]] = {}
    folder = data / "empiar-10017"
    if (folder / "micrographs").is_dir():
        rows = []
        for path in sorted((folder / "micrographs").glob("*.jpg")):
            image = _grey(path)
            mask = _grey(folder / "masks" / f"{path.stem}_mask.jpg") > 127
            b = EMPIAR10017_BORDER_PX
            rows.append({"name": path.name, "contrast": contrast(image[b:-b, b:-b],
                                                                 mask[b:-b, b:-b]),
                         "with_border": contrast(image, mask),
                         "particle_fraction": float(mask.mean())})
        out["empiar-10017 (denoised JPG)"] = rows
    for name in ("empiar-10059", "empiar-10947"):
        folder = data / name
        if not (folder / "micrographs").is_dir():
            continue
        rows = []
        for path in sorted((folder / "micrographs").glob("*.png")):
            image = _grey(path)
            mask = _grey(folder / "masks" / f"{path.stem}_mask.png") > 127
            factor = image.shape[0] // mask.shape[0]
            mask = np.kron(mask, np.ones((factor, factor), dtype=bool))
            rows.append({"name": path.name, "contrast": contrast(image, mask),
                         "particle_fraction": float(mask.mean())})
        out[f"{name} (raw-looking PNG)"] = rows
    return out


def simulated(config: str, n: int, size: int, overrides: list[str] | None = None
              ) -> tuple[list[dict[str, Any]], list]:
    """Contrast of ``n`` simulated micrographs, with the look and parameters of each."""
    sim = MicrographSimulator(simulator_config(config, overrides))
    rows, micrographs = [], []
    for i in range(n):
        mic = sim.simulate((7, i), size, name=f"sim_{i:03d}")
        mask = disc_mask(mic.image.shape, mic.particles)
        meta = mic.metadata
        look = meta.get("look") or {}
        rows.append({"name": mic.name, "contrast": contrast(mic.image, mask),
                     "particle_fraction": float(mask.mean()), "snr": meta["snr"],
                     "species": meta.get("species"), "flipped": meta.get("contrast_flipped"),
                     "contaminated": bool(meta["carbon_edge"] or meta["n_contaminant_bodies"]),
                     "low_frequency_gain": meta.get("low_frequency_gain"),
                     "denoise": look.get("denoise", "none"),
                     "look_contrast": look.get("contrast", "none"),
                     "quantise": look.get("quantise", False),
                     "jpeg_quality": look.get("jpeg_quality")})
        if i < 64:
            micrographs.append(mic)
    return rows, micrographs


def summary(values: list[float]) -> dict[str, Any]:
    v = np.asarray([x for x in values if np.isfinite(x)])
    if not len(v):
        return {"n": 0}
    return {"n": int(len(v)), "mean": float(v.mean()),
            "quantiles": {f"p{round(q * 100)}": float(np.quantile(v, q)) for q in QUANTILES},
            "positive_fraction": float((v > 0).mean())}


def print_table(table: dict[str, dict[str, Any]]) -> None:
    header = f"{'source':42s} {'n':>4s} " + " ".join(f"{f'p{round(q * 100)}':>7s}"
                                                     for q in QUANTILES) + f" {'>0':>5s}"
    print(header)
    print("-" * len(header))
    for name, s in table.items():
        if not s.get("n"):
            continue
        q = " ".join(f"{v:+7.3f}" for v in s["quantiles"].values())
        print(f"{name:42s} {s['n']:4d} {q} {s['positive_fraction']:5.2f}")


# ----------------------------------------------------------------------------- montage


def _to_u8(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [0.5, 99.5])
    return (np.clip((image - lo) / max(hi - lo, 1e-12), 0, 1) * 255).astype(np.uint8)


def _tile(image: np.ndarray, mask: np.ndarray | None, caption: str
          ) -> tuple[Image.Image, str]:
    grey = _to_u8(image)
    rgb = np.stack([grey] * 3, -1)
    if mask is not None:
        m = mask.astype(bool)
        edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        rgb[edge] = (255, 200, 0)
    return Image.fromarray(rgb), caption


def montage(micrographs: list, data: Path, path: Path, size: int, pixel_size_a: float,
            columns: int = 4, tile: int = 256) -> None:
    """Simulated micrographs (different looks, label outlines) above real crops; each ``size``²
    crop is shown as a ``tile``² tile."""
    picked, seen = [], set()
    for mic in micrographs:  # one per (denoise, contrast, quantise) look first
        look = mic.metadata.get("look") or {}
        key = (look.get("denoise"), look.get("contrast"), look.get("quantise"))
        if key not in seen:
            seen.add(key)
            picked.append(mic)
    picked = (picked + [m for m in micrographs if m not in picked])[:2 * columns]
    tiles = []
    for mic in picked:
        look = mic.metadata.get("look") or {}
        caption = (f"{'+'.join(mic.metadata.get('species') or [])} snr {mic.metadata['snr']:.3f}"
                   f" {look.get('denoise')}/{look.get('contrast')}"
                   f"{'/8bit' if look.get('quantise') else ''}"
                   f"{'/jpeg' if look.get('jpeg_quality') else ''} x{look.get('upsample', 1)}")
        tiles.append(_tile(mic.image, mic.mask, caption))
    real = []
    jpgs = sorted((data / "empiar-10017" / "micrographs").glob("*.jpg"))[:2]
    for p in jpgs:  # 1.77 Å/px: binned to the simulator's pixel size
        image = fourier_bin(_grey(p), pixel_size_a / 1.77)
        b = int(EMPIAR10017_BORDER_PX * 1.77 / pixel_size_a) + 2
        real.append(_tile(image[b:b + size, b:b + size], None, f"real EMPIAR-10017 {p.stem[-12:]}"))
    for name in ("empiar-10059", "empiar-10947"):
        pngs = sorted((data / name / "micrographs").glob("*.png"))[:1]
        for p in pngs:
            image = _grey(p)
            real.append(_tile(image[:size, :size], None, f"real {name} (native px)"))
    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    rows += [real[i:i + columns] for i in range(0, len(real), columns)]
    canvas = Image.new("RGB", (columns * tile, len(rows) * tile), (0, 0, 0))
    for r, row in enumerate(rows):
        for c, (image, caption) in enumerate(row):
            small = image.resize((tile, tile), Image.Resampling.LANCZOS)
            ImageDraw.Draw(small).text((3, 3), caption, fill=(0, 255, 255))
            canvas.paste(small, (c * tile, r * tile))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", "--data-dir", dest="data", type=Path,
                        default=ROOT.parent / "shared" / "data",
                        help="folder with empiar-10017/, empiar-10059/, empiar-10947/ "
                             "(default: ../shared/data relative to the repository root)")
    parser.add_argument("--config", default="general", help="simulator config (conf/simulator)")
    parser.add_argument("--override", action="append", default=[],
                        help="simulator override, e.g. --override noise.snr=0.05 (repeatable)")
    parser.add_argument("--n", type=int, default=200, help="simulated micrographs")
    parser.add_argument("--size", type=int, default=512, help="simulated micrograph side (px)")
    parser.add_argument("--json", type=Path,
                        default=ROOT / "benchmarks" / "results" / "contrast_stats.json")
    parser.add_argument("--montage", type=Path, default=None,
                        help="write a PNG montage of simulated (and real) micrographs here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.time()
    rows, micrographs = simulated(args.config, args.n, args.size, args.override)
    sim_s = time.time() - start
    real = real_sets(args.data)
    table = {f"simulated {args.config}": summary([r["contrast"] for r in rows]),
             "  without contaminants": summary([r["contrast"] for r in rows
                                                if not r["contaminated"]]),
             "  with contaminants": summary([r["contrast"] for r in rows if r["contaminated"]])}
    for denoise in sorted({r["denoise"] for r in rows}):
        table[f"  look: denoise={denoise}"] = summary(
            [r["contrast"] for r in rows if r["denoise"] == denoise])
    for name, real_rows in real.items():
        table[name] = summary([r["contrast"] for r in real_rows])
        if any("with_border" in r for r in real_rows):
            table[f"{name} with border"] = summary([r["with_border"] for r in real_rows])
    print_table(table)
    result = {"statistic": "(mean inside particle discs - mean outside) / micrograph std",
              "config": args.config, "overrides": args.override, "n_simulated": args.n,
              "size": args.size,
              "simulate_s": sim_s, "summary": table, "simulated": rows, "real": real,
              "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.json, json.dumps(result, indent=1, default=float) + "\n")
    print(f"wrote {args.json}")
    if args.montage is not None:
        px = float(simulator_config(args.config).pixel_size_a)
        montage(micrographs, args.data, args.montage, args.size, px)
        print(f"wrote {args.montage}")


if __name__ == "__main__":
    main()
