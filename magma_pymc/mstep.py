r"""M-step objectives (theory page, *M-step*) as PyTensor graphs, and the L-BFGS-B driver.

Each builder returns the *negative* expected complete-data log-likelihood (to minimise) of one
block of hyper-parameters given the current hyper-posterior :math:`\mathcal N(\hat m, \hat K)`:

.. math::

    Q_0(\theta_0) = \log\mathcal N(\hat m; m_0, K_{\theta_0}) - \tfrac12 \mathrm{tr}(\hat K K_{\theta_0}^{-1}),

    Q_i(\theta_i, \sigma_i^2) = \log\mathcal N(y_i; \hat m_i, \Psi_i) - \tfrac12 \mathrm{tr}(\hat K_i \Psi_i^{-1}),

with :math:`\hat m_i = \hat m[P_i]` and :math:`\hat K_i = \hat K[P_i, P_i]`. The blocks are
independent given the E-step; with different HP every :math:`Q_i` has its own parameters, and
each is minimised by its own L-BFGS-B, all run in lockstep on one batched evaluation per round
(:func:`magma_pymc.batched_lbfgsb.minimize_separable`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytensor.tensor as pt
from pytensor.tensor.linalg import cholesky, solve_triangular
from pytensor.tensor.variable import TensorVariable
from scipy.optimize import OptimizeResult, minimize

from magma_pymc.hyperposterior import (
    LOG_2PI,
    individual_covariances,
    log_diagonal_sum,
    noisy_covariance,
)
from magma_pymc.kernels import Kernel
from magma_pymc.ops import gaussian_block_loss

__all__ = [
    "mean_process_objective", "individual_objectives", "individual_objective_common", "minimize_log_params",
]


def mean_process_objective(
    kernel: Kernel,
    log_params: TensorVariable,
    grid: TensorVariable,
    centred_mean: TensorVariable,
    cov_factor: TensorVariable,
    jitter: TensorVariable,
) -> TensorVariable:
    r""":math:`-Q_0(\theta_0)` with :math:`\hat K = V^\top V` given by its factor ``cov_factor``.

    .. math::

        -Q_0 = \tfrac12 \|L^{-1}(\hat m - m_0)\|^2 + \sum_k \log L_{kk}
               + \tfrac12 \|L^{-1} V^\top\|_F^2 + \tfrac N2 \log 2\pi,
        \quad L = \mathrm{chol}(K_{\theta_0} + jI),

    using :math:`\mathrm{tr}(V^\top V K^{-1}) = \|L^{-1}V^\top\|_F^2` (no inverse, no factorisation
    of the possibly singular :math:`\hat K`).
    """
    n_grid = grid.shape[0]
    chol = cholesky(kernel.covariance(log_params)(grid) + jitter * pt.eye(n_grid), lower=True)
    mean_part = solve_triangular(chol, centred_mean, lower=True, b_ndim=1)
    trace_part = solve_triangular(chol, cov_factor.T, lower=True, b_ndim=2)
    return 0.5 * ((mean_part**2).sum() + (trace_part**2).sum()) + log_diagonal_sum(chol) + 0.5 * n_grid * LOG_2PI


def individual_objectives(
    kernel: Kernel,
    log_params: TensorVariable,
    inputs: TensorVariable,
    deviations: TensorVariable,
    cov_blocks: TensorVariable,
    mask: TensorVariable,
    jitter: TensorVariable,
) -> TensorVariable:
    r""":math:`-Q_i` of every individual, shape ``(M,)``, on padded batches.

    ``deviations`` are :math:`y_i - \hat m_i` and ``cov_blocks`` are :math:`\hat K_i`, both zero in
    padded slots; ``log_params`` is ``(P + 1,)`` (common HP) or ``(M, P + 1)`` (different HP).

    .. math::

        -Q_i = \tfrac12 \mathrm{tr}\big(\Psi_i^{-1}[(y_i - \hat m_i)(y_i - \hat m_i)^\top + \hat K_i]\big)
               + \tfrac12 \log|\Psi_i| + \tfrac{N_i}2 \log 2\pi,

    evaluated block by block by :class:`magma_pymc.ops.GaussianBlockLoss` (batched NumPy
    Cholesky, closed-form gradient): thousands of small blocks cost one Python call per
    evaluation instead of one per block and per LAPACK routine. With different HP, entry
    :math:`i` depends on row :math:`i` of ``log_params`` only, so the gradient of the sum holds
    every individual's own gradient (:func:`magma_pymc.batched_lbfgsb.minimize_separable`).
    """
    psi = individual_covariances(kernel, log_params, inputs, mask, jitter)
    # 1/2 (r'Psi^{-1}r + tr(Psi^{-1}K)) = 1/2 tr(Psi^{-1}(rr' + K)); padded slots: Psi = I, zero scatter.
    scatter = deviations[:, :, None] * deviations[:, None, :] + cov_blocks
    return gaussian_block_loss(psi, scatter) + 0.5 * LOG_2PI * mask.sum(axis=1)


def individual_objective_common(
    kernel: Kernel,
    log_params: TensorVariable,
    grid: TensorVariable,
    deviations: TensorVariable,
    cov: TensorVariable,
    jitter: TensorVariable,
) -> TensorVariable:
    r"""Fast path of :math:`\sum_i` :func:`individual_objectives` for a common grid and common HP.

    All :math:`\Psi_i` equal :math:`\Psi` and all :math:`\hat K_i` equal :math:`\hat K`, so the
    M blocks collapse into one:

    .. math::

        -\sum_i Q_i = M\big[\tfrac12 \mathrm{tr}(\Psi^{-1} G) + \tfrac12\log|\Psi|\big] + \tfrac{MN}2 \log 2\pi,
        \qquad G = \tfrac1M \sum_i (y_i - \hat m)(y_i - \hat m)^\top + \hat K,

    one :class:`~magma_pymc.ops.GaussianBlockLoss` block (one factorisation, closed-form
    gradient). ``deviations`` is ``(M, N)``.
    """
    n_individuals, n_grid = deviations.shape
    psi = noisy_covariance(kernel, log_params, grid, jitter)
    scatter = deviations.T @ deviations / n_individuals + cov
    loss = gaussian_block_loss(psi[None], scatter[None])[0]
    return n_individuals * (loss + 0.5 * n_grid * LOG_2PI)


# A value returned where the objective is not finite (a trial point where a Cholesky failed):
# large enough to make the line search back off, small enough to keep its interpolation finite.
REJECTED_VALUE = 1e100


def minimize_log_params(
    value_and_grad: Callable[[np.ndarray], tuple[float, np.ndarray]],
    start: np.ndarray,
    bounds: Sequence[tuple[float, float]],
    *,
    max_iter: int = 200,
    tol: float = 1e-8,
) -> OptimizeResult:
    """Minimise a compiled objective over unconstrained log-parameters with SciPy's L-BFGS-B.

    ``start`` may be any shape (e.g. ``(M, P)`` for batched individuals); the optimiser sees it
    flattened and ``result.x`` is returned in the original shape. Non-finite values (a failed
    Cholesky at a trial point) are reported to the optimiser as a large value so that the line
    search backs off instead of propagating NaN.
    """
    shape = np.shape(start)

    def fun(flat: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = value_and_grad(flat.reshape(shape))
        value = float(value)
        grad = np.asarray(grad, dtype=float).ravel()
        if not np.isfinite(value) or not np.all(np.isfinite(grad)):
            return REJECTED_VALUE, np.zeros_like(grad)
        return value, grad

    start_flat = np.clip(np.ravel(start), [b[0] for b in bounds], [b[1] for b in bounds])
    result = minimize(
        fun, start_flat, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": max_iter, "ftol": tol, "gtol": 1e-6}
    )
    result.x = result.x.reshape(shape)
    return result
