"""Tests of the Samples container and its HDF5 file format."""

from __future__ import annotations

import math

import mdtraj
import numpy as np
import pytest
import torch

from physsample import Samples
from physsample.errors import ConfigError, ShapeError
from physsample.samples import SamplesFileError, TopologyError
from physsample.systems.base import ParticleSystem


class Springs(ParticleSystem):
    """Particles joined pairwise by unit springs; has the default particle topology."""

    name = "springs"

    def _energy(self, x):
        p = self.as_particles(x)
        d2 = ((p[:, :, None, :] - p[:, None, :, :]) ** 2).sum(-1)
        return 0.25 * d2.sum(dim=(1, 2))


def _samples(system, n=7, dtype=torch.float64, weighted=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, system.dim, generator=g, dtype=dtype)
    lw = torch.randn(n, generator=g, dtype=dtype) if weighted else None
    return Samples(x, lw, system, {"seed": seed, "settings": {"dt": 0.1, "tags": ["a", "b"]}})


@pytest.mark.parametrize("spatial_dim", [2, 3])
def test_particle_round_trip_and_mdtraj(tmp_path, spatial_dim):
    system = Springs(4, spatial_dim)
    s = _samples(system)
    path = s.save(tmp_path / "s.h5")
    back = Samples.load(path)
    assert torch.equal(back.x, s.x) and back.x.dtype == torch.float64
    assert torch.equal(back.log_weights, s.log_weights)
    assert back.system == "springs" and back.metadata == s.metadata
    traj = mdtraj.load(str(path))
    assert traj.n_frames == 7 and traj.n_atoms == 4
    xyz = s.x.numpy().reshape(7, 4, spatial_dim)
    np.testing.assert_allclose(traj.xyz[..., :spatial_dim], xyz, rtol=1e-6, atol=1e-6)
    if spatial_dim == 2:
        assert np.all(traj.xyz[..., 2] == 0)
    # the topology is read back, so the loaded samples convert and re-save alone
    assert back.to_mdtraj().n_atoms == 4
    np.testing.assert_array_equal(back.to_mdtraj().xyz, s.to_mdtraj(system).xyz)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_round_trip_without_topology_keeps_dtype(tmp_path, dtype):
    x = torch.randn(11, 2).to(dtype)
    s = Samples(x, system="gmm25", metadata={"w": [1.5, None]})
    back = Samples.load(s.save(tmp_path / "g.h5"))
    assert back.x.dtype == dtype and torch.equal(back.x, x)
    assert back.log_weights is None and back.system == "gmm25"
    assert back.metadata == s.metadata
    with pytest.raises(TopologyError):
        back.to_mdtraj()


def test_numpy_input_unnamed_and_empty(tmp_path):
    s = Samples(np.zeros((0, 3)), np.zeros(0))
    back = Samples.load(s.save(tmp_path / "e.h5"))
    assert back.x.shape == (0, 3) and back.system is None and back.log_weights.shape == (0,)


def test_metadata_is_normalised_to_json():
    s = Samples(torch.zeros(2, 1), metadata={"a": np.float32(0.5), "b": (1, 2), "c": np.arange(2)})
    assert s.metadata == {"a": 0.5, "b": [1, 2], "c": [0, 1]}
    with pytest.raises(ConfigError):
        Samples(torch.zeros(2, 1), metadata={"bad": object()})


def test_shape_errors():
    with pytest.raises(ShapeError):
        Samples(torch.zeros(3))
    with pytest.raises(ShapeError):
        Samples(torch.zeros(3, 2), torch.zeros(4))
    with pytest.raises(ShapeError):
        Samples(torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(ShapeError):  # 5 numbers do not fit 4 particles
        Samples(torch.zeros(3, 5), system=Springs(4, 2))


def test_failed_write_leaves_old_file_intact(tmp_path):
    system = Springs(3, 3)
    old = _samples(system, seed=1)
    path = old.save(tmp_path / "s.h5")
    new = _samples(system, n=50, seed=2)
    new.metadata["bad"] = object()  # fails after the trajectory and x are written
    with pytest.raises(TypeError):
        new.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]
    back = Samples.load(path)
    assert torch.equal(back.x, old.x) and back.metadata == old.metadata


def test_failed_first_write_leaves_nothing(tmp_path):
    s = Samples(torch.zeros(2, 2), metadata={})
    s.metadata["bad"] = object()
    with pytest.raises(TypeError):
        s.save(tmp_path / "s.h5")
    assert list(tmp_path.iterdir()) == []


def _assert_names_file(err, path):
    message = str(err.value)
    assert str(path) in message and "\n" not in message


def test_truncated_file(tmp_path):
    path = _samples(Springs(4, 3), n=200).save(tmp_path / "s.h5")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SamplesFileError) as err:
        Samples.load(path)
    _assert_names_file(err, path)


def test_not_hdf5_missing_and_foreign_files(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not an HDF5 file\n")
    with pytest.raises(SamplesFileError) as err:
        Samples.load(text)
    _assert_names_file(err, text)
    missing = tmp_path / "missing.h5"
    with pytest.raises(SamplesFileError) as err:
        Samples.load(missing)
    _assert_names_file(err, missing)
    foreign = tmp_path / "plain.h5"
    _samples(Springs(2, 3)).to_mdtraj().save_hdf5(str(foreign))
    with pytest.raises(SamplesFileError) as err:
        Samples.load(foreign)
    _assert_names_file(err, foreign)


def test_weights_ess_subset_concatenate():
    s = Samples(
        torch.arange(8.0).reshape(4, 2),
        torch.log(torch.tensor([1.0, 1.0, 2.0, 4.0])),
        system="toy",
        metadata={"k": 1},
    )
    torch.testing.assert_close(s.weights(), torch.tensor([0.125, 0.125, 0.25, 0.5]))
    assert math.isclose(s.ess(), 1 / (2 * 0.125**2 + 0.25**2 + 0.5**2))
    assert torch.equal(Samples(torch.zeros(4, 1)).weights(), torch.full((4,), 0.25))
    sub = s.subset([3, 0])
    assert torch.equal(sub.x, s.x[[3, 0]]) and sub.metadata == {"k": 1} and sub.system == "toy"
    assert len(s.subset(s.x[:, 0] > 1)) == 3 and len(s.subset(slice(1, None))) == 3
    both = Samples.concatenate([s, sub])
    assert len(both) == 6 and both.metadata == {"concatenated": [{"k": 1}, {"k": 1}]}
    with pytest.raises(ConfigError):
        Samples.concatenate([s, Samples(torch.zeros(1, 2), system="toy")])
    with pytest.raises(ConfigError):
        Samples.concatenate([s, Samples(torch.zeros(1, 2), torch.zeros(1), system="other")])


def test_resample_frequencies_within_standard_errors():
    p = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    s = Samples(torch.arange(3.0)[:, None], torch.log(p) + 7.0)
    n = 100_000
    out = s.resample(n, torch.Generator().manual_seed(0))
    assert out.log_weights is None and out.metadata["resampled"]["from_n"] == 3
    freq = torch.bincount(out.x[:, 0].long(), minlength=3).double() / n
    se = torch.sqrt(p * (1 - p) / n)
    assert torch.all((freq - p).abs() < 5 * se), (freq, p)


def test_particle_topology_survives_selection():
    s = _samples(Springs(3, 2))
    assert s.subset([0]).to_mdtraj().n_frames == 1
    assert s.resample(5, torch.Generator().manual_seed(0)).to_mdtraj().n_frames == 5
    assert Samples.concatenate([s, s]).to_mdtraj().n_frames == 14


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_samples_save(tmp_path):
    s = Samples(torch.randn(5, 4, device="cuda"), torch.zeros(5, device="cuda"), "x")
    back = Samples.load(s.save(tmp_path / "c.h5"))
    assert torch.equal(back.x, s.x.cpu()) and back.resample(3).x.device.type == "cpu"
