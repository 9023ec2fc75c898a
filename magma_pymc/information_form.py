r"""The data's information form about the mean process, and the marginal likelihood from it.

At fixed individual HP the data enter :math:`\log p(y \mid \theta_0)` only through
:math:`S = \sum_i P_i^\top \Psi_i^{-1} P_i` and :math:`b = \sum_i P_i^\top \Psi_i^{-1} r_i`
(:class:`DataPrecision`): the mean-process M-step (ECME) evaluates the likelihood tens of times from
this summary at :math:`O(N^3)` each, instead of redoing the :math:`O(N^2 \sum_i N_i)` individual
work of :func:`magma_pymc.hyperposterior.build_estep`. Where :math:`S` is positive definite the
summary becomes pseudo-observations of :math:`\mu_0` (:class:`PseudoObservations`), one
:math:`N \times N` factorisation per evaluation. Notation: :mod:`magma_pymc.hyperposterior`.
"""

from __future__ import annotations

from typing import NamedTuple

import pytensor.tensor as pt
from pytensor.tensor.linalg import cholesky, solve_triangular
from pytensor.tensor.variable import TensorVariable

from magma_pymc.hyperposterior import (
    LOG_2PI,
    TrainingTensors,
    individual_covariances,
    log_diagonal_sum,
    noisy_covariance,
    with_jitter,
)
from magma_pymc.kernels import Kernel
from magma_pymc.ops import gaussian_information_loss, gaussian_marginal_loss

__all__ = [
    "DataPrecision",
    "build_data_precision",
    "build_data_precision_common",
    "build_log_likelihood_from_precision",
    "PseudoObservations",
    "build_pseudo_observations",
    "build_log_likelihood_from_pseudo_observations",
]


class DataPrecision(NamedTuple):
    r"""What the data say about :math:`\mu_0` on the grid at fixed individual HP (information form).

    ``precision`` :math:`S = \sum_i P_i^\top \Psi_i^{-1} P_i` (N, N), ``shift``
    :math:`b = \sum_i P_i^\top \Psi_i^{-1} r_i` (N,), ``quad_residuals``
    :math:`\sum_i r_i^\top \Psi_i^{-1} r_i`, ``half_logdet_psi`` :math:`\tfrac12\sum_i\log|\Psi_i|`
    and ``n_obs`` :math:`\sum_i N_i`.
    """

    precision: TensorVariable
    shift: TensorVariable
    quad_residuals: TensorVariable
    half_logdet_psi: TensorVariable
    n_obs: TensorVariable


def build_data_precision(
    individual_kernel: Kernel, individual_log_params: TensorVariable, data: TrainingTensors
) -> DataPrecision:
    r"""Information-form summary of the data about :math:`\mu_0` (:class:`DataPrecision`).

    Cost :math:`O(\sum_i N_i^3 + N^2)`.

    With :math:`A_i = L_{\Psi_i}^{-1}` (a triangular solve against the identity),
    :math:`\Psi_i^{-1} = A_i^\top A_i` is positive semi-definite by construction, and the blocks are
    scattered onto the grid through the index (padded slots point one past the grid's end and are
    dropped with that extra row and column). Since :math:`W_i^\top W_i = L_0^\top P_i^\top
    \Psi_i^{-1} P_i L_0`, the E-step's :math:`B = I + L_0^\top S L_0` and :math:`c = L_0^\top b`:
    at fixed individual HP the marginal likelihood as a function of :math:`\theta_0` needs only
    :math:`S, b` (:func:`build_log_likelihood_from_precision`), whatever the number of individuals.
    """
    n_grid = data.grid.shape[0]
    n_max = data.inputs.shape[1]
    psi = individual_covariances(individual_kernel, individual_log_params, data.inputs, data.mask, data.jitter)
    chol_psi = cholesky(psi, lower=True)
    identity = pt.broadcast_to(pt.eye(n_max), psi.shape)
    inverse_factor = solve_triangular(chol_psi, identity, lower=True, b_ndim=2)     # A_i = L_i^{-1}
    whitened_res = solve_triangular(chol_psi, data.residuals, lower=True, b_ndim=1)  # A_i r_i
    blocks = inverse_factor.mT @ inverse_factor                                    # Psi_i^{-1}
    shifts = (inverse_factor.mT @ whitened_res[..., None])[..., 0]                 # Psi_i^{-1} r_i
    rows, cols = data.index[:, :, None], data.index[:, None, :]
    # Advanced increments accumulate repeated targets: inputs shared by several individuals add up.
    precision = pt.zeros((n_grid + 1, n_grid + 1))[rows, cols].inc(blocks)[:n_grid, :n_grid]
    shift = pt.zeros((n_grid + 1,))[data.index].inc(shifts)[:n_grid]
    return DataPrecision(
        precision, shift, (whitened_res**2).sum(), log_diagonal_sum(chol_psi), data.mask.sum()
    )


def build_log_likelihood_from_precision(
    mean_kernel: Kernel,
    mean_log_params: TensorVariable,
    grid: TensorVariable,
    summary: DataPrecision,
    jitter: TensorVariable,
) -> TensorVariable:
    r"""Exact :math:`\log p(y)` from the data's information-form summary: :math:`O(N^3)` per call.

    The whitened formula of the module docstring with :math:`B = I + L_0^\top S L_0` and
    :math:`c = L_0^\top b` (:func:`build_data_precision`). The mean-process M-step (ECME) evaluates
    it tens of times at fixed individual HP, where :func:`~magma_pymc.hyperposterior.build_estep` would redo the
    :math:`O(N^2\sum_i N_i)` individual work at each call. The part that depends on
    :math:`K_0` and its closed-form gradient are one Op,
    :class:`magma_pymc.ops.GaussianInformationLoss`; PyTensor chains that gradient through the
    kernel's graph.
    """
    prior_cov = with_jitter(mean_kernel.covariance(mean_log_params)(grid), jitter)
    loss = gaussian_information_loss(prior_cov, summary.precision, summary.shift)
    return -(0.5 * summary.quad_residuals + summary.half_logdet_psi + loss + 0.5 * summary.n_obs * LOG_2PI)


class PseudoObservations(NamedTuple):
    r"""The data's information form as pseudo-observations of :math:`\mu_0 - m_0` on the grid.

    With :math:`S` positive definite, :math:`p(y \mid \mu_0) \propto N(z;\, \mu_0 - m_0,\, R)` as a
    function of :math:`\mu_0`, with ``noise_cov`` :math:`R = S^{-1}` and ``observations``
    :math:`z = S^{-1} b`; ``offset`` is the rest of :math:`-\log p(y)`, independent of :math:`\theta_0`
    (:func:`build_pseudo_observations`).
    """

    noise_cov: TensorVariable
    observations: TensorVariable
    offset: TensorVariable


def build_pseudo_observations(summary: DataPrecision) -> PseudoObservations:
    r""":class:`PseudoObservations` from the information form (:class:`DataPrecision`), cost :math:`O(N^3)` once.

    Marginalising :math:`\mu_0 \sim N(m_0, K)` out of :math:`N(z; \mu_0 - m_0, R)`, with
    :math:`L_S = \mathrm{chol}(S)`, :math:`w = L_S^{-1} b` (so :math:`b^\top z = \|w\|^2`):

    .. math::

        -\log p(y) = \tfrac12 \log|K + R| + \tfrac12 z^\top (K + R)^{-1} z
        + \tfrac12 \sum_i r_i^\top \Psi_i^{-1} r_i + \tfrac12 \sum_i \log|\Psi_i|
        + \sum_k \log (L_S)_{kk} - \tfrac12 \|w\|^2 + \tfrac n2 \log 2\pi

    (Woodbury: :math:`b^\top (K^{-1} + S)^{-1} b = b^\top z - z^\top (K + R)^{-1} z` and
    :math:`\log|I + SK| = \log|S| + \log|K + R|`); its first two terms are
    :class:`~magma_pymc.ops.GaussianMarginalLoss`, the rest is ``offset``. Where :math:`S` is numerically singular its
    Cholesky factor, hence every output, is NaN: the caller then uses the information form
    (:func:`build_log_likelihood_from_precision`).
    """
    n_grid = summary.precision.shape[0]
    chol = cholesky(summary.precision, lower=True)
    inverse_factor = solve_triangular(chol, pt.eye(n_grid), lower=True, b_ndim=2)  # L_S^{-1}
    whitened = solve_triangular(chol, summary.shift, lower=True, b_ndim=1)        # w = L_S^{-1} b
    offset = (
        0.5 * summary.quad_residuals + summary.half_logdet_psi + log_diagonal_sum(chol)
        - 0.5 * (whitened**2).sum() + 0.5 * summary.n_obs * LOG_2PI
    )
    return PseudoObservations(inverse_factor.T @ inverse_factor, inverse_factor.T @ whitened, offset)


def build_log_likelihood_from_pseudo_observations(
    mean_kernel: Kernel,
    mean_log_params: TensorVariable,
    grid: TensorVariable,
    pseudo: PseudoObservations,
    jitter: TensorVariable,
) -> TensorVariable:
    r"""Exact :math:`\log p(y)` from :class:`PseudoObservations`: one :math:`N \times N` factorisation per call.

    The same value as :func:`build_log_likelihood_from_precision` (up to rounding) with about an
    eighth of its flops (:class:`~magma_pymc.ops.GaussianMarginalLoss`): the mean-process M-step's
    objective wherever :math:`S` is positive definite.
    """
    cov = with_jitter(mean_kernel.covariance(mean_log_params)(grid), jitter) + pseudo.noise_cov
    return -(pseudo.offset + gaussian_marginal_loss(cov, pseudo.observations))


def build_data_precision_common(
    individual_kernel: Kernel,
    individual_log_params: TensorVariable,
    grid: TensorVariable,
    residuals: TensorVariable,
    jitter: TensorVariable,
) -> DataPrecision:
    r""":func:`build_data_precision` on the common-grid fast path: one factorisation of :math:`\Psi`.

    With :math:`P_i = I` and :math:`\Psi_i = \Psi` for all i (``residuals`` is ``(M, N)``):
    :math:`S = M\,\Psi^{-1}`, :math:`b = \Psi^{-1}\sum_i r_i`, with
    :math:`\Psi^{-1} = A^\top A`, :math:`A = L_\Psi^{-1}`.
    """
    n_individuals, n_grid = residuals.shape
    chol_psi = cholesky(noisy_covariance(individual_kernel, individual_log_params, grid, jitter), lower=True)
    inverse_factor = solve_triangular(chol_psi, pt.eye(n_grid), lower=True, b_ndim=2)  # A = L^{-1}
    whitened_res = solve_triangular(chol_psi, residuals.T, lower=True, b_ndim=2)    # (N, M)
    return DataPrecision(
        n_individuals * (inverse_factor.T @ inverse_factor),
        inverse_factor.T @ whitened_res.sum(axis=1),
        (whitened_res**2).sum(),
        n_individuals * log_diagonal_sum(chol_psi),
        pt.cast(n_individuals * n_grid, "float64"),
    )
