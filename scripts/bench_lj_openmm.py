"""Time OpenMM Langevin MD steps for LJ-n with the two ways of writing its force.

Side by side in one run: the CustomBondForce over all pairs that
``LennardJones.to_openmm`` uses now, against the CustomNonbondedForce (NoCutoff) it used
before. Both give the same energy (checked here). Prints microseconds per MD step.

    python scripts/bench_lj_openmm.py --platform Reference --steps 2000
"""

from __future__ import annotations

import argparse
import time

import openmm
import openmm.unit as u

import physsample as ps
from physsample.systems.units import REDUCED_TEMPERATURE


def nonbonded_variant(lj) -> openmm.System:
    system = openmm.System()
    force = openmm.CustomNonbondedForce("2*eps*(s6^2 - 2*s6) + kc*r^2; s6 = (rm/r)^6")
    force.setNonbondedMethod(openmm.CustomNonbondedForce.NoCutoff)
    for name, value in (("eps", lj.epsilon), ("rm", lj.r_m), ("kc", lj.harmonic / lj.n_particles)):
        force.addGlobalParameter(name, value)
    for _ in range(lj.n_particles):
        system.addParticle(1.0)
        force.addParticle([])
    system.addForce(force)
    return system


def time_md(system: openmm.System, positions, platform: str, steps: int) -> tuple[float, float]:
    integrator = openmm.LangevinMiddleIntegrator(
        REDUCED_TEMPERATURE * u.kelvin, 1.0 / u.picosecond, 0.005 * u.picoseconds
    )
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform))
    context.setPositions(positions)
    energy = context.getState(getEnergy=True).getPotentialEnergy()._value
    integrator.step(100)
    start = time.perf_counter()
    integrator.step(steps)
    context.getState(getEnergy=True)
    return 1e6 * (time.perf_counter() - start) / steps, energy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--platform", default="Reference")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--systems", nargs="+", default=["lj13", "lj55"])
    args = parser.parse_args()
    print(
        "| system | platform | CustomBondForce µs/step | CustomNonbondedForce µs/step | speed-up |"
    )
    print("| --- | --- | --- | --- | --- |")
    for name in args.systems:
        lj = ps.systems.get(name)
        bonded, positions = lj.to_openmm()
        t_new, e_new = time_md(bonded, positions, args.platform, args.steps)
        t_old, e_old = time_md(nonbonded_variant(lj), positions, args.platform, args.steps)
        assert abs(e_new - e_old) < 1e-6 * abs(e_old), (e_new, e_old)
        print(f"| {name} | {args.platform} | {t_new:.1f} | {t_old:.1f} | {t_old / t_new:.1f}x |")


if __name__ == "__main__":
    main()
