"""Time ASPIRE's ``MicrographSimulation`` (run by simulate_speed.py in ASPIRE's own venv).

    aspire_venv/bin/python benchmarks/_aspire_sim.py --volume vol.npy --ctf ctf.json \
        --pixel-size 1.77 --size 4096 --particles 300 --snr 0.1 --repeats 5

Prints one JSON object on the last line of stdout. Uses only numpy and ASPIRE (no cryoparticle).

Setting, as close to cryoparticle's as ASPIRE's API (0.14) allows:
- ``Volume(array, pixel_size=...)``: the same map, box and pixel size as our simulator;
- one ``CTFFilter`` per micrograph (``ctf_filters`` of length ``micrograph_count``) with the
  defocus U/V/angle, voltage, Cs and amplitude contrast of our micrographs; ASPIRE's envelope is
  ``exp(-B s²)`` with ``s`` in 1/nm, ours ``exp(-B k²/4)`` with ``k`` in 1/Å, so B_aspire = B/400;
- ``interparticle_distance`` = our minimum centre distance (px);
- white noise at the same SNR: ``MicrographSimulation`` does not calibrate noise to a signal
  (``WhiteNoiseAdder.from_snr`` needs the signal power up front), so the signal variance is
  measured once on the clean warm-up micrograph and ``WhiteNoiseAdder(var=signal_var / snr)``
  is attached before the timed calls (micrograph 0 is then drawn once more, with noise, as a
  second warm-up).
ASPIRE applies the CTF to each particle box (not to the whole micrograph) and has no
contaminants, ice gradient or labels; it places centres at construction time (all
micrographs), so the construction time is reported and amortised per micrograph.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--volume", required=True, help=".npy cubic float32 volume")
    p.add_argument("--ctf", required=True, help="JSON list of per-micrograph CTF dicts")
    p.add_argument("--pixel-size", type=float, required=True)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--particles", type=int, default=300)
    p.add_argument("--interparticle-distance", type=int, default=None)
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import numpy as np

    t_import = time.perf_counter()
    import aspire
    from aspire.noise import WhiteNoiseAdder
    from aspire.operators import CTFFilter
    from aspire.source import MicrographSimulation
    from aspire.volume import Volume
    t_import = time.perf_counter() - t_import

    with open(args.ctf) as f:
        ctfs = json.load(f)
    count = args.repeats + 1  # micrograph 0 is the warm-up
    if len(ctfs) < count:
        ctfs = (ctfs * count)[:count]
    filters = [CTFFilter(voltage=c["voltage_kv"], defocus_u=c["defocus_u_a"],
                         defocus_v=c["defocus_v_a"],
                         defocus_ang=math.radians(c["astigmatism_angle_deg"]), Cs=c["cs_mm"],
                         alpha=c["amplitude_contrast"], B=c["b_factor_a2"] / 400.0)
               for c in ctfs[:count]]

    t0 = time.perf_counter()
    vol = Volume(np.load(args.volume).astype(np.float32), pixel_size=args.pixel_size)
    src = MicrographSimulation(vol, micrograph_size=args.size, micrograph_count=count,
                               particles_per_micrograph=args.particles, ctf_filters=filters,
                               seed=args.seed,
                               interparticle_distance=args.interparticle_distance)
    construct_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    clean = src.clean_images[0].asnumpy()[0]
    warmup_s = time.perf_counter() - t0
    signal_var = float(np.var(clean))
    src.noise_adder = WhiteNoiseAdder(var=signal_var / args.snr, seed=args.seed)
    t0 = time.perf_counter()
    src.images[0].asnumpy()  # warm the noisy path too (its first call sets up the noise filter)
    warmup_noisy_s = time.perf_counter() - t0

    times = []
    for i in range(1, count):
        t0 = time.perf_counter()
        image = src.images[i].asnumpy()[0]
        times.append(time.perf_counter() - t0)
    assert image.shape == (args.size, args.size), image.shape
    median_s = float(np.median(times))
    per_micrograph_s = median_s + construct_s / count
    print(json.dumps({
        "aspire_version": aspire.__version__,
        "python": sys.version.split()[0],
        "size": args.size, "particles": args.particles, "box": int(vol.resolution),
        "pixel_size_a": args.pixel_size, "micrograph_count": count,
        "interparticle_distance_px": int(src.interparticle_distance),
        "import_s": t_import, "construct_s": construct_s, "warmup_s": warmup_s,
        "warmup_noisy_s": warmup_noisy_s,
        "times_s": times, "median_s": median_s,
        "per_micrograph_s": per_micrograph_s,
        "micrographs_per_s": 1.0 / per_micrograph_s,
        "micrographs_per_s_excl_construction": 1.0 / median_s,
        "signal_var": signal_var, "noise_var": signal_var / args.snr,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
