"""Analysis of samples: benchmark metrics, free energies, trajectories and plots.

Modules, each named for what it does:

- :mod:`~physsample.analysis.wasserstein`: geometric W2, energy W2, Sinkhorn;
- :mod:`~physsample.analysis.alignment`: distances up to rotation, reflection and
  relabelling (Hungarian + Kabsch), used by geometric W2;
- :mod:`~physsample.analysis.distances`: interatomic-distance TV, MMD;
- :mod:`~physsample.analysis.weights`: log Z with a bootstrap interval, ELBO, EUBO, ESS;
- :mod:`~physsample.analysis.modes`: mode coverage (EMC);
- :mod:`~physsample.analysis.free_energy`: F, Delta F, free-energy profiles, MBAR;
- :mod:`~physsample.analysis.bootstrap`: i.i.d. and autocorrelation-aware block bootstrap;
- :mod:`~physsample.analysis.trajectories`: collective variables through mdtraj;
- :mod:`~physsample.analysis.plots`: PNG figures for reports;
- :mod:`~physsample.analysis.report`: the run report (``report.md``, metrics, figures).

Metric definitions follow BENCHMARKS.md.

Example
-------
>>> import physsample as ps  # doctest: +SKIP
>>> out = sampler.sample(100_000)  # doctest: +SKIP
>>> print(ps.analysis.log_z(out))  # estimate [low, high]  # doctest: +SKIP
>>> value, (low, high) = ps.analysis.free_energy_difference(out, in_a, in_b)  # doctest: +SKIP
"""

from __future__ import annotations

from physsample.analysis._util import Estimate
from physsample.analysis.alignment import align_pair, geometric_distance_matrix
from physsample.analysis.bootstrap import BootstrapPlan, plan_bootstrap
from physsample.analysis.distances import all_pair_distances, distance_tv, mmd
from physsample.analysis.free_energy import (
    FreeEnergyProfile,
    MBARResult,
    free_energy,
    free_energy_difference,
    free_energy_profile,
    mbar_free_energies,
    state_probabilities,
)
from physsample.analysis.modes import emc, mode_histogram, nearest_mode
from physsample.analysis.plots import (
    plot_distance_histograms,
    plot_energy_histograms,
    plot_free_energy_profile,
    plot_ramachandran,
    plot_samples_2d,
    plot_training_curves,
)
from physsample.analysis.report import default_states, write_report
from physsample.analysis.trajectories import (
    dihedrals,
    pair_distance,
    resample_unweighted,
    rmsd_to,
)
from physsample.analysis.wasserstein import energy_w2, geometric_w2, sinkhorn
from physsample.analysis.weights import elbo, ess, eubo, log_z

__all__ = [
    "Estimate",
    "geometric_w2",
    "energy_w2",
    "sinkhorn",
    "geometric_distance_matrix",
    "align_pair",
    "distance_tv",
    "all_pair_distances",
    "mmd",
    "log_z",
    "elbo",
    "eubo",
    "ess",
    "emc",
    "nearest_mode",
    "mode_histogram",
    "free_energy",
    "free_energy_difference",
    "state_probabilities",
    "free_energy_profile",
    "FreeEnergyProfile",
    "mbar_free_energies",
    "MBARResult",
    "BootstrapPlan",
    "plan_bootstrap",
    "pair_distance",
    "rmsd_to",
    "dihedrals",
    "resample_unweighted",
    "plot_energy_histograms",
    "plot_distance_histograms",
    "plot_free_energy_profile",
    "plot_training_curves",
    "plot_samples_2d",
    "plot_ramachandran",
    "write_report",
    "default_states",
]
