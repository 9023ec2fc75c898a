r"""Gaussian losses as PyTensor Ops with closed-form gradients, for the M-steps.

*Individual step* (:class:`GaussianBlockLoss`). With different HP and thousands of individuals, the individual M-step evaluates, hundreds of times,

.. math::

    \ell_i(\Psi_i) = \tfrac12 \mathrm{tr}(\Psi_i^{-1} G_i) + \tfrac12 \log|\Psi_i|,
    \qquad G_i = (y_i - \hat m_i)(y_i - \hat m_i)^\top + \hat K_i,

for small blocks (:math:`N_i \approx 30`). Written with PyTensor's batched ``cholesky`` and
``solve_triangular``, each evaluation with its gradient runs about fifteen per-block LAPACK calls
from a Python loop (``Blockwise``): 0.3 s per evaluation at M = 2000 (``benchmarks/``). This Op
computes the same values with NumPy's batched Cholesky and batched inverse of the factors (C loops
over the blocks), and its gradient in closed form,

.. math::

    \frac{\partial \ell_i}{\partial \Psi_i} = \tfrac12 \big(\Psi_i^{-1} - \Psi_i^{-1} G_i \Psi_i^{-1}\big),
    \qquad \Psi_i^{-1} = L_i^{-\top} L_i^{-1},\ L_i = \mathrm{chol}(\Psi_i),

so the kernel's part of the chain rule stays a PyTensor graph. :math:`\Psi_i^{-1}` is formed from
the Cholesky factor as :math:`L_i^{-\top} L_i^{-1}` (symmetric positive definite by construction),
never by inverting :math:`\Psi_i` itself.

*Mean-process step* (:class:`GaussianInformationLoss`). The ECME step evaluates, tens of times per
EM iteration at fixed individual HP, the part of :math:`-\log p(y)` that depends on
:math:`K = K_{\theta_0}(t, t) + jI` given the data's information form :math:`S, b`
(:class:`magma_pymc.information_form.DataPrecision`):

.. math::

    \ell(K) = \sum_k \log (L_B)_{kk} - \tfrac12 \|L_B^{-1} L^\top b\|^2,
    \qquad L = \mathrm{chol}(K),\ L_B = \mathrm{chol}(I + L^\top S L),

    \frac{\partial \ell}{\partial K} = \tfrac12 \big(S - Y^\top Y - v v^\top\big),
    \qquad Y = L_B^{-1} L^\top S,\ v = b - S (\hat m - m_0),\ \hat m - m_0 = L L_B^{-\top} L_B^{-1} L^\top b,

(:math:`S - Y^\top Y = (I + SK)^{-1} S`). Written as PyTensor graphs, value and gradient take about
a hundred ops, whose Python overhead in the default ``"NUMPY"`` mode was 40 % of an evaluation at
N = 193; as one Op, two Cholesky factorisations, two triangular solves and four products.

*Mean-process step, pseudo-observation form* (:class:`GaussianMarginalLoss`). Where :math:`S` is
positive definite (every grid point observed: the exact models' union grid), the same likelihood
is that of pseudo-observations :math:`z = S^{-1} b` of :math:`\mu_0 - m_0` with noise covariance
:math:`R = S^{-1}` (:func:`magma_pymc.information_form.build_pseudo_observations`), up to a constant:

.. math::

    \ell(A) = \tfrac12 \log|A| + \tfrac12 z^\top A^{-1} z,
    \qquad \frac{\partial \ell}{\partial A} = \tfrac12 \big(A^{-1} - \alpha\alpha^\top\big),
    \qquad A = K + R,\ \alpha = A^{-1} z,

one Cholesky factorisation and the inverse from its factor (LAPACK ``potri``): about N^3 flops
per evaluation instead of about 8 N^3 (measured at N = 190: 0.55 ms instead of 1.56 ms).
"""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt
from pytensor.gradient import DisconnectedType, grad_undefined
from pytensor.graph import Apply, Op
from scipy.linalg import lapack, solve_triangular

from magma_pymc.small_blocks import small_block_precisions

__all__ = [
    "GaussianBlockLoss",
    "gaussian_block_loss",
    "block_precisions",
    "block_gradient",
    "GaussianInformationLoss",
    "gaussian_information_loss",
    "GaussianMarginalLoss",
    "gaussian_marginal_loss",
]


class GaussianBlockLoss(Op):
    r"""``(psi (M, n, n), scatter (M, n, n)) -> (loss (M,), dloss_dpsi (M, n, n))`` (module docstring).

    ``loss[i]`` is :math:`\ell_i` and ``dloss_dpsi[i]`` its derivative with respect to every entry of
    :math:`\Psi_i`. Where a block is not positive definite both of its outputs are NaN (the
    M-step's optimiser then rejects that individual's trial point); the other blocks are computed. Only the first output is differentiable, and
    only with respect to ``psi``; ``scatter`` (the E-step's :math:`G_i`) is data.
    """

    __props__ = ()

    def make_node(self, psi, scatter):
        psi = pt.as_tensor_variable(psi, dtype="float64")
        scatter = pt.as_tensor_variable(scatter, dtype="float64")
        if psi.ndim != 3 or scatter.ndim != 3:
            raise ValueError("GaussianBlockLoss takes two (M, n, n) tensors")
        return Apply(self, [psi, scatter], [pt.vector(dtype="float64"), pt.tensor3(dtype="float64")])

    def perform(self, node, inputs, output_storage):
        psi, scatter = inputs
        try:
            loss, dloss = _block_loss(psi, scatter)
        except np.linalg.LinAlgError:
            # Some block is not positive definite (a trial point of the M-step's line search):
            # NaN for those blocks only, so that the other individuals' values stay usable.
            loss, dloss = np.full(psi.shape[0], np.nan), np.full(psi.shape, np.nan)
            for i in range(psi.shape[0]):
                try:
                    block_loss, block_dloss = _block_loss(psi[i : i + 1], scatter[i : i + 1])
                except np.linalg.LinAlgError:
                    continue
                loss[i], dloss[i] = block_loss[0], block_dloss[0]
        output_storage[0][0] = loss
        output_storage[1][0] = dloss

    def infer_shape(self, *args):
        # (node, shapes) in current PyTensor, (fgraph, node, shapes) in releases before it.
        shapes = args[-1]
        return [shapes[0][:1], shapes[0]]

    def pullback(self, inputs, outputs, cotangents):
        loss_grad, dpsi_grad = cotangents
        if not isinstance(dpsi_grad.type, DisconnectedType):
            raise NotImplementedError("GaussianBlockLoss: the derivative output is not differentiable")
        return [
            loss_grad[:, None, None] * outputs[1],
            grad_undefined(self, 1, inputs[1], "the E-step's scatter matrices are data"),
        ]

    if not hasattr(Op, "pullback"):  # PyTensor releases that predate `pullback` call `L_op`
        L_op = pullback


#: Blocks at least this large are inverted one by one with LAPACK's ``potrf``/``potri`` (about
#: :math:`N^3` flops) instead of NumPy's batched inverse of the factor and its product (about
#: :math:`4N^3`): a long individual's block dominates its bucket's work (measured at N = 2000, one
#: BLAS thread on a loaded 2-core machine: 4.1 s instead of 5.4 s per evaluation with its gradient).
LARGE_BLOCK = 128
#: Blocks smaller than this go through the compiled kernel of :mod:`magma_pymc.small_blocks` (no
#: per-block set-up: 0.2-0.3 ms instead of 0.7-1.0 ms for 20 blocks of 30 or 100 blocks of 11, one
#: thread); from here to :data:`LARGE_BLOCK` NumPy's batched LAPACK calls are as fast.
SMALL_BLOCK = 64


def block_precisions(psi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(Psi_i^{-1}, 1/2 log|Psi_i|)`` for a batch of blocks from their Cholesky factors (raises
    ``LinAlgError`` if any block is not positive definite): small blocks through the compiled kernel
    of :mod:`magma_pymc.small_blocks`, large ones with LAPACK's ``potri`` one by one."""
    if psi.shape[-1] >= LARGE_BLOCK:
        return _large_block_precisions(psi)
    if psi.shape[-1] < SMALL_BLOCK:
        return small_block_precisions(psi)
    chol = np.linalg.cholesky(psi)
    # L_i^{-1}: NumPy's batched solve against the identity (a C loop over the blocks, no Python
    # loop over individuals); its accuracy is governed by cond(L_i) = cond(Psi_i)^{1/2}.
    inverse_factor = np.linalg.inv(chol)
    precision = inverse_factor.mT @ inverse_factor                 # Psi^{-1}, symmetric by construction
    return precision, np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)


def _large_block_precisions(psi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r""":func:`block_precisions` block by block: :math:`\Psi^{-1}` from the Cholesky factor (``potri``)."""
    precision, half_logdet = np.empty(psi.shape), np.empty(psi.shape[0])
    for i, block in enumerate(psi):
        chol, info = lapack.dpotrf(block, lower=1, clean=1)
        if info != 0:
            raise np.linalg.LinAlgError("block not positive definite")
        inverse, info = lapack.dpotri(chol, lower=1)
        if info != 0:
            raise np.linalg.LinAlgError("block not positive definite")
        precision[i] = inverse + np.tril(inverse, -1).T  # potri fills the lower triangle (clean=1: upper is zero)
        half_logdet[i] = np.log(np.diag(chol)).sum()
    return precision, half_logdet


def block_gradient(precision: np.ndarray, scatter: np.ndarray) -> np.ndarray:
    r""":math:`\partial \ell_i / \partial \Psi_i = \tfrac12 (\Psi_i^{-1} - \Psi_i^{-1} G_i \Psi_i^{-1})` (module docstring)."""
    return 0.5 * (precision - precision @ scatter @ precision)


def _block_loss(psi: np.ndarray, scatter: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values and derivatives of the module docstring for a batch of blocks (raises ``LinAlgError``
    if any block is not positive definite)."""
    precision, half_logdet = block_precisions(psi)
    loss = 0.5 * (precision * scatter).sum(axis=(1, 2)) + half_logdet
    return loss, block_gradient(precision, scatter)


_loss = GaussianBlockLoss()


def gaussian_block_loss(psi, scatter):
    r""":math:`\ell_i = \tfrac12\mathrm{tr}(\Psi_i^{-1}G_i) + \tfrac12\log|\Psi_i|` for each block (shape ``(M,)``)."""
    return _loss(psi, scatter)[0]


class _CovarianceLoss(Op):
    """``(cov (N, N), *data) -> (loss (), dloss_dcov (N, N))``: what the mean-process losses share.

    Where ``cov`` is not positive definite both outputs are NaN (the optimiser rejects the trial
    point). Only ``loss`` is differentiable, and only with respect to ``cov``; the other inputs
    are data. Subclasses give the data's dimensions and names and :meth:`_loss`.
    """

    __props__ = ()
    data_ndims: tuple[int, ...] = ()
    data_names: tuple[str, ...] = ()

    def make_node(self, cov, *data):
        cov = pt.as_tensor_variable(cov, dtype="float64")
        data = [pt.as_tensor_variable(value, dtype="float64") for value in data]
        if cov.ndim != 2 or tuple(value.ndim for value in data) != self.data_ndims:
            raise ValueError(
                f"{type(self).__name__} takes an (N, N) covariance and data of dimensions {self.data_ndims}"
            )
        return Apply(self, [cov, *data], [pt.scalar(dtype="float64"), pt.matrix(dtype="float64")])

    def perform(self, node, inputs, output_storage):
        try:
            loss, dloss = self._loss(*inputs)
        except np.linalg.LinAlgError:
            loss, dloss = np.nan, np.full(inputs[0].shape, np.nan)
        output_storage[0][0] = np.asarray(loss)
        output_storage[1][0] = dloss

    def _loss(self, cov, *data) -> tuple[float, np.ndarray]:
        """Loss and its derivative w.r.t. ``cov``; raises ``LinAlgError`` where ``cov`` is not PD."""
        raise NotImplementedError

    def infer_shape(self, *args):
        shapes = args[-1]  # see GaussianBlockLoss.infer_shape
        return [(), shapes[0]]

    def pullback(self, inputs, outputs, cotangents):
        loss_grad, dcov_grad = cotangents
        if not isinstance(dcov_grad.type, DisconnectedType):
            raise NotImplementedError(f"{type(self).__name__}: the derivative output is not differentiable")
        return [
            loss_grad * outputs[1],
            *(
                grad_undefined(self, k, value, f"the {name} are data")
                for k, (value, name) in enumerate(zip(inputs[1:], self.data_names, strict=True), start=1)
            ),
        ]

    if not hasattr(Op, "pullback"):
        L_op = pullback


class GaussianInformationLoss(_CovarianceLoss):
    r"""``(cov (N, N), precision (N, N), shift (N,)) -> (loss (), dloss_dcov (N, N))`` (module docstring).

    ``cov`` is :math:`K` (jitter included), ``precision`` and ``shift`` the data's :math:`S` and
    :math:`b` (see :class:`_CovarianceLoss` for NaN and gradients).
    """

    data_ndims = (2, 1)
    data_names = ("data's precision", "data's shift")

    def _loss(self, cov, precision, shift):
        chol = np.linalg.cholesky(cov)
        loaded = chol.T @ precision                                          # L' S
        chol_b = np.linalg.cholesky(np.eye(cov.shape[0]) + loaded @ chol)
        # Finite by construction (factors of finite positive definite matrices): skip SciPy's check.
        whitened = solve_triangular(chol_b, chol.T @ shift, lower=True, check_finite=False)  # u = L_B^{-1} L' b
        reduced = solve_triangular(chol_b, loaded, lower=True, check_finite=False)           # Y = L_B^{-1} L' S
        centred_mean = chol @ solve_triangular(chol_b, whitened, lower=True, trans="T", check_finite=False)
        v = shift - precision @ centred_mean
        loss = np.log(np.diag(chol_b)).sum() - 0.5 * whitened @ whitened
        return loss, 0.5 * (precision - reduced.T @ reduced - np.outer(v, v))


_information_loss = GaussianInformationLoss()


def gaussian_information_loss(cov, precision, shift):
    r""":math:`\ell(K) = \tfrac12\log|I + L^\top S L| - \tfrac12 \|L_B^{-1} L^\top b\|^2` (module docstring)."""
    return _information_loss(cov, precision, shift)[0]


class GaussianMarginalLoss(_CovarianceLoss):
    r"""``(cov (N, N), observations (N,)) -> (loss (), dloss_dcov (N, N))`` (module docstring).

    ``loss`` is :math:`\tfrac12\log|A| + \tfrac12 z^\top A^{-1} z` for ``cov`` :math:`A` and
    ``observations`` :math:`z`: the negative log density of :math:`N(0, A)` at :math:`z` without
    its :math:`\tfrac N2\log 2\pi` (see :class:`_CovarianceLoss` for NaN and gradients).
    """

    data_ndims = (1,)
    data_names = ("pseudo-observations",)

    def _loss(self, cov, observations):
        chol = np.linalg.cholesky(cov)
        weights, _ = lapack.dpotrs(chol, observations, lower=1)   # alpha = A^{-1} z
        # A^{-1} = L^{-T} L^{-1} from the factor (potri fills the lower triangle; the upper one of
        # NumPy's factor is zero), symmetrised.
        inverse, _ = lapack.dpotri(chol, lower=1)
        inverse += inverse.T
        inverse[np.diag_indices_from(inverse)] *= 0.5
        loss = np.log(np.diag(chol)).sum() + 0.5 * observations @ weights
        return loss, 0.5 * (inverse - np.outer(weights, weights))


_marginal_loss = GaussianMarginalLoss()


def gaussian_marginal_loss(cov, observations):
    r""":math:`\ell(A) = \tfrac12\log|A| + \tfrac12 z^\top A^{-1} z` (module docstring)."""
    return _marginal_loss(cov, observations)[0]
