"""Simulate one default micrograph and write an overlay of its ground truth as a PNG.

    python benchmarks/overlay_example.py [--out benchmarks/results/simulated_overlay.png]
                                         [--size 1024] [--seed 0]

Left: the micrograph (default EMPIAR-10017-like config, 7.08 Å/px); right: the same with the
ground-truth mask (translucent red) and the particle centres from the table (cyan +).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from cryoparticle.config import simulator_config
from cryoparticle.simulate.micrograph import MicrographSimulator
from cryoparticle.viz import save_overlay_png


def micrograph_title(mic) -> str:
    """``name · defocus · SNR · particle count`` from a simulated micrograph's metadata."""
    meta = mic.metadata
    ctf = meta["ctf"]
    defocus_um = 0.5 * (ctf["defocus_u_a"] + ctf["defocus_v_a"]) / 1e4
    return (f"{mic.name}: {mic.image.shape[1]}×{mic.image.shape[0]} px at "
            f"{mic.pixel_size_a:g} Å/px · defocus {defocus_um:.2f} µm · "
            f"SNR {meta['snr']:g} · {meta['n_particles']} particles")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/simulated_overlay.png")
    p.add_argument("--size", type=int, default=1024, help="micrograph side in pixels")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    sim = MicrographSimulator(simulator_config())
    mic = sim.simulate(args.seed, args.size, name=f"sim_seed{args.seed}")
    title = micrograph_title(mic)
    save_overlay_png(args.out, mic.image, mic.mask, mic.particles, title)
    print(f"{args.out}: {title} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
