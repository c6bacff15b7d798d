"""Tests of the OpenMM bridge (OpenMMSystem) and of alanine dipeptide."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import mdtraj
import numpy as np
import openmm
import openmm.app
import openmm.unit as u
import pytest
import torch

import physsample.systems as systems
from physsample.errors import ConfigError, ShapeError, UserError
from physsample.systems.alanine_dipeptide import AlanineDipeptide
from physsample.systems.openmm_system import OpenMMSystem

PDB = Path(__file__).resolve().parents[2] / "systems" / "alanine_dipeptide" / "aldp.pdb"
KJ = u.kilojoule_per_mole
KJ_NM = u.kilojoule_per_mole / u.nanometer


def kt_at(kelvin: float) -> float:
    """kT in kJ/mol, computed here independently of physsample.systems.units."""
    return (u.MOLAR_GAS_CONSTANT_R * kelvin * u.kelvin).value_in_unit(KJ)


# -- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def aldp() -> AlanineDipeptide:
    return AlanineDipeptide(temperature=300.0, platform="Reference")


@pytest.fixture(scope="module")
def fresh_context():
    """A context built directly from openmmtools, independent of physsample."""
    from openmmtools.testsystems import AlanineDipeptideVacuum

    test = AlanineDipeptideVacuum(constraints=None)

    def make(platform: str) -> openmm.Context:
        integrator = openmm.VerletIntegrator(1.0 * u.femtosecond)
        return openmm.Context(test.system, integrator, openmm.Platform.getPlatformByName(platform))

    return make


def openmm_reference(context: openmm.Context, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Energies (batch,) in kJ/mol and forces (batch, 66) in kJ/(mol nm) from OpenMM."""
    energies, forces = [], []
    for row in x.double().numpy():
        context.setPositions(row.reshape(-1, 3) * u.nanometer)
        state = context.getState(getEnergy=True, getForces=True)
        energies.append(state.getPotentialEnergy().value_in_unit(KJ))
        forces.append(state.getForces(asNumpy=True).value_in_unit(KJ_NM).reshape(-1))
    return np.array(energies), np.array(forces)


def perturbed(system, n: int, scale: float = 0.01, seed: int = 0) -> torch.Tensor:
    """``n`` copies of the default positions plus Gaussian noise of ``scale`` nm, float64."""
    generator = torch.Generator().manual_seed(seed)
    x0 = system.default_positions()
    noise = torch.randn(n, system.dim, generator=generator, dtype=torch.float64)
    return x0 + scale * noise


def three_particle_chain(k: float = 500.0, r0: float = 0.15):
    """Particles 0-1-2 joined by two harmonic bonds; returns (system, openmm topology)."""
    system = openmm.System()
    bonds = openmm.HarmonicBondForce()
    for _ in range(3):
        system.addParticle(12.0)
    bonds.addBond(0, 1, r0, k)
    bonds.addBond(1, 2, r0, k)
    system.addForce(bonds)
    topology = openmm.app.Topology()
    residue = topology.addResidue("TRI", topology.addChain())
    for i in range(3):
        topology.addAtom(f"C{i}", openmm.app.element.carbon, residue)
    return system, topology


# -- alanine dipeptide against OpenMM ---------------------------------------------------
def test_aldp_energy_and_forces_match_openmm(aldp, fresh_context):
    x = torch.cat([aldp.default_positions()[None], perturbed(aldp, 4)])
    e_ref, f_ref = openmm_reference(fresh_context("Reference"), x)
    kt = kt_at(300.0)
    energy, force = aldp.energy(x), aldp.force(x)
    assert energy.dtype == torch.float64 and energy.shape == (5,)
    np.testing.assert_allclose(energy.numpy(), e_ref / kt, rtol=1e-5)
    np.testing.assert_allclose(force.numpy(), f_ref / kt, rtol=1e-5, atol=1e-6)
    e2, f2 = aldp.energy_and_force(x)
    np.testing.assert_array_equal(e2.numpy(), energy.numpy())
    np.testing.assert_array_equal(f2.numpy(), force.numpy())


def test_aldp_default_cpu_platform_matches_openmm(fresh_context):
    aldp_cpu = systems.get("aldp")
    x = torch.cat([aldp_cpu.default_positions()[None], perturbed(aldp_cpu, 2, seed=1)])
    e_ref, _ = openmm_reference(fresh_context(aldp_cpu.platform), x)
    np.testing.assert_allclose(aldp_cpu.energy(x).numpy(), e_ref / kt_at(300.0), rtol=1e-5)


def test_force_equals_autograd_gradient(aldp):
    x = perturbed(aldp, 3, seed=2).requires_grad_(True)
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    (grad,) = torch.autograd.grad((weights * aldp.energy(x)).sum(), x)
    expected = -weights[:, None] * aldp.force(x.detach())
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


def test_force_matches_central_finite_differences(aldp):
    x = perturbed(aldp, 1, seed=3)
    force = aldp.force(x)[0]
    h = 1e-5
    for i in (0, 13, 26, 40, 65):
        step = torch.zeros_like(x)
        step[0, i] = h
        fd = (aldp.energy(x + step) - aldp.energy(x - step)).item() / (2 * h)
        assert -fd == pytest.approx(force[i].item(), rel=1e-5, abs=1e-4), i


# -- batching, dtypes, autograd -------------------------------------------------------------
def test_batch_equals_single_evaluations(aldp):
    x = perturbed(aldp, 6, seed=4)
    batch = aldp.energy(x)
    single = torch.cat([aldp.energy(row[None]) for row in x])
    torch.testing.assert_close(batch, single, rtol=0, atol=0)
    assert aldp.energy(x[:0]).shape == (0,)


def test_float32_energy_and_gradient(aldp):
    x64 = perturbed(aldp, 3, seed=5)
    x32 = x64.float().requires_grad_(True)
    energy = aldp.energy(x32)
    assert energy.dtype == torch.float32 and energy.shape == (3,)
    (-energy.sum()).backward()
    assert x32.grad is not None and x32.grad.dtype == torch.float32
    reference = aldp.force(x32.detach().double())
    torch.testing.assert_close(x32.grad.double(), reference, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(
        energy.double(), aldp.energy(x32.detach().double()), rtol=1e-6, atol=0
    )


def test_no_graph_without_grad(aldp):
    x = perturbed(aldp, 2, seed=6)
    assert aldp.energy(x).grad_fn is None
    with torch.no_grad():
        assert aldp.energy(x.requires_grad_(True)).grad_fn is None
    assert aldp.force(x).grad_fn is None
    assert aldp.log_prob(x.detach()).shape == (2,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors(aldp):
    x = perturbed(aldp, 2, seed=7)
    xc = x.float().cuda().requires_grad_(True)
    energy = aldp.energy(xc)
    energy.sum().backward()
    assert energy.device == xc.device and xc.grad.device == xc.device
    torch.testing.assert_close(energy.cpu().double(), aldp.energy(x), rtol=1e-5, atol=0)


# -- a small system with a known energy -----------------------------------------------------
def test_harmonic_chain_energy_is_analytic():
    k, r0, kelvin = 500.0, 0.15, 250.0
    system, topology = three_particle_chain(k, r0)
    model = OpenMMSystem(system, topology, kelvin * u.kelvin, platform="Reference")
    assert (model.dim, model.n_particles, model.temperature) == (9, 3, kelvin)
    x = torch.randn(5, 9, generator=torch.Generator().manual_seed(8), dtype=torch.float64) * 0.2
    p = x.reshape(5, 3, 3)
    d01 = (p[:, 1] - p[:, 0]).norm(dim=-1)
    d12 = (p[:, 2] - p[:, 1]).norm(dim=-1)
    expected = 0.5 * k * ((d01 - r0) ** 2 + (d12 - r0) ** 2) / kt_at(kelvin)
    torch.testing.assert_close(model.energy(x), expected, rtol=1e-10, atol=1e-12)
    xg = x.clone().requires_grad_(True)
    p = xg.reshape(5, 3, 3)
    analytic = 0.5 * k * (((p[:, 1] - p[:, 0]).norm(dim=-1) - r0) ** 2) / kt_at(kelvin)
    analytic = analytic + 0.5 * k * (((p[:, 2] - p[:, 1]).norm(dim=-1) - r0) ** 2) / kt_at(kelvin)
    (grad,) = torch.autograd.grad(analytic.sum(), xg)
    torch.testing.assert_close(model.force(x), -grad, rtol=1e-10, atol=1e-10)


def test_constructor_copies_system_and_accepts_mdtraj_topology():
    system, topology = three_particle_chain()
    positions = np.array([[0.0, 0.0, 0.0], [0.15, 0.0, 0.0], [0.3, 0.0, 0.0]])
    md_topology = mdtraj.Topology.from_openmm(topology)
    model = OpenMMSystem(
        system, md_topology, 300.0, platform="Reference", name="chain", positions=positions
    )
    system.getForce(0).setBondParameters(0, 0, 1, 0.15, 1e6)  # must not reach the model
    assert model.energy(model.default_positions()[None]).item() == pytest.approx(0.0, abs=1e-12)
    assert model.topology().n_atoms == 3 and model.name == "chain"


def test_to_openmm_returns_a_copy_in_kj_per_mol(aldp):
    x = perturbed(aldp, 1, seed=9)
    omm_system, positions = aldp.to_openmm(x)
    assert positions.unit == u.nanometer and np.shape(positions) == (22, 3)
    context = openmm.Context(
        omm_system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    context.setPositions(positions)
    e_kj = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ)
    assert e_kj / aldp.kt == pytest.approx(aldp.energy(x).item(), rel=1e-10)
    omm_system.getForce(0).setBondParameters(0, 0, 1, 0.5, 1e6)
    assert aldp.energy(x).item() == pytest.approx(e_kj / aldp.kt, rel=1e-10)
    _, default = aldp.to_openmm()
    np.testing.assert_allclose(
        default.value_in_unit(u.nanometer).reshape(-1), aldp.default_positions()
    )


def test_nonfinite_openmm_energy_gives_inf_and_zero_force(aldp):
    x = aldp.default_positions()[None].repeat(2, 1)
    x[1, 30:33] = x[1, 0:3]  # two atoms on top of each other
    energy, force = aldp.energy_and_force(x)
    assert torch.isfinite(energy[0]) and energy[1] == float("inf")
    assert torch.all(force[1] == 0) and torch.isfinite(force[0]).all()


def test_unavailable_platform_falls_back_to_reference():
    system, topology = three_particle_chain()
    model = OpenMMSystem(system, topology, 300.0, platform="NoSuchPlatform")
    with pytest.warns(RuntimeWarning, match="NoSuchPlatform"):
        model.energy(torch.zeros(1, 9, dtype=torch.float64) + torch.arange(9.0).double())
    assert model.platform == "Reference"


# -- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [torch.zeros(66), torch.zeros(2, 65), torch.zeros(2, 66, dtype=torch.int64), np.zeros((2, 66))],
)
def test_bad_shapes_raise_shape_error(aldp, bad):
    with pytest.raises(ShapeError):
        aldp.energy(bad)
    with pytest.raises(ShapeError):
        aldp.force(bad)


def test_nonfinite_positions_raise_user_error(aldp):
    x = aldp.default_positions()[None].clone()
    x[0, 5] = float("nan")
    with pytest.raises(ShapeError, match="non-finite"):
        aldp.energy(x)
    with pytest.raises(UserError):
        aldp.force(x)


def test_constructor_and_to_openmm_errors(aldp):
    system, topology = three_particle_chain()
    with pytest.raises(ShapeError):
        OpenMMSystem(system, aldp.topology(), 300.0)
    with pytest.raises(ConfigError):
        OpenMMSystem(system, topology, -1.0)
    with pytest.raises(ConfigError, match="no stored positions"):
        OpenMMSystem(system, topology, 300.0).default_positions()
    with pytest.raises(ShapeError):
        aldp.to_openmm(torch.zeros(2, 66))


# -- copies ------------------------------------------------------------------------------------
def test_deepcopy_and_pickle_drop_the_context(aldp):
    x = perturbed(aldp, 2, seed=10)
    energy = aldp.energy(x)
    assert aldp._bridge._context is not None
    for clone in (copy.deepcopy(aldp), pickle.loads(pickle.dumps(aldp))):
        assert clone._bridge._context is None
        torch.testing.assert_close(clone.energy(x), energy, rtol=0, atol=0)
        assert clone._bridge._context is not aldp._bridge._context
    torch.testing.assert_close(aldp.energy(x), energy, rtol=0, atol=0)


# -- registry, topology, dihedrals ---------------------------------------------------------------
def test_registry_builds_aldp():
    system = systems.get("aldp", temperature=600.0, platform="Reference")
    assert isinstance(system, AlanineDipeptide) and system.name == "aldp"
    assert system.dim == 66 and system.topology().n_atoms == 22
    assert system.kt == pytest.approx(kt_at(600.0), rel=1e-12)


def test_dihedral_indices_and_values_match_mdtraj(aldp):
    x = torch.cat([aldp.default_positions()[None], perturbed(aldp, 3, scale=0.03, seed=11)])
    traj = mdtraj.Trajectory(x.numpy().reshape(-1, 22, 3), aldp.topology())
    phi_idx, phi = mdtraj.compute_phi(traj)
    psi_idx, psi = mdtraj.compute_psi(traj)
    assert aldp.phi_indices == tuple(phi_idx[0]) and aldp.psi_indices == tuple(psi_idx[0])
    angles = aldp.dihedrals(x)
    assert angles.shape == (4, 2) and angles.dtype == torch.float64
    expected = torch.as_tensor(np.concatenate([phi, psi], axis=1), dtype=torch.float64)
    torch.testing.assert_close(angles, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(aldp.dihedrals(x.numpy()), expected.numpy(), atol=1e-6)


def test_stored_pdb_matches_the_system(aldp):
    traj = mdtraj.load(str(PDB))
    assert traj.topology == aldp.topology() and traj.topology.n_bonds == 21
    np.testing.assert_allclose(traj.xyz[0].reshape(-1), aldp.default_positions(), atol=1e-4)
    wrapped = np.angle(np.exp(1j * (aldp.dihedrals(traj.xyz.reshape(1, -1)) - np.pi)))
    np.testing.assert_allclose(wrapped, 0.0, atol=1e-3)  # extended: phi = psi = 180 degrees
    phi = mdtraj.compute_phi(traj)[1][0, 0]
    assert np.cos(phi - aldp.dihedrals(traj.xyz.reshape(1, -1))[0, 0]) == pytest.approx(1.0)
