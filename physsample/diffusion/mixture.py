"""Gaussian mixtures stored as eigendecompositions, and their fit by EM.

:class:`GMM` is the density sum_k w_k N(mu_k, Sigma_k) with Sigma_k = U_k diag(lam_k) U_k^T.
Storing (U_k, lam_k) makes the variance-preserving noising of the mixture cheap and
exact: if X ~ GMM then a X + sqrt(c) eps ~ sum_k w_k N(a mu_k, U_k diag(a^2 lam_k + c) U_k^T),
so every density, score and sample below takes a ``scale`` a and an ``extra_var`` c.

:func:`fit_gmm` fits a mixture to samples by expectation-maximisation (EM), choosing the
number of components by the Bayesian information criterion (BIC) when asked. EM starts
from the best of a few k-means clusterings (greedy k-means++ seeding, Lloyd iterations),
seeded where possible from known centres (``init_means``) or from the fit with fewer
components, so that one EM run per K is enough even for many well separated modes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from physsample.errors import ConfigError, ShapeError

__all__ = ["GMM", "fit_gmm"]

Scalar = float | torch.Tensor


def _per_sample(v: Scalar, like: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) tensor as shape (B or 1, 1, 1) in ``like``'s dtype and device."""
    v = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    return v.reshape(-1, 1, 1)


class GMM(nn.Module):
    """A Gaussian mixture with eigendecomposed covariances.

    Parameters
    ----------
    means
        Shape (K, d).
    eigvals
        Covariance eigenvalues, shape (K, d), positive.
    eigvecs
        Orthogonal eigenvectors, shape (K, d, d) (columns), or None for diagonal
        covariances (U_k = I).
    weights
        Shape (K,), positive, normalised here; None for equal weights.
    trainable
        Make the means, log-eigenvalues and weight logits ``nn.Parameter``s (the
        eigenvectors stay fixed), e.g. for a learned mixture prior.

    Examples
    --------
    >>> gmm = GMM.from_covariances(torch.zeros(2, 2), torch.eye(2).expand(2, 2, 2))
    >>> gmm.log_prob(torch.zeros(1, 2)).shape
    torch.Size([1])
    """

    def __init__(
        self,
        means: torch.Tensor,
        eigvals: torch.Tensor,
        eigvecs: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        trainable: bool = False,
    ) -> None:
        super().__init__()
        f64 = torch.float64
        means = torch.as_tensor(means, dtype=f64).detach().clone()
        eigvals = torch.as_tensor(eigvals, dtype=f64).detach()
        k, d = _check_shapes(means, eigvals, eigvecs, weights)
        w = torch.ones(k) if weights is None else torch.as_tensor(weights).detach()
        w = w.to(f64)
        if not bool(torch.all(w > 0)) or not bool(torch.all(eigvals > 0)):
            raise ConfigError("GMM: weights and covariance eigenvalues must be positive")
        tensors = {
            "means": means,
            "log_eigvals": torch.log(eigvals),
            "logits": torch.log(w / w.sum()),
        }
        for name, value in tensors.items():
            if trainable:
                setattr(self, name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)
        vecs = None if eigvecs is None else torch.as_tensor(eigvecs, dtype=f64).detach().clone()
        self.register_buffer("eigvecs", vecs)
        self.fit_info: dict[str, float] = {}

    @classmethod
    def from_covariances(
        cls,
        means: torch.Tensor,
        covariances: torch.Tensor,
        weights: torch.Tensor | None = None,
        trainable: bool = False,
    ) -> GMM:
        """Build from covariances: full (K, d, d) or diagonal variances (K, d)."""
        cov = torch.as_tensor(covariances, dtype=torch.float64)
        if cov.ndim == 2:
            return cls(means, cov, None, weights, trainable)
        if cov.ndim != 3 or cov.shape[-1] != cov.shape[-2]:
            raise ShapeError(
                f"GMM: covariances must be (K, d, d) or (K, d), got {tuple(cov.shape)}"
            )
        lam, vecs = torch.linalg.eigh(0.5 * (cov + cov.transpose(-1, -2)))
        return cls(means, lam, vecs, weights, trainable)

    # -- properties -------------------------------------------------------------------
    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def weights(self) -> torch.Tensor:
        """Normalised weights (K,)."""
        return torch.softmax(self.logits, dim=0)

    def covariances(self) -> torch.Tensor:
        """Full covariance matrices (K, d, d)."""
        lam = self.log_eigvals.exp()
        if self.eigvecs is None:
            return torch.diag_embed(lam)
        return self.eigvecs @ torch.diag_embed(lam) @ self.eigvecs.transpose(-1, -2)

    # -- densities --------------------------------------------------------------------
    def _rotated(self, x: torch.Tensor, scale: Scalar, extra_var: Scalar):
        """Eigen-coordinates of x - a mu_k (B, K, d) and component variances (B or 1, K, d)."""
        a, c = _per_sample(scale, x), _per_sample(extra_var, x)
        mu, log_lam = self.means.to(x.dtype), self.log_eigvals.to(x.dtype)
        var = a * a * log_lam.exp() + c
        diff = x[:, None, :] - a * mu
        if self.eigvecs is not None:
            diff = torch.einsum("bkd,kde->bke", diff, self.eigvecs.to(x.dtype))
        return diff, var

    def component_log_prob(
        self, x: torch.Tensor, scale: Scalar = 1.0, extra_var: Scalar = 0.0
    ) -> torch.Tensor:
        """log N(x; a mu_k, a^2 Sigma_k + c I) for every component.

        Parameters
        ----------
        x
            Shape (B, d).
        scale, extra_var
            a and c: floats, 0-dim tensors or shape (B,).

        Returns
        -------
        torch.Tensor
            Shape (B, K).
        """
        y, var = self._rotated(x, scale, extra_var)
        quad = (y * y / var).sum(dim=-1)
        return -0.5 * (quad + torch.log(var).sum(dim=-1) + self.dim * math.log(2.0 * math.pi))

    def log_prob(
        self, x: torch.Tensor, scale: Scalar = 1.0, extra_var: Scalar = 0.0
    ) -> torch.Tensor:
        """log density of the noised mixture a X + sqrt(c) eps at x (B, d); returns (B,)."""
        log_w = torch.log_softmax(self.logits.to(x.dtype), dim=0)
        return torch.logsumexp(self.component_log_prob(x, scale, extra_var) + log_w, dim=1)

    def score(self, x: torch.Tensor, scale: Scalar = 1.0, extra_var: Scalar = 0.0) -> torch.Tensor:
        """Closed-form grad_x log density of the noised mixture, shape (B, d)."""
        y, var = self._rotated(x, scale, extra_var)
        quad = (y * y / var).sum(dim=-1)
        log_n = -0.5 * (quad + torch.log(var).sum(dim=-1))
        resp = torch.softmax(log_n + torch.log_softmax(self.logits.to(x.dtype), dim=0), dim=1)
        z = y / var  # (B, K, d), eigen-coordinates of Sigma^-1 (x - a mu)
        if self.eigvecs is not None:
            z = torch.einsum("bke,kde->bkd", z, self.eigvecs.to(x.dtype))
        return -(resp[:, :, None] * z).sum(dim=1)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        scale: Scalar = 1.0,
        extra_var: Scalar = 0.0,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Exact draws of a X + sqrt(c) eps, shape (n, d), on the generator's device.

        ``scale`` and ``extra_var`` are scalars here.
        """
        dtype = dtype or torch.get_default_dtype()
        dev = generator.device if generator is not None else self.means.device
        probs = self.weights.detach().to(device=dev, dtype=torch.float64)
        idx = torch.multinomial(probs, int(n), replacement=True, generator=generator)
        eps = torch.randn((int(n), self.dim), generator=generator, dtype=dtype, device=dev)
        a = torch.as_tensor(scale, dtype=dtype, device=dev)
        c = torch.as_tensor(extra_var, dtype=dtype, device=dev)
        lam = self.log_eigvals.to(device=dev, dtype=dtype).exp()
        z = torch.sqrt(a * a * lam[idx] + c) * eps
        if self.eigvecs is not None:
            z = (self.eigvecs.to(device=dev, dtype=dtype)[idx] @ z[:, :, None])[:, :, 0]
        return a * self.means.to(device=dev, dtype=dtype)[idx] + z

    def extra_repr(self) -> str:
        kind = "diag" if self.eigvecs is None else "full"
        return f"n_components={self.n_components}, dim={self.dim}, covariance={kind}"


def _check_shapes(means, eigvals, eigvecs, weights) -> tuple[int, int]:
    if means.ndim != 2:
        raise ShapeError(f"GMM: means must have shape (K, d), got {tuple(means.shape)}")
    k, d = means.shape
    if tuple(eigvals.shape) != (k, d):
        raise ShapeError(f"GMM: eigvals must have shape ({k}, {d}), got {tuple(eigvals.shape)}")
    if eigvecs is not None and tuple(eigvecs.shape) != (k, d, d):
        raise ShapeError(
            f"GMM: eigvecs must have shape ({k}, {d}, {d}), got {tuple(eigvecs.shape)}"
        )
    if weights is not None and tuple(weights.shape) != (k,):
        raise ShapeError(f"GMM: weights must have shape ({k},), got {tuple(weights.shape)}")
    return k, d


# -- EM -------------------------------------------------------------------------------
def _squared_distances(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """|x_i - c_k|^2, shape (n, K), never negative."""
    return torch.cdist(x, centres).square()


def _greedy_kmeans_pp(
    x: torch.Tensor, k: int, generator: torch.Generator, centres: torch.Tensor | None = None
) -> torch.Tensor:
    """Greedy k-means++ seeding: ``centres`` (m, d) completed to k rows of x.

    Every new centre is the best of 2 + floor(log k) rows drawn with probability
    proportional to the squared distance D^2 to the nearest centre so far: the one that
    lowers the k-means potential sum_i D_i^2 most. Without ``centres`` the first is a
    uniformly random row. Returns (k, d).
    """
    if centres is None or centres.shape[0] == 0:
        centres = x[torch.randint(x.shape[0], (1,), generator=generator)]
    d2 = _squared_distances(x, centres).min(dim=1).values
    n_candidates = 2 + int(math.log(k))
    new = []
    for _ in range(centres.shape[0], k):
        total = float(d2.sum())
        probs = d2 / total if total > 0 else torch.ones_like(d2)
        idx = torch.multinomial(probs, n_candidates, replacement=True, generator=generator)
        trial = torch.minimum(d2[:, None], _squared_distances(x, x[idx]))  # (n, L)
        best = int(trial.sum(dim=0).argmin())
        d2 = trial[:, best]
        new.append(x[idx[best]][None])
    return torch.cat([centres, *new])


def _lloyd(x: torch.Tensor, centres: torch.Tensor, n_iter: int) -> tuple[torch.Tensor, float]:
    """At most ``n_iter`` k-means (Lloyd) iterations from ``centres``.

    Returns the labels (n,) and the k-means potential sum_i min_k |x_i - c_k|^2. A
    centre left without points stays where it is.
    """
    k = centres.shape[0]
    d2 = _squared_distances(x, centres)
    labels = d2.argmin(dim=1)
    for _ in range(n_iter):
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
        d2 = _squared_distances(x, centres)
        new = d2.argmin(dim=1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels, float(d2.min(dim=1).values.sum())


def _kmeans(x, k: int, generator, first, n_starts: int, n_iter: int) -> torch.Tensor:
    """Labels (n,) of the best (lowest potential) of ``n_starts`` k-means runs.

    Each run is greedy k-means++ seeding then Lloyd iterations; the first run's seeding
    starts from the centres ``first`` (m <= k rows, or None).
    """
    runs = [
        _lloyd(x, _greedy_kmeans_pp(x, k, generator, first if i == 0 else None), n_iter)
        for i in range(n_starts)
    ]
    return min(runs, key=lambda run: run[1])[0]


def _m_step(x, resp, diagonal: bool, reg: float):
    """Weights (K,), means (K, d) and covariances (K, d, d) or variances (K, d).

    The covariances come from the weighted second moments, E_k[x x^T] - mu_k mu_k^T,
    which is accurate because ``x`` is centred (see :func:`fit_gmm`).
    """
    nk = resp.sum(dim=0) + 10 * torch.finfo(x.dtype).eps
    means = resp.T @ x / nk[:, None]
    if diagonal:
        var = (resp.T @ (x * x)) / nk[:, None] - means * means
        return nk / x.shape[0], means, var.clamp_min(0.0) + reg
    second = (x.T[None] * resp.T[:, None, :]) @ x  # (K, d, d)
    cov = second / nk[:, None, None] - means[:, :, None] * means[:, None, :]
    return nk / x.shape[0], means, cov + reg * torch.eye(x.shape[1], dtype=x.dtype)


def _component_log_density(x, means, cov, diagonal: bool) -> torch.Tensor:
    """log N(x_i; mu_k, Sigma_k), shape (n, K).

    The whitened residuals are laid out (n, d, K), so that the sum over coordinates
    runs over a middle dimension (much faster than a sum over a last dimension of size d).
    """
    n, d = x.shape
    k = means.shape[0]
    if diagonal:
        y = (x[:, :, None] - means.T) * torch.rsqrt(cov).T  # (n, d, K)
        logdet = torch.log(cov).sum(dim=-1)
    else:
        chol = torch.linalg.cholesky(cov)  # (K, d, d), Sigma = L L^T
        eye = torch.eye(d, dtype=x.dtype).expand(k, d, d)
        white = torch.linalg.solve_triangular(chol, eye, upper=False).mT  # L^-T, (K, d, d)
        flat = white.permute(1, 2, 0).reshape(d, d * k)
        shift = (means[:, None, :] @ white)[:, 0, :].T.reshape(d * k)
        y = torch.addmm(-shift, x, flat).view(n, d, k)  # (x - mu_k) L_k^-T
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(dim=-1)
    quad = y.square().sum(dim=1)
    return -0.5 * (quad + logdet + d * math.log(2 * math.pi))


class _Fit(NamedTuple):
    """One EM run: mean log-likelihood per sample and the mixture's parameters."""

    log_likelihood: float
    weights: torch.Tensor
    means: torch.Tensor
    cov: torch.Tensor


def _em(x, labels, k: int, *, diagonal: bool, max_iter: int, tol: float, reg: float) -> _Fit:
    """EM with k components from a hard assignment ``labels`` (n,)."""
    resp = torch.nn.functional.one_hot(labels, k).to(x.dtype)
    previous = -math.inf
    for _ in range(max_iter):
        weights, means, cov = _m_step(x, resp, diagonal, reg)
        joint = _component_log_density(x, means, cov, diagonal) + torch.log(weights)
        norm = torch.logsumexp(joint, dim=1)
        resp = torch.exp(joint - norm[:, None])
        ll = float(norm.mean())
        if ll - previous < tol:
            break
        previous = ll
    return _Fit(ll, weights, means, cov)


def _n_parameters(k: int, d: int, diagonal: bool) -> int:
    return (k - 1) + k * d + k * (d if diagonal else d * (d + 1) // 2)


def _check_options(covariance: str, search: str, n_init: int, kmeans_starts: int) -> None:
    if covariance not in ("full", "diag"):
        raise ConfigError(f"fit_gmm: covariance must be 'full' or 'diag', got {covariance!r}")
    if search not in ("grid", "all"):
        raise ConfigError(f"fit_gmm: search must be 'grid' or 'all', got {search!r}")
    for name, value in (("n_init", n_init), ("kmeans_starts", kmeans_starts)):
        if int(value) < 1:
            raise ConfigError(f"fit_gmm: {name} must be at least 1, got {value}")


def _check_init_means(init_means, d: int) -> torch.Tensor | None:
    if init_means is None:
        return None
    init = torch.as_tensor(init_means).detach().to("cpu", torch.float64)
    if init.ndim != 2 or init.shape[1] != d or init.shape[0] < 1:
        raise ShapeError(
            f"fit_gmm: init_means must have shape (m >= 1, {d}), got {tuple(init.shape)}"
        )
    return init


class _Fitter:
    """Best-of-``n_init`` EM fits of centred data, for any K, remembered with their BIC.

    Every EM run starts from the best of ``kmeans["n_starts"]`` k-means runs. The first
    k-means run of the first EM run for K is seeded from the given means (if there are
    at most K of them) or from the fit of the largest smaller K made so far, whichever
    has more rows; all other seedings start afresh.
    """

    def __init__(self, x, init, generator, n_init: int, kmeans: dict, em: dict) -> None:
        self.x, self.init, self.generator, self.n_init = x, init, generator, int(n_init)
        self.kmeans, self.em = kmeans, em
        self.fits: dict[int, tuple[float, _Fit]] = {}

    def bic(self, k: int) -> float:
        """BIC of the best fit with k components (fitted on first use)."""
        if k not in self.fits:
            x, first = self.x, self._first_start(k)
            fits = []
            for i in range(self.n_init):
                labels = _kmeans(x, k, self.generator, first if i == 0 else None, **self.kmeans)
                fits.append(_em(x, labels, k, **self.em))
            fit = max(fits, key=lambda f: f.log_likelihood)
            n, d = x.shape
            n_par = _n_parameters(k, d, self.em["diagonal"])
            self.fits[k] = (-2 * n * fit.log_likelihood + n_par * math.log(n), fit)
        return self.fits[k][0]

    def _first_start(self, k: int) -> torch.Tensor | None:
        smaller = [j for j in self.fits if j < k]
        options = [self.fits[max(smaller)][1].means] if smaller else []
        if self.init is not None and self.init.shape[0] <= k:
            options.append(self.init)
        return max(options, key=lambda c: c.shape[0], default=None)


def _coarse_grid(max_k: int) -> list[int]:
    """1, 2, 3, 4, 6, 9, 14, 21, ... (ratio about 1.5), then max_k."""
    grid, k = [], 1
    while k < max_k:
        grid.append(k)
        k = max(k + 1, round(1.5 * k))
    return [*grid, max_k]


def _search(fitter: _Fitter, max_k: int, search: str) -> int:
    """K in 1..max_k with the lowest BIC: every K, or a coarse grid refined around its best."""
    if search == "all":
        candidates = list(range(1, max_k + 1))
    else:
        grid = _coarse_grid(max_k)
        i = min(range(len(grid)), key=lambda j: fitter.bic(grid[j]))
        candidates = range(grid[max(i - 1, 0)] + 1, grid[min(i + 1, len(grid) - 1)])
    for k in candidates:
        fitter.bic(k)
    return min(fitter.fits, key=fitter.bic)


def fit_gmm(
    x: torch.Tensor,
    n_components: int | None = None,
    *,
    covariance: str = "full",
    max_components: int = 10,
    search: str = "grid",
    n_init: int = 1,
    init_means: torch.Tensor | None = None,
    max_iter: int = 300,
    tol: float = 1e-5,
    reg_covar: float = 1e-6,
    kmeans_starts: int = 3,
    lloyd_iter: int = 10,
    seed: int = 0,
) -> GMM:
    """Fit a Gaussian mixture to samples by EM, choosing K by BIC if not given.

    Every EM run starts from the hard assignment of the best (lowest sum of squared
    distances) of ``kmeans_starts`` k-means clusterings: greedy k-means++ seeding (each
    new centre the best of 2 + log K candidates drawn with probability ~ squared
    distance to the nearest centre) and up to ``lloyd_iter`` Lloyd iterations. The
    first seeding of the first run for K starts from ``init_means`` (if there are at
    most K) or from the means of the fit with the largest smaller K made so far,
    whichever has more rows; all other seedings start afresh. Of ``n_init`` EM runs
    the most likely is kept.

    Parameters
    ----------
    x
        Samples, shape (n, d); fitted in float64 on the CPU.
    n_components
        K; None chooses K in 1..max_components by the lowest BIC,
        -2 n loglik + n_parameters log n.
    covariance
        ``"full"`` or ``"diag"``.
    search
        How K is searched: ``"grid"`` fits K = 1, 2, 3, 4, 6, 9, 14, 21, ...
        (ratio about 1.5) and ``max_components``, then every K between the two grid
        neighbours of the best; ``"all"`` fits every K.
    n_init
        EM runs per K.
    init_means
        Known centres, shape (m, d) in the coordinates of ``x``, e.g. the modes that
        MCMC was started from; they seed the first run for every K >= m.
    max_iter, tol
        EM stops after ``max_iter`` iterations or when the mean log-likelihood per
        sample rises by less than ``tol``.
    reg_covar
        Added to every covariance's diagonal, relative to the mean per-coordinate
        variance of ``x`` (keeps covariances positive definite).
    kmeans_starts, lloyd_iter
        k-means clusterings per EM run (the best is kept) and most Lloyd iterations
        of each.
    seed
        Seed of the k-means++ draws.

    Returns
    -------
    GMM
        float64 buffers on the CPU; ``fit_info`` holds ``log_likelihood`` (mean per
        sample), ``bic`` and ``n_components``.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.cat([torch.randn(200, 2, generator=g) - 4, torch.randn(200, 2, generator=g) + 4])
    >>> fit_gmm(x, max_components=4).n_components
    2
    """
    _check_options(covariance, search, n_init, kmeans_starts)
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ShapeError(f"fit_gmm: x must have shape (n >= 2, d), got {tuple(x.shape)}")
    n, d = x.shape
    centre = x.mean(dim=0)
    x = x - centre  # fitted centred: the second moments below then lose no precision
    init = _check_init_means(init_means, d)
    init = None if init is None else init - centre
    reg = float(reg_covar) * float(x.var(dim=0).mean().clamp_min(1e-300))
    em = {"diagonal": covariance == "diag", "max_iter": max_iter, "tol": tol, "reg": reg}
    kmeans = {"n_starts": int(kmeans_starts), "n_iter": int(lloyd_iter)}
    generator = torch.Generator().manual_seed(int(seed))
    fitter = _Fitter(x, init, generator, n_init, kmeans, em)
    if n_components:
        k = int(n_components)
    else:
        k = _search(fitter, min(int(max_components), n), search)
    fitter.bic(k)
    bic, fit = fitter.fits[k]
    gmm = GMM.from_covariances(fit.means + centre, fit.cov, fit.weights)
    gmm.fit_info = {
        "log_likelihood": fit.log_likelihood,
        "bic": bic,
        "n_components": float(fit.means.shape[0]),
    }
    return gmm
