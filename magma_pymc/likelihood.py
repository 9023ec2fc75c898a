r"""The exact marginal log-likelihood as one PyTensor Op with its closed-form gradient (for samplers).

:math:`\mu_0` integrated out, the stacked observations are Gaussian,
:math:`y \sim \mathcal N(P m_0, \Sigma)` with :math:`\Sigma = P K P^\top + \mathrm{blockdiag}(\Psi_i)`,
:math:`K = K_{\theta_0}(t, t) + jI` on the union grid. For any covariance block,
:math:`\partial \log p / \partial \Sigma = \tfrac12 (a a^\top - \Sigma^{-1})` with :math:`a = \Sigma^{-1} r`,
and by Woodbury (:math:`\hat K = (K^{-1} + S)^{-1}`, :math:`S = \sum_i P_i^\top \Psi_i^{-1} P_i`,
:math:`b = \sum_i P_i^\top \Psi_i^{-1} r_i`):

.. math::

    \frac{\partial \log p}{\partial K} = \tfrac12 \big(v v^\top - (S - S \hat K S)\big),
    \qquad v = b - S(\hat m - m_0),

    \frac{\partial \log p}{\partial \Psi_i} = \tfrac12 \big(\Psi_i^{-1} G_i \Psi_i^{-1} - \Psi_i^{-1}\big),
    \qquad G_i = (y_i - \hat m_i)(y_i - \hat m_i)^\top + \hat K_i .

These are the gradients EM climbs at its current E-step (Fisher's identity): the second is minus
the individual M-step's loss gradient (:class:`magma_pymc.ops.GaussianBlockLoss`, the same code
evaluates it here) and the first is minus the mean-process step's
(:class:`magma_pymc.ops.GaussianInformationLoss`). The value is the whitened formula of
:mod:`magma_pymc.hyperposterior` (theory page, *Marginal likelihood*): with
:math:`L = \mathrm{chol}(K)`, :math:`T = L^\top S`, :math:`B = I + T L`, :math:`X = L_B^{-1}`,
:math:`V = X L^\top`, :math:`Y = X T`, :math:`u = V b`,

.. math::

    \log p(y) = -\tfrac12 \Big(\sum_i r_i^\top \Psi_i^{-1} r_i - \|u\|^2\Big)
                - \tfrac12 \sum_i \log|\Psi_i| - \log|L_B| - \tfrac n2 \log 2\pi,
    \qquad \hat K = V^\top V,\ S \hat K S = Y^\top Y,\ \hat m - m_0 = V^\top u .

:math:`B` has eigenvalues :math:`\ge 1`, so :math:`X` (LAPACK ``trtri``) is accurate whatever the
conditioning of :math:`K`. Flops per evaluation, value and gradient together: two Cholesky
factorisations and one triangular inverse of size N (:math:`N^3`), four triangular products
(:math:`4N^3`) and two symmetric rank-N products (:math:`2N^3`), about :math:`7N^3`, plus
:math:`O(\sum_i N_i^3)` for the individual blocks. PyTensor's automatic differentiation of the
same value (:func:`magma_pymc.hyperposterior.build_estep`) traverses each factorisation and
solve backwards (``benchmarks/bench_gradient.py`` measures both).

The kernels' graphs stay PyTensor's: the Op's two derivative outputs are chained through
:math:`K_{\theta_0}` and :math:`C_{\theta_i}` to the log HP by ``pytensor.grad`` (elementwise, cheap).

``perform`` (NumPy/SciPy) is the reference and runs in PyTensor's C and Python modes; in its Numba
mode (nutpie's ``backend="numba"``, ``mode="NUMBA"``) the Op runs :func:`magma_pymc.numba_ops.marginal_log_likelihood`,
the same algorithm compiled (same outputs to rounding, ``tests/test_numba_ops.py``).
"""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt
from pytensor.gradient import DisconnectedType, grad_undefined
from pytensor.graph import Apply, Op
from pytensor.link.numba.dispatch.basic import register_funcify_default_op_cache_key
from pytensor.tensor.variable import TensorVariable
from scipy.linalg import blas, lapack

from magma_pymc import numba_ops
from magma_pymc.hyperposterior import LOG_2PI, TrainingTensors, individual_covariances
from magma_pymc.kernels import Kernel
from magma_pymc.ops import block_gradient, block_precisions

__all__ = ["MarginalLogLikelihood", "marginal_log_likelihood", "build_marginal_log_likelihood", "flop_count"]


class MarginalLogLikelihood(Op):
    r"""``(K (N, N), psi (M, n, n), residuals (M, n), index (M, n)) -> (logp (), dK (N, N), dpsi (M, n, n))``.

    ``K`` includes the jitter; ``psi`` is padded with identity rows and columns, ``residuals`` with
    zeros, ``index`` with ``N`` (one past the grid), as :class:`~magma_pymc.hyperposterior.TrainingTensors`.
    ``logp`` omits :math:`-\tfrac n2\log 2\pi`. Where a factorisation fails all outputs are NaN
    (a sampler then rejects the point: a divergence, reported as such). Only ``logp`` is
    differentiable, with respect to ``K`` and ``psi``.
    """

    __props__ = ()

    def make_node(self, prior_cov, psi, residuals, index):
        prior_cov = pt.as_tensor_variable(prior_cov, dtype="float64")
        psi = pt.as_tensor_variable(psi, dtype="float64")
        residuals = pt.as_tensor_variable(residuals, dtype="float64")
        index = pt.as_tensor_variable(index, dtype="int64")
        if (prior_cov.ndim, psi.ndim, residuals.ndim, index.ndim) != (2, 3, 2, 2):
            raise ValueError("MarginalLogLikelihood takes K (N, N), psi (M, n, n), residuals (M, n), index (M, n)")
        outputs = [pt.scalar(dtype="float64"), pt.matrix(dtype="float64"), pt.tensor3(dtype="float64")]
        return Apply(self, [prior_cov, psi, residuals, index], outputs)

    def perform(self, node, inputs, output_storage):
        try:
            value, d_prior, d_psi = marginal_log_likelihood(*inputs)
        except np.linalg.LinAlgError:
            value, d_prior, d_psi = np.nan, np.full(inputs[0].shape, np.nan), np.full(inputs[1].shape, np.nan)
        output_storage[0][0] = np.asarray(value)
        output_storage[1][0] = d_prior
        output_storage[2][0] = d_psi

    def infer_shape(self, *args):
        shapes = args[-1]  # (node, shapes) in current PyTensor, (fgraph, node, shapes) before
        return [(), shapes[0], shapes[1]]

    def pullback(self, inputs, outputs, cotangents):
        value_grad, d_prior_grad, d_psi_grad = cotangents
        if not (isinstance(d_prior_grad.type, DisconnectedType) and isinstance(d_psi_grad.type, DisconnectedType)):
            raise NotImplementedError("MarginalLogLikelihood: the derivative outputs are not differentiable")
        return [
            value_grad * outputs[1],
            value_grad * outputs[2],
            grad_undefined(self, 2, inputs[2], "the residuals are data"),
            grad_undefined(self, 3, inputs[3], "the index is data"),
        ]

    if not hasattr(Op, "pullback"):  # PyTensor releases that predate `pullback` call `L_op`
        L_op = pullback


@register_funcify_default_op_cache_key(MarginalLogLikelihood)
def _numba_marginal_log_likelihood(op, node=None, **kwargs):
    """The Op's implementation in PyTensor's Numba backend (nutpie): :mod:`magma_pymc.numba_ops`, same outputs."""
    return numba_ops.marginal_log_likelihood, 1  # 1: version of the implementation, part of Numba's cache key


_op = MarginalLogLikelihood()


def _cholesky(matrix: np.ndarray) -> np.ndarray:
    factor, info = lapack.dpotrf(matrix, lower=1, clean=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"matrix not positive definite (dpotrf info {info})")
    return factor


def _gram(matrix: np.ndarray) -> np.ndarray:
    """``matrix' matrix`` from BLAS ``syrk`` (one triangle: half the flops of a general product), symmetrised."""
    lower = blas.dsyrk(1.0, matrix, trans=1, lower=1)
    return lower + np.tril(lower, -1).T


def marginal_log_likelihood(
    prior_cov: np.ndarray, psi: np.ndarray, residuals: np.ndarray, index: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    r"""NumPy value and gradients of the module docstring (raises ``LinAlgError`` if a matrix is not PD).

    Returns ``(logp + n/2 log 2pi, dlogp/dK, dlogp/dpsi)``.
    """
    n_grid = prior_cov.shape[0]
    # Individual blocks: Psi_i^{-1} from the Cholesky factors, batched (ops.block_precisions).
    precision, half_logdet_psi = block_precisions(psi)
    shifts = (precision @ residuals[..., None])[..., 0]                      # Psi_i^{-1} r_i
    quad_residuals = float((residuals * shifts).sum())
    # Scatter onto the grid (+1 row/column for padded slots, dropped): repeated inputs add up.
    size = n_grid + 1
    flat = (index[:, :, None] * size + index[:, None, :]).ravel()
    data_precision = np.bincount(flat, precision.ravel(), size * size).reshape(size, size)[:n_grid, :n_grid]
    shift = np.bincount(index.ravel(), shifts.ravel(), size)[:n_grid]

    chol = _cholesky(prior_cov)                                              # L
    loaded = blas.dtrmm(1.0, chol, data_precision, lower=1, trans_a=1)       # T = L' S
    b_matrix = blas.dtrmm(1.0, chol, loaded, side=1, lower=1)                # T L = L' S L
    b_matrix[np.diag_indices(n_grid)] += 1.0
    chol_b = _cholesky(b_matrix)                                             # L_B (lower triangle read)
    inverse_b, info = lapack.dtrtri(chol_b, lower=1)                         # X = L_B^{-1}
    if info != 0:
        raise np.linalg.LinAlgError(f"singular factor (dtrtri info {info})")
    factor = blas.dtrmm(1.0, inverse_b, np.ascontiguousarray(chol.T), lower=1)  # V = X L'
    reduced = blas.dtrmm(1.0, inverse_b, loaded, lower=1)                    # Y = X T
    whitened = factor @ shift                                                # u = V b
    centred_mean = factor.T @ whitened                                       # mhat - m0 = V' u
    value = (
        -0.5 * (quad_residuals - whitened @ whitened)
        - half_logdet_psi.sum()
        - np.log(np.diag(chol_b)).sum()
    )
    v = shift - data_precision @ centred_mean
    d_prior = 0.5 * (np.outer(v, v) - data_precision + _gram(reduced))                # S Khat S = Y'Y

    # G_i = e_i e_i' + Khat_i on the observed slots (zero on padded ones).
    cov = np.zeros((size, size))
    cov[:n_grid, :n_grid] = _gram(factor)                                    # Khat = V'V
    deviations = residuals - np.append(centred_mean, 0.0)[index]
    scatter = deviations[:, :, None] * deviations[:, None, :] + cov.take(flat).reshape(psi.shape)
    d_psi = -block_gradient(precision, scatter)
    return float(value), d_prior, d_psi


def build_marginal_log_likelihood(
    mean_kernel: Kernel,
    individual_kernel: Kernel,
    mean_log_params: TensorVariable,
    individual_log_params: TensorVariable,
    data: TrainingTensors,
) -> TensorVariable:
    r"""Exact :math:`\log p(y \mid \Theta)` on the union grid through :class:`MarginalLogLikelihood`.

    Same value as ``build_estep(...).log_likelihood`` (up to rounding; a test checks it against the
    dense joint density), with the closed-form gradient of the module docstring. Any grid, common
    or different HP; ``data`` as :class:`~magma_pymc.hyperposterior.TrainingTensors` (padded slots
    neutral). NaN where a factorisation fails.
    """
    prior_cov = mean_kernel.covariance(mean_log_params)(data.grid) + data.jitter * pt.eye(data.grid.shape[0])
    psi = individual_covariances(individual_kernel, individual_log_params, data.inputs, data.mask, data.jitter)
    value = _op(prior_cov, psi, data.residuals, data.index)[0]
    return value - 0.5 * data.mask.sum() * LOG_2PI


def flop_count(n_grid: int, block_sizes) -> float:
    r"""Floating-point operations of one evaluation of :func:`marginal_log_likelihood` (value and gradient).

    :math:`7N^3` for the grid part (module docstring; a triangular product or inverse counted at its
    LAPACK/BLAS count, a symmetric product :math:`A^\top A` at :math:`N^3`) plus, per block of
    size :math:`n`, about :math:`6n^3` (Cholesky :math:`n^3/3`, inverse of the factor
    :math:`n^3/3`, :math:`\Psi^{-1}` :math:`n^3`, :math:`\Psi^{-1}G\Psi^{-1}` :math:`4n^3`).
    """
    n = float(n_grid)
    return 7.0 * n**3 + sum(6.0 * float(m) ** 3 for m in block_sizes)
