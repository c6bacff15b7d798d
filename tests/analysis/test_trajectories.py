"""Collective variables through mdtraj and resampling to unweighted sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import special_ortho_group

from physsample import Samples
from physsample.analysis import dihedrals, pair_distance, resample_unweighted, rmsd_to
from physsample.errors import ShapeError
from physsample.systems import get


def test_pair_distance_matches_numpy():
    dw4 = get("dw4")
    x = np.load("systems/dw4/reference_community.npy")[:200].astype(np.float64)
    samples = Samples(torch.from_numpy(x), system=dw4)
    p = x.reshape(-1, 4, 2)
    expected = np.linalg.norm(p[:, 1] - p[:, 3], axis=1)
    np.testing.assert_allclose(pair_distance(samples, None, 1, 3), expected, rtol=1e-5)
    np.testing.assert_allclose(pair_distance(samples, dw4, 3, 1), expected, rtol=1e-5)
    with pytest.raises(ShapeError):
        pair_distance(samples, dw4, 0, 4)


def test_rmsd_to_rotated_copy_is_zero():
    lj = get("lj13")
    ref = np.load("systems/lj13/reference_community.npy")[:3].astype(np.float64)
    q = special_ortho_group.rvs(3, random_state=0)
    moved = (ref.reshape(3, 13, 3) @ q + np.array([0.3, -1.0, 2.0])).reshape(3, -1)
    samples = Samples(torch.from_numpy(np.concatenate([moved, ref[1:]])), system=lj)
    rmsd = rmsd_to(samples, lj, ref[0])
    assert rmsd[0] < 1e-3  # mdtraj works in float32
    assert np.all(rmsd[1:] > 0.05)
    np.testing.assert_allclose(rmsd_to(samples, lj, torch.from_numpy(ref[0].reshape(13, 3))), rmsd)


def _dihedral(p0, p1, p2, p3):
    """Signed dihedral (IUPAC convention) from four points, in radians."""
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1 = b1 / np.linalg.norm(b1)
    v = b0 - np.dot(b0, b1) * b1
    w = b2 - np.dot(b2, b1) * b1
    return np.arctan2(np.dot(np.cross(b1, v), w), np.dot(v, w))


def test_alanine_dipeptide_dihedrals():
    aldp = get("aldp")
    x0 = aldp.default_positions().double().numpy()
    q = special_ortho_group.rvs(3, random_state=1)
    rotated = (x0.reshape(22, 3) @ q).ravel()
    samples = Samples(torch.from_numpy(np.stack([x0, rotated])), system=aldp)
    angles = dihedrals(samples)
    assert angles.shape == (2, 2)
    np.testing.assert_allclose(angles[0], angles[1], atol=1e-4)
    p = x0.reshape(22, 3)
    expected = [_dihedral(*p[list(idx)]) for idx in (aldp.phi_indices, aldp.psi_indices)]
    np.testing.assert_allclose(angles[0], expected, atol=1e-4)
    np.testing.assert_allclose(angles, aldp.dihedrals(samples.x).numpy(), atol=1e-6)


def test_resample_unweighted():
    x = torch.arange(10.0, dtype=torch.float64)[:, None]
    log_w = torch.full((10,), -50.0, dtype=torch.float64)
    log_w[7] = 0.0
    out = resample_unweighted(Samples(x, log_w), 500, seed=3)
    assert out.log_weights is None and len(out) == 500
    assert (out.x[:, 0] == 7.0).float().mean() > 0.99
    again = resample_unweighted(Samples(x, log_w), 500, seed=3)
    assert torch.equal(out.x, again.x)
    uniform = resample_unweighted(Samples(x), 2000, seed=0)
    counts = np.bincount(uniform.x[:, 0].numpy().astype(int), minlength=10)
    assert counts.min() > 120  # 200 expected per value, sd 13
