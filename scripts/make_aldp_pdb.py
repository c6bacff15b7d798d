"""Write the alanine-dipeptide topology and starting structure to a small PDB file.

Usage: ``python scripts/make_aldp_pdb.py [output.pdb]``
(default ``systems/alanine_dipeptide/aldp.pdb``). The structure is the one that
``physsample.systems.AlanineDipeptide`` uses, i.e. that of
``openmmtools.testsystems.AlanineDipeptideVacuum``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import mdtraj

from physsample.systems.alanine_dipeptide import AlanineDipeptide

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "systems/alanine_dipeptide/aldp.pdb"


def main(output: Path = DEFAULT_OUTPUT) -> None:
    """Save one frame of alanine dipeptide (positions in nm) as a PDB file."""
    aldp = AlanineDipeptide()
    xyz = aldp.default_positions().numpy().reshape(1, aldp.n_particles, 3)
    output.parent.mkdir(parents=True, exist_ok=True)
    mdtraj.Trajectory(xyz, aldp.topology()).save_pdb(str(output))
    print(f"wrote {output} ({aldp.n_particles} atoms)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT)
