"""MALA and HMC against targets with exact answers, with standard-error tolerances.

Standard errors of MCMC means are sqrt(var * tau / N), with tau the integrated
autocorrelation time of the same series estimated from the chains; checks fail beyond
5 standard errors.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import physsample as ps
from physsample.errors import ConfigError
from physsample.mcmc import hmc, integrated_autocorr_time, mala
from physsample.systems.base import ParticleSystem, System

N_SE = 5.0


class Gaussian(System):
    """N(mean, cov) in float64 buffers, cast to the input dtype."""

    name = "gaussian"

    def __init__(self, mean, cov):
        super().__init__(len(mean))
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64))
        self.register_buffer("precision", torch.linalg.inv(torch.as_tensor(cov).double()))

    def _energy(self, x):
        d = x - self.mean.to(x.dtype)
        return 0.5 * ((d @ self.precision.to(x.dtype)) * d).sum(dim=1)


class TruncatedGaussian(System):
    """N(0, 1) restricted to |x| < 1: energy +inf outside, so proposals there are rejected."""

    name = "truncated"

    def __init__(self):
        super().__init__(1)

    def _energy(self, x):
        return torch.where(x.abs() < 1, 0.5 * x * x, math.inf).sum(dim=1)


class Springs(ParticleSystem):
    """Unit springs between all pairs: a quadratic form, positive on the CoM-free subspace."""

    name = "springs"

    def _energy(self, x):
        p = self.as_particles(x)
        d2 = ((p[:, :, None, :] - p[:, None, :, :]) ** 2).sum(-1)
        return 0.25 * d2.sum(dim=(1, 2))


MEAN = np.array([1.0, -2.0, 0.5])
COV = np.array([[1.0, 0.9, 0.0], [0.9, 1.0, 0.3], [0.0, 0.3, 4.0]])


def chains(samples) -> np.ndarray:
    """(n_chains, n_per_chain, dim) view of chain-major samples."""
    m = samples.metadata
    return samples.x.double().cpu().numpy().reshape(m["n_chains"], m["n_per_chain"], -1)


def assert_mean(series: np.ndarray, expected: float, what: str, extra_var: float = 0.0):
    """Mean of (chains, T) ``series`` equals ``expected`` within N_SE standard errors."""
    tau = max(integrated_autocorr_time(series), 1.0)
    se = math.sqrt(series.var() * tau / series.size + extra_var)
    assert abs(series.mean() - expected) < N_SE * se, (what, series.mean(), expected, se)


def assert_gaussian_moments(samples, mean=MEAN, cov=COV):
    x = chains(samples)
    for i in range(len(mean)):
        assert_mean(x[..., i], mean[i], f"mean {i}")
        for j in range(i, len(mean)):
            assert_mean((x[..., i] - mean[i]) * (x[..., j] - mean[j]), cov[i, j], f"cov {i}{j}")


def start(n_chains: int, dim: int, seed: int, scale: float = 1.0, dtype=torch.float64):
    return scale * torch.randn(
        n_chains, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype
    )


@pytest.fixture(scope="module")
def gaussian():
    return Gaussian(MEAN, COV)


@pytest.fixture(scope="module")
def mala_gaussian(gaussian):
    return mala(gaussian, start(16, 3, 0), n_steps=3000, n_warmup=1000, seed=1)


@pytest.fixture(scope="module")
def hmc_gaussian(gaussian):
    return hmc(gaussian, start(16, 3, 0), n_steps=600, n_warmup=300, n_leapfrog=5, seed=1)


def test_mala_gaussian_moments(mala_gaussian):
    assert_gaussian_moments(mala_gaussian)


def test_hmc_gaussian_moments(hmc_gaussian):
    assert_gaussian_moments(hmc_gaussian)


@pytest.mark.parametrize("name, target", [("mala_gaussian", 0.574), ("hmc_gaussian", 0.65)])
def test_acceptance_near_target_and_metadata(request, gaussian, name, target):
    out = request.getfixturevalue(name)
    m = out.metadata
    assert abs(m["acceptance"]["mean"] - target) < 0.1
    assert abs(m["warmup_acceptance"] - target) < 0.1
    assert len(m["acceptance"]["per_chain"]) == len(m["step_size"]["final"]) == 16
    assert m["energy_split_rhat"] < 1.05 and m["energy_ess"] > 100
    assert m["energy_autocorr_time_steps"] == m["energy_autocorr_time"] * m["settings"]["thin"]
    # the exact mean energy of a 3-D Gaussian is 3/2
    assert_mean(gaussian.energy(out.x).numpy().reshape(16, -1), 1.5, "energy")
    json.dumps(m)


def test_evaluation_count_thinning_and_chain_major_layout(gaussian):
    x0 = torch.tensor([[0.0, 0.0, 0.0], [50.0, 50.0, 50.0]])
    # a negligible step size: every chain stays at its start, so rows show the layout
    out = mala(gaussian, x0, n_steps=10, step_size=1e-12, n_warmup=0, thin=3, seed=0)
    assert out.x.shape == (6, 3) and out.metadata["n_per_chain"] == 3
    torch.testing.assert_close(out.x, x0.repeat_interleave(3, dim=0))
    assert out.metadata["energy_evaluations"] == 2 * (1 + 10)
    out = hmc(gaussian, x0, n_steps=4, n_warmup=2, n_leapfrog=3, seed=0)
    assert out.metadata["energy_evaluations"] == 2 * (1 + 3 * (11 + 2 + 4))  # 11 trial sizes
    assert out.x.dtype == torch.float32 and out.system == "gaussian"


def test_same_seed_same_result(gaussian):
    x0 = start(4, 3, 2)
    a, b, c = (mala(gaussian, x0, n_steps=50, seed=s) for s in (3, 3, 4))
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    g = torch.Generator().manual_seed(3)
    assert torch.equal(hmc(gaussian, x0, 20, generator=g).x, hmc(gaussian, x0, 20, seed=3).x)


def test_float32_runs_in_float32(gaussian):
    out = hmc(gaussian, start(8, 3, 5, dtype=torch.float32), n_steps=200, n_leapfrog=5, seed=0)
    assert out.x.dtype == torch.float32 and torch.isfinite(out.x).all()
    assert abs(out.metadata["acceptance"]["mean"] - 0.65) < 0.15


def test_infinite_energy_is_rejected():
    # var of N(0, 1) truncated to (-1, 1) is 1 - 2 phi(1) / (2 Phi(1) - 1)
    phi1 = math.exp(-0.5) / math.sqrt(2 * math.pi)
    var = 1 - 2 * phi1 / math.erf(1 / math.sqrt(2))
    out = mala(TruncatedGaussian(), torch.zeros(16, 1, dtype=torch.float64), n_steps=2000, seed=0)
    x = chains(out)[..., 0]
    assert np.all(np.abs(x) < 1)
    assert_mean(x * x, var, "second moment")


@pytest.mark.parametrize("sampler", [mala, hmc])
def test_particle_system_com_free_equipartition(sampler):
    # any positive quadratic form on the (n - 1) * d CoM-free dimensions has <E> = dof / 2
    system = Springs(4, 3)
    x0 = start(16, 12, 6) + 5.0  # off-centre: the sampler centres the chains
    kwargs = {"n_leapfrog": 5} if sampler is hmc else {}
    out = sampler(system, x0, n_steps=600 if sampler is hmc else 2000, seed=0, **kwargs)
    com = system.as_particles(out.x).mean(dim=1)
    assert com.abs().max() < 1e-12
    energy = system.energy(out.x).numpy().reshape(16, -1)
    assert_mean(energy, system.com_free_dim / 2, "energy")
    assert out.to_mdtraj().n_atoms == 4


def test_bad_inputs(gaussian):
    with pytest.raises(ConfigError):
        mala(gaussian, torch.zeros(2, 3), n_steps=0)
    with pytest.raises(ConfigError):
        mala(gaussian, torch.zeros(2, 3), n_steps=10, target_accept=1.5)
    with pytest.raises(ConfigError):
        mala(TruncatedGaussian(), torch.full((2, 1), 3.0), n_steps=10)
    with pytest.raises(ConfigError):
        hmc(gaussian, torch.zeros(2, 3), n_steps=10, n_leapfrog=0)


# -- synthetic targets --------------------------------------------------------------------
def exact_energy_moments(system, n=200_000):
    e = system.energy(system.sample_exact(n, torch.Generator().manual_seed(0)))
    return float(e.mean()), float(e.var()) / n


@pytest.mark.parametrize("sampler", [mala, hmc])
def test_mw5_hops_from_one_mode(sampler):
    # delta = 1.5: barriers of 2.25 kT, so chains started in ONE of the 32 modes hop;
    # each mode must then hold 1/32 of the mass and the energy its exact mean
    system = ps.systems.get("mw5", delta=1.5)
    x0 = system.modes[:1].repeat(32, 1)
    if sampler is mala:
        out = mala(system, x0, n_steps=3000, n_warmup=1000, seed=0)
    else:
        out = hmc(system, x0, n_steps=600, n_warmup=300, n_leapfrog=8, seed=0)
    x = chains(out)
    signs = x[..., : system.n_wells] > 0
    for i in range(system.n_wells):
        assert_mean(signs[..., i].astype(float), 0.5, f"P(x_{i} > 0)")
    mode = (signs * (2 ** np.arange(system.n_wells))).sum(-1)
    for k in range(2**system.n_wells):
        assert_mean((mode == k).astype(float), 1 / 2**system.n_wells, f"mode {k}")
    mean, var = exact_energy_moments(system)
    assert_mean(-system.log_prob(out.x).numpy().reshape(32, -1), mean, "energy", var)
    assert abs(out.metadata["acceptance"]["mean"] - out.metadata["settings"]["target_accept"]) < 0.1


def test_gmm25_from_every_mode():
    # no hopping between modes 5 apart with variance 0.3: each chain samples its own
    # mode, whose energy distribution and covariance the exact sampler gives
    system = ps.systems.get("gmm25")
    modes = system.modes
    out = mala(system, modes.repeat_interleave(2, dim=0), n_steps=1500, seed=0)
    x = chains(out)
    own = modes.numpy().repeat(2, axis=0)[:, None, :]
    nearest = np.linalg.norm(x[:, :, None, :] - modes.numpy()[None, None], axis=-1).argmin(-1)
    assert np.all(nearest == np.arange(50)[:, None] // 2)
    for i in range(2):
        for j in range(i, 2):
            d = (x[..., i] - own[..., i]) * (x[..., j] - own[..., j])
            assert_mean(d, 0.3 if i == j else 0.0, f"within-mode cov {i}{j}")
    mean, var = exact_energy_moments(system)
    assert_mean(-system.log_prob(out.x).numpy().reshape(50, -1), mean, "energy", var)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("sampler", [mala, hmc])
def test_cuda(gaussian, sampler):
    system = Gaussian(MEAN, COV).to("cuda")
    out = sampler(system, start(256, 3, 0).cuda(), n_steps=400, seed=0)
    assert out.x.device.type == "cuda"
    assert_gaussian_moments(out)


def test_progress_bar_and_file_round_trip(gaussian, tmp_path, capsys):
    out = hmc(gaussian, start(4, 3, 7), n_steps=20, n_leapfrog=2, seed=0, progress=True)
    assert "hmc" in capsys.readouterr().err
    back = ps.Samples.load(out.save(tmp_path / "hmc.h5"))
    assert torch.equal(back.x, out.x) and back.metadata == out.metadata
