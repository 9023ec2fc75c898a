r"""The projected model's mean-process M-step (ECME) at fixed individual HP.

In the projected model (:func:`magma_pymc.hyperposterior.build_estep_projected`) the loadings
:math:`S_i = K_0(t_i, g) L_g^{-\top}` depend on the mean-process HP :math:`\theta_0`, so the step
cannot run on a fixed summary of the data as in the exact model
(:mod:`magma_pymc.information_form`). The individual HP are fixed during the step, though, so
everything about :math:`\Psi_i` is computed once per M-step (:class:`ProjectedFactors`):

.. math::

    A_i = L_{\Psi_i}^{-1}, \quad a_i = A_i r_i, \quad \sum_i \|a_i\|^2, \quad
    \tfrac12 \sum_i \log|\Psi_i|, \quad \sum_i N_i ,

and an evaluation at :math:`\theta_0` computes the E-step's sums
(:class:`~magma_pymc.hyperposterior.EStepTerms`) without a factorisation per individual
(:func:`build_projected_sums`): the kernel and the solve with :math:`L_g` run once on the U distinct
inputs :math:`u` of the individuals (:func:`distinct_inputs`; at most :math:`\sum_i N_i`, far fewer
where individuals share inputs), whose rows are gathered to each individual's slots,

.. math::

    S_u = K_0(u, g) L_g^{-\top}, \qquad S_i = (S_u)_{[t_i]}, \qquad W_i = A_i S_i, \qquad
    \Sigma = \sum_i W_i^\top W_i, \qquad c = \sum_i W_i^\top a_i .

The loadings are formed before the sums, as in the E-step: :math:`L_g^{-1} (\sum_i K_i^\top
\Psi_i^{-1} K_i) L_g^{-\top}` would cost less but loses about :math:`\log_{10}\mathrm{cond}(K_0(g,g))`
digits (measured: 3e-9 relative on the likelihood with 100 inducing points).

:math:`F = -\log p(y)` depends on :math:`\theta_0` only through :math:`(\Sigma, c)`
(:func:`~magma_pymc.hyperposterior.finish_estep` with :math:`L_0 = I`). With
:math:`\bar\Sigma = \partial F/\partial\Sigma` and :math:`\bar c = \partial F/\partial c`, its gradient
has two paths:

- through the loadings at fixed :math:`L_g` (:func:`build_sums_vjp`), a sum over individuals that starts
  in closed form, :math:`\bar W_i = W_i (\bar\Sigma + \bar\Sigma^\top) + a_i \bar c^\top`, which PyTensor
  chains through :math:`W_i = A_i S_i`, the gather, the solve and the kernel;
- through :math:`L_g` at fixed :math:`K_0(u, g)` (:func:`build_grid_vjp`), :math:`O(G^3)` from the summed
  terms alone.

Per individual and evaluation, value and gradient cost about :math:`2 N_i^2 G + 2 N_i G^2`
multiply-adds (two products with :math:`A_i`, :math:`W_i^\top W_i` and :math:`W_i \bar\Sigma`), in a few
batched products over all individuals, plus one gather and one scatter of :math:`N_i G` numbers. The sums
add over any partition of the individuals: a cluster computes them and the first path where the data
live, the loss, its cotangents and the second path on the client (:mod:`magma_pymc.distributed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile import Function
from pytensor.tensor.linalg import cholesky, solve_triangular
from pytensor.tensor.variable import TensorVariable

from magma_pymc.compiled import ModelGraphs, _compile
from magma_pymc.hyperposterior import (
    EStepTerms,
    TrainingTensors,
    finish_estep,
    individual_covariances,
    log_diagonal_sum,
    with_jitter,
)
from magma_pymc.kernels import Kernel

__all__ = [
    "ProjectedFactors",
    "ProjectedSums",
    "build_projected_factors",
    "build_projected_sums",
    "distinct_inputs",
    "build_projected_loss",
    "build_sums_vjp",
    "build_grid_vjp",
    "build_projected_step",
    "symbolic_factors",
    "ProjectedStepGraphs",
    "projected_step_graphs",
]


class ProjectedFactors(NamedTuple):
    r"""What the projected mean-process step needs of the individuals at fixed individual HP.

    ``inverse_factors`` :math:`A_i = L_{\Psi_i}^{-1}` ``(M, N_max, N_max)`` (identity in padded
    slots), ``whitened_residuals`` :math:`a_i = L_{\Psi_i}^{-1} r_i` ``(M, N_max)``, and the sums
    ``quad_residuals`` :math:`\sum_i\|a_i\|^2`, ``half_logdet_psi`` :math:`\tfrac12\sum_i\log|\Psi_i|`,
    ``n_obs`` :math:`\sum_i N_i`.
    """

    inverse_factors: TensorVariable
    whitened_residuals: TensorVariable
    quad_residuals: TensorVariable
    half_logdet_psi: TensorVariable
    n_obs: TensorVariable


class ProjectedSums(NamedTuple):
    r"""One evaluation's sums of a set of individuals.

    ``chol_grid`` :math:`L_g`, ``whitened`` loadings :math:`W` (flattened ``(M N_max, G)``) and the E-step's ``terms``.
    """

    chol_grid: TensorVariable
    whitened: TensorVariable
    terms: EStepTerms


def symbolic_factors() -> ProjectedFactors:
    """Symbolic inputs for :class:`ProjectedFactors`."""
    return ProjectedFactors(
        pt.tensor3("inverse_factors", dtype="float64"), pt.matrix("whitened_residuals", dtype="float64"),
        pt.scalar("quad_residuals", dtype="float64"), pt.scalar("half_logdet_psi", dtype="float64"),
        pt.scalar("n_obs", dtype="float64"),
    )


def build_projected_factors(
    individual_kernel: Kernel, individual_log_params: TensorVariable, data: TrainingTensors
) -> ProjectedFactors:
    r""":class:`ProjectedFactors` at the individual HP: one batched factorisation, once per M-step.

    :math:`a_i` and the log-determinants are computed as in
    :func:`~magma_pymc.hyperposterior.build_estep_terms`.
    """
    n_max = data.inputs.shape[1]
    psi = individual_covariances(individual_kernel, individual_log_params, data.inputs, data.mask, data.jitter)
    chol_psi = cholesky(psi, lower=True)
    identity = pt.broadcast_to(pt.eye(n_max), psi.shape)
    inverse_factors = solve_triangular(chol_psi, identity, lower=True, b_ndim=2)
    whitened_res = solve_triangular(chol_psi, data.residuals, lower=True, b_ndim=1)
    return ProjectedFactors(
        inverse_factors, whitened_res, (whitened_res**2).sum(), log_diagonal_sum(chol_psi), data.mask.sum()
    )


def distinct_inputs(inputs: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct observed inputs ``(U, d)`` and each slot's position among them ``(M, N_max)`` (0 where padded).

    Individuals often share inputs (visits on a calendar, ages in months): the kernel and the solve with
    :math:`L_g` then run on the U distinct inputs instead of every slot.
    """
    observed = mask > 0
    distinct, inverse = np.unique(inputs[observed], axis=0, return_inverse=True)
    positions = np.zeros(mask.shape, dtype=np.int64)
    positions[observed] = inverse.ravel()
    return distinct, positions


def build_projected_sums(
    mean_kernel: Kernel,
    mean_log_params: TensorVariable,
    grid: TensorVariable,
    distinct: TensorVariable,
    positions: TensorVariable,
    mask: TensorVariable,
    factors: ProjectedFactors,
    jitter: TensorVariable,
) -> ProjectedSums:
    r"""The E-step's sums of the individuals at :math:`\theta_0` from their :class:`ProjectedFactors`.

    ``grid`` holds the G inducing points, ``distinct`` and ``positions`` the individuals' inputs
    (:func:`distinct_inputs`). The loadings :math:`S = K_0(t, g) L_g^{-\top}` are computed on the distinct
    inputs, as :func:`~magma_pymc.hyperposterior.build_loadings` computes them, and gathered to the slots;
    then :math:`W_i = A_i S_i` and the sums of the module docstring.
    """
    n_individuals, n_max = positions.shape
    prior = mean_kernel.covariance(mean_log_params)
    chol_grid = cholesky(with_jitter(prior(grid), jitter), lower=True)
    distinct_loadings = solve_triangular(chol_grid, prior(grid, distinct), lower=True, b_ndim=2).T      # (U, G)
    loadings = distinct_loadings[positions.reshape((-1,))] * mask.reshape((-1,))[:, None]             # (M N_max, G)
    whitened = (factors.inverse_factors @ loadings.reshape((n_individuals, n_max, -1))).reshape(
        (n_individuals * n_max, -1))                                                                  # W
    terms = EStepTerms(
        whitened.T @ whitened, whitened.T @ factors.whitened_residuals.reshape((-1,)), *factors[2:]
    )
    return ProjectedSums(chol_grid, whitened, terms)


def build_projected_loss(terms: EStepTerms) -> TensorVariable:
    r""":math:`F = -\log p(y)` of the projected model from the summed terms (:math:`L_0 = I`: module docstring)."""
    return -finish_estep(pt.eye(terms.gram.shape[0]), terms).log_likelihood


def build_sums_vjp(
    mean_log_params: TensorVariable,
    sums: ProjectedSums,
    factors: ProjectedFactors,
    gram_bar: TensorVariable,
    shift_bar: TensorVariable,
) -> TensorVariable:
    r"""The individuals' share of :math:`dF/d\theta_0`: the path through :math:`K_0(t, g)` at fixed :math:`L_g`.

    :math:`\bar W` in closed form (module docstring), chained by PyTensor through :math:`W_i = A_i S_i`, the
    solve with :math:`L_g` (held constant: :func:`build_grid_vjp` takes that path) and the kernel.
    """
    residuals = factors.whitened_residuals.reshape((-1,))
    whitened_bar = sums.whitened @ (gram_bar + gram_bar.T) + residuals[:, None] * shift_bar[None, :]
    return pytensor.grad(
        None, mean_log_params, known_grads={sums.whitened: whitened_bar}, consider_constant=[sums.chol_grid]
    )


def build_grid_vjp(
    mean_kernel: Kernel,
    mean_log_params: TensorVariable,
    grid: TensorVariable,
    jitter: TensorVariable,
    terms: EStepTerms,
    gram_bar: TensorVariable,
    shift_bar: TensorVariable,
) -> TensorVariable:
    r"""The path of :math:`dF/d\theta_0` through :math:`L_g` at fixed :math:`K_0(t, g)`, from the summed terms.

    :math:`\Sigma = L_g^{-1} H L_g^{-\top}` and :math:`c = L_g^{-1} h` with :math:`H, h` fixed give
    :math:`d\Sigma = -L_g^{-1}\,dL_g\,\Sigma - \Sigma\,dL_g^\top L_g^{-\top}` and :math:`dc = -L_g^{-1}\,dL_g\,c`, so

    .. math::

        \bar L_g = -\mathrm{tril}\big(L_g^{-\top} ((\bar\Sigma + \bar\Sigma^\top) \Sigma + \bar c\, c^\top)\big),

    :math:`O(G^3)` whatever the number of individuals; PyTensor chains it through the Cholesky factor.
    """
    chol_grid = cholesky(with_jitter(mean_kernel.covariance(mean_log_params)(grid), jitter), lower=True)
    product = (gram_bar + gram_bar.T) @ terms.gram + shift_bar[:, None] * terms.shift[None, :]
    chol_bar = -pt.tril(solve_triangular(chol_grid.T, product, lower=False, b_ndim=2))
    return pytensor.grad(None, mean_log_params, known_grads={chol_grid: chol_bar})


def build_projected_step(
    mean_kernel: Kernel,
    mean_log_params: TensorVariable,
    grid: TensorVariable,
    distinct: TensorVariable,
    positions: TensorVariable,
    mask: TensorVariable,
    factors: ProjectedFactors,
    jitter: TensorVariable,
) -> tuple[TensorVariable, TensorVariable]:
    r"""``(F, dF/dθ0)`` in one graph (module docstring): the in-process ECME mean-process step."""
    sums = build_projected_sums(mean_kernel, mean_log_params, grid, distinct, positions, mask, factors, jitter)
    value = build_projected_loss(sums.terms)
    gram_bar, shift_bar = pytensor.grad(value, [sums.terms.gram, sums.terms.shift])
    grid_path = build_grid_vjp(mean_kernel, mean_log_params, grid, jitter, sums.terms, gram_bar, shift_bar)
    return value, build_sums_vjp(mean_log_params, sums, factors, gram_bar, shift_bar) + grid_path


@dataclass(frozen=True)
class ProjectedStepGraphs:
    """Lazily compiled functions of the projected mean-process step for one model structure.

    ``grid`` is the inducing points throughout; the data arguments are those of
    :class:`~magma_pymc.hyperposterior.TrainingTensors`, in that order.
    """

    mean_kernel: Kernel
    individual_kernel: Kernel
    common_hp: bool
    mode: str

    def _individual_hp(self):
        kind = pt.vector if self.common_hp else pt.matrix
        return kind("log_params", dtype="float64")

    @cached_property
    def factors(self) -> Function:
        """``(hp, grid, inputs, residuals, mask, index, jitter) -> ProjectedFactors`` (once per M-step)."""
        hp, data = self._individual_hp(), TrainingTensors.symbolic()
        return _compile([hp, *data], list(build_projected_factors(self.individual_kernel, hp, data)), self.mode)

    @cached_property
    def step(self) -> Function:
        """``(mean_hp, grid, distinct, positions, mask, *factors, jitter) -> (F, dF/dθ0)`` (in process)."""
        mean_hp, grid, distinct, positions, mask, factors, jitter = _step_inputs()
        outputs = build_projected_step(self.mean_kernel, mean_hp, grid, distinct, positions, mask, factors, jitter)
        return _compile([mean_hp, grid, distinct, positions, mask, *factors, jitter], list(outputs), self.mode)

    @cached_property
    def sums(self) -> Function:
        """One set of individuals' E-step terms (a partition's, on a cluster).

        ``(mean_hp, grid, distinct, positions, mask, *factors, jitter) -> EStepTerms``.
        """
        mean_hp, grid, distinct, positions, mask, factors, jitter = _step_inputs()
        sums = build_projected_sums(self.mean_kernel, mean_hp, grid, distinct, positions, mask, factors, jitter)
        return _compile([mean_hp, grid, distinct, positions, mask, *factors, jitter], list(sums.terms), self.mode)

    @cached_property
    def loss(self) -> Function:
        """The loss, its cotangents and the grid path of its gradient from the summed terms (the client's part).

        ``(mean_hp, grid, gram, shift, quad_residuals, half_logdet_psi, n_obs, jitter) -> (F, ∂F/∂gram,
        ∂F/∂shift, grid path of dF/dθ0)`` (:func:`build_grid_vjp`).
        """
        mean_hp, grid, _, _, _, factors, jitter = _step_inputs()
        terms = EStepTerms(pt.matrix("gram", dtype="float64"), pt.vector("shift", dtype="float64"), *factors[2:])
        value = build_projected_loss(terms)
        gram_bar, shift_bar = pytensor.grad(value, [terms.gram, terms.shift])
        grid_path = build_grid_vjp(self.mean_kernel, mean_hp, grid, jitter, terms, gram_bar, shift_bar)
        return _compile([mean_hp, grid, *terms, jitter], [value, gram_bar, shift_bar, grid_path], self.mode)

    @cached_property
    def vjp(self) -> Function:
        """One set of individuals' vector-Jacobian product (:func:`build_sums_vjp`).

        ``(mean_hp, grid, distinct, positions, mask, *factors, jitter, gram_bar, shift_bar) -> grad``.
        """
        mean_hp, grid, distinct, positions, mask, factors, jitter = _step_inputs()
        gram_bar, shift_bar = pt.matrix("gram_bar", dtype="float64"), pt.vector("shift_bar", dtype="float64")
        sums = build_projected_sums(self.mean_kernel, mean_hp, grid, distinct, positions, mask, factors, jitter)
        grad = build_sums_vjp(mean_hp, sums, factors, gram_bar, shift_bar)
        inputs = [mean_hp, grid, distinct, positions, mask, *factors, jitter, gram_bar, shift_bar]
        return _compile(inputs, [grad], self.mode)


def _step_inputs():
    return (pt.vector("mean_log_params", dtype="float64"), pt.matrix("grid", dtype="float64"),
            pt.matrix("distinct_inputs", dtype="float64"), pt.matrix("positions", dtype="int64"),
            pt.matrix("mask", dtype="float64"), symbolic_factors(),
            pt.scalar("jitter", dtype="float64"))


_GRAPHS: dict[tuple, ProjectedStepGraphs] = {}


def projected_step_graphs(graphs: ModelGraphs) -> ProjectedStepGraphs:
    """The projected step's functions for ``graphs``' structure (compiled on first use, one per process)."""
    key = (graphs.mean_kernel, graphs.individual_kernel, graphs.common_hp, graphs.mode)
    if key not in _GRAPHS:
        _GRAPHS[key] = ProjectedStepGraphs(*key)
    return _GRAPHS[key]
