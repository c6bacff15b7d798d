"""Every plot writes a non-empty PNG atomically and returns its path."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from physsample import Samples
from physsample.analysis import (
    free_energy_profile,
    plot_distance_histograms,
    plot_energy_histograms,
    plot_free_energy_profile,
    plot_ramachandran,
    plot_samples_2d,
    plot_training_curves,
)
from physsample.analysis.plots import save_figure
from physsample.errors import ShapeError
from physsample.systems import get

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path, folder):
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp files


def test_histogram_plots(tmp_path):
    rng = np.random.default_rng(0)
    e = rng.normal(size=2000)
    path = plot_energy_histograms(tmp_path / "e.png", e, e + 0.3, rng.normal(size=2000))
    _check_png(path, tmp_path)
    e[0] = np.inf  # a diverged sample does not break the plot
    _check_png(plot_energy_histograms(tmp_path / "e2.png", torch.from_numpy(e)), tmp_path)
    x = np.load("systems/dw4/reference_community.npy")
    path = plot_distance_histograms(tmp_path / "d.png", x[:500], x[5000:5500], 4, 2, np.zeros(500))
    _check_png(path, tmp_path)


def test_profile_plots(tmp_path):
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(3000, 2)))
    one = free_energy_profile(Samples(x), lambda x: x[:, 0], bins=30, n_bootstrap=50)
    path = plot_free_energy_profile(tmp_path / "f1.png", [one, one], ["a", "b"], xlabel="x")
    _check_png(path, tmp_path)
    two = free_energy_profile(Samples(x), lambda x: x, bins=20, n_bootstrap=20)
    _check_png(plot_free_energy_profile(tmp_path / "f2.png", two), tmp_path)


def test_training_curves(tmp_path):
    log = tmp_path / "train.csv"
    with open(log, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["step", "loss", "lr", "grad_norm", "wall_time", "skipped", "ess"])
        for step in range(50):
            writer.writerow([step, 100 * 0.9**step, 1e-3, 1.0, step, 0, "" if step < 3 else 0.5])
    out = tmp_path / "plots"
    _check_png(plot_training_curves(out / "t.png", log), out)
    with pytest.raises(ShapeError):
        plot_training_curves(out / "t2.png", log, columns=["log_z"])


def test_samples_2d_and_ramachandran(tmp_path):
    gmm = get("gmm25")
    x = gmm.sample_exact(1000, torch.Generator().manual_seed(0))
    _check_png(plot_samples_2d(tmp_path / "s.png", x, gmm), tmp_path)
    mw = get("mw5")
    y = mw.sample_exact(500, torch.Generator().manual_seed(0))
    path = plot_samples_2d(tmp_path / "s5.png", Samples(y), mw, dims=(1, 3), weights=np.ones(500))
    _check_png(path, tmp_path)
    angles = np.random.default_rng(2).uniform(-np.pi, np.pi, size=(2000, 2))
    _check_png(plot_ramachandran(tmp_path / "r.png", angles), tmp_path)


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "keep.png"
    path.write_bytes(b"old")

    def broken(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(RuntimeError):
        save_figure(Figure(), path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]
