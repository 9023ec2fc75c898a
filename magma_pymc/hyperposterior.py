r"""Hyper-posterior of the mean process (E-step) and the exact marginal likelihood, as PyTensor graphs.

Pure functions from symbolic tensors to symbolic tensors; compiling happens elsewhere
(:mod:`magma_pymc.compiled`). EM, NUTS and prediction all build on :func:`build_estep`, so the
linear algebra below is written once.

Notation (theory page: *Model*, *E-step*, *Marginal likelihood*): union grid :math:`t` of :math:`N` inputs, individual
:math:`i` observed at :math:`t_i \subset t` (selection :math:`P_i`, an integer index), residuals
:math:`r_i = y_i - m_0(t_i)`, :math:`\Psi_i = C_{\theta_i}(t_i,t_i) + \sigma_i^2 I`.

The textbook E-step needs :math:`K_0^{-1}`, which is numerically singular on dense grids with long
lengthscales. Everything here uses the *whitened* form with :math:`L_0 = \mathrm{chol}(K_0 + jI)`:

.. math::

    W_i = L_{\Psi_i}^{-1} P_i L_0, \qquad
    B = I + \sum_i W_i^\top W_i = I + L_0^\top S L_0, \qquad
    c = \sum_i W_i^\top L_{\Psi_i}^{-1} r_i = L_0^\top b,

    \hat K = L_0 B^{-1} L_0^\top = V^\top V,\; V = L_B^{-1} L_0^\top, \qquad
    \hat m - m_0 = L_0 B^{-1} c,

    \log p(y) = -\tfrac12 \Big(\sum_i \|L_{\Psi_i}^{-1} r_i\|^2 - \|L_B^{-1} c\|^2\Big)
                -\tfrac12 \Big(\sum_i \log|\Psi_i| + \log|B|\Big) - \tfrac{n}{2}\log 2\pi,

since :math:`b^\top \hat K b = c^\top B^{-1} c` and :math:`\log|K_0| - \log|\hat K| = \log|B|`.
:math:`B` has eigenvalues :math:`\ge 1`, so every factorisation is well conditioned whatever
:math:`K_0` is.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytensor.tensor as pt
from pytensor.tensor.linalg import cholesky, solve_triangular
from pytensor.tensor.variable import TensorVariable

from magma_pymc.kernels import Kernel

__all__ = [
    "TrainingTensors",
    "EStep",
    "individual_covariances",
    "build_estep",
    "build_estep_projected",
    "build_loadings",
    "EStepTerms",
    "build_estep_terms",
    "finish_estep",
    "noisy_covariance",
    "build_mean_process_at",
    "log_diagonal_sum",
    "with_jitter",
    "finish_estep_matrices",
    "batched_diagonal",
]

LOG_2PI = float(np.log(2.0 * np.pi))


class TrainingTensors(NamedTuple):
    """Symbolic training data in padded form (see :class:`magma_pymc.data.TrainingData`).

    ``residuals`` are :math:`y_i - m_0(t_i)` (zero in padded slots); ``index`` maps each slot to
    the union grid, padded slots pointing one past its end; ``jitter`` is added to the diagonal of
    every covariance matrix that is factorised.
    """

    grid: TensorVariable        # (N, d)
    inputs: TensorVariable      # (M, N_max, d)
    residuals: TensorVariable   # (M, N_max)
    mask: TensorVariable        # (M, N_max) 1.0 real / 0.0 padding
    index: TensorVariable       # (M, N_max) int64
    jitter: TensorVariable      # ()

    @classmethod
    def symbolic(cls) -> TrainingTensors:
        return cls(
            grid=pt.matrix("grid", dtype="float64"),
            inputs=pt.tensor3("inputs", dtype="float64"),
            residuals=pt.matrix("residuals", dtype="float64"),
            mask=pt.matrix("mask", dtype="float64"),
            index=pt.matrix("index", dtype="int64"),
            jitter=pt.scalar("jitter", dtype="float64"),
        )


class EStep(NamedTuple):
    """Symbolic outputs of the E-step."""

    mean: TensorVariable            # (N,)  mhat - m0 on the grid
    cov: TensorVariable             # (N, N) Khat
    cov_factor: TensorVariable      # (N, N) V with Khat = V' V
    alpha: TensorVariable           # (N,) B^{-1} c, so that mhat - m0 = L0 alpha
    chol_prior: TensorVariable      # (N, N) L0
    chol_b: TensorVariable          # (N, N) L_B
    log_likelihood: TensorVariable  # () exact marginal log-likelihood (theory: marginal likelihood)
    #: (M, N_max, N) loadings S_i with mu0(t_i) - m0(t_i) = S_i z, z ~ N(0, I) a priori (padded rows zero).
    loadings: TensorVariable | None = None


def batched_diagonal(matrix: TensorVariable) -> TensorVariable:
    """Diagonal of (a batch of) square matrices, as a masked row sum.

    Elementwise on purpose: the gradient of ``pt.diagonal`` on a batch is a batched ``AllocDiag``
    that the Numba backend can only run in object mode, which is slow and defeats its cache.
    """
    return (matrix * pt.eye(matrix.shape[-1])).sum(axis=-1)


def log_diagonal_sum(chol: TensorVariable) -> TensorVariable:
    """Sum of the log-diagonal of (a batch of) Cholesky factors: half the log-determinant."""
    return pt.log(batched_diagonal(chol)).sum()


def with_jitter(matrix: TensorVariable, jitter: TensorVariable) -> TensorVariable:
    """``matrix`` plus ``jitter`` on its (last two axes') diagonal."""
    return matrix + jitter * pt.eye(matrix.shape[-1])


def individual_covariances(
    kernel: Kernel, log_params: TensorVariable, inputs: TensorVariable, mask: TensorVariable, jitter: TensorVariable
) -> TensorVariable:
    r"""Padded :math:`\Psi_i = C_{\theta_i}(t_i, t_i) + (\sigma_i^2 + j) I`, shape ``(M, N_max, N_max)``.

    ``log_params`` is ``(P + 1,)`` (common HP) or ``(M, P + 1)`` (different HP); the last entry is
    :math:`\log\sigma^2`. Padded rows and columns are set to the identity so that they add nothing
    to quadratic forms and log-determinants.
    """
    cov = kernel.batched(inputs, log_params[..., :-1])
    noise = pt.exp(log_params[..., -1])
    if log_params.ndim == 2:
        noise = noise[:, None]
    pair_mask = mask[:, :, None] * mask[:, None, :]
    # A switch, not (noise + jitter) * mask + (1 - mask): PyTensor rewrites the sum to
    # (1 + d * mask) - mask, which loses all digits of a noise below ~1e-16 (outputs ~1e-6).
    diagonal = pt.switch(mask > 0, noise + jitter, 1.0)
    return cov * pair_mask + diagonal[:, :, None] * pt.eye(inputs.shape[1])


def build_estep(
    mean_kernel: Kernel,
    individual_kernel: Kernel,
    mean_log_params: TensorVariable,
    individual_log_params: TensorVariable,
    data: TrainingTensors,
) -> EStep:
    r"""Hyper-posterior :math:`\mathcal N(\hat m, \hat K)` of :math:`\mu_0` on the grid, and :math:`\log p(y)`.

    Implements the whitened E-step of the module docstring (theory page, *E-step*) with one
    Cholesky factorisation per individual (batched) plus two of size :math:`N`. Padded slots are
    neutral: :math:`\Psi` is the identity there, residuals and the rows of :math:`P_i L_0` are zero.
    """
    chol_prior, selected = build_loadings(mean_kernel, mean_log_params, data, projected=False)
    return _estep_from_loadings(individual_kernel, individual_log_params, data, chol_prior, selected)


def build_estep_projected(
    mean_kernel: Kernel,
    individual_kernel: Kernel,
    mean_log_params: TensorVariable,
    individual_log_params: TensorVariable,
    data: TrainingTensors,
) -> EStep:
    r"""E-step of the *projected* model, with :math:`\mu_0` represented on ``data.grid`` = :math:`g`, G points.

    Large union grids (thousands of distinct inputs) make the exact E-step's :math:`O(N^3)` cost
    prohibitive. The projected model (deterministic training conditional, theory page, *Large
    union grids*) replaces the exact prior of :math:`\mu_0` at the inputs by its projection on
    :math:`g`:

    .. math::

        \mu_0(t_i) = K_0(t_i, g) K_0(g, g)^{-1} \mu_0(g) = S_i z,\quad
        S_i = K_0(t_i, g) L_g^{-\top},\ z = L_g^{-1}(\mu_0(g) - m_0(g)) \sim \mathcal N(0, I),

    so the whitened E-step above applies with :math:`S_i` in place of :math:`P_i L_0`, at cost
    :math:`O(G^3 + \sum_i N_i^3 + G^2 \sum_i N_i)`. The log-likelihood is that of the projected
    model (exact when :math:`g` contains every input); ``data.index`` is unused.
    """
    chol_prior, loadings = build_loadings(mean_kernel, mean_log_params, data, projected=True)
    return _estep_from_loadings(individual_kernel, individual_log_params, data, chol_prior, loadings)


def build_loadings(
    mean_kernel: Kernel, mean_log_params: TensorVariable, data: TrainingTensors, *, projected: bool
) -> tuple[TensorVariable, TensorVariable]:
    r""":math:`L_0 = \mathrm{chol}(K_0(t, t) + jI)` on ``data.grid`` and the loadings ``(M, N_max, N)``:
    :math:`P_i L_0` (exact model, :func:`build_estep`) or :math:`S_i` (projected model,
    :func:`build_estep_projected`); zero rows in padded slots."""
    n_grid = data.grid.shape[0]
    prior = mean_kernel.covariance(mean_log_params)
    chol_prior = cholesky(with_jitter(prior(data.grid), data.jitter), lower=True)
    if not projected:
        # P_i L0 by gathering rows; the appended zero row serves the padded slots.
        chol_prior_padded = pt.concatenate([chol_prior, pt.zeros((1, n_grid))], axis=0)
        return chol_prior, chol_prior_padded[data.index]                          # (M, N_max, N)
    n_individuals, n_max, dim = data.inputs.shape
    cross = prior(data.grid, data.inputs.reshape((-1, dim)))                      # K0(g, t) (G, M N_max)
    loadings = solve_triangular(chol_prior, cross, lower=True, b_ndim=2).T         # S (M N_max, G)
    loadings = (loadings * data.mask.reshape((-1,))[:, None]).reshape((n_individuals, n_max, n_grid))
    return chol_prior, loadings


class EStepTerms(NamedTuple):
    r"""The E-step's sums over individuals: ``gram`` :math:`\sum_i W_i^\top W_i`, ``shift``
    :math:`c = \sum_i W_i^\top L_{\Psi_i}^{-1} r_i`, ``quad_residuals`` :math:`\sum_i \|L_{\Psi_i}^{-1} r_i\|^2`,
    ``half_logdet_psi`` :math:`\tfrac12 \sum_i \log|\Psi_i|` and ``n_obs`` :math:`\sum_i N_i`. Each is a sum
    over individuals, so the terms of disjoint sets of individuals add up."""

    gram: TensorVariable
    shift: TensorVariable
    quad_residuals: TensorVariable
    half_logdet_psi: TensorVariable
    n_obs: TensorVariable


def build_estep_terms(individual_kernel, individual_log_params, data, loadings) -> EStepTerms:
    """:class:`EStepTerms` of the individuals in ``data`` given their loadings (:func:`build_loadings`)."""
    n_grid = loadings.shape[-1]
    psi = individual_covariances(individual_kernel, individual_log_params, data.inputs, data.mask, data.jitter)
    chol_psi = cholesky(psi, lower=True)
    whitened = solve_triangular(chol_psi, loadings, lower=True, b_ndim=2)      # W_i
    whitened_res = solve_triangular(chol_psi, data.residuals, lower=True, b_ndim=1)
    flat = whitened.reshape((-1, n_grid))
    return EStepTerms(
        flat.T @ flat, flat.T @ whitened_res.reshape((-1,)), (whitened_res**2).sum(), log_diagonal_sum(chol_psi),
        data.mask.sum(),
    )


def finish_estep(chol_prior: TensorVariable, terms: EStepTerms) -> EStep:
    r"""The E-step from its summed :class:`EStepTerms`: :math:`B = I + \sum_i W_i^\top W_i` (module docstring)."""
    b_matrix = pt.eye(chol_prior.shape[0]) + terms.gram
    return finish_estep_matrices(chol_prior, b_matrix, *terms[1:])


def _estep_from_loadings(individual_kernel, individual_log_params, data, chol_prior, loadings) -> EStep:
    """Whitened E-step given the loadings :math:`S_i` (zero rows in padded slots)."""
    terms = build_estep_terms(individual_kernel, individual_log_params, data, loadings)
    return finish_estep(chol_prior, terms)._replace(loadings=loadings)


def noisy_covariance(
    kernel: Kernel, log_params: TensorVariable, grid: TensorVariable, jitter: TensorVariable
) -> TensorVariable:
    r""":math:`\Psi = C_\theta(t, t) + (\sigma^2 + j) I` on one set of inputs ``t`` (``log_params`` ``(P + 1,)``,
    the last entry :math:`\log\sigma^2`): the common grid's, or a new individual's."""
    return kernel.covariance(log_params[:-1])(grid) + (pt.exp(log_params[-1]) + jitter) * pt.eye(grid.shape[0])


def build_estep_common(
    mean_kernel: Kernel,
    individual_kernel: Kernel,
    mean_log_params: TensorVariable,
    individual_log_params: TensorVariable,
    grid: TensorVariable,
    residuals: TensorVariable,
    jitter: TensorVariable,
) -> EStep:
    r"""Fast path for a common grid and common HP: one factorisation of :math:`\Psi` instead of M.

    With :math:`t_i = t` and :math:`\Psi_i = \Psi` for all i (``residuals`` is ``(M, N)``):
    :math:`B = I + M\, W^\top W` with :math:`W = L_\Psi^{-1} L_0`, and
    :math:`c = W^\top L_\Psi^{-1} \sum_i r_i` (theory page, *E-step*).
    """
    n_individuals, n_grid = residuals.shape
    prior_cov = with_jitter(mean_kernel.covariance(mean_log_params)(grid), jitter)
    chol_prior = cholesky(prior_cov, lower=True)
    chol_psi = cholesky(noisy_covariance(individual_kernel, individual_log_params, grid, jitter), lower=True)
    whitened = solve_triangular(chol_psi, chol_prior, lower=True, b_ndim=2)
    whitened_res = solve_triangular(chol_psi, residuals.T, lower=True, b_ndim=2)  # (N, M)
    b_matrix = pt.eye(n_grid) + n_individuals * (whitened.T @ whitened)
    c = whitened.T @ whitened_res.sum(axis=1)
    return finish_estep_matrices(
        chol_prior,
        b_matrix,
        c,
        (whitened_res**2).sum(),
        n_individuals * log_diagonal_sum(chol_psi),
        n_individuals * n_grid,
    )


def finish_estep_matrices(chol_prior, b_matrix, c, quad_residuals, half_logdet_psi, n_obs) -> EStep:
    """The E-step's outputs from :math:`L_0`, :math:`B`, :math:`c` and the data terms (module docstring)."""
    chol_b = cholesky(b_matrix, lower=True)
    u = solve_triangular(chol_b, c, lower=True, b_ndim=1)
    alpha = solve_triangular(chol_b.T, u, lower=False, b_ndim=1)
    cov_factor = solve_triangular(chol_b, chol_prior.T, lower=True, b_ndim=2)
    log_likelihood = (
        -0.5 * (quad_residuals - (u**2).sum()) - half_logdet_psi - log_diagonal_sum(chol_b) - 0.5 * n_obs * LOG_2PI
    )
    return EStep(
        mean=chol_prior @ alpha,
        cov=cov_factor.T @ cov_factor,
        cov_factor=cov_factor,
        alpha=alpha,
        chol_prior=chol_prior,
        chol_b=chol_b,
        log_likelihood=log_likelihood,
    )


def build_mean_process_at(
    mean_kernel: Kernel,
    mean_log_params: TensorVariable,
    grid: TensorVariable,
    estep: EStep,
    new_inputs: TensorVariable,
    jitter: TensorVariable,
) -> tuple[TensorVariable, TensorVariable]:
    r"""Posterior of :math:`\mu_0` at new inputs :math:`s`, exact given all training data (theory page, *Prediction*).

    The data inform :math:`\mu_0` only through its values on the grid, so with
    :math:`Q = K_0(s,t) L_0^{-\top}`:

    .. math::

        \hat m(s) - m_0(s) = Q B^{-1} c, \qquad
        \hat K(s,s) = K_0(s,s) - Q Q^\top + (L_B^{-1} Q^\top)^\top (L_B^{-1} Q^\top),

    which is :math:`K_0(s,t)K_0^{-1}(\hat m - m_0)` and
    :math:`K_0(s,s) - K_0(s,t)K_0^{-1}K_0(t,s) + K_0(s,t)K_0^{-1}\hat K K_0^{-1}K_0(t,s)`
    without any inverse. Returns the centred mean (add :math:`m_0(s)`) and the covariance.
    """
    cov = mean_kernel.covariance(mean_log_params)
    q_t = solve_triangular(estep.chol_prior, cov(grid, new_inputs), lower=True, b_ndim=2)   # Q'
    mean = q_t.T @ estep.alpha
    reduced = solve_triangular(estep.chol_b, q_t, lower=True, b_ndim=2)
    prior_ss = with_jitter(cov(new_inputs), jitter)
    return mean, prior_ss - q_t.T @ q_t + reduced.T @ reduced
