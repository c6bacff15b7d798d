"""The run report: known metrics on exact and importance-weighted samples, valid files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from physsample import Samples
from physsample.analysis.report import (
    default_states,
    pooled_pair_reference,
    write_report,
    write_text_atomic,
)
from physsample.errors import ConfigError
from physsample.pipeline import report_stage
from physsample.systems import get


def _check_outputs(folder, names):
    for name in names:
        image = imread(folder / name)  # decodes the whole PNG
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temp files


def _gaussian_proposal(system, n, scale, seed):
    """x ~ N(0, scale^2 I) with log w = -E(x) - log q(x): unbiased for Z and for Delta F."""
    gen = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(n, system.dim, generator=gen, dtype=torch.float64)
    norm = system.dim * math.log(scale * math.sqrt(2 * math.pi))
    log_q = -0.5 * (x / scale).square().sum(1) - norm
    return Samples(x, log_weights=-system.energy(x) - log_q, system=system)


def test_exact_samples_give_exact_metrics(tmp_path):
    system = get("mw5")
    x = system.sample_exact(4000, torch.Generator().manual_seed(0))
    samples = Samples(x, log_weights=torch.full((4000,), system.log_z), system=system)
    out = write_report(tmp_path, system, samples, n_eval=500)
    m, fe = out["metrics"], out["free_energy"]
    assert m["ess"] == pytest.approx(1.0) and m["delta_log_z"] < 1e-6
    assert m["emc"] > 0.95  # 32 modes, 4000 exact samples
    low, high = fe["delta_f_ci"]
    assert fe["reference_source"].startswith("exact") and low < fe["reference"] < high
    text = (tmp_path / "report.md").read_text()
    for key in ("Δlog Z", "ESS", "sinkhorn", "emc", "ΔF", "## Budget", "## Machine"):
        assert key in text
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"]["n_samples"] == 4000
    _check_outputs(tmp_path, ["energies.png", "free_energy.png", "samples_2d.png"])
    assert "![free_energy](free_energy.png)" in text


def test_importance_weighted_samples_recover_log_z_and_delta_f(tmp_path):
    # manywell2: one asymmetric double well in x[0] (exact Delta F) and a Gaussian x[1]
    system = get("manywell2")
    samples = _gaussian_proposal(system, 40_000, 1.5, seed=1)
    out = write_report(tmp_path, system, samples, n_eval=300)
    m, fe = out["metrics"], out["free_energy"]
    assert 0.05 < m["ess"] < 0.5
    assert m["log_z_ci"][0] < system.log_z < m["log_z_ci"][1]
    # the 95% interval covers the exact answer (seeded; the right well is lower)
    assert fe["delta_f_ci"][0] < fe["reference"] < fe["delta_f_ci"][1]
    assert fe["reference"] > 1.0
    # a proposal that misses the left well entirely must not match the answer
    right = samples.subset(samples.x[:, 0] > 0.5)
    with pytest.warns(UserWarning, match="no samples"):
        wrong = write_report(tmp_path / "wrong", system, right, n_eval=300)["free_energy"]
    assert not wrong["delta_f_ci"][0] < wrong["reference"] < wrong["delta_f_ci"][1]


def test_exact_delta_f_of_manywell_matches_exact_samples():
    system = get("manywell2")
    states = default_states(system)
    x = system.sample_exact(200_000, torch.Generator().manual_seed(3))
    p = float((x[:, 0] < 0).double().mean())
    se = math.sqrt(p * (1 - p) / len(x)) / (p * (1 - p))  # delta method on log(p / (1 - p))
    assert abs(-math.log(p / (1 - p)) - states.exact) < 4 * se


def test_pooled_pair_reference_agrees_with_one_pair():
    system = get("dw4")
    x = torch.from_numpy(np.load("systems/dw4/reference_community.npy")).double()
    states = default_states(system)
    pooled = pooled_pair_reference(states, x, 4, 2)
    a, _ = states.masks(x)
    one_pair = -math.log(a.mean() / (1 - a.mean()))
    assert pooled["reference_ci"][0] < pooled["reference"] < pooled["reference_ci"][1]
    assert abs(one_pair - pooled["reference"]) < 0.15  # 10k correlated samples, one pair


def test_report_stage_needs_samples(tmp_path):
    with pytest.raises(ConfigError, match="stage=sample"):
        report_stage(tmp_path, get("gmm25"))


def test_failed_write_leaves_no_file(tmp_path):
    write_text_atomic(tmp_path / "report.md", "old\n")
    with pytest.raises(TypeError):
        write_text_atomic(tmp_path / "report.md", 42)  # type: ignore[arg-type]
    assert (tmp_path / "report.md").read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


@pytest.mark.slow
def test_particle_report_against_the_community_set(tmp_path):
    system = get("dw4")
    md = Samples.load("systems/dw4/reference_md.h5")
    idx = torch.arange(0, len(md), 5)  # 2000 samples from all four replicas
    samples = Samples(md.x[idx], log_weights=torch.zeros(len(idx)), system=system)
    out = write_report(tmp_path, system, samples, n_eval=2000)
    m = out["metrics"]
    # two long MD sets of the same system: close to the published floor (ASBS 0.43)
    assert m["geometric_w2"] < 0.45 and m["energy_w2"] < 0.3 and m["distance_tv"] < 0.1
    _check_outputs(tmp_path, ["energies.png", "free_energy.png", "distances.png"])
