"""Report figures as PNG files: energies, distances, free energies, training, 2-D samples.

Every function draws one figure on matplotlib's Agg canvas (``matplotlib.figure.Figure``,
no pyplot, so the global backend and pyplot's figure list are left alone), writes it to
a temporary file next to ``path`` and renames it over ``path``, so an interrupted run
never leaves a half-written PNG. Each returns the path written.

Example
-------
>>> import numpy as np
>>> e = np.random.default_rng(0).normal(size=1000)
>>> plot_energy_histograms("energies.png", e, reference=e + 0.1)  # doctest: +SKIP
PosixPath('energies.png')
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from physsample.analysis._util import positions, to_numpy
from physsample.analysis.distances import all_pair_distances
from physsample.analysis.free_energy import FreeEnergyProfile
from physsample.errors import ShapeError

__all__ = [
    "save_figure",
    "plot_energy_histograms",
    "plot_distance_histograms",
    "plot_free_energy_profile",
    "plot_training_curves",
    "plot_samples_2d",
    "plot_ramachandran",
]


def _figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 3.6)):
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(handle)
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _weights(log_weights: Any, n: int) -> np.ndarray | None:
    if log_weights is None:
        return None
    lw = to_numpy(log_weights, "log_weights", ndim=1)
    if lw.shape != (n,):
        raise ShapeError(f"log_weights must have shape ({n},), got {lw.shape}")
    w = np.exp(lw - np.max(lw))
    return w / w.sum()


def _common_range(arrays: Sequence[np.ndarray], quantile: float) -> tuple[float, float]:
    """A plotting range covering the central ``quantile`` of every finite array."""
    lows, highs = [], []
    for a in arrays:
        a = a[np.isfinite(a)]
        if a.size:
            lows.append(np.quantile(a, (1 - quantile) / 2))
            highs.append(np.quantile(a, (1 + quantile) / 2))
    if not lows:
        return 0.0, 1.0
    low, high = float(min(lows)), float(max(highs))
    return (low, high) if high > low else (low - 0.5, high + 0.5)


def _histograms(ax, series: list[tuple[str, np.ndarray, np.ndarray | None]], bins: int, q: float):
    lo, hi = _common_range([s[1] for s in series], q)
    for label, values, w in series:
        ok = np.isfinite(values)
        ax.hist(values[ok], bins=bins, range=(lo, hi), weights=None if w is None else w[ok],
                density=True, histtype="step", linewidth=1.5, label=label)  # fmt: skip
    ax.set_ylabel("density")
    ax.legend(frameon=False)


def plot_energy_histograms(
    path: str | os.PathLike,
    model: Any,
    reference: Any = None,
    log_weights: Any = None,
    *,
    bins: int = 100,
    quantile: float = 0.995,
    title: str | None = None,
) -> Path:
    """Histograms of energies: the model's samples, the same reweighted, and a reference.

    Parameters
    ----------
    path
        PNG file to write.
    model
        (N,) energies of the model's samples, in kT.
    reference
        (M,) energies of reference samples (MD or exact), optional.
    log_weights
        (N,) importance log-weights of the model's samples; adds the reweighted
        histogram.
    bins
        Number of bins over the common range.
    quantile
        The range covers this central fraction of every set (outliers are cut off).
    title
        Figure title.
    """
    e = to_numpy(model, "model", ndim=1)
    series = [("model", e, None)]
    if log_weights is not None:
        series.append(("model, reweighted", e, _weights(log_weights, e.size)))
    if reference is not None:
        series.append(("reference", to_numpy(reference, "reference", ndim=1), None))
    fig, axes = _figure()
    _histograms(axes[0, 0], series, bins, quantile)
    axes[0, 0].set_xlabel("energy / kT")
    if title:
        axes[0, 0].set_title(title)
    return save_figure(fig, path)


def plot_distance_histograms(
    path: str | os.PathLike,
    model: Any,
    reference: Any,
    n_particles: int,
    spatial_dim: int,
    log_weights: Any = None,
    *,
    bins: int = 100,
    title: str | None = None,
) -> Path:
    """Histograms of all interparticle distances of model samples and reference samples.

    Parameters
    ----------
    model, reference
        Positions (N, n * d) and (M, n * d).
    n_particles, spatial_dim
        Layout of one configuration.
    log_weights
        (N,) log-weights of the model samples; adds the reweighted histogram.
    """
    dm = all_pair_distances(model, n_particles, spatial_dim)
    n_pairs = n_particles * (n_particles - 1) // 2
    series = [("model", dm, None)]
    if log_weights is not None:
        w = _weights(log_weights, dm.size // n_pairs)
        series.append(("model, reweighted", dm, np.repeat(w, n_pairs)))
    series.append(("reference", all_pair_distances(reference, n_particles, spatial_dim), None))
    fig, axes = _figure()
    _histograms(axes[0, 0], series, bins, 0.999)
    axes[0, 0].set_xlabel("interparticle distance")
    if title:
        axes[0, 0].set_title(title)
    return save_figure(fig, path)


def plot_free_energy_profile(
    path: str | os.PathLike,
    profiles: FreeEnergyProfile | Sequence[FreeEnergyProfile],
    labels: Sequence[str] | None = None,
    *,
    xlabel: str = "s",
    ylabel: str = "s2",
    title: str | None = None,
) -> Path:
    """F(s) with its confidence band (1-D, several profiles overlaid) or a 2-D map.

    Parameters
    ----------
    profiles
        One profile or several 1-D profiles (e.g. sampler and MD).
    labels
        Legend labels for the 1-D profiles.
    xlabel, ylabel
        Axis labels (``ylabel`` is the second CV of a 2-D profile).
    """
    profiles = [profiles] if isinstance(profiles, FreeEnergyProfile) else list(profiles)
    fig, axes = _figure()
    ax = axes[0, 0]
    if profiles[0].ndim == 2:
        p = profiles[0]
        f = np.where(np.isfinite(p.f), p.f, np.nan)
        mesh = ax.pcolormesh(p.edges[0], p.edges[1], f.T, cmap="viridis", shading="flat")
        fig.colorbar(mesh, ax=ax, label=f"F / ({p.kT:g} kT)")
        ax.set_ylabel(ylabel)
    else:
        labels = list(labels) if labels is not None else [None] * len(profiles)
        for p, label in zip(profiles, labels, strict=True):
            s = p.centers[0]
            f = np.where(np.isfinite(p.f), p.f, np.nan)
            (line,) = ax.plot(s, f, label=label)
            low = np.where(np.isfinite(p.low), p.low, np.nan)
            high = np.where(np.isfinite(p.high), p.high, np.nan)
            ax.fill_between(s, low, high, color=line.get_color(), alpha=0.25, linewidth=0)
        ax.set_ylabel(f"F / ({profiles[0].kT:g} kT), {100 * profiles[0].confidence:.0f}% band")
        if any(label is not None for label in labels):
            ax.legend(frameon=False)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def _read_csv(csv_path: str | os.PathLike) -> dict[str, np.ndarray]:
    with open(csv_path, newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows:
        raise ShapeError(f"plot_training_curves: {csv_path} has no rows")

    def number(text: str | None) -> float:
        try:
            return float(text) if text not in (None, "") else math.nan
        except ValueError:
            return math.nan

    return {key: np.array([number(r.get(key)) for r in rows]) for key in rows[0]}


def plot_training_curves(
    path: str | os.PathLike,
    csv_path: str | os.PathLike,
    columns: Sequence[str] | None = None,
    *,
    title: str | None = None,
) -> Path:
    """Training curves from the CSV log of :class:`~physsample.methods.training.Trainer`.

    Parameters
    ----------
    csv_path
        The log: columns ``step``, ``loss``, ``lr``, ``grad_norm``, ``wall_time``,
        ``skipped`` and the method's ``info`` keys (``ess``, ``log_z``, ...).
    columns
        Columns to draw against ``step``, one panel each; default ``loss`` and whichever
        of ``ess``, ``log_z``, ``grad_norm`` are present. Panels whose values are all
        positive and span more than two decades use a log scale.
    """
    data = _read_csv(csv_path)
    if "step" not in data:
        raise ShapeError(f"plot_training_curves: {csv_path} has no 'step' column")
    if columns is None:
        columns = [c for c in ("loss", "ess", "log_z", "grad_norm") if c in data]
    missing = [c for c in columns if c not in data]
    if missing or not columns:
        raise ShapeError(f"plot_training_curves: columns {missing or columns} not in {list(data)}")
    fig, axes = _figure(ncols=len(columns), size=(4.0, 3.2))
    for ax, column in zip(axes[0], columns, strict=True):
        y = data[column]
        ok = np.isfinite(y)
        ax.plot(data["step"][ok], y[ok], linewidth=1.0)
        if ok.any() and np.all(y[ok] > 0) and y[ok].max() > 100 * y[ok].min():
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(column)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_samples_2d(
    path: str | os.PathLike,
    x: Any,
    system: Any = None,
    *,
    dims: tuple[int, int] = (0, 1),
    weights: Any = None,
    extent: tuple[float, float, float, float] | None = None,
    n_grid: int = 200,
    max_points: int = 5000,
    title: str | None = None,
) -> Path:
    """Scatter of samples in two coordinates over the contours of the target's density.

    Parameters
    ----------
    x
        (N, dim) samples (tensor, array or Samples).
    system
        Target system; its energy is drawn as contours 0.5, 1, 2, 4, 8 and 16 kT above
        its minimum on a grid in ``dims`` with every other coordinate at 0 (a slice,
        which is the 2-D density itself when dim = 2).
    dims
        The two coordinates to show.
    weights
        Optional (N,) non-negative weights shown as point opacity.
    extent
        (xmin, xmax, ymin, ymax); default the samples' range with a margin.
    n_grid
        Grid points per axis for the contours.
    max_points
        At most this many points are drawn (the first ones).
    """
    xs = positions(x, "x")
    i, j = dims
    pts = xs[:max_points][:, [i, j]]
    if extent is None:
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        pad = 0.1 * np.maximum(hi - lo, 1e-6)
        extent = (lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1])
    fig, axes = _figure(size=(4.6, 4.2))
    ax = axes[0, 0]
    if system is not None:
        gx, gy = np.linspace(*extent[:2], n_grid), np.linspace(*extent[2:], n_grid)
        grid = np.zeros((n_grid * n_grid, system.dim))
        mx, my = np.meshgrid(gx, gy, indexing="xy")
        grid[:, i], grid[:, j] = mx.ravel(), my.ravel()
        with torch.no_grad():
            energy = system.energy(torch.from_numpy(grid)).double().numpy().reshape(n_grid, n_grid)
        levels = np.nanmin(energy) + np.array([0.5, 1.0, 2.0, 4.0, 8.0, 16.0])
        ax.contour(mx, my, energy, levels=levels, colors="0.5", linewidths=0.7, zorder=1)
    alpha = 0.5
    if weights is not None:
        w = to_numpy(weights, "weights", ndim=1)[:max_points]
        alpha = np.clip(w / w.max(), 0.02, 1.0) if w.max() > 0 else 0.5
    ax.scatter(pts[:, 0], pts[:, 1], s=5, alpha=alpha, color="C1", linewidths=0, zorder=2)
    ax.set_xlim(*extent[:2])
    ax.set_ylim(*extent[2:])
    ax.set_xlabel(f"x[{i}]")
    ax.set_ylabel(f"x[{j}]")
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def plot_ramachandran(
    path: str | os.PathLike,
    phi_psi: Any,
    weights: Any = None,
    *,
    bins: int = 72,
    title: str | None = None,
) -> Path:
    """Ramachandran plot: F(phi, psi) = -log p in kT on a periodic grid, in degrees.

    Parameters
    ----------
    phi_psi
        (N, 2) dihedrals in radians (see :func:`~physsample.analysis.trajectories.dihedrals`).
    weights
        Optional (N,) non-negative weights (e.g. ``samples.weights()``).
    bins
        Bins per angle over [-180, 180] degrees.
    """
    angles = np.degrees(to_numpy(phi_psi, "phi_psi", ndim=2))
    if angles.shape[1] != 2:
        raise ShapeError(f"plot_ramachandran: need (N, 2) angles, got {angles.shape}")
    w = None if weights is None else to_numpy(weights, "weights", ndim=1)
    edges = np.linspace(-180.0, 180.0, bins + 1)
    hist, _, _ = np.histogram2d(angles[:, 0], angles[:, 1], bins=[edges, edges], weights=w)
    with np.errstate(divide="ignore"):
        f = -np.log(hist / hist.sum())
    f = np.where(np.isfinite(f), f - np.min(f[np.isfinite(f)], initial=0.0), np.nan)
    fig, axes = _figure(size=(4.8, 4.0))
    ax = axes[0, 0]
    mesh = ax.pcolormesh(edges, edges, f.T, cmap="viridis", shading="flat")
    fig.colorbar(mesh, ax=ax, label="F / kT")
    ax.set_xlabel("phi / degree")
    ax.set_ylabel("psi / degree")
    ax.set_xticks(np.arange(-180, 181, 90))
    ax.set_yticks(np.arange(-180, 181, 90))
    if title:
        ax.set_title(title)
    return save_figure(fig, path)
