"""A product of Gaussian mixtures over blocks of coordinates, noised in closed form.

When the target factorises over blocks of coordinates, as Manywell-d does over its d/2
double-well pairs, the number of its modes is the product of the blocks' (2^(d/2) for
Manywell): one Gaussian mixture fitted by BIC cannot hold them all, but a mixture per
block can. :class:`BlockMixtureReference` splits the flat coordinates into contiguous
blocks, fits one :class:`~physsample.diffusion.mixture.GMM` to each block's
coordinates, and takes the product law

    p_T^ref(x) = prod_b GMM_b(x_b).

The VP-OU noising acts on each coordinate independently, so every marginal is again a
product, p_t^ref(x) = prod_b sum_k w_bk N(x_b; a_t mu_bk, a_t^2 Sigma_bk + c_t I), with
the same (a_t, c_t) as :class:`~physsample.diffusion.references.GaussianMixtureReference`;
log densities add over blocks and the score is the concatenation of the block scores.
All blocks are evaluated at once: their mixtures are stacked, padded to the largest
number of components with zero-weight components.

Mixtures fitted to MCMC chains that never cross a barrier carry the share of chains
started in each well rather than the target's; :meth:`BlockMixtureReference.reweighted`
re-estimates the block weights by importance sampling against the target.

CoM-free (particle) spaces do not factorise over coordinate blocks and are refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from physsample.diffusion.gaussian import GaussianSpace
from physsample.diffusion.mixture import GMM, fit_gmm
from physsample.diffusion.references import Reference
from physsample.diffusion.schedules import OUSchedule, Schedule
from physsample.errors import ConfigError, ShapeError

__all__ = ["BlockMixtureReference"]


def _check_space(space: GaussianSpace) -> None:
    if space.com_free:
        raise ConfigError(
            "BlockMixtureReference: a centre-of-mass-free (particle) space does not factorise "
            "over coordinate blocks; use GaussianMixtureReference for particle systems"
        )


def _stack(gmms: Sequence[GMM]) -> dict[str, torch.Tensor]:
    """Block mixtures stacked and padded to K = max K_b: means, log-eigenvalues (nb, K, d),
    eigenvectors (nb, K, d, d) and log-weights (nb, K), -inf on padded components."""
    nb, d = len(gmms), gmms[0].dim
    k = max(g.n_components for g in gmms)
    f64 = torch.float64
    out = {
        "means": torch.zeros(nb, k, d, dtype=f64),
        "log_eigvals": torch.zeros(nb, k, d, dtype=f64),
        "eigvecs": torch.eye(d, dtype=f64).repeat(nb, k, 1, 1),
        "log_weights": torch.full((nb, k), -math.inf, dtype=f64),
    }
    for b, g in enumerate(gmms):
        kb = g.n_components
        out["means"][b, :kb] = g.means.detach().to("cpu", f64)
        out["log_eigvals"][b, :kb] = g.log_eigvals.detach().to("cpu", f64)
        if g.eigvecs is not None:
            out["eigvecs"][b, :kb] = g.eigvecs.detach().to("cpu", f64)
        out["log_weights"][b, :kb] = torch.log_softmax(g.logits.detach().to("cpu", f64), 0)
    return out


class BlockMixtureReference(Reference):
    """OU noising of a product of per-block Gaussian mixtures (LRDS on factorised targets).

    Parameters
    ----------
    schedule
        An OU schedule (:class:`~physsample.diffusion.schedules.OUSchedule`).
    gmms
        One mixture per block, all of the same dimension ``block_size``; block b holds
        the flat coordinates ``b * block_size ... (b + 1) * block_size - 1``.
    space
        R^dim with ``dim = len(gmms) * block_size`` (default); CoM-free spaces are refused.

    Attributes
    ----------
    gmms : nn.ModuleList
        The block mixtures (each with the ``fit_info`` of its fit).
    block_size, n_blocks : int

    Examples
    --------
    >>> from physsample.diffusion.schedules import LinearVPSchedule
    >>> g = GMM.from_covariances(torch.tensor([[-2.0], [2.0]]), torch.ones(2, 1))
    >>> ref = BlockMixtureReference(LinearVPSchedule(), [g, g, g])  # 8 modes in R^3
    >>> t = torch.full((4,), 0.5, dtype=torch.float64)
    >>> ref.score(t, torch.zeros(4, 3, dtype=torch.float64)).shape
    torch.Size([4, 3])
    """

    def __init__(
        self, schedule: Schedule, gmms: Sequence[GMM], space: GaussianSpace | None = None
    ) -> None:
        if not isinstance(schedule, OUSchedule):
            raise ConfigError(
                "BlockMixtureReference needs an OU schedule (LinearVPSchedule or "
                f"ConstantOUSchedule), got {type(schedule).__name__}"
            )
        gmms = list(gmms)
        if not gmms or len({g.dim for g in gmms}) != 1:
            raise ShapeError(
                "BlockMixtureReference: give at least one mixture, all of the same dimension; "
                f"got dimensions {[g.dim for g in gmms]}"
            )
        block_size = gmms[0].dim
        space = space or GaussianSpace(len(gmms) * block_size)
        _check_space(space)
        if len(gmms) * block_size != space.dim:
            raise ShapeError(
                f"BlockMixtureReference: {len(gmms)} blocks of size {block_size} do not cover "
                f"the {space.dim} coordinates of the space"
            )
        super().__init__(schedule, space)
        self.gmms = nn.ModuleList(gmms)
        self.block_size, self.n_blocks = block_size, len(gmms)
        for name, value in _stack(gmms).items():
            self.register_buffer(name, value)

    @classmethod
    def fit(
        cls,
        samples: torch.Tensor,
        schedule: Schedule,
        space: GaussianSpace | None = None,
        *,
        block_size: int,
        n_components: int | None = None,
        max_components: int = 10,
        covariance: str = "full",
        seed: int = 0,
        **fit_kwargs,
    ) -> BlockMixtureReference:
        """Fit one mixture per block of ``block_size`` coordinates with :func:`fit_gmm`.

        Parameters
        ----------
        samples
            Approximate target samples, shape (n, dim).
        schedule, space
            As in the constructor (space default R^dim).
        block_size
            Coordinates per block; must divide ``dim`` (2 for Manywell).
        n_components
            Components per block; None chooses by BIC in 1..``max_components``, per block.
        covariance
            ``"full"`` or ``"diag"``.
        seed
            Seed of the k-means++ draws (block b uses ``seed + b``).
        fit_kwargs
            More options of :func:`fit_gmm` (``n_init``, ``search``, ``init_means``, ...).
            ``init_means`` (m, dim) is split into blocks, each block keeping its distinct
            rows (e.g. the two wells of a Manywell pair).
        """
        x = torch.as_tensor(samples).detach().to("cpu", torch.float64)
        if x.ndim != 2:
            raise ShapeError(f"BlockMixtureReference.fit: samples must be (n, dim), got {x.shape}")
        space = space or GaussianSpace(x.shape[1])
        _check_space(space)
        bs = int(block_size)
        if x.shape[1] != space.dim or bs < 1 or space.dim % bs:
            raise ConfigError(
                f"BlockMixtureReference.fit: block_size={block_size} must divide dim="
                f"{space.dim} (samples have {x.shape[1]} coordinates); e.g. block_size=2 "
                "for Manywell"
            )
        init = fit_kwargs.pop("init_means", None)
        gmms = []
        for b in range(space.dim // bs):
            cols = slice(b * bs, (b + 1) * bs)
            if init is not None:
                block_init = torch.as_tensor(init, dtype=torch.float64)[:, cols]
                fit_kwargs["init_means"] = torch.unique(block_init, dim=0)
            gmms.append(
                fit_gmm(
                    x[:, cols],
                    n_components,
                    covariance=covariance,
                    max_components=max_components,
                    seed=int(seed) + b,
                    **fit_kwargs,
                )
            )
        return cls(schedule, gmms, space)

    @property
    def fit_info(self) -> dict[str, float]:
        """Summary of the block fits: blocks, block size, total and largest K, summed BIC."""
        ks = [g.n_components for g in self.gmms]
        info = {"n_blocks": float(self.n_blocks), "block_size": float(self.block_size)}
        info |= {"n_components": float(sum(ks)), "max_block_components": float(max(ks))}
        bics = [g.fit_info.get("bic") for g in self.gmms]
        if all(b is not None for b in bics):
            info["bic"] = float(sum(bics))
        return info

    def marginal(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_t, c_t): mean factor and added variance of p_t^ref, each shaped like t."""
        return self.schedule.noising(torch.full_like(t, self.schedule.horizon), t)

    # -- closed-form marginals ----------------------------------------------------------
    def _components(self, t: torch.Tensor, x: torch.Tensor):
        """Per block and component: eigen-coordinates y of x_b - a mu_bk (B, nb, K, d), the
        variances (B, nb, K, d) and log w_bk + log N (B, nb, K)."""
        a, c = self.marginal(t)
        a, c = a.to(x.dtype).reshape(-1, 1, 1, 1), c.to(x.dtype).reshape(-1, 1, 1, 1)
        var = a * a * self.log_eigvals.to(x.dtype).exp() + c
        xb = x.reshape(x.shape[0], self.n_blocks, 1, self.block_size)
        diff = xb - a * self.means.to(x.dtype)
        y = torch.einsum("bnkd,nkde->bnke", diff, self.eigvecs.to(x.dtype))
        log_n = -0.5 * (
            (y * y / var).sum(-1)
            + torch.log(var).sum(-1)
            + self.block_size * math.log(2.0 * math.pi)
        )
        return y, var, log_n + self.log_weights.to(x.dtype)

    def log_prob(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        _, _, joint = self._components(t, x)
        return torch.logsumexp(joint, dim=-1).sum(dim=-1)

    def block_log_prob(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p_t^(b)(x_b) of every block, shape (B, n_blocks)."""
        _, _, joint = self._components(t, x)
        return torch.logsumexp(joint, dim=-1)

    def score(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        y, var, joint = self._components(t, x)
        resp = torch.softmax(joint, dim=-1)  # (B, nb, K); padded components get 0
        z = torch.einsum("bnke,nkde->bnkd", y / var, self.eigvecs.to(x.dtype))
        return -(resp[..., None] * z).sum(dim=2).reshape(x.shape)

    def base_control(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.score(t, x) + x / self.schedule.sigma**2

    # -- the prior ----------------------------------------------------------------------
    def sample_prior(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        a, c = self.marginal(torch.zeros((), dtype=torch.float64))
        z = self._draw(n, float(a), float(c), generator, dtype or torch.get_default_dtype())
        return z.to(device or z.device)

    def _draw(self, n: int, a: float, c: float, generator, dtype) -> torch.Tensor:
        """Exact draws (n, dim) of the product of noised mixtures, on the generator's device."""
        dev = generator.device if generator is not None else self.device
        probs = self.log_weights.to(device=dev).exp()  # (nb, K)
        idx = torch.multinomial(probs, int(n), replacement=True, generator=generator).T
        eps = torch.randn(
            (int(n), self.n_blocks, self.block_size), generator=generator, dtype=dtype, device=dev
        )
        blocks = torch.arange(self.n_blocks, device=dev)
        lam = self.log_eigvals.to(device=dev, dtype=dtype).exp()[blocks, idx]  # (n, nb, d)
        u = self.eigvecs.to(device=dev, dtype=dtype)[blocks, idx]  # (n, nb, d, d)
        z = (u @ (torch.sqrt(a * a * lam + c) * eps)[..., None])[..., 0]
        z = a * self.means.to(device=dev, dtype=dtype)[blocks, idx] + z
        return z.reshape(int(n), self.dim)

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x.new_zeros(x.shape[0]), x)

    # -- importance-sampling correction of the block weights ---------------------------
    def reweighted(
        self,
        log_prob: Callable[[torch.Tensor], torch.Tensor],
        n_samples: int = 10_000,
        n_iter: int = 2,
        generator: torch.Generator | None = None,
    ) -> BlockMixtureReference:
        """A copy whose component weights are re-estimated against the target.

        MCMC chains rarely cross barriers, so a mixture fitted to them inherits the
        share of chains started in each well, not the target's. Each iteration draws
        ``n_samples`` points from the mixture product q (the target end, t = T),
        importance-weights them by W ~ pi~ / q, truncated at sqrt(n) times their mean
        (Ionides 2008: a few huge weights would otherwise decide the update), and sets
        every block's weights to the weighted mean responsibilities sum_i W_i r_bk(x_i)
        (an EM step on the weights; means and covariances are kept). The reference
        stays a fixed, exactly evaluated law, so the sampler's path weights remain
        unbiased; the cost is ``n_samples * n_iter`` target evaluations.

        Parameters
        ----------
        log_prob
            Unnormalised target log density, (n, dim) -> (n,), e.g. ``system.log_prob``.
        n_samples, n_iter
            Draws per iteration and iterations.
        generator
            Random state of the draws.

        Returns
        -------
        BlockMixtureReference
            The new reference; ``reweight_info`` holds the importance-sampling ESS
            fraction of every iteration (before truncation) and the number of target
            evaluations.
        """
        if int(n_samples) < 2 or int(n_iter) < 1:
            raise ConfigError(
                f"reweighted: need n_samples >= 2 and n_iter >= 1, got {n_samples}, {n_iter}"
            )
        reference, ess = self, []
        t_end = torch.full((int(n_samples),), self.schedule.horizon, dtype=torch.float64)
        for _ in range(int(n_iter)):
            x = reference._draw(int(n_samples), 1.0, 0.0, generator, torch.float64)
            x = x.to(reference.device)
            with torch.no_grad():
                _, _, joint = reference._components(t_end.to(x.device), x)
                log_q = torch.logsumexp(joint, dim=-1).sum(dim=-1)
                w = torch.softmax(log_prob(x).to(torch.float64) - log_q, dim=0)
            ess.append(float(1.0 / (w * w).sum()) / int(n_samples))
            w = w.clamp_max(int(n_samples) ** -0.5)  # truncated IS: at most sqrt(n) x mean
            w = w / w.sum()
            weights = torch.einsum("i,ibk->bk", w, torch.softmax(joint, dim=-1)).cpu()
            reference = reference._with_weights(weights)
        reference.reweight_info = {"is_ess": ess, "evaluations": int(n_samples) * int(n_iter)}
        return reference

    def _with_weights(self, weights: torch.Tensor) -> BlockMixtureReference:
        """A copy with new component weights (nb, K); a floor of 1e-12 keeps them positive."""
        gmms = []
        for b, g in enumerate(self.gmms):
            w = weights[b, : g.n_components].clamp_min(1e-12)
            vecs = None if g.eigvecs is None else g.eigvecs.cpu()
            new = GMM(g.means.cpu(), g.log_eigvals.exp().cpu(), vecs, w)
            new.fit_info = dict(g.fit_info)
            gmms.append(new)
        return type(self)(self.schedule, gmms, self.space).to(self.device)

    def extra_repr(self) -> str:
        ks = [g.n_components for g in self.gmms]
        return (
            f"schedule={self.schedule!r}, n_blocks={self.n_blocks}, "
            f"block_size={self.block_size}, components={ks}"
        )
