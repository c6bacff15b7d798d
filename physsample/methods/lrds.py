"""LRDS, learned-reference diffusion sampling: a reference fitted to MCMC data, corrected.

1. Approximate samples of the target: given (any :class:`~physsample.samples.Samples`,
   e.g. OpenMM MD output, or a tensor), or drawn here by torch MALA started from the
   system's known modes (:func:`~physsample.mcmc.reference.starting_points`).
2. A reference process fitted to them, noised by a variance-preserving OU
   (:class:`~physsample.diffusion.LinearVPSchedule`): by default
   (``reference_kind="gmm"``) a Gaussian mixture (:func:`~physsample.diffusion.fit_gmm`,
   number of components given or chosen by BIC), whose marginals p_t^ref and score are
   closed form; or (``reference_kind="score"``) a score network trained on the data by
   denoising score matching (:class:`~physsample.methods.score_reference.ScoreNetworkReference`,
   the "diffusion model" reference of the paper), a fresh copy of the control network,
   so equivariant for particle systems, where a mixture cannot represent the rotation
   and permutation symmetry of the data. Any fitted object with the reference
   interface of :mod:`physsample.diffusion.references` can be passed instead.
3. The sampler starts from the reference's own noised law p_0^ref, sampled exactly, and
   its score estimate is s_theta = grad log p_t^ref + phi_theta with phi_theta zero at
   initialisation: the untrained sampler follows the reference, and training (log-variance
   loss by default) only corrects it. The path weights correct what the data got wrong,
   e.g. the mode proportions of MCMC chains that never crossed a barrier.

Noble, Grenioux, Gabrie & Durmus, "Learned reference-based diffusion sampling for
multi-modal distributions", ICLR 2025.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from physsample.diffusion import (
    GMM,
    BlockMixtureReference,
    GaussianMixtureReference,
    LinearVPSchedule,
)
from physsample.errors import ConfigError, ShapeError
from physsample.methods.base import DiffusionSampler
from physsample.methods.score_reference import ScoreNetworkReference
from physsample.samples import Samples
from physsample.systems.base import ParticleSystem

__all__ = ["LRDS"]

REFERENCE_KINDS = ("auto", "gmm", "block_gmm", "score")
_REFERENCE_INTERFACE = ("schedule", "space", "sample_prior", "prior_log_prob", "base_control")


def is_reference(obj: Any) -> bool:
    """Whether ``obj`` has the reference interface (schedule, space, prior, base control)."""
    return all(hasattr(obj, name) for name in _REFERENCE_INTERFACE)


class LRDS(DiffusionSampler):
    """Learned-reference diffusion sampler.

    Parameters
    ----------
    system
        The target.
    reference
        What the reference is built from:

        - :class:`~physsample.samples.Samples` or a tensor (n, dim) of approximate
          samples (weighted Samples are first resampled by weight);
        - a :class:`~physsample.diffusion.GMM` (in the space's coordinates), used as is;
        - a fitted reference object (e.g. a
          :class:`~physsample.diffusion.GaussianMixtureReference`), used as is, with its
          own schedule;
        - None: run MALA from the system's modes (or default configuration) first.
    reference_kind
        What is fitted to samples: ``"auto"`` (``"score"`` for particle systems, else
        ``"gmm"``), ``"gmm"`` (a Gaussian mixture), ``"block_gmm"``
        (a product of mixtures over coordinate blocks, see ``block_size``) or ``"score"`` (a
        score network trained by DSM, a fresh copy of the control network ``net`` as
        given, before any training; for ``net="e3nn"`` / ``"egnn"`` / ``"mlp"`` one with
        the same default sizes). Ignored when ``reference`` is a GMM or fitted reference.
    score_steps, score_lr, score_batch_size, score_ema_decay
        ``reference_kind="score"``: Adam steps, learning rate, batch size and EMA decay
        of the DSM fit (:meth:`ScoreNetworkReference.fit`).
    n_components
        Mixture components; None chooses by BIC in 1..``max_components``.
    block_size, reweight_samples
        ``reference_kind="block_gmm"``: one mixture per block of ``block_size``
        contiguous coordinates (:class:`~physsample.diffusion.BlockMixtureReference`;
        2 for Manywell), and if ``reweight_samples`` > 0 its block weights re-estimated
        by two importance-sampling EM passes of that many target evaluations each.
    covariance
        ``"full"`` or ``"diag"`` mixture covariances.
    max_components
        Upper end of the BIC search; None: max(10, number of system modes).
    beta_min, beta_max, horizon, sigma
        The VP-OU schedule that noises the reference (sigma: its stationary scale;
        None: 1 for mixtures, and for the score reference the data's root-mean-square
        standard deviation per coordinate, so that the prior N(0, sigma^2) is close
        to the noised data p_0^ref).
    mcmc_steps, mcmc_chains, mcmc_thin
        MALA when ``reference`` is None: steps per chain after warmup, number of chains
        (None: max(64, 4 x number of modes)) and thinning.
    fit_options
        More keyword arguments of :func:`~physsample.diffusion.fit_gmm` (``n_init``,
        ``init_means``, ``search``, ``max_iter``, ``tol``, ``reg_covar``, ``seed``; the
        seed defaults to ``seed``). When LRDS runs MALA from the system's modes itself,
        the modes are the ``init_means`` (in the space's coordinates): one EM run then
        puts one component on each mode, where a random start can merge two of many
        well separated modes into one broad component, whose mass between the modes
        gives rare trajectories with very low log w that the log-variance loss chases.
    **options
        Shared options of :class:`~physsample.methods.base.DiffusionSampler` (the
        log-variance loss is the default).

    Attributes
    ----------
    reference_samples : Samples or None
        The data the mixture or score network was fitted to (not saved with the sampler).

    Examples
    --------
    >>> import physsample as ps                                  # doctest: +SKIP
    >>> system = ps.systems.get("gmm25")                         # doctest: +SKIP
    >>> sampler = LRDS(system, n_components=25).fit(200)         # MALA from the modes
    >>> sampler.log_z(10_000)                                    # doctest: +SKIP
    """

    method_name = "lrds"

    def __init__(
        self,
        system,
        reference: Samples | torch.Tensor | GMM | Any | None = None,
        *,
        reference_kind: str = "auto",
        score_steps: int = 5000,
        score_lr: float = 3e-3,
        score_batch_size: int = 256,
        score_ema_decay: float | None = 0.999,
        n_components: int | None = None,
        block_size: int | None = None,
        reweight_samples: int = 0,
        covariance: str = "full",
        max_components: int | None = None,
        beta_min: float = 0.1,
        beta_max: float = 5.0,
        horizon: float = 1.0,
        sigma: float | None = None,
        mcmc_steps: int = 1000,
        mcmc_chains: int | None = None,
        mcmc_thin: int = 10,
        fit_options: dict[str, Any] | None = None,
        **options,
    ) -> None:
        if reference_kind not in REFERENCE_KINDS:
            raise ConfigError(
                f"reference_kind must be one of {', '.join(REFERENCE_KINDS)}; got "
                f"{reference_kind!r}"
            )
        if reference_kind == "auto":  # a mixture cannot hold a particle system's symmetry
            reference_kind = "score" if isinstance(system, ParticleSystem) else "gmm"
        if reference_kind == "block_gmm" and not block_size:
            raise ConfigError("reference_kind='block_gmm' needs block_size= (2 for Manywell)")
        self._reference_input = reference
        self._net_input = options.get("net")
        self._mcmc_starts = None
        self.reference_samples = None
        self.method_settings = {
            "reference_kind": reference_kind,
            "score": {
                "steps": int(score_steps),
                "lr": float(score_lr),
                "batch_size": int(score_batch_size),
                "ema_decay": score_ema_decay,
            },
            "n_components": n_components,
            "block": {"size": block_size, "reweight_samples": int(reweight_samples)},
            "covariance": covariance,
            "max_components": max_components,
            "schedule": {"beta_min": beta_min, "beta_max": beta_max, "horizon": horizon},
            "sigma": sigma,
            "mcmc": {"steps": mcmc_steps, "chains": mcmc_chains, "thin": mcmc_thin},
            "fit_options": dict(fit_options or {}),
        }
        super().__init__(system, **options)
        del self._reference_input, self._net_input, self._mcmc_starts

    def build_reference(self):
        given = self._reference_input
        if is_reference(given):  # its own schedule; beta_min ... sigma do not apply
            self.method_settings["reference"] = f"{type(given).__name__}({given.schedule!r})"
            return given
        m = self.method_settings
        if isinstance(given, GMM):
            self.method_settings["reference"] = "GMM"
            schedule = LinearVPSchedule(**m["schedule"], sigma=m["sigma"] or 1.0)
            return GaussianMixtureReference(schedule, given, self.space)
        x = self._data(given)
        if m["sigma"] is None:  # the score reference's prior N(0, sigma^2) near p_0^ref
            m["sigma"] = _data_scale(x) if m["reference_kind"] == "score" else 1.0
        schedule = LinearVPSchedule(**m["schedule"], sigma=m["sigma"])
        if m["reference_kind"] == "score":
            return self._fit_score_reference(x, schedule)
        options = {"seed": int(self.settings["seed"]), **m["fit_options"]}
        seeded = self._mcmc_starts is not None and "init_means" not in options
        if seeded:
            options["init_means"] = self._mcmc_starts
        if m["reference_kind"] == "block_gmm":
            return self._fit_block_reference(x, schedule, options, seeded)
        ref = GaussianMixtureReference.fit(
            x,
            schedule,
            self.space,
            n_components=m["n_components"],
            covariance=m["covariance"],
            max_components=m["max_components"] or max(10, self._n_modes()),
            **options,
        )
        info = {"n_samples": x.shape[0], "seeded_from_modes": seeded, **ref.gmm.fit_info}
        self.method_settings["reference"] = info
        return ref

    def _fit_block_reference(self, x, schedule, options, seeded) -> BlockMixtureReference:
        """One mixture per block of ``block_size`` coordinates, optionally reweighted."""
        m = self.method_settings
        ref = BlockMixtureReference.fit(
            x, schedule, self.space, block_size=m["block"]["size"],
            n_components=m["n_components"], covariance=m["covariance"],
            max_components=m["max_components"] or 10, **options,
        )  # fmt: skip
        info = {"n_samples": x.shape[0], "seeded_from_modes": seeded, **ref.fit_info}
        if m["block"]["reweight_samples"]:
            g = torch.Generator().manual_seed(int(self.settings["seed"]))
            ref = ref.reweighted(self.system.log_prob, m["block"]["reweight_samples"], 2, g)
            info["reweight"] = ref.reweight_info
        self.method_settings["reference"] = info
        return ref

    def _fit_score_reference(self, x: torch.Tensor, schedule) -> ScoreNetworkReference:
        """A score network (a fresh copy of the control network) fitted to ``x`` by DSM."""
        given = self._net_input
        if isinstance(given, nn.Module):
            net = copy.deepcopy(given)
        else:
            net = self._make_net(given)
        opts = self.method_settings["score"]
        if not (opts["steps"] > 0 and opts["batch_size"] > 0 and opts["lr"] > 0):
            raise ConfigError(
                "score_steps, score_batch_size and score_lr must be positive, got "
                f"{opts['steps']}, {opts['batch_size']}, {opts['lr']}"
            )
        ref = ScoreNetworkReference.fit(
            x,
            schedule,
            self.space,
            net=net.to(self.dtype),
            steps=opts["steps"],
            batch_size=opts["batch_size"],
            lr=opts["lr"],
            seed=int(self.settings["seed"]),
            progress=bool(self.settings["progress"]),
            ema_decay=opts["ema_decay"],
            device=self.device,
        )
        self.method_settings["reference"] = {
            "kind": "score",
            "net": type(net).__name__,
            **ref.fit_info,
        }
        return ref

    def _n_modes(self) -> int:
        modes = getattr(self.system, "modes", None)
        return 0 if modes is None else len(modes)

    def _data(self, given) -> torch.Tensor:
        """Positions (n, dim) to fit the mixture to."""
        if given is None:
            given = self._run_mcmc()
        if isinstance(given, Samples):
            if given.log_weights is not None:
                g = torch.Generator(given.device).manual_seed(int(self.settings["seed"]))
                given = given.resample(len(given), generator=g)
            self.reference_samples = given
            given = given.x
        if isinstance(given, np.ndarray):
            given = torch.from_numpy(given)
        if not isinstance(given, torch.Tensor):
            raise ConfigError(
                "LRDS reference must be Samples, a tensor (n, dim), a GMM, a fitted "
                f"reference or None; got {type(given).__name__}"
            )
        if given.ndim != 2 or given.shape[1] != self.system.dim:
            raise ShapeError(
                f"LRDS reference samples must have shape (n, {self.system.dim}), "
                f"got {tuple(given.shape)}"
            )
        return given

    def _run_mcmc(self) -> Samples:
        """MALA from the system's modes (or default configuration).

        With modes, they are kept (in the space's coordinates) to seed the mixture fit.
        """
        from physsample.mcmc import mala
        from physsample.mcmc.reference import starting_points

        if self._n_modes():
            modes = torch.as_tensor(self.system.modes).detach().to("cpu", torch.float64)
            self._mcmc_starts = self.space.to_coords(self.space.project(modes))
        mc, seed = self.method_settings["mcmc"], int(self.settings["seed"])
        chains = int(mc["chains"] or max(64, 4 * self._n_modes()))
        x0 = starting_points(self.system, chains, seed=seed)
        return mala(
            self.system,
            x0,
            n_steps=int(mc["steps"]),
            thin=int(mc["thin"]),
            seed=seed,
            progress=bool(self.settings["progress"]),
        )


def _data_scale(x: torch.Tensor) -> float:
    """Root-mean-square per-coordinate standard deviation of samples ``x`` (n, dim)."""
    return float(x.double().var(dim=0).mean().sqrt())
