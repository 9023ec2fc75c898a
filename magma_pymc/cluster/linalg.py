r"""NumPy building blocks of the MagmaClust variational E-step, batched over clusters and individuals.

Notation as :mod:`magma_pymc.hyperposterior` (docs: *Clustering*): individual :math:`i` observed at
:math:`t_i` (index into the union grid :math:`t`, padded to ``N_max`` slots), residuals
:math:`r_i = y_i - m(t_i)`, :math:`\Psi_i = L_i L_i^\top`, :math:`A_i = L_i^{-1}`, responsibilities
:math:`\tau_{ik}`. For each cluster :math:`k` the data enter :math:`q(\mu_k)` through the weighted
information form

.. math::

    S_k = \sum_i \tau_{ik} P_i^\top \Psi_i^{-1} P_i, \qquad b_k = \sum_i \tau_{ik} P_i^\top \Psi_i^{-1} r_i,

and, with :math:`L_k = \mathrm{chol}(K_k + jI)`, the whitened closed form (no :math:`K_k^{-1}`)

.. math::

    B_k = I + L_k^\top S_k L_k,\quad \alpha_k = B_k^{-1} L_k^\top b_k,\quad
    \hat m_k - m = L_k \alpha_k,\quad \hat K_k = V_k^\top V_k,\ V_k = L_{B_k}^{-1} L_k^\top,

    \mathrm{KL}(q(\mu_k) \,\|\, p(\mu_k)) = \tfrac12\big(\mathrm{tr} B_k^{-1} + \|\alpha_k\|^2 - N\big)
    + \sum_j \log (L_{B_k})_{jj}.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.linalg import solve_triangular

__all__ = [
    "LOG_2PI",
    "ClusterPosterior",
    "IndividualTerms",
    "cluster_posteriors",
    "expected_from_deviations",
    "expected_log_likelihoods",
    "individual_terms",
    "mixture_scatter",
    "posterior_from_factors",
    "weighted_information",
]

LOG_2PI = float(np.log(2.0 * np.pi))


class IndividualTerms(NamedTuple):
    """What every cluster needs from the individuals at fixed individual HP."""

    inverse_factor: np.ndarray   # (M, n, n) A_i = L_i^{-1}
    precision: np.ndarray        # (M, n, n) Psi_i^{-1} (identity on padded slots)
    whitened: np.ndarray         # (M, n) A_i r_i
    half_logdet: np.ndarray      # (M,) 1/2 log|Psi_i|
    n_points: np.ndarray         # (M,)


class ClusterPosterior(NamedTuple):
    r""":math:`q(\mu_k) = N(\hat m_k, \hat K_k)` on the grid, for all clusters."""

    mean: np.ndarray        # (K, N) mhat_k - m on the grid
    cov: np.ndarray         # (K, N, N)
    cov_factor: np.ndarray  # (K, N, N) V_k
    alpha: np.ndarray       # (K, N)
    chol_prior: np.ndarray  # (K, N, N) L_k
    chol_b: np.ndarray      # (K, N, N) L_Bk
    kl: np.ndarray          # (K,) KL(q(mu_k) || p(mu_k))


def individual_terms(psi: np.ndarray, residuals: np.ndarray, mask: np.ndarray) -> IndividualTerms:
    r"""Batched factorisation of the padded :math:`\Psi_i` (raises ``LinAlgError`` if one is not PD)."""
    chol = np.linalg.cholesky(psi)
    inverse_factor = np.linalg.inv(chol)                      # a C loop over the blocks
    precision = inverse_factor.mT @ inverse_factor
    whitened = (inverse_factor @ residuals[..., None])[..., 0]
    half_logdet = np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
    return IndividualTerms(inverse_factor, precision, whitened, half_logdet, mask.sum(axis=1))


def weighted_information(terms: IndividualTerms, tau: np.ndarray, index: np.ndarray, n_grid: int):
    r"""``(S, b, quad, half_logdet, n_obs)`` per cluster: the data's information form weighted by ``tau`` (M, K).

    ``quad`` is :math:`\sum_i \tau_{ik} r_i^\top\Psi_i^{-1} r_i`, ``half_logdet``
    :math:`\sum_i \tau_{ik}\tfrac12\log|\Psi_i|` and ``n_obs`` :math:`\sum_i\tau_{ik} N_i`: with them,
    :func:`magma_pymc.information_form.build_log_likelihood_from_precision` is the collapsed bound
    :math:`\log\int p(\mu_k)\prod_i \mathcal N(y_i;\mu_k(t_i),\Psi_i)^{\tau_{ik}} d\mu_k`. Padded slots
    point one past the grid and are scattered onto an extra row that is dropped.
    """
    n_clusters = tau.shape[1]
    size = n_grid + 1
    pairs = (index[:, :, None] * size + index[:, None, :]).ravel()                 # (M n n,)
    offsets = np.arange(n_clusters)[:, None] * size * size
    weights = tau.T[:, :, None, None] * terms.precision[None]                      # (K, M, n, n)
    precision = np.bincount((offsets + pairs[None]).ravel(), weights.ravel(), minlength=n_clusters * size * size)
    precision = precision.reshape(n_clusters, size, size)[:, :n_grid, :n_grid]
    shifts = (terms.inverse_factor.mT @ terms.whitened[..., None])[..., 0]        # Psi_i^{-1} r_i
    slots = (np.arange(n_clusters)[:, None] * size + index.ravel()[None]).ravel()
    shift = np.bincount(slots, (tau.T[:, :, None] * shifts[None]).ravel(), minlength=n_clusters * size)
    shift = shift.reshape(n_clusters, size)[:, :n_grid]
    quad = tau.T @ (terms.whitened**2).sum(axis=1)
    return precision, shift, quad, tau.T @ terms.half_logdet, tau.T @ terms.n_points


def cluster_posteriors(prior_covs: np.ndarray, precision: np.ndarray, shift: np.ndarray) -> ClusterPosterior:
    """Whitened closed form of the module docstring for all clusters at once (``prior_covs`` jittered)."""
    n_grid = prior_covs.shape[-1]
    eye = np.eye(n_grid)
    chol_prior = np.linalg.cholesky(prior_covs)
    b_matrix = eye + chol_prior.mT @ precision @ chol_prior
    b_matrix = 0.5 * (b_matrix + b_matrix.mT)
    chol_b = np.linalg.cholesky(b_matrix)
    c = (chol_prior.mT @ shift[..., None])[..., 0]
    u = solve_triangular(chol_b, c[..., None], lower=True, check_finite=False)
    alpha = solve_triangular(chol_b, u, lower=True, trans="T", check_finite=False)[..., 0]
    return posterior_from_factors(chol_prior, chol_b, alpha)


def posterior_from_factors(chol_prior: np.ndarray, chol_b: np.ndarray, alpha: np.ndarray) -> ClusterPosterior:
    r"""The :class:`ClusterPosterior` of all clusters from :math:`L_k`, :math:`L_{B_k}`, :math:`\alpha_k`."""
    eye = np.eye(chol_prior.shape[-1])
    n_grid = chol_prior.shape[-1]
    cov_factor = solve_triangular(chol_b, chol_prior.mT, lower=True, check_finite=False)
    inverse_b_factor = solve_triangular(chol_b, np.broadcast_to(eye, chol_b.shape), lower=True, check_finite=False)
    log_det_b = 2.0 * np.log(np.diagonal(chol_b, axis1=1, axis2=2)).sum(axis=1)
    kl = 0.5 * ((inverse_b_factor**2).sum(axis=(1, 2)) + (alpha**2).sum(axis=1) - n_grid + log_det_b)
    mean = (chol_prior @ alpha[..., None])[..., 0]
    return ClusterPosterior(mean, cov_factor.mT @ cov_factor, cov_factor, alpha, chol_prior, chol_b, kl)


def expected_log_likelihoods(
    terms: IndividualTerms, posterior: ClusterPosterior, residuals: np.ndarray, mask: np.ndarray, index: np.ndarray
):
    r""":math:`E_{ik} = \mathbb E_{q(\mu_k)} \log\mathcal N(y_i; \mu_k(t_i), \Psi_i)`.

    Shape (M, K), with the deviations :math:`y_i - \hat m_k(t_i)` (K, M, n) and blocks :math:`\hat K_k(t_i, t_i)` (K, M,
    n, n):

    .. math:: E_{ik} = \log\mathcal N(y_i; \hat m_k(t_i), \Psi_i) - \tfrac12\mathrm{tr}(\Psi_i^{-1}\hat K_k(t_i,t_i)).
    """
    n_clusters, n_grid = posterior.mean.shape
    mean_padded = np.concatenate([posterior.mean, np.zeros((n_clusters, 1))], axis=1)
    cov_padded = np.zeros((n_clusters, n_grid + 1, n_grid + 1))
    cov_padded[:, :n_grid, :n_grid] = posterior.cov
    deviations = (residuals[None] - mean_padded[:, index]) * mask[None]
    blocks = cov_padded[:, index[:, :, None], index[:, None, :]]
    return expected_from_deviations(terms, deviations, blocks), deviations, blocks


def expected_from_deviations(terms: IndividualTerms, deviations: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    r""":math:`E_{ik}` (M, K) from deviations and blocks (:func:`expected_log_likelihoods`).

    The deviations :math:`y_i - \hat m_k(t_i)` (K, M, n) and blocks :math:`\hat K_k(t_i, t_i)` (K, M, n, n) are zero
    on padded slots.
    """
    white = (terms.inverse_factor[None] @ deviations[..., None])[..., 0]
    quad = (white**2).sum(axis=2)
    trace = np.einsum("mab,kmab->km", terms.precision, blocks)
    expected = -0.5 * (quad + trace) - terms.half_logdet[None] - 0.5 * LOG_2PI * terms.n_points[None]
    return expected.T


def mixture_scatter(tau: np.ndarray, deviations: np.ndarray, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Mean deviation :math:`\bar d_i = \sum_k\tau_{ik} d_{ik}` and the rest of the individual M-step's scatter.

    .. math::

        \sum_k \tau_{ik}\big[d_{ik}d_{ik}^\top + \hat K_{k,i}\big] = \bar d_i\bar d_i^\top + G_i,\qquad
        G_i = \sum_k\tau_{ik}\big[\hat K_{k,i} + (d_{ik}-\bar d_i)(d_{ik}-\bar d_i)^\top\big],

    so MAGMA's individual objective (deviations, covariance blocks) applies unchanged; with one
    cluster :math:`\bar d_i = d_i` and :math:`G_i = \hat K_i` exactly.
    """
    mean_dev = np.einsum("mk,kmn->mn", tau, deviations)
    spread = deviations - mean_dev[None]
    cov = np.einsum("mk,kmab->mab", tau, blocks) + np.einsum("mk,kma,kmb->mab", tau, spread, spread)
    return mean_dev, cov
