"""Build the atomic-model fixtures of ``tests/data/``: the Cα atoms of PDB 5A1A
(β-galactosidase tetramer, mmCIF) and PDB 6Z6U (apoferritin 24-mer, PDB format), gzipped
(≈ 80 KB each), from the full models given as arguments:

    python scripts/make_test_fixtures.py --beta-galactosidase 5a1a.cif --apoferritin 6z6u.pdb

The full models come from the PDB (https://www.rcsb.org/structure/5A1A, /6Z6U; CC0). With only
their Cα atoms the densities keep the proteins' size and shape at the 7 Å and 3.5 Å pixels the
tests use (β-galactosidase ≈ 196 Å across, apoferritin a ≈ 139 Å hollow shell).
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import gemmi

OUT = Path(__file__).resolve().parents[1] / "tests" / "data"


def ca_only(path: Path) -> gemmi.Structure:
    """The model in ``path`` with every atom but the Cα removed (waters, ligands too)."""
    structure = gemmi.read_structure(str(path))
    structure.setup_entities()
    structure.remove_ligands_and_waters()
    for model in structure:
        for chain in model:
            for residue in chain:
                for i in reversed(range(len(residue))):
                    if residue[i].name != "CA":
                        del residue[i]
    structure.remove_empty_chains()
    return structure


def write_gz(path: Path, text: str) -> None:
    path.write_bytes(gzip.compress(text.encode(), 9, mtime=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beta-galactosidase", type=Path, required=True,
                        help="PDB 5A1A, mmCIF")
    parser.add_argument("--apoferritin", type=Path, required=True, help="PDB 6Z6U, PDB format")
    args = parser.parse_args()
    write_gz(OUT / "5a1a_beta_galactosidase_ca.cif.gz",
             ca_only(args.beta_galactosidase).make_mmcif_document().as_string())
    write_gz(OUT / "6z6u_apoferritin_ca.pdb.gz", ca_only(args.apoferritin).make_minimal_pdb())
    print("written to tests/data/")


if __name__ == "__main__":
    main()
