"""Build the packaged default volume: β-galactosidase (PDB 5A1A) at 3.54 Å/voxel.

3.54 Å is twice the EMPIAR-10017 pixel size (1.77 Å), the same protein as those micrographs.
The map is the electrostatic-potential density of gemmi's electron scattering factors, low-passed
to Nyquist (2 × pixel size), centre of mass at voxel ``box // 2``, stored as float16 (MRC mode 12)
so the package stays small. Run from anywhere:

    python scripts/make_default_volume.py

The packaged apoferritin map (PDB 6Z6U, human apoferritin 24-mer, Yip et al. 2020, CC0; the
``apoferritin`` volume source) is made the same way:

    python scripts/make_default_volume.py --model ../shared/data/volumes/6z6u_apoferritin.pdb \
        --box 48 --out cryoparticle/data/volumes/apoferritin_6z6u.mrc
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryoparticle.errors import exit_on_input_error  # noqa: E402
from cryoparticle.io.mrc import write_mrc  # noqa: E402
from cryoparticle.simulate.volume import (  # noqa: E402
    DEFAULT_VOLUME_PIXEL_SIZE_A,
    density_from_atoms,
    volume_diameter_a,
)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path,
                        default=REPO.parent / "shared" / "data" / "volumes"
                        / "5a1a_beta_galactosidase.cif",
                        help="atomic model (PDB/mmCIF); default: ../shared/data/volumes/"
                             "5a1a_beta_galactosidase.cif relative to the repository root")
    parser.add_argument("--pixel-size-a", type=float, default=DEFAULT_VOLUME_PIXEL_SIZE_A)
    parser.add_argument("--box", type=int, default=64,
                        help="box in voxels (even); 64 × 3.54 Å = 227 Å holds the ~190 Å "
                             "tetramer in any orientation")
    parser.add_argument("--resolution-a", type=float, default=None,
                        help="low-pass resolution in Å (default: 2 × pixel size)")
    parser.add_argument("--float32", action="store_true", help="store float32 instead of float16")
    parser.add_argument("--out", type=Path,
                        default=REPO / "cryoparticle" / "data" / "volumes"
                        / "beta_galactosidase_5a1a.mrc")
    return parser.parse_args(argv)


@exit_on_input_error
def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    vol = density_from_atoms(args.model, args.pixel_size_a, args.box, args.resolution_a)
    data = vol if args.float32 else vol.astype(np.float16)
    write_mrc(args.out, data, args.pixel_size_a)
    args.out.chmod(0o644)  # package data must be world-readable (temporary files start as 0600)
    print(f"{args.out}: box {vol.shape[0]}, {args.pixel_size_a} Å/voxel, {data.dtype}, "
          f"{args.out.stat().st_size / 1e6:.2f} MB, diameter "
          f"{volume_diameter_a(vol, args.pixel_size_a):.1f} Å, "
          f"integral {vol.sum(dtype=np.float64) * args.pixel_size_a ** 3:.0f} Å")


if __name__ == "__main__":
    main()
