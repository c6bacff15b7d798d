"""Tests of the particle systems DW-4 and LJ-n: invariances, forces, OpenMM, reference data."""

from __future__ import annotations

import functools
from pathlib import Path

import mdtraj
import numpy as np
import openmm.unit as u
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import physsample as ps
from physsample.errors import ShapeError
from physsample.systems.dw4 import DoubleWell4
from physsample.systems.geometry import fcc_cluster, pair_distances, pair_indices
from physsample.systems.lennard_jones import LennardJones
from physsample.systems.openmm_io import make_context, positions_to_openmm

DATA = Path(__file__).resolve().parents[2] / "systems"
F64 = torch.float64
FAST = settings(max_examples=25, deadline=None)


@functools.cache
def system(name: str) -> ps.systems.ParticleSystem:
    return ps.systems.get(name)


@functools.cache
def reference(name: str) -> torch.Tensor:
    return torch.from_numpy(np.load(DATA / name / "reference_community.npy")).to(F64)


def perturbed(name: str, n: int, scale: float, seed: int) -> torch.Tensor:
    """``n`` configurations near the default minimum, float64, (n, dim)."""
    s = system(name)
    gen = torch.Generator().manual_seed(seed)
    return s.default_positions()[None] + scale * torch.randn(n, s.dim, generator=gen, dtype=F64)


def random_orthogonal(d: int, seed: int, reflect: bool) -> torch.Tensor:
    """A Haar-random rotation (times a reflection if ``reflect``), (d, d) float64."""
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=F64))
    q = q * torch.sign(torch.diagonal(r))
    if (torch.linalg.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q


def transform(name: str, x: torch.Tensor, q: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    p = system(name).as_particles(x)
    return (p @ q.T + shift).reshape(x.shape)


def virial(s: ps.systems.ParticleSystem, x: torch.Tensor) -> tuple[float, float]:
    """Mean of x . grad E(x) and its naive standard error std / sqrt(n)."""
    v = -(x * s.force(x)).sum(dim=-1)
    return v.mean().item(), v.std().item() / len(v) ** 0.5


# -- invariances -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dw4", "lj13"])
@FAST
@given(seed=st.integers(0, 2**31 - 1))
def test_permutation_invariance(name, seed):
    s = system(name)
    x = perturbed(name, 4, 0.2, seed)
    perm = torch.randperm(s.n_particles, generator=torch.Generator().manual_seed(seed))
    xp = s.as_particles(x)[:, perm].reshape(x.shape)
    torch.testing.assert_close(s.energy(xp), s.energy(x), rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("name", ["dw4", "lj13"])
@FAST
@given(seed=st.integers(0, 2**31 - 1), reflect=st.booleans())
def test_rotation_reflection_invariance(name, seed, reflect):
    s = system(name)
    x = perturbed(name, 4, 0.2, seed)
    q = random_orthogonal(s.spatial_dim, seed, reflect)
    xq = transform(name, x, q, torch.zeros(s.spatial_dim, dtype=F64))
    torch.testing.assert_close(s.energy(xq), s.energy(x), rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("name", ["dw4", "lj13"])
@FAST
@given(seed=st.integers(0, 2**31 - 1), shift=st.lists(st.floats(-50, 50), min_size=3, max_size=3))
def test_translation_invariance(name, seed, shift):
    s = system(name)
    x = perturbed(name, 4, 0.2, seed)
    t = torch.tensor(shift[: s.spatial_dim], dtype=F64)
    xt = transform(name, x, torch.eye(s.spatial_dim, dtype=F64), t)
    torch.testing.assert_close(s.energy(xt), s.energy(x), rtol=1e-9, atol=1e-8)


def test_invariance_test_detects_a_broken_energy():
    # A deliberately non-invariant energy must fail the same comparison.
    s = system("lj13")
    x = perturbed("lj13", 4, 0.2, 0)
    xt = transform("lj13", x, torch.eye(3, dtype=F64), torch.tensor([1.0, 0.0, 0.0], dtype=F64))
    with pytest.raises(AssertionError):
        torch.testing.assert_close(s.energy(xt) + xt.sum(-1), s.energy(x) + x.sum(-1))


# -- energies, forces and geometry -------------------------------------------------


def test_conventions_at_hand_made_configurations():
    dw4 = DoubleWell4()
    x = torch.tensor([[0.0, 0.0, 4.0, 0.0, 0.0, 4.0, 4.0, 4.0]], dtype=F64)  # square, side 4
    u_diag = 4.0 * 2**0.5 - 4.0
    expected = 2 * (0.9 * u_diag**4 - 4 * u_diag**2)  # the four sides contribute 0
    torch.testing.assert_close(dw4.energy(x), torch.tensor([expected], dtype=F64))

    lj = LennardJones(2)
    x = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]], dtype=F64)  # d = r_m
    # 2 eps (1 - 2) + 0.5 * (0.5^2 + 0.5^2)
    torch.testing.assert_close(lj.energy(x), torch.tensor([-2.0 + 0.25], dtype=F64))


@pytest.mark.parametrize("name", ["dw4", "lj13", "lj55"])
def test_force_matches_central_finite_differences(name):
    s = system(name)
    x = perturbed(name, 2, 0.05, 1)
    h = 1e-6
    for xi, fi in zip(x, s.force(x), strict=True):
        steps = h * torch.eye(s.dim, dtype=F64)
        fd = -(s.energy(xi + steps) - s.energy(xi - steps)) / (2 * h)
        torch.testing.assert_close(fd, fi, rtol=1e-6, atol=1e-6 * fi.abs().max().item())


@pytest.mark.parametrize("name", ["dw4", "lj13", "lj55"])
def test_default_positions_are_a_com_free_minimum(name):
    s = system(name)
    x = s.default_positions()
    assert x.shape == (s.dim,) and x.dtype == F64
    torch.testing.assert_close(
        s.as_particles(x[None]).mean(dim=1), torch.zeros(1, s.spatial_dim, dtype=F64)
    )
    assert s.force(x[None]).abs().max() < 1e-4
    assert torch.equal(x, s.default_positions())  # deterministic


def test_default_positions_known_minima():
    assert system("dw4").energy(system("dw4").default_positions()[None]).item() == pytest.approx(
        -25.7922, abs=1e-4
    )
    # LJ-13: the icosahedron, 12 centre-vertex and 30 edge contacts
    d = pair_distances(system("lj13").default_positions()[None], 13, 3)
    assert int((d < 1.2).sum()) == 42


def test_pair_distances_match_cdist_and_have_finite_gradients():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 7 * 3, generator=gen, dtype=F64, requires_grad=True)
    d = pair_distances(x, 7, 3)
    i, j = pair_indices(7)
    p = x.detach().reshape(5, 7, 3)
    torch.testing.assert_close(d.detach(), torch.cdist(p, p)[:, i, j])
    (grad,) = torch.autograd.grad(d.sum(), x)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize(("n", "shells"), [(13, [1, 12]), (55, [1, 12, 6, 24, 12])])
def test_fcc_cluster_closed_shells(n, shells):
    c = torch.from_numpy(fcc_cluster(n, nearest_neighbour=1.0))
    assert c.shape == (n, 3) and c.mean(dim=0).abs().max() < 1e-12
    assert pair_distances(c.reshape(1, -1), n, 3).min().item() == pytest.approx(1.0)
    _, counts = torch.unique(c.norm(dim=1).round(decimals=6), return_counts=True)
    assert counts.tolist() == shells  # radii 0, 1, sqrt 2, sqrt 3, 2


@pytest.mark.parametrize("name", ["dw4", "lj13"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_is_kept(name, dtype):
    s = system(name)
    x = perturbed(name, 3, 0.05, 3)
    e = s.energy(x.to(dtype))
    assert e.dtype == dtype and e.shape == (3,)
    assert s.force(x.to(dtype)).dtype == dtype
    torch.testing.assert_close(e.double(), s.energy(x), rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["dw4", "lj13"])
def test_cuda_matches_cpu(name):
    s = ps.systems.get(name).to("cuda")
    x = perturbed(name, 3, 0.05, 4)
    assert s.default_positions().device.type == "cuda"
    torch.testing.assert_close(s.energy(x.cuda()).cpu(), system(name).energy(x))
    torch.testing.assert_close(s.force(x.cuda()).cpu(), system(name).force(x))


# -- OpenMM counterpart ------------------------------------------------------------


def openmm_energy_and_forces(name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenMM energies (n,) in kJ/mol and forces (n, n_particles, 3) in kJ/mol/nm."""
    s = system(name)
    omm_system, _ = s.to_openmm()
    context = make_context(omm_system, "Reference")
    energies, forces = [], []
    for xi in x:
        context.setPositions(positions_to_openmm(xi, s.n_particles, s.spatial_dim))
        state = context.getState(getEnergy=True, getForces=True)
        energies.append(state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole))
        forces.append(
            state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)
        )
    return torch.tensor(energies, dtype=F64), torch.from_numpy(np.stack(forces)).to(F64)


def openmm_test_configurations(name: str) -> torch.Tensor:
    x = perturbed(name, 4, 0.05, 5)
    if name in ("dw4", "lj13"):
        x = torch.cat([x, reference(name)[::2500]])
    return x


@pytest.mark.parametrize("name", ["dw4", "lj13", "lj55"])
def test_openmm_energy_and_forces_match_torch(name):
    s = system(name)
    x = openmm_test_configurations(name)
    e_omm, f_omm = openmm_energy_and_forces(name, x)
    torch.testing.assert_close(e_omm, s.energy(x), rtol=1e-5, atol=0.0)
    f = s.as_particles(s.force(x))
    if s.spatial_dim == 2:  # embedded at z = 0: no force out of the plane
        assert f_omm[..., 2].abs().max() == 0.0
        f_omm = f_omm[..., :2]
    scale = f.abs().amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(f_omm / scale, f / scale, rtol=0.0, atol=1e-5)


@pytest.mark.parametrize("name", ["dw4", "lj13", "lj55"])
def test_openmm_system_units_and_positions(name):
    s = system(name)
    omm_system, positions = s.to_openmm()
    assert s.temperature == pytest.approx(120.272, abs=1e-3)
    assert omm_system.getNumParticles() == s.n_particles
    assert all(
        omm_system.getParticleMass(i).value_in_unit(u.dalton) == 1.0 for i in range(s.n_particles)
    )
    xyz = positions.value_in_unit(u.nanometer)
    assert np.asarray(xyz).shape == (s.n_particles, 3)
    flat = np.asarray(xyz)[:, : s.spatial_dim].reshape(-1)
    np.testing.assert_allclose(flat, s.default_positions().numpy())


def test_dw4_openmm_energy_ignores_z():
    x = perturbed("dw4", 1, 0.05, 6)
    pos = positions_to_openmm(x, 4, 2).value_in_unit(u.nanometer)
    pos[:, 2] = [0.3, -1.0, 2.0, 0.0]
    context = make_context(system("dw4").to_openmm()[0])
    context.setPositions(pos * u.nanometer)
    e = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
    assert e == pytest.approx(system("dw4").energy(x).item(), rel=1e-10)


# -- community reference data ------------------------------------------------------


def test_lj13_reference_virial_is_equipartition():
    # <x . grad E> = number of degrees of freedom = 3 (N - 1) = 36 on the CoM-free
    # subspace. The set is MCMC output, so std / sqrt(n) assumes independent samples;
    # block averages give the same 0.59, i.e. the frames are effectively uncorrelated.
    x = reference("lj13")
    mean, se = virial(system("lj13"), x)
    assert abs(mean - 36.0) < 4 * se, (mean, se)
    # The convention without the factor 2 (bgflow's) is rejected by the same test.
    wrong_mean, wrong_se = virial(LennardJones(13, epsilon=0.5), x)
    assert abs(wrong_mean - 36.0) > 4 * wrong_se, (wrong_mean, wrong_se)


def test_dw4_reference_energy_and_virial():
    s = system("dw4")
    x = reference("dw4")
    x0 = s.remove_com(x)  # the set is not CoM-free; the energy does not care
    torch.testing.assert_close(s.energy(x0), s.energy(x), rtol=1e-9, atol=1e-8)
    assert s.energy(x0).mean().item() == pytest.approx(-22.45, abs=0.1)
    # <x . grad E> = 2 (N - 1) = 6. MCMC output; naive standard error 0.36, the
    # observed mean 5.34 is 1.8 standard errors low; we allow 4 as for LJ-13.
    mean, se = virial(s, x0)
    assert abs(mean - 6.0) < 4 * se, (mean, se)


# -- topology, CoM and shapes ------------------------------------------------------


@pytest.mark.parametrize("name", ["dw4", "lj13"])
def test_topology_round_trips_through_pdb(name, tmp_path):
    s = system(name)
    top = s.topology()
    assert isinstance(top, mdtraj.Topology) and top.n_atoms == s.n_particles
    x = s.default_positions()
    xyz = positions_to_openmm(x, s.n_particles, s.spatial_dim).value_in_unit(u.nanometer)
    traj = mdtraj.Trajectory(np.asarray(xyz, dtype=np.float32)[None], top)
    traj.save_pdb(str(tmp_path / f"{name}.pdb"))
    back = mdtraj.load(str(tmp_path / f"{name}.pdb"))
    assert back.n_atoms == s.n_particles
    assert [a.name for a in back.topology.atoms] == [a.name for a in top.atoms]
    np.testing.assert_allclose(back.xyz, traj.xyz, atol=1e-4)  # PDB keeps 0.001 Angstrom
    if s.spatial_dim == 2:
        assert np.all(back.xyz[..., 2] == 0.0)


@pytest.mark.parametrize(("name", "expected"), [("dw4", 6), ("lj13", 36), ("lj55", 162)])
def test_remove_com_and_com_free_dim(name, expected):
    s = system(name)
    assert s.com_free_dim == expected
    x = perturbed(name, 3, 1.0, 7) + 5.0
    x0 = s.remove_com(x)
    torch.testing.assert_close(
        s.as_particles(x0).mean(dim=1), torch.zeros(3, s.spatial_dim, dtype=F64)
    )
    torch.testing.assert_close(s.remove_com(x0), x0)
    torch.testing.assert_close(s.energy(x0), s.energy(x))


@pytest.mark.parametrize("name", ["dw4", "lj13"])
def test_bad_shapes_raise_shape_error(name):
    s = system(name)
    x = s.default_positions()
    for bad in (x, x[None, :-1], torch.zeros(2, s.dim, dtype=torch.long), x[None].numpy()):
        with pytest.raises(ShapeError):
            s.energy(bad)
    with pytest.raises(ShapeError):
        s.to_openmm(torch.cat([x, x]))
    with pytest.raises(ShapeError):
        pair_distances(x[None, :-1], s.n_particles, s.spatial_dim)


def test_registry_names_and_parameters():
    assert isinstance(ps.systems.get("dw4"), DoubleWell4)
    lj = ps.systems.get("lj7")
    assert isinstance(lj, LennardJones) and lj.n_particles == 7 and lj.name == "lj7"
    assert system("lj55").dim == 165 and system("lj13").log_z is None
