"""A reference process whose score is a network trained by denoising score matching.

This is the "diffusion model" reference of LRDS: instead of a Gaussian mixture, the
reference's noised law p_t^ref is the OU noising of the empirical law of samples of the
target (from MCMC or MD), and its score grad log p_t^ref is a network fitted to it by
denoising score matching (DSM). No reference density is ever needed: the sampler's
path weights use only the prior density, the Gaussian transitions and the target.

Time convention (that of :mod:`physsample.diffusion.schedules`)
----------------------------------------------------------------
Generative time t runs from the prior (t = 0) to the data (t = T). The reference law
at t is the data noised over the remaining time,

    x_t = a_t x_T + sqrt(c_t) eps,    (a_t, c_t) = schedule.noising(T, t),

and the prior is the OU stationary law N(0, sigma^2 I) (on the CoM-free subspace for
particle systems), sampled and evaluated exactly. It is close to, but not exactly,
p_0^ref (the data noised over all of [0, T]); the path weights are exact importance
weights either way.

Parameterisation and loss
-------------------------
With a data mean m (0 on a CoM-free space) and a per-coordinate data variance s^2,
v_t = a_t^2 s^2 + c_t is the variance of the noised data in the Gaussian approximation
and

    score(t, x) = -(x - a_t m) / v_t + a_t s / sqrt(c_t v_t) * F(t / T, (x - a_t m) / sqrt(v_t)),

with F the network (the preconditioning of Karras et al., 2022: network inputs and
regression targets of unit scale). A zero network (e.g. an untrained
:class:`~physsample.nets.FourierMLP`) gives the score of the moment-matched Gaussian.
F is fitted by DSM weighted by the noise variance, lambda(t) = c_t:

    L = E_{t ~ U[0, T), x_T ~ data, eps} | sqrt(c_t) score(t, x_t) + eps |^2,

whose minimiser is the exact noised score. For particle systems the noise and the
network output are projected onto the CoM-free subspace.

Example
-------
>>> import torch
>>> from physsample import diffusion as D
>>> from physsample.nets import FourierMLP
>>> data = torch.randn(512, 2) + torch.tensor([1.0, 0.0])
>>> ref = ScoreNetworkReference.fit(data, D.LinearVPSchedule(), net=FourierMLP(2, hidden=16),
...                                 steps=20, batch_size=64)
>>> process = D.GenerativeProcess(ref, D.uniform_grid(20))
>>> control = D.residual_control(ref, lambda t, x: torch.zeros_like(x))
>>> out = D.simulate(process, control, lambda x: -0.5 * (x**2).sum(1), 8,
...                  generator=torch.Generator().manual_seed(0))
>>> out.samples.shape
torch.Size([8, 2])
"""

from __future__ import annotations

import torch
from torch import nn

from physsample.diffusion.gaussian import GaussianSpace
from physsample.diffusion.references import Reference
from physsample.diffusion.schedules import OUSchedule, Schedule
from physsample.errors import ConfigError, ShapeError
from physsample.methods.training import Trainer
from physsample.nets import FourierMLP
from physsample.samples import Samples

__all__ = ["ScoreNetworkReference", "dsm_loss"]


class ScoreNetworkReference(Reference):
    """OU noising of a data set, with a network for its score (the LRDS diffusion reference).

    Parameters
    ----------
    schedule
        An OU schedule (:class:`~physsample.diffusion.LinearVPSchedule` or
        :class:`~physsample.diffusion.ConstantOUSchedule`).
    space
        The sampler's space (R^dim or CoM-free).
    net
        ``F(t, x)``: normalised time t / T (B,) and normalised positions (B, dim) to
        (B, dim), e.g. :class:`~physsample.nets.FourierMLP` or an equivariant network.
        Its dtype is used for its inputs; the score is returned in the dtype of ``x``.
    data_mean
        m, shape (dim,); default 0 (always 0 on a CoM-free space, where every
        rotation-invariant law has mean 0).
    data_var
        s^2, the data variance per coordinate (length^2).

    Attributes
    ----------
    fit_info : dict
        After :meth:`fit`: ``loss`` (mean DSM loss over the last 10 % of the steps),
        ``steps``, ``n_samples``, ``wall_time`` (s).

    Notes
    -----
    The network is frozen by :meth:`fit` (``requires_grad=False``), so that a sampler
    built on this reference trains only its own residual control.
    """

    def __init__(
        self,
        schedule: Schedule,
        space: GaussianSpace,
        net: nn.Module,
        data_mean: torch.Tensor | None = None,
        data_var: float = 1.0,
    ) -> None:
        if not isinstance(schedule, OUSchedule):
            raise ConfigError(
                "ScoreNetworkReference needs an OU schedule (LinearVPSchedule or "
                f"ConstantOUSchedule), got {type(schedule).__name__}"
            )
        if not float(data_var) > 0.0:
            raise ConfigError(f"data_var must be positive, got {data_var}")
        super().__init__(schedule, space)
        self.net = net
        mean = torch.zeros(space.dim, dtype=torch.float64)
        if data_mean is not None and not space.com_free:
            mean = torch.as_tensor(data_mean, dtype=torch.float64).detach().cpu().clone()
            if mean.shape != (space.dim,):
                raise ShapeError(
                    f"data_mean must have shape ({space.dim},), got {tuple(mean.shape)}"
                )
        self.register_buffer("data_mean", mean)
        self.register_buffer("data_var", torch.tensor(float(data_var), dtype=torch.float64))
        self.fit_info: dict[str, float] = {}

    # -- the reference interface --------------------------------------------------------
    def marginal(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_t, c_t): mean factor and added variance of p_t^ref, each shaped like t."""
        return self.schedule.noising(torch.full_like(t, self.schedule.horizon), t)

    def sample_prior(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Exact draws (n, dim) of the prior N(0, sigma^2 I) on the space."""
        device = device or (generator.device if generator is not None else self.device)
        return self.schedule.sigma * self.space.noise(n, generator, dtype, device)

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; 0, sigma^2 I) on the space, shape (B,)."""
        return self.space.log_normal(x, 0.0, self.schedule.sigma**2)

    def log_prob(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "a score-network reference has no closed-form density p_t^ref; the path "
            "weights do not need one (only the prior density, which is exact)"
        )

    def score(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The network's estimate of grad_x log p_t^ref(x) at times t (B,), x (B, dim).

        Returns
        -------
        torch.Tensor
            (B, dim), dtype of ``x``, on the space. Defined for t < T (c_t is floored
            at machine epsilon times sigma^2, where the score is not finite).
        """
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ShapeError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        a, c = self.marginal(t)
        c = c.clamp_min(torch.finfo(x.dtype).eps * self.schedule.sigma**2)
        s2 = self.data_var.to(x.dtype)
        v = a * a * s2 + c
        centred = x - a[:, None] * self.data_mean.to(x.dtype)
        net_dtype = next(self.net.parameters()).dtype
        inputs = (centred / v.sqrt()[:, None]).to(net_dtype)
        out = self.net((t / self.schedule.horizon).to(net_dtype), inputs).to(x.dtype)
        gain = a * s2.sqrt() / (c * v).sqrt()
        return self.space.project(gain[:, None] * out - centred / v[:, None])

    def base_control(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """score(t, x) + x / sigma^2: with it the generative SDE reverses the OU noising."""
        return self.score(t, x) + x / self.schedule.sigma**2

    def extra_repr(self) -> str:
        return f"schedule={self.schedule!r}, space={self.space!r}"

    # -- fitting ------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        samples: Samples | torch.Tensor,
        schedule: Schedule,
        space: GaussianSpace | None = None,
        net: nn.Module | None = None,
        steps: int = 2000,
        batch_size: int = 256,
        lr: float = 1e-3,
        seed: int = 0,
        progress: bool = False,
        *,
        ema_decay: float | None = 0.999,
        device: torch.device | str | None = None,
    ) -> ScoreNetworkReference:
        """Train the score network by DSM on samples of the target; return it frozen.

        Parameters
        ----------
        samples
            :class:`~physsample.Samples` or a tensor (N, dim). Importance log-weights of
            a ``Samples`` are honoured (batches are drawn with probability w_i).
        schedule
            The OU schedule of the sampler (the noising that the sampler reverses).
        space
            Default R^dim; pass ``GaussianSpace.for_system(system)`` for particles.
        net
            Default ``FourierMLP(dim)`` in float32.
        steps, batch_size, lr
            Adam steps (cosine learning rate, gradient clipping at 1), batch size and
            base learning rate.
        seed
            Seed of the batches, times and noise.
        progress
            Show a progress bar.
        ema_decay
            The returned network carries the EMA of the weights (None: the last ones).
        device
            Where to train (default: the samples' device); the reference stays there.

        Returns
        -------
        ScoreNetworkReference
            With ``requires_grad=False`` on every parameter and ``fit_info`` filled.
        """
        x, weights = _data(samples)
        space = space or GaussianSpace(x.shape[1])
        if x.shape[1] != space.dim:
            raise ShapeError(f"samples have dim {x.shape[1]} but the space has {space.dim}")
        x = space.project(x)
        mean = torch.zeros(space.dim, dtype=torch.float64) if space.com_free else x.mean(0)
        var = float(((x - mean) ** 2).sum(1).mean()) / space.effective_dim
        net = net if net is not None else FourierMLP(space.dim)
        reference = cls(schedule, space, net, mean, var)
        device = torch.device(device) if device is not None else x.device
        data = x.to(device, next(net.parameters()).dtype)
        weights = None if weights is None else weights.to(device)

        def loss_fn(model, generator, step):
            return dsm_loss(model, data, batch_size, generator, weights), {}

        trainer = Trainer(
            reference,
            loss_fn,
            lr=lr,
            ema_decay=ema_decay,
            device=device,
            seed=seed,
            progress="DSM fit of the reference" if progress else False,
        )
        trainer.fit(int(steps))
        reference = trainer.ema_model() if ema_decay is not None else reference
        reference.requires_grad_(False).eval()
        tail = trainer.history[-max(1, len(trainer.history) // 10) :]
        reference.fit_info = {
            "loss": sum(row["loss"] for row in tail) / max(len(tail), 1),
            "steps": float(trainer.step),
            "n_samples": float(x.shape[0]),
            "wall_time": trainer.elapsed,
        }
        return reference


def _data(samples: Samples | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Positions (N, dim) in float64 and sampling weights (N,) or None."""
    weights = None
    if isinstance(samples, Samples):
        weights = None if samples.log_weights is None else samples.weights().double()
        samples = samples.x
    x = torch.as_tensor(samples).detach().to(torch.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ShapeError(f"samples must have shape (N >= 2, dim), got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ConfigError("samples contain non-finite positions")
    return x, weights


def dsm_loss(
    reference: ScoreNetworkReference,
    data: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Denoising score matching loss E | sqrt(c_t) score(t, x_t) + eps |^2 (lambda = c_t).

    Parameters
    ----------
    reference
        The reference whose network is trained.
    data
        Samples x_T, shape (N, dim), on the space, in the network's dtype.
    batch_size
        Number of (x_T, t, eps) triples; the times are stratified on [0, T).
    generator
        Source of the batch, the times and the noise (on ``data``'s device).
    weights
        Optional sampling probabilities of the data points, shape (N,).

    Returns
    -------
    torch.Tensor
        Scalar: per-sample squared norm, averaged over the batch. Its minimum, over all
        functions, is attained at the exact noised score.
    """
    n, dev, dtype = data.shape[0], data.device, data.dtype
    if weights is None:
        idx = torch.randint(n, (batch_size,), generator=generator, device=dev)
    else:
        idx = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
    u = torch.rand(batch_size, generator=generator, device=dev, dtype=dtype)
    strata = torch.arange(batch_size, device=dev, dtype=dtype)
    t = reference.schedule.horizon * (strata + u) / batch_size
    eps = reference.space.noise(batch_size, generator, dtype, dev)
    a, c = reference.marginal(t)
    sqrt_c = c.sqrt()[:, None]
    x_t = a[:, None] * data[idx] + sqrt_c * eps
    residual = sqrt_c * reference.score(t, x_t) + eps
    return (residual * residual).sum(1).mean()
