r"""The E-step on size buckets (:mod:`magma_pymc.batches`): ragged data at the cost of their points.

The data enter the hyper-posterior of :math:`\mu_0` only through their information form
(:class:`~magma_pymc.information_form.DataPrecision`), a sum over individuals:

.. math::

    S = \sum_i P_i^\top \Psi_i^{-1} P_i, \quad b = \sum_i P_i^\top \Psi_i^{-1} r_i, \quad
    q = \sum_i r_i^\top \Psi_i^{-1} r_i, \quad \tfrac12\sum_i \log|\Psi_i|, \quad \sum_i N_i,

so each bucket contributes its own partial sums (:func:`~magma_pymc.information_form.build_data_precision`,
cost :math:`O(B_k n_k^3 + N^2)`), and the whitened E-step of theory page, *E-step* follows from
the totals with :math:`L_0 = \mathrm{chol}(K_0 + jI)`:

.. math::

    B = I + L_0^\top S L_0, \qquad c = L_0^\top b,

(:func:`build_estep_from_precision`): the same :math:`B` and :math:`c` as
:func:`~magma_pymc.hyperposterior.build_estep`, since :math:`\sum_i W_i^\top W_i =
L_0^\top S L_0`. What the individual M-step needs, :math:`y_i - \hat m_i` and :math:`\hat K_i`, is
then gathered per bucket from the grid (:func:`bucket_blocks`), :math:`O(B_k n_k^2)` numbers.
"""

from __future__ import annotations

import functools

import numpy as np
import pytensor.tensor as pt
from pytensor.tensor.linalg import cholesky

from magma_pymc.hyperposterior import EStep, finish_estep_matrices, with_jitter
from magma_pymc.information_form import DataPrecision
from magma_pymc.kernels import Kernel

__all__ = [
    "build_estep_from_precision", "sum_summaries", "bucket_blocks", "estep_from_precision_function", "residual_batches",
    "bucketed_estep", "bucketed_factors", "common_individual_objective", "separable_individual_objectives",
    "bucketed_precision",
]


def build_estep_from_precision(
    mean_kernel: Kernel, mean_log_params, grid, summary: DataPrecision, jitter
) -> EStep:
    r"""Whitened E-step from the data's information form (module docstring).

    ``summary`` holds the totals over all individuals. Returns the same :class:`~magma_pymc.hyperposterior.EStep` fields
    (``loadings`` unset) and the exact marginal log-likelihood.
    """
    chol_prior = cholesky(with_jitter(mean_kernel.covariance(mean_log_params)(grid), jitter), lower=True)
    b_matrix = pt.eye(grid.shape[0]) + chol_prior.T @ summary.precision @ chol_prior
    c = chol_prior.T @ summary.shift
    return finish_estep_matrices(chol_prior, b_matrix, c, summary.quad_residuals, summary.half_logdet_psi,
                                 summary.n_obs)


@functools.cache
def estep_from_precision_function(mean_kernel: Kernel, mode: str):
    """Compiled :func:`build_estep_from_precision` (one per kernel and mode).

    ``(mean_hp, grid, precision, shift, quad_residuals, half_logdet_psi, n_obs, jitter) -> (mean, cov, cov_factor,
    log_likelihood, chol_prior, chol_b, alpha)``.
    """
    from magma_pymc.compiled import _compile

    mean_hp = pt.vector("mean_log_params", dtype="float64")
    grid = pt.matrix("grid", dtype="float64")
    summary = DataPrecision(
        pt.matrix("precision", dtype="float64"), pt.vector("shift", dtype="float64"),
        pt.scalar("quad_residuals", dtype="float64"), pt.scalar("half_logdet_psi", dtype="float64"),
        pt.scalar("n_obs", dtype="float64"),
    )
    jitter = pt.scalar("jitter", dtype="float64")
    estep = build_estep_from_precision(mean_kernel, mean_hp, grid, summary, jitter)
    outputs = [estep.mean, estep.cov, estep.cov_factor, estep.log_likelihood, estep.chol_prior, estep.chol_b,
               estep.alpha]
    return _compile([mean_hp, grid, *summary, jitter], outputs, mode)


def sum_summaries(summaries: list) -> tuple:
    """Totals of per-bucket information forms (each a sequence of five arrays)."""
    return tuple(sum(np.asarray(part[k], dtype=float) for part in summaries) for k in range(5))


def bucket_blocks(mean: np.ndarray, cov: np.ndarray, residuals: np.ndarray, mask: np.ndarray,
                  index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""``(deviations, cov_blocks)`` of one bucket.

    :math:`(y_i - \hat m_i)` masked, ``(B, n)``, and :math:`\hat K_i = \hat K[P_i, P_i]`, ``(B, n, n)``, zero in padded
    slots (index ``N``).
    """
    inside = np.minimum(index, mean.shape[0] - 1)  # padded slots read any grid value, then masked
    deviations = (residuals - mean[inside]) * mask
    blocks = cov[inside[:, :, None], inside[:, None, :]]
    blocks *= mask[:, :, None] * mask[:, None, :]
    return deviations, blocks


def residual_batches(batches, residuals: np.ndarray) -> tuple:
    """The batches with ``outputs`` replaced by the padded residuals :math:`y_i - m_0(t_i)` (``(M, N_max)``)."""
    return tuple(b._replace(outputs=residuals[b.rows, : b.mask.shape[1]]) for b in batches)


def bucketed_estep(graphs, mean_log_params: np.ndarray, log_params: np.ndarray, grid: np.ndarray,
                   batches: tuple, jitter: float) -> tuple:
    """``(mean, cov, cov_factor, log_likelihood, blocks)`` of the E-step on buckets (module docstring).

    ``batches`` hold residuals in ``outputs`` (:func:`residual_batches`); ``blocks`` is one
    ``(deviations, cov_blocks)`` per bucket (:func:`bucket_blocks`). ``log_params`` is ``(P + 1,)``
    or ``(M, P + 1)`` (rows taken per bucket).
    """
    outputs = _finish(graphs, mean_log_params, log_params, grid, batches, jitter)
    mean, cov, factor, log_likelihood = outputs[:4]
    blocks = [bucket_blocks(mean, cov, b.outputs, b.mask, b.index) for b in batches]
    return mean, cov, factor, float(log_likelihood), blocks


def _finish(graphs, mean_log_params, log_params, grid, batches, jitter) -> list:
    finish = estep_from_precision_function(graphs.mean_kernel, graphs.mode)
    summary = bucketed_precision(graphs, log_params, grid, batches, jitter)
    return [np.asarray(v) for v in finish(mean_log_params, grid, *summary, jitter)]


def bucketed_factors(graphs, mean_log_params: np.ndarray, log_params: np.ndarray, grid: np.ndarray, batches: tuple,
                     jitter: float) -> tuple:
    """``(chol_prior, chol_b, alpha)`` of the E-step on buckets (:class:`magma_pymc.predict_diag.EStepFactors`)."""
    return tuple(_finish(graphs, mean_log_params, log_params, grid, batches, jitter)[4:])


def common_individual_objective(graphs, batches: tuple, blocks: list, jitter: float):
    r"""``log_params -> (value, grad)`` of :math:`-\sum_i Q_i` (common HP), summed over buckets."""

    def objective(log_params):
        value, grad = 0.0, np.zeros_like(log_params)
        for b, (deviations, cov_blocks) in zip(batches, blocks, strict=True):
            v, g = graphs.individual_step(log_params, b.inputs, deviations, cov_blocks, b.mask, jitter)
            value, grad = value + float(v), grad + np.asarray(g)
        return value, grad

    return objective


def separable_individual_objectives(graphs, batches: tuple, blocks: list, jitter: float):
    r"""``(log_params (B, P + 1), rows (B,)) -> (values (B,), grads)`` of :math:`-Q_i` (different HP).

    Each row evaluated in its bucket (:func:`magma_pymc.batched_lbfgsb.minimize_separable`).
    """
    owner = np.empty(sum(len(b.rows) for b in batches), dtype=np.int64)
    local = np.empty_like(owner)
    for k, b in enumerate(batches):
        owner[b.rows], local[b.rows] = k, np.arange(len(b.rows))

    def objectives(log_params, rows):
        values, grads = np.empty(len(rows)), np.empty_like(log_params)
        for k, b in enumerate(batches):
            here = np.flatnonzero(owner[rows] == k)
            if here.size == 0:
                continue
            take = local[rows[here]]
            deviations, cov_blocks = blocks[k]
            v, g = graphs.individual_steps(log_params[here], b.inputs[take], deviations[take], cov_blocks[take],
                                           b.mask[take], jitter)
            values[here], grads[here] = v, g
        return values, grads

    return objectives


def bucketed_precision(graphs, log_params: np.ndarray, grid: np.ndarray, batches: tuple, jitter: float) -> tuple:
    """Total information form over the buckets (the ECME mean-process step's input)."""
    common = np.ndim(log_params) == 1
    return sum_summaries([
        graphs.data_precision(log_params if common else log_params[b.rows], grid, b.inputs, b.outputs, b.mask,
                              b.index, jitter)
        for b in batches
    ])
