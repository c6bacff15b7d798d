"""Gaussian mixtures stored as eigendecompositions, and their fit by EM.

:class:`GMM` is the density sum_k w_k N(mu_k, Sigma_k) with Sigma_k = U_k diag(lam_k) U_k^T.
Storing (U_k, lam_k) makes the variance-preserving noising of the mixture cheap and
exact: if X ~ GMM then a X + sqrt(c) eps ~ sum_k w_k N(a mu_k, U_k diag(a^2 lam_k + c) U_k^T),
so every density, score and sample below takes a ``scale`` a and an ``extra_var`` c.

:func:`fit_gmm` fits a mixture to samples by expectation-maximisation (EM), choosing the
number of components by the Bayesian information criterion (BIC) when asked.
"""

from __future__ import annotations

import math

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
def _kmeans_pp(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: k rows of x, each drawn with probability ~ squared distance."""
    first = torch.randint(x.shape[0], (1,), generator=generator)
    centres = x[first]
    for _ in range(1, k):
        d2 = torch.cdist(x, centres).min(dim=1).values ** 2
        probs = d2 / d2.sum() if float(d2.sum()) > 0 else torch.ones_like(d2)
        centres = torch.cat([centres, x[torch.multinomial(probs, 1, generator=generator)]])
    return centres


def _m_step(x, resp, diagonal: bool, reg: float):
    """Weights (K,), means (K, d) and covariances (K, d, d) or variances (K, d)."""
    nk = resp.sum(dim=0) + 10 * torch.finfo(x.dtype).eps
    means = resp.T @ x / nk[:, None]
    diff = x[:, None, :] - means  # (n, K, d)
    if diagonal:
        cov = torch.einsum("nk,nkd->kd", resp, diff * diff) / nk[:, None] + reg
    else:
        cov = torch.einsum("nkd,nke->kde", resp[:, :, None] * diff, diff) / nk[:, None, None]
        cov = cov + reg * torch.eye(x.shape[1], dtype=x.dtype)
    return nk / x.shape[0], means, cov


def _component_log_density(x, means, cov, diagonal: bool) -> torch.Tensor:
    """log N(x_i; mu_k, Sigma_k), shape (n, K)."""
    diff = x[:, None, :] - means
    d = x.shape[1]
    if diagonal:
        quad = (diff * diff / cov).sum(dim=-1)
        logdet = torch.log(cov).sum(dim=-1)
    else:
        chol = torch.linalg.cholesky(cov)  # (K, d, d)
        sol = torch.linalg.solve_triangular(chol, diff.permute(1, 2, 0), upper=False)
        quad = (sol * sol).sum(dim=1).T
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(dim=-1)
    return -0.5 * (quad + logdet + d * math.log(2 * math.pi))


def _em(x, k, diagonal, generator, max_iter, tol, reg):
    """One EM run from a k-means++ start; returns (mean log-likelihood, weights, means, cov)."""
    centres = _kmeans_pp(x, k, generator)
    resp = torch.nn.functional.one_hot(torch.cdist(x, centres).argmin(dim=1), k).to(x.dtype)
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
    return ll, weights, means, cov


def _n_parameters(k: int, d: int, diagonal: bool) -> int:
    return (k - 1) + k * d + k * (d if diagonal else d * (d + 1) // 2)


def fit_gmm(
    x: torch.Tensor,
    n_components: int | None = None,
    *,
    covariance: str = "full",
    max_components: int = 10,
    n_init: int = 3,
    max_iter: int = 300,
    tol: float = 1e-5,
    reg_covar: float = 1e-6,
    seed: int = 0,
) -> GMM:
    """Fit a Gaussian mixture to samples by EM (k-means++ starts, best of ``n_init``).

    Parameters
    ----------
    x
        Samples, shape (n, d); fitted in float64 on the CPU.
    n_components
        K; None chooses K in 1..max_components by the lowest BIC,
        -2 n loglik + n_parameters log n.
    covariance
        ``"full"`` or ``"diag"``.
    max_iter, tol
        EM stops after ``max_iter`` iterations or when the mean log-likelihood per
        sample rises by less than ``tol``.
    reg_covar
        Added to every covariance's diagonal, relative to the mean per-coordinate
        variance of ``x`` (keeps covariances positive definite).
    seed
        Seed of the k-means++ draws.

    Returns
    -------
    GMM
        float64 buffers on the CPU; ``fit_info`` holds ``log_likelihood`` (mean per
        sample), ``bic`` and ``n_components``.
    """
    if covariance not in ("full", "diag"):
        raise ConfigError(f"fit_gmm: covariance must be 'full' or 'diag', got {covariance!r}")
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ShapeError(f"fit_gmm: x must have shape (n >= 2, d), got {tuple(x.shape)}")
    n, d = x.shape
    diagonal = covariance == "diag"
    reg = float(reg_covar) * float(x.var(dim=0).mean().clamp_min(1e-300))
    generator = torch.Generator().manual_seed(int(seed))
    candidates = [int(n_components)] if n_components else range(1, min(max_components, n) + 1)
    best = None
    for k in candidates:
        fits = [_em(x, k, diagonal, generator, max_iter, tol, reg) for _ in range(n_init)]
        ll, weights, means, cov = max(fits, key=lambda fit: fit[0])
        bic = -2 * n * ll + _n_parameters(k, d, diagonal) * math.log(n)
        if best is None or bic < best[0]:
            best = (bic, ll, weights, means, cov)
    bic, ll, weights, means, cov = best
    gmm = GMM.from_covariances(means, cov, weights)
    gmm.fit_info = {"log_likelihood": ll, "bic": bic, "n_components": float(means.shape[0])}
    return gmm
