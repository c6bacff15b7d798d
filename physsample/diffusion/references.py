"""Reference processes: the prior, the noising process and its closed-form score.

A reference couples a :class:`~physsample.diffusion.schedules.Schedule` (which gives the
noising transitions B_k and the generative SDE family) with the law the reference
process has at each generative time t, p_t^ref, in closed form:

- :class:`GaussianReference`: the reference's own Gaussian law. With an OU schedule
  this is the stationary N(0, sigma^2) at every t (DIS with sigma = 1; DDS with a prior
  scale sigma); with :class:`~physsample.diffusion.schedules.PinnedBrownianSchedule` it
  is N(0, sigma^2 t), a delta at 0 at t = 0 (PIS).
- :class:`GaussianMixtureReference`: the OU noising of a Gaussian mixture (LRDS),
  p_t = sum_k w_k N(a_t mu_k, a_t^2 Sigma_k + sigma^2 (1 - a_t^2) I), a_t the OU mean
  factor from T down to t.

The prior of the generative process is p_0^ref, the reference's own fully noised law,
which every reference samples exactly. The control under which the generative SDE is
exactly the time reversal of the reference is :meth:`Reference.base_control`; a method
parameterises its control as ``u = reference.base_control(t, x) + phi_theta(t, x)``, so
that a network that outputs zero reproduces the reference (up to time discretisation).
For an OU schedule ``base_control = grad log p_t^ref(x) + x / sigma^2``, i.e. the
sampler's score estimate is s_theta = grad log p_t^ref + phi_theta.
"""

from __future__ import annotations

import torch
from torch import nn

from physsample.diffusion.gaussian import GaussianSpace
from physsample.diffusion.mixture import GMM, fit_gmm
from physsample.diffusion.schedules import OUSchedule, Schedule
from physsample.errors import ConfigError, ShapeError

__all__ = ["Reference", "GaussianReference", "GaussianMixtureReference"]


class Reference(nn.Module):
    """Base class: prior, marginal laws and score of a reference process.

    Parameters
    ----------
    schedule
        The noising schedule.
    space
        The sampler's space (R^dim or CoM-free).

    Attributes
    ----------
    prior_is_delta : bool
        True when the prior is a delta at the origin (PIS); path weights then drop both
        the prior's log density and the first noising transition B_0, which is the same
        delta (the two cancel exactly).
    """

    def __init__(self, schedule: Schedule, space: GaussianSpace) -> None:
        super().__init__()
        self.schedule = schedule
        self.space = space

    @property
    def prior_is_delta(self) -> bool:
        return False

    @property
    def dim(self) -> int:
        return self.space.dim

    @property
    def device(self) -> torch.device:
        for tensor in list(self.buffers()) + list(self.parameters()):
            return tensor.device
        return torch.device("cpu")

    def _full(self, value: float, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t, float(value))

    def sample_prior(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Exact draws from the prior p_0^ref, shape (n, dim).

        Drawn on the generator's device and moved to ``device`` (default: the
        generator's device, else the reference's).
        """
        raise NotImplementedError

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p_0^ref(x), shape (B,) (zeros for a delta prior; see ``prior_is_delta``)."""
        raise NotImplementedError

    def log_prob(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p_t^ref(x) at generative times t (B,) for x (B, dim); returns (B,)."""
        raise NotImplementedError

    def score(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """grad_x log p_t^ref(x) in closed form, shape (B, dim)."""
        raise NotImplementedError

    def base_control(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Control (score units) under which the generative SDE reverses the reference."""
        raise NotImplementedError


class GaussianReference(Reference):
    """The reference's own centred Gaussian law: N(0, schedule.reference_variance(t)).

    OU schedule: the stationary N(0, sigma^2) at every t (DIS, DDS); the generative
    SDE with zero control is then the stationary OU, i.e. ``base_control = 0``.
    Pinned Brownian schedule (PIS): N(0, sigma^2 t); the prior is the delta at 0, and
    the uncontrolled Brownian motion is the reference, so ``base_control = 0`` too.

    Examples
    --------
    >>> from physsample.diffusion.schedules import LinearVPSchedule
    >>> ref = GaussianReference(LinearVPSchedule(), GaussianSpace(2))
    >>> ref.sample_prior(3, torch.Generator().manual_seed(0)).shape
    torch.Size([3, 2])
    """

    @property
    def prior_is_delta(self) -> bool:
        return bool(self.schedule.pinned)

    def variance(self, t: torch.Tensor) -> torch.Tensor:
        """Variance per coordinate of p_t^ref, same shape as t."""
        return self.schedule.reference_variance(t)

    def sample_prior(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        dtype = dtype or torch.get_default_dtype()
        if self.prior_is_delta:
            dev = device or (generator.device if generator is not None else self.device)
            return torch.zeros((int(n), self.dim), dtype=dtype, device=dev)
        eps = self.space.noise(n, generator, dtype, device)
        return self.schedule.sigma * eps

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if self.prior_is_delta:
            return x.new_zeros(x.shape[0])
        return self.space.log_normal(x, 0.0, self.schedule.sigma**2)

    def log_prob(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.space.log_normal(x, 0.0, self.variance(t))

    def score(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return -x / self.variance(t)[:, None]

    def base_control(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    def extra_repr(self) -> str:
        return f"schedule={self.schedule!r}, space={self.space!r}"


class GaussianMixtureReference(Reference):
    """OU noising of a Gaussian mixture, with closed-form marginals and score (LRDS).

    p_t^ref(x) = sum_k w_k N(a_t mu_k, a_t^2 Sigma_k + c_t I), where (a_t, c_t) is the OU
    transition from T (the mixture itself) down to t. The prior p_0^ref is sampled and
    evaluated exactly, so the untrained sampler (``phi = 0``) follows the reference.

    Parameters
    ----------
    schedule
        An OU schedule (:class:`~physsample.diffusion.schedules.OUSchedule`).
    gmm
        The mixture at the target end, in the orthonormal coordinates of ``space``
        (dimension ``space.effective_dim``; for R^dim these are the flat coordinates).
    space
        The sampler's space; default R^gmm.dim.

    Examples
    --------
    >>> from physsample.diffusion.schedules import LinearVPSchedule
    >>> gmm = GMM.from_covariances(torch.tensor([[-2.0], [2.0]]), torch.ones(2, 1))
    >>> ref = GaussianMixtureReference(LinearVPSchedule(), gmm)
    >>> t = torch.full((4,), 0.5, dtype=torch.float64)
    >>> ref.score(t, torch.zeros(4, 1, dtype=torch.float64)).shape
    torch.Size([4, 1])
    """

    def __init__(self, schedule: Schedule, gmm: GMM, space: GaussianSpace | None = None) -> None:
        if not isinstance(schedule, OUSchedule):
            raise ConfigError(
                "GaussianMixtureReference needs an OU schedule (LinearVPSchedule or "
                f"ConstantOUSchedule), got {type(schedule).__name__}"
            )
        space = space or GaussianSpace(gmm.dim)
        if gmm.dim != space.effective_dim:
            raise ShapeError(
                f"the mixture has dimension {gmm.dim} but the space has {space.effective_dim} "
                "coordinates; fit it on space.to_coords(x) (see GaussianMixtureReference.fit)"
            )
        super().__init__(schedule, space)
        self.gmm = gmm

    @classmethod
    def fit(
        cls,
        samples: torch.Tensor,
        schedule: Schedule,
        space: GaussianSpace | None = None,
        **fit_kwargs,
    ) -> GaussianMixtureReference:
        """Fit the mixture to samples (n, dim) of the target with :func:`fit_gmm`.

        For a CoM-free space the samples are projected and fitted in orthonormal
        coordinates. ``fit_kwargs`` go to :func:`fit_gmm` (``n_components``,
        ``covariance``, ``max_components``, ``seed``, ...).
        """
        x = torch.as_tensor(samples).detach().to("cpu", torch.float64)
        space = space or GaussianSpace(x.shape[1])
        gmm = fit_gmm(space.to_coords(space.project(x)), **fit_kwargs)
        return cls(schedule, gmm, space)

    def marginal(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_t, c_t): mean factor and added variance of p_t^ref, each shaped like t."""
        a, c = self.schedule.noising(torch.full_like(t, self.schedule.horizon), t)
        return a, c

    def sample_prior(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        dtype = dtype or torch.get_default_dtype()
        a, c = self.marginal(torch.zeros((), dtype=torch.float64))
        z = self.gmm.sample(n, generator, float(a), float(c), dtype)
        return self.space.from_coords(z).to(device or z.device)

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x.new_zeros(x.shape[0]), x)

    def log_prob(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        a, c = self.marginal(t)
        return self.gmm.log_prob(self.space.to_coords(x), a, c)

    def score(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        a, c = self.marginal(t)
        return self.space.from_coords(self.gmm.score(self.space.to_coords(x), a, c))

    def base_control(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.score(t, x) + x / self.schedule.sigma**2

    def extra_repr(self) -> str:
        return f"schedule={self.schedule!r}, space={self.space!r}"
