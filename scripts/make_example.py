"""Build ``examples/``: a small real micrograph for the README's first command, and its truth.

    python scripts/make_example.py DATA/empiar-10017 [--name Falcon_2012_06_12-14_33_35_0]

``DATA/empiar-10017`` holds CryoSegNet's EMPIAR-10017 JPGs (``micrographs/NAME.jpg``, 4096²,
1.77 Å/px, a striped padding frame ~50–130 px wide) and CryoPPP's disc masks
(``masks/NAME_mask.jpg``, radius 54 px). The example is the central 2048² crop (well inside
the frame), Fourier-binned 2× to 1024² at 3.54 Å/px and stored as an 8-bit MRC with the pixel
size in its header (≈ 1 MB), so ``predict.py`` needs no pixel-size argument. The truth
(``examples/truth/empiar10017_example.csv``, CryoPPP columns; named like the micrograph so
``cryoparticle-evaluate`` matches them) comes from the mask by
:func:`cryoparticle.data.masks.centres_from_mask`, in the example's pixels (binned pixel ``i``
sits at crop pixel ``2 i``, the grid of :func:`~cryoparticle.data.preprocess.fourier_bin`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from cryoparticle.data.masks import centres_from_mask
from cryoparticle.data.preprocess import fourier_bin
from cryoparticle.io.coords import write_cryoppp_csv
from cryoparticle.io.mrc import write_mrc

OUT = Path(__file__).resolve().parents[1] / "examples"
PIXEL_SIZE_A = 1.77      # EMPIAR-10017 (CryoSegNet's JPGs)
DIAMETER_PX = 108        # CryoPPP's particle diameter at 1.77 Å/px
CROP = 2048              # central crop side (px of the JPG), inside the padding frame
BIN = 2                  # → 1024² at 3.54 Å/px


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the empiar-10017 folder")
    parser.add_argument("--name", default="Falcon_2012_06_12-14_33_35_0")
    args = parser.parse_args()
    image = np.asarray(Image.open(args.data / "micrographs" / f"{args.name}.jpg").convert("L"),
                       dtype=np.float32)
    mask = np.asarray(Image.open(args.data / "masks" / f"{args.name}_mask.jpg").convert("L")) > 127
    top = (image.shape[0] - CROP) // 2
    left = (image.shape[1] - CROP) // 2
    crop = image[top:top + CROP, left:left + CROP]
    binned = fourier_bin(crop, BIN)
    low, high = np.percentile(binned, [0.01, 99.99])
    quantised = np.round((np.clip(binned, low, high) - low) / (high - low) * 255 - 128)
    OUT.mkdir(exist_ok=True)
    write_mrc(OUT / "empiar10017_example.mrc", quantised.astype(np.int8), PIXEL_SIZE_A * BIN)
    # Centres on the whole mask (discs cut by the crop keep their true centre), then those
    # inside the crop, in the example's pixels.
    picks = centres_from_mask(mask.astype(np.uint8), DIAMETER_PX)
    picks["x"] -= left
    picks["y"] -= top
    inside = picks["x"].between(0, CROP - 1) & picks["y"].between(0, CROP - 1)
    picks = picks[inside].reset_index(drop=True)
    for column in ("x", "y", "diameter"):
        picks[column] = picks[column] / BIN
    picks["micrograph"] = "empiar10017_example"
    (OUT / "truth").mkdir(exist_ok=True)
    write_cryoppp_csv(OUT / "truth" / "empiar10017_example.csv", picks)
    print(f"{len(picks)} particles; {OUT / 'empiar10017_example.mrc'}")


if __name__ == "__main__":
    main()
