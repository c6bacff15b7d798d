"""Batched assignment and geometric distances up to rotation, reflection and relabelling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment
from scipy.stats import special_ortho_group

from physsample.analysis.alignment import align_pair, geometric_distance_matrix
from physsample.analysis.assignment import batched_assignment
from physsample.errors import ConfigError, ShapeError


def _assignment_cost(costs, perm):
    return np.take_along_axis(costs, perm[:, :, None], axis=2).sum(axis=(1, 2))


@pytest.mark.parametrize("n", [1, 2, 5, 13])
def test_batched_assignment_is_optimal(n):
    rng = np.random.default_rng(n)
    costs = rng.random((300, n, n))
    ties = rng.integers(0, 3, size=(300, n, n)).astype(float)  # many optimal assignments
    for c in (costs, ties):
        perm = batched_assignment(c)
        assert np.array_equal(np.sort(perm, axis=1), np.broadcast_to(np.arange(n), perm.shape))
        reference = np.array([linear_sum_assignment(m)[1] for m in c])
        np.testing.assert_allclose(_assignment_cost(c, perm), _assignment_cost(c, reference))


def test_batched_assignment_rejects_bad_input():
    with pytest.raises(ShapeError):
        batched_assignment(np.zeros((2, 3, 4)))
    with pytest.raises(ShapeError):
        batched_assignment(np.full((1, 2, 2), np.nan))


def _random_orthogonal(d, rng):
    q = special_ortho_group.rvs(d, random_state=rng) if d > 1 else np.eye(1)
    return q if rng.random() < 0.5 else q @ np.diag([-1.0] + [1.0] * (d - 1))


def _transformed_copy(x, n, d, rng):
    """Rotate, reflect (half the time), relabel and translate each configuration."""
    out = []
    for row in x.reshape(len(x), n, d):
        q = _random_orthogonal(d, rng)
        out.append(((row @ q)[rng.permutation(n)] + rng.normal(scale=3.0, size=d)).ravel())
    return np.array(out)


@pytest.mark.parametrize(("n", "d"), [(4, 2), (4, 3), (5, 2), (13, 3), (7, 3)])
def test_transformed_copy_has_zero_distance(n, d):
    rng = np.random.default_rng(10 * n + d)
    x = rng.normal(size=(6, n * d))
    y = _transformed_copy(x, n, d, rng)
    dist = geometric_distance_matrix(x, torch.from_numpy(y), n, d)
    scale = np.linalg.norm(x, axis=1).mean()
    assert np.abs(np.diag(dist)).max() < 1e-9 * scale
    off = dist[~np.eye(6, dtype=bool)]
    assert off.min() > 0.05 * scale


def _exact_bruteforce(x, y, n, d):
    """Independent exact minimum: every permutation, orthogonal Procrustes by SVD."""
    x = x.reshape(n, d) - x.reshape(n, d).mean(0)
    y = y.reshape(n, d) - y.reshape(n, d).mean(0)
    best = np.inf
    for p in itertools.permutations(range(n)):
        s = np.linalg.svd(y[list(p)].T @ x, compute_uv=False)
        best = min(best, (x**2).sum() + (y**2).sum() - 2 * s.sum())
    return np.sqrt(max(best, 0.0))


@pytest.mark.parametrize(("n", "d"), [(3, 2), (4, 2), (4, 3)])
def test_exact_search_matches_bruteforce(n, d):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(5, n * d)), rng.normal(size=(4, n * d))
    dist = geometric_distance_matrix(x, y, n, d)
    expected = np.array([[_exact_bruteforce(a, b, n, d) for b in y] for a in x])
    np.testing.assert_allclose(dist, expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(geometric_distance_matrix(y, x, n, d), dist.T, rtol=1e-9)


def test_search_is_an_upper_bound_and_beats_single_pass():
    rng = np.random.default_rng(4)
    n, d = 6, 2  # small enough for the exact search as reference
    x, y = rng.normal(size=(20, n * d)), rng.normal(size=(20, n * d))
    exact = geometric_distance_matrix(x, y, n, d, exact_up_to=6)
    search = geometric_distance_matrix(x, y, n, d)
    single = geometric_distance_matrix(x, y, n, d, search="single_pass")
    assert np.all(search >= exact - 1e-9)
    assert np.all(single >= exact - 1e-9)
    assert search.mean() <= single.mean()
    assert np.mean(search - exact < 1e-9) > 0.8  # the heuristic finds most exact minima


def test_align_pair_returns_the_transformation():
    rng = np.random.default_rng(5)
    n, d = 13, 3
    x, y = rng.normal(size=n * d), rng.normal(size=n * d)
    dist, perm, rot = align_pair(x, y, n, d)
    xc = x.reshape(n, d) - x.reshape(n, d).mean(0)
    yc = y.reshape(n, d) - y.reshape(n, d).mean(0)
    np.testing.assert_allclose(np.linalg.norm(xc - yc[perm] @ rot), dist, rtol=1e-10)
    np.testing.assert_allclose(rot @ rot.T, np.eye(d), atol=1e-10)
    assert sorted(perm) == list(range(n))
    assert dist == pytest.approx(geometric_distance_matrix(x[None], y[None], n, d)[0, 0])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), scale=st.floats(1e-3, 1e3))
def test_distance_invariances(seed, scale):
    """D(Qx P + t, y) = D(x, y), D scales linearly, and D(x, y) = D(y, x) (exact case)."""
    rng = np.random.default_rng(seed)
    n, d = 4, 3
    x, y = scale * rng.normal(size=(1, n * d)), scale * rng.normal(size=(1, n * d))
    base = geometric_distance_matrix(x, y, n, d)[0, 0]
    moved = geometric_distance_matrix(_transformed_copy(x, n, d, rng), y, n, d)[0, 0]
    assert moved == pytest.approx(base, rel=1e-8, abs=1e-10 * scale)
    assert geometric_distance_matrix(y, x, n, d)[0, 0] == pytest.approx(base, rel=1e-8)
    doubled = geometric_distance_matrix(2 * x, 2 * y, n, d)[0, 0]
    assert doubled == pytest.approx(2 * base, rel=1e-8)


def test_degenerate_configurations():
    n, d = 5, 3
    collinear = np.zeros((1, n, d))
    collinear[0, :, 0] = np.arange(n)
    flipped = collinear.copy()
    flipped[0, :, 0] *= -1
    dist = geometric_distance_matrix(collinear.reshape(1, -1), flipped.reshape(1, -1), n, d)
    assert dist[0, 0] < 1e-6
    zeros = np.zeros((1, n * d))
    assert geometric_distance_matrix(zeros, zeros, n, d)[0, 0] == 0.0


def test_input_checks():
    with pytest.raises(ShapeError):
        geometric_distance_matrix(np.zeros((2, 7)), np.zeros((2, 7)), 4, 2)
    with pytest.raises(ShapeError):
        geometric_distance_matrix(np.zeros((2, 4)), np.zeros((2, 4)), 4, 1)
    with pytest.raises(ConfigError):
        geometric_distance_matrix(np.zeros((2, 8)), np.zeros((2, 8)), 4, 2, search="fast")
    assert geometric_distance_matrix(np.zeros((0, 8)), np.zeros((2, 8)), 4, 2).shape == (0, 2)
