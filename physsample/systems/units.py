"""Reduced units shared by the particle systems and their OpenMM counterparts.

Energies are in units of kT. The OpenMM versions use eps = 1 kJ/mol, length unit
1 nm, mass 1 amu and the temperature T = 1 / k_B (about 120.272 K) at which
kT = 1 kJ/mol, so that an OpenMM energy in kJ/mol equals the reduced energy.
"""

from __future__ import annotations

import openmm.unit as u

__all__ = ["REDUCED_TEMPERATURE", "MOLAR_GAS_CONSTANT", "kt_kj_per_mol"]

#: k_B * N_A in kJ/(mol K), from OpenMM so that both sides use the same constant.
MOLAR_GAS_CONSTANT: float = u.MOLAR_GAS_CONSTANT_R.value_in_unit(u.kilojoule_per_mole / u.kelvin)

#: Temperature in kelvin at which kT = 1 kJ/mol.
REDUCED_TEMPERATURE: float = 1.0 / MOLAR_GAS_CONSTANT


def kt_kj_per_mol(temperature: float) -> float:
    """kT in kJ/mol at ``temperature`` kelvin."""
    return MOLAR_GAS_CONSTANT * temperature
