r"""The new individual's hyper-parameters integrated over their posterior (theory page, *Honest uncertainty*).

With different HP, a prediction that plugs in one estimate :math:`\hat x_*` of the new
individual's log HP :math:`x_* = (\log\theta_*, \log\sigma_*^2)` -- fitted from a handful of points
-- ignores how little those points say about it, and its intervals are too narrow. Here
:math:`x_*` is integrated instead:

.. math::

    p(y_p \mid y_*) = \int p(y_p \mid y_*, x)\, p(x \mid y_*)\, dx, \qquad
    p(x \mid y_*) \propto \mathcal N\big(y_*;\ \hat m(t_*),\ \hat K(t_*,t_*) + C_x(t_*,t_*) + \sigma_x^2 I\big)\,
    \mathcal N(x;\ \bar x, S),

where :math:`\mathcal N(\bar x, S)` is the *population distribution* of individual log HP,
estimated (empirical Bayes) from the training individuals' fitted log HP
(:class:`PopulationPrior`). The integral is computed by self-normalised importance sampling with
a multivariate Student-t proposal (5 degrees of freedom) centred on the posterior mode with the
Laplace covariance (inverse Hessian of :math:`-\log p(x \mid y_*)`, by central differences of its
gradient): draws :math:`x_s`, weights :math:`w_s \propto p(x_s \mid y_*)/q(x_s)`. The
prediction is then the Gaussian mixture :math:`\sum_s w_s\,\mathcal N(m_s, V_s)` of the
conditional predictions (:func:`conditional_predictions`); draws of negligible weight (beyond
:data:`MASS_KEPT` of the total) are dropped. With nothing observed (Type II) the draws come from
the population distribution itself, with equal weights.

A point-mass posterior (the proposal's scale going to 0) reduces the mixture to the plug-in
prediction at the mode.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pytensor
import pytensor.tensor as pt
from scipy.special import gammaln

from magma_pymc.compiled import DEFAULT_MODE
from magma_pymc.kernels import Kernel
from magma_pymc.threads import COMPILE_LOCK, PerThreadFunction

__all__ = [
    "PopulationPrior", "HPDraws", "posterior_draws", "population_draws", "log_likelihoods",
    "conditional_predictions", "MASS_KEPT", "STUDENT_DF", "N_DRAWS",
]

#: Importance draws per new individual.
N_DRAWS = 200
#: Degrees of freedom of the Student-t proposal (heavier tails than the Laplace approximation).
STUDENT_DF = 5.0
#: Draws are kept in decreasing weight until they hold this share of the total weight.
MASS_KEPT = 0.999
#: Added to the diagonal of the population covariance of the log HP (a floor of its spread).
POPULATION_RIDGE = 1e-2
_LOG_2PI = np.log(2.0 * np.pi)


@dataclass(frozen=True)
class PopulationPrior:
    r"""Gaussian population distribution :math:`\log\theta_i \sim \mathcal N(\bar x, S)` of the individual log HP.

    ``mean`` :math:`\bar x` and ``cov`` :math:`S` (empirical covariance plus
    :data:`POPULATION_RIDGE` on the diagonal); ``diagonal`` is True when too few training
    individuals were available for a full covariance (stated fallback of :meth:`from_training`).
    """

    mean: np.ndarray
    cov: np.ndarray
    diagonal: bool = False

    @functools.cached_property
    def chol(self) -> np.ndarray:
        """Lower Cholesky factor of the covariance."""
        return np.linalg.cholesky(self.cov)

    @classmethod
    def from_training(cls, log_params: np.ndarray, ridge: float = POPULATION_RIDGE) -> PopulationPrior:
        """Estimate from the ``(M, P + 1)`` fitted log HP of the training individuals.

        A full covariance needs more individuals than log HP (M > P + 1); with
        ``2 <= M <= P + 1`` the covariance is diagonal (per-parameter variances), and with one
        individual there is no spread to estimate: ``ValueError``.
        """
        log_params = np.atleast_2d(np.asarray(log_params, dtype=float))
        n, p = log_params.shape
        if n < 2:
            raise ValueError(
                f"a population distribution of the individual hyper-parameters needs at least 2 training "
                f"individuals with their own HP, got {n}"
            )
        if not np.all(np.isfinite(log_params)):
            raise ValueError("the training individuals' log hyper-parameters contain NaN or inf")
        diagonal = n <= p
        cov = np.atleast_2d(np.cov(log_params, rowvar=False))
        if diagonal:
            cov = np.diag(np.diag(cov))
        return cls(log_params.mean(axis=0), cov + ridge * np.eye(p), diagonal)

    def log_density(self, x: np.ndarray) -> np.ndarray:
        r""":math:`\log\mathcal N(x; \bar x, S)` for ``x`` ``(S, P + 1)``."""
        white = np.linalg.solve(self.chol, (np.atleast_2d(x) - self.mean).T)
        return -0.5 * (white**2).sum(axis=0) - np.log(np.diag(self.chol)).sum() - 0.5 * len(self.mean) * _LOG_2PI


class HPDraws(NamedTuple):
    """Weighted draws of the new individual's log HP."""

    log_params: np.ndarray  # (K, P + 1)
    weights: np.ndarray     # (K,), sum 1
    ess: float              # effective sample size 1 / sum(w^2) of all draws, before dropping
    source: str             # "integrated" (Type I) or "population" (Type II)


# ------------------------------------------------------------------------------- kernels
@functools.cache
def kernel_on_batches(kernel: Kernel, mode: str) -> Callable:
    """Compiled ``(inputs (B, n, d), log_params (B, P)) -> (B, n, n)`` covariances through the PyMC kernel."""
    inputs = pt.tensor3("inputs", dtype="float64")
    log_params = pt.matrix("log_params", dtype="float64")
    with COMPILE_LOCK:  # shared by every fit and prediction: each thread calls its own copy
        return PerThreadFunction(pytensor.function([inputs, log_params], kernel.batched(inputs, log_params), mode=mode))


def _covariances(kernel: Kernel, inputs: np.ndarray, log_params: np.ndarray, mode: str) -> np.ndarray:
    """``(S, n, n)`` covariances of one input set ``(n, d)`` at each row of ``log_params`` ``(S, P + 1)``."""
    batch = np.broadcast_to(inputs, (len(log_params), *inputs.shape))
    return np.asarray(kernel_on_batches(kernel, mode)(batch, log_params[:, :-1]))


def batched_cholesky(matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched lower Cholesky factors ``(..., n, n)`` and where they exist (elsewhere: the identity)."""
    try:
        return np.linalg.cholesky(matrices), np.ones(matrices.shape[:-2], dtype=bool)
    except np.linalg.LinAlgError:  # some matrix is not positive definite: one by one
        flat = matrices.reshape(-1, *matrices.shape[-2:])
        factors, ok = np.empty_like(flat), np.ones(len(flat), dtype=bool)
        for k, matrix in enumerate(flat):
            try:
                factors[k] = np.linalg.cholesky(matrix)
            except np.linalg.LinAlgError:
                factors[k], ok[k] = np.eye(len(matrix)), False
        return factors.reshape(matrices.shape), ok.reshape(matrices.shape[:-2])


# ---------------------------------------------------------------------------- likelihood
def log_likelihoods(
    kernel: Kernel, log_params: np.ndarray, obs_inputs: np.ndarray, obs_outputs: np.ndarray,
    obs_mean: np.ndarray, obs_cov: np.ndarray, jitter: float, mode: str = DEFAULT_MODE,
) -> np.ndarray:
    r"""Log marginal likelihood of the new individual's points at each row of ``log_params``.

    :math:`\log\mathcal N(y_*; \hat m(t_*), \hat K(t_*,t_*) + C_{x_s} + (\sigma_s^2 + j) I)` for each row :math:`x_s` of
    ``log_params`` ``(S, P + 1)``; ``-inf`` where the covariance does not factorise.
    """
    n = len(obs_outputs)
    gamma = obs_cov[None] + _covariances(kernel, obs_inputs, log_params, mode)
    gamma[:, np.arange(n), np.arange(n)] += (np.exp(log_params[:, -1]) + jitter)[:, None]
    chol, ok = batched_cholesky(gamma)
    white = np.linalg.solve(chol, np.broadcast_to(obs_outputs - obs_mean, (len(chol), n))[..., None])[..., 0]
    log_det = np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
    values = -0.5 * (white**2).sum(axis=1) - log_det - 0.5 * n * _LOG_2PI
    return np.where(ok & np.isfinite(values), values, -np.inf)


# -------------------------------------------------------------------------------- draws
def _hessian(log_density: Callable[[np.ndarray], np.ndarray], x: np.ndarray, step: float = 1e-3) -> np.ndarray:
    r"""Hessian of :math:`-` ``log_density`` at ``x`` by central differences of values.

    All :math:`1 + 2p^2` points in one batched call of ``log_density`` (rows in, values out).
    """
    p = len(x)
    eye = step * np.eye(p)
    pairs = [(i, j) for i in range(p) for j in range(i + 1, p)]
    points = [x, *(x + e for e in eye), *(x - e for e in eye)]
    for i, j in pairs:
        points += [x + eye[i] + eye[j], x + eye[i] - eye[j], x - eye[i] + eye[j], x - eye[i] - eye[j]]
    f = -log_density(np.array(points))
    h = np.diag((f[1:p + 1] - 2 * f[0] + f[p + 1:2 * p + 1]) / step**2)
    for k, (i, j) in enumerate(pairs):
        a, b, c, d = f[2 * p + 1 + 4 * k: 2 * p + 5 + 4 * k]
        h[i, j] = h[j, i] = (a - b - c + d) / (4 * step**2)
    return h


def _laplace_cov(hessian: np.ndarray, prior: PopulationPrior) -> np.ndarray:
    """Inverse of the posterior Hessian with eigenvalues floored at the prior precision's smallest.

    A likelihood that is locally convex the wrong way must not make the proposal wider than the prior.
    """
    return floored_inverse(hessian, 1.0 / np.linalg.eigvalsh(prior.cov).max())


def floored_inverse(hessians: np.ndarray, floor: float) -> np.ndarray:
    """Inverse of symmetric matrices ``(..., p, p)`` with their eigenvalues raised to ``floor``.

    Non-finite eigenvalues are set to ``floor``: the covariance of a Laplace approximation that a flat
    or wrongly curved direction cannot blow up.
    """
    values, vectors = np.linalg.eigh(hessians)
    values = np.where(np.isfinite(values), np.maximum(values, floor), floor)
    return (vectors / values[..., None, :]) @ np.swapaxes(vectors, -1, -2)


def _student_t(rng: np.random.Generator, centre: np.ndarray, cov: np.ndarray, n: int, df: float):
    """Draws and log densities of a multivariate Student-t."""
    p = len(centre)
    chol = np.linalg.cholesky(cov)
    z = rng.standard_normal((n, p))
    scale = np.sqrt(df / rng.chisquare(df, size=n))
    x = centre + scale[:, None] * (z @ chol.T)
    white = np.linalg.solve(chol, (x - centre).T)
    maha = (white**2).sum(axis=0)
    log_q = (gammaln((df + p) / 2) - gammaln(df / 2) - 0.5 * p * np.log(df * np.pi) - np.log(np.diag(chol)).sum()
             - 0.5 * (df + p) * np.log1p(maha / df))
    return x, log_q


def _keep_mass(x: np.ndarray, log_w: np.ndarray, source: str) -> HPDraws:
    finite = np.isfinite(log_w)
    if not finite.any():
        raise FloatingPointError("every importance draw of the new individual's HP has zero posterior density")
    w = np.exp(log_w - log_w[finite].max())
    w[~finite] = 0.0
    w /= w.sum()
    ess = 1.0 / float((w**2).sum())
    order = np.argsort(-w)
    n_kept = int(np.searchsorted(np.cumsum(w[order]), MASS_KEPT) + 1)
    keep = order[:n_kept]
    return HPDraws(x[keep], w[keep] / w[keep].sum(), ess, source)


def posterior_draws(
    kernel: Kernel,
    obs_inputs: np.ndarray,
    obs_outputs: np.ndarray,
    obs_mean: np.ndarray,
    obs_cov: np.ndarray,
    prior: PopulationPrior,
    mode_log_params: np.ndarray,
    jitter: float,
    *,
    likelihood_weight: float = 1.0,
    n_draws: int = N_DRAWS,
    seed: int = 0,
    compile_mode: str = DEFAULT_MODE,
) -> HPDraws:
    r"""Importance draws of :math:`p_\eta(x \mid y_*) \propto p(y_* \mid x)^\eta\, \mathcal N(x; \bar x, S)`.

    ``likelihood_weight`` :math:`\eta = 1` (default): the posterior (module docstring), proposal a
    Student-t at ``mode_log_params`` (the posterior mode, the MAP under ``prior``) with the Laplace
    covariance (inverse finite-difference Hessian of :math:`-\log p_\eta` there).
    :math:`0 \le \eta < 1`: the tempered posterior (:mod:`magma_pymc.likelihood_weight`); the proposal is the
    defensive mixture :math:`q = \tfrac12 t + \tfrac12 \mathcal N(\bar x, S)` of that Student-t (its
    covariance from the tempered Hessian) and the population, since the tempered posterior lies
    between the mode and the population: every draw's weight is bounded by
    :math:`2\, p(y_* \mid x)^\eta / \max p^\eta`.
    """
    if not 0.0 <= likelihood_weight <= 1.0:
        raise ValueError(f"likelihood_weight must be in [0, 1], got {likelihood_weight!r}")

    def log_target(x: np.ndarray) -> np.ndarray:
        log_lik = log_likelihoods(kernel, x, obs_inputs, obs_outputs, obs_mean, obs_cov, jitter, compile_mode)
        return likelihood_weight * log_lik + prior.log_density(x)

    rng = np.random.default_rng(seed)
    cov = _laplace_cov(_hessian(log_target, mode_log_params), prior)
    if likelihood_weight == 1.0:
        x, log_q = _student_t(rng, mode_log_params, cov, n_draws, STUDENT_DF)
        x = np.vstack([mode_log_params, x])  # the mode itself, with its proposal density
        log_q = np.append(_student_t_log_density(mode_log_params[None], mode_log_params, cov, STUDENT_DF), log_q)
        return _keep_mass(x, log_target(x) - log_q, "integrated")
    half = n_draws // 2
    from_t, _ = _student_t(rng, mode_log_params, cov, half, STUDENT_DF)
    from_population = prior.mean + rng.standard_normal((n_draws - half, len(prior.mean))) @ prior.chol.T
    x = np.vstack([mode_log_params, from_t, from_population])
    log_q = np.logaddexp(_student_t_log_density(x, mode_log_params, cov, STUDENT_DF), prior.log_density(x))
    return _keep_mass(x, log_target(x) - (log_q - np.log(2.0)), "tempered")


def _student_t_log_density(x: np.ndarray, centre: np.ndarray, cov: np.ndarray, df: float) -> np.ndarray:
    """Log density of a multivariate Student-t at the rows of ``x`` ``(S, p)``."""
    p = len(centre)
    chol = np.linalg.cholesky(cov)
    maha = (np.linalg.solve(chol, (x - centre).T) ** 2).sum(axis=0)
    return (gammaln((df + p) / 2) - gammaln(df / 2) - 0.5 * p * np.log(df * np.pi) - np.log(np.diag(chol)).sum()
            - 0.5 * (df + p) * np.log1p(maha / df))


def population_draws(prior: PopulationPrior, *, n_draws: int = N_DRAWS, seed: int = 0) -> HPDraws:
    """Type II: equal-weight draws from the population distribution itself."""
    rng = np.random.default_rng(seed)
    x = prior.mean + rng.standard_normal((n_draws, len(prior.mean))) @ prior.chol.T
    return HPDraws(x, np.full(n_draws, 1.0 / n_draws), float(n_draws), "population")


# ---------------------------------------------------------------------------- predictions
class ComponentPredictions(NamedTuple):
    """Gaussian conditional predictions, one per HP draw."""

    means: np.ndarray        # (K, n_p)
    latent_covs: np.ndarray  # (K, n_p, n_p) covariance of mu0 + f_*
    noise: np.ndarray        # (K,) sigma_*^2: predictive cov = latent + noise I


def conditional_predictions(
    kernel: Kernel,
    log_params: np.ndarray,
    obs_inputs: np.ndarray,
    obs_outputs: np.ndarray,
    pred_inputs: np.ndarray,
    joint_mean: np.ndarray,
    joint_cov: np.ndarray,
    jitter: float,
    mode: str = DEFAULT_MODE,
) -> ComponentPredictions:
    r"""The plug-in prediction (:func:`magma_pymc.predict_graphs.build_predictive`) at each row of ``log_params``.

    With :math:`\Gamma = \hat K(s,s) + C_x(s,s)` on :math:`s = (t_*, t_p)` and
    :math:`\Gamma_{**} \mathrel{+}= (\sigma_x^2 + j) I`: mean
    :math:`\hat m(t_p) + \Gamma_{p*}\Gamma_{**}^{-1}(y_* - \hat m(t_*))`, latent covariance
    :math:`\Gamma_{pp} - \Gamma_{p*}\Gamma_{**}^{-1}\Gamma_{*p}`, batched over draws.
    """
    n_obs = len(obs_outputs)
    joint_inputs = np.concatenate([obs_inputs, pred_inputs])
    gamma = joint_cov[None] + _covariances(kernel, joint_inputs, log_params, mode)
    noise = np.exp(log_params[:, -1])
    if n_obs == 0:
        means = np.broadcast_to(joint_mean, (len(log_params), len(joint_mean))).copy()
        return ComponentPredictions(means, gamma, noise)
    g_oo = gamma[:, :n_obs, :n_obs].copy()
    g_oo[:, np.arange(n_obs), np.arange(n_obs)] += (noise + jitter)[:, None]
    chol, ok = batched_cholesky(g_oo)
    if not ok.all():
        raise np.linalg.LinAlgError("the new individual's covariance does not factorise at some HP draws")
    reduced = np.linalg.solve(chol, gamma[:, :n_obs, n_obs:])
    white = np.linalg.solve(chol, np.broadcast_to(obs_outputs - joint_mean[:n_obs], (len(chol), n_obs))[..., None])
    means = joint_mean[n_obs:] + (reduced.transpose(0, 2, 1) @ white)[..., 0]
    latent = gamma[:, n_obs:, n_obs:] - reduced.transpose(0, 2, 1) @ reduced
    return ComponentPredictions(means, latent, noise)
