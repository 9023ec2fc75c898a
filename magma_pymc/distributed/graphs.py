r"""Compiled functions of the partitioned EM, on top of :class:`magma_pymc.compiled.ModelGraphs`.

The E-step's sums over individuals (:class:`magma_pymc.hyperposterior.EStepTerms`) split over
partitions of the individuals: partition :math:`p` returns

.. math::

    \Big(\sum_{i \in p} W_i^\top W_i,\ \sum_{i \in p} W_i^\top L_{\Psi_i}^{-1} r_i,\
    \sum_{i \in p} \|L_{\Psi_i}^{-1} r_i\|^2,\ \tfrac12 \sum_{i \in p} \log|\Psi_i|,\ \sum_{i\in p} N_i\Big),

an :math:`N \times N` matrix on the union grid, or :math:`G \times G` on the inducing points; the
client adds them and finishes the E-step (:func:`magma_pymc.hyperposterior.finish_estep`).

In the projected model the loadings :math:`S_i = K_0(t_i, g) L_g^{-\top}` depend on the
mean-process HP :math:`\theta_0`, so the ECME mean-process step cannot run on a fixed summary: its
partition tasks and the client's share are the functions of :mod:`magma_pymc.projected_step`
(each partition's factors once per M-step, then per evaluation its E-step terms and its share of
the gradient). An evaluation's two round trips share the whitened loadings :math:`W_i = A_i S_i`:
the sums' task keeps them on its worker (:attr:`DistributedGraphs.projected_sums`) and the
gradient's task starts from them (:attr:`DistributedGraphs.slot_cotangents`), so a partition
computes :math:`A_i S_i` once per evaluation, as the fused in-process step does. The gradient's
gather to the slots is transposed by a sparse product, not by PyTensor's scatter-add
(``numpy.add.at``, 6 times slower on these shapes), before :attr:`DistributedGraphs.distinct_vjp`.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from dataclasses import dataclass, field
from functools import cached_property

import pytensor
import pytensor.tensor as pt
from pytensor.compile import Function
from pytensor.tensor.linalg import cholesky, solve_triangular

from magma_pymc.compiled import DEFAULT_MODE, ModelGraphs, _compile, graphs_for
from magma_pymc.hyperposterior import (
    EStepTerms,
    TrainingTensors,
    build_estep_terms,
    build_loadings,
    finish_estep,
    with_jitter,
)
from magma_pymc.kernels import Kernel
from magma_pymc.projected_step import build_projected_sums, symbolic_factors

__all__ = ["Structure", "DistributedGraphs", "worker_graphs", "client_graphs", "structure_token", "WORKER_LOCK"]

#: Held while a worker calls a compiled function: PyTensor functions keep their storage between
#: calls, so two threads of one process must not run the same function at once (workers running in
#: the client's process share the core graphs with in-process fits: do not run both at once).
WORKER_LOCK = threading.Lock()


@dataclass(frozen=True)
class Structure:
    """What fixes the compiled graphs of a partitioned fit; sent with every task.

    ``token`` names the structure in each worker process's cache: kernels are compared by their
    factory functions, which a worker receives as new objects with every task.
    """

    mean_kernel: Kernel
    kernel: Kernel
    common_hp: bool
    projected: bool
    mode: str = DEFAULT_MODE
    token: str = field(default="", compare=False)

    def model_graphs(self) -> ModelGraphs:
        """The core graphs, general path (the common-grid fast path gathers no partition sums)."""
        return graphs_for(
            self.mean_kernel, self.kernel, common_hp=self.common_hp, common_grid=False, mode=self.mode,
            projected=self.projected,
        )


_WORKER_CACHE: dict[str, tuple[ModelGraphs, DistributedGraphs]] = {}


def worker_graphs(structure: Structure) -> tuple[ModelGraphs, DistributedGraphs]:
    """The compiled graphs of ``structure`` in this process (compiled on first use, cached by token)."""
    if structure.token not in _WORKER_CACHE:
        # The process-wide core graphs: workers in the client's process share them with in-process fits.
        _WORKER_CACHE[structure.token] = (structure.model_graphs(), DistributedGraphs(structure))
    return _WORKER_CACHE[structure.token]


def client_graphs(structure: Structure) -> DistributedGraphs:
    """The client's graphs of ``structure``.

    The same cache as the workers' (the client and the workers call different functions of it: the E-step's finish and
    the projected loss here, the partitions' tasks there; prediction holds :data:`WORKER_LOCK`).
    """
    return worker_graphs(structure)[1]


def structure_token(mean_kernel: Kernel, kernel: Kernel, common_hp: bool, projected: bool, mode: str) -> str:
    """A name for a structure.

    Equal for equal kernels (their pickled factories), so that fits of one structure share each worker's compiled
    graphs.
    """
    import cloudpickle

    parts = [(k.factory, k.names, k.input_dim) for k in (mean_kernel, kernel)]
    try:
        payload = cloudpickle.dumps((parts, common_hp, projected, mode))
    except Exception:  # noqa: BLE001 -- an unpicklable factory cannot reach the workers anyway
        return uuid.uuid4().hex
    return hashlib.sha256(payload).hexdigest()


def _hp(common_hp: bool):
    mean_hp = pt.vector("mean_log_params", dtype="float64")
    ind_hp = pt.vector("log_params", dtype="float64") if common_hp else pt.matrix("log_params", dtype="float64")
    return mean_hp, ind_hp


@dataclass(frozen=True, eq=False)
class DistributedGraphs:
    """Lazily compiled functions of the partitioned EM (module docstring)."""

    structure: Structure

    def _terms(self, mean_hp, ind_hp, data: TrainingTensors):
        s = self.structure
        chol_prior, loadings = build_loadings(s.mean_kernel, mean_hp, data, projected=s.projected)
        return chol_prior, loadings, build_estep_terms(s.kernel, ind_hp, data, loadings)

    @cached_property
    def estep_terms(self) -> Function:
        """``(mean_hp, hp, grid, inputs, residuals, mask, index, jitter) -> EStepTerms`` of one partition."""
        mean_hp, ind_hp = _hp(self.structure.common_hp)
        data = TrainingTensors.symbolic()
        _, _, terms = self._terms(mean_hp, ind_hp, data)
        return _compile([mean_hp, ind_hp, *data], list(terms), self.structure.mode)

    @cached_property
    def finish(self) -> Function:
        """The E-step's finish from the summed terms (client side).

        ``(mean_hp, grid, gram, shift, quad_residuals, half_logdet_psi, n_obs, jitter) -> (mean, cov, cov_factor,
        log_likelihood, alpha, chol_b)``.
        """
        mean_hp = pt.vector("mean_log_params", dtype="float64")
        grid = pt.matrix("grid", dtype="float64")
        jitter = pt.scalar("jitter", dtype="float64")
        terms = _symbolic_terms()
        chol_prior = _chol_prior(self.structure.mean_kernel, mean_hp, grid, jitter)
        estep = finish_estep(chol_prior, terms)
        outputs = [estep.mean, estep.cov, estep.cov_factor, estep.log_likelihood, estep.alpha, estep.chol_b]
        return _compile([mean_hp, grid, *terms, jitter], outputs, self.structure.mode)

    @cached_property
    def estep_blocks(self) -> Function:
        """What the individual M-step needs of one partition, as the core E-step computes them.

        ``(mean_hp, grid, inputs, residuals, mask, index, jitter, mean, cov, alpha, chol_b) -> (deviations,
        cov_blocks)``, as :attr:`magma_pymc.compiled.ModelGraphs.estep`.
        """
        mean_hp, _ = _hp(True)
        data = TrainingTensors.symbolic()
        mean = pt.vector("mean", dtype="float64")
        cov = pt.matrix("cov", dtype="float64")
        alpha = pt.vector("alpha", dtype="float64")
        chol_b = pt.matrix("chol_b", dtype="float64")
        if self.structure.projected:
            _, loadings = build_loadings(self.structure.mean_kernel, mean_hp, data, projected=True)
            deviations = (data.residuals - loadings @ alpha) * data.mask
            flat = loadings.reshape((-1, alpha.shape[0]))
            reduced = pt.linalg.solve_triangular(chol_b, flat.T, lower=True, b_ndim=2).T.reshape(loadings.shape)
            blocks = reduced @ reduced.mT
        else:
            n_grid = data.grid.shape[0]
            mean_padded = pt.concatenate([mean, pt.zeros((1,))])
            cov_padded = pt.zeros((n_grid + 1, n_grid + 1))[:n_grid, :n_grid].set(cov)
            deviations = (data.residuals - mean_padded[data.index]) * data.mask
            blocks = cov_padded[data.index[:, :, None], data.index[:, None, :]]
        inputs = [mean_hp, *data, mean, cov, alpha, chol_b]
        return _compile(inputs, [deviations, blocks], self.structure.mode)

    @cached_property
    def prior_factor(self) -> Function:
        r"""``(mean_hp, grid, jitter) -> L_0``, the Cholesky factor of :math:`K_{\theta_0}` on the grid."""
        mean_hp = pt.vector("mean_log_params", dtype="float64")
        grid = pt.matrix("grid", dtype="float64")
        jitter = pt.scalar("jitter", dtype="float64")
        chol_prior = _chol_prior(self.structure.mean_kernel, mean_hp, grid, jitter)
        return _compile([mean_hp, grid, jitter], [chol_prior], self.structure.mode)

    @cached_property
    def projected_sums(self) -> Function:
        """One partition's E-step terms of the projected mean-process step, and its whitened loadings :math:`W`.

        ``(mean_hp, grid, distinct, positions, mask, *factors, jitter) -> (*EStepTerms, whitened)``, as
        :attr:`magma_pymc.projected_step.ProjectedStepGraphs.sums` plus ``whitened`` ``(M_p N_max, G)``, kept on the
        worker for :attr:`slot_cotangents` of the same evaluation.
        """
        mean_hp, grid, distinct, positions, mask, factors, jitter = _projected_inputs()
        sums = build_projected_sums(
            self.structure.mean_kernel, mean_hp, grid, distinct, positions, mask, factors, jitter)
        inputs = [mean_hp, grid, distinct, positions, mask, *factors, jitter]
        return _compile(inputs, [*sums.terms, sums.whitened], self.structure.mode)

    @cached_property
    def slot_cotangents(self) -> Function:
        r"""The cotangents of a partition's loadings slot by slot, from its kept whitened loadings.

        ``(inverse_factors, whitened_residuals, whitened, gram_bar, shift_bar) -> S_bar`` ``(M_p N_max, G)``: with
        :math:`\bar W_i = W_i (\bar\Sigma + \bar\Sigma^\top) + a_i \bar c^\top`
        (:func:`magma_pymc.projected_step.build_sums_vjp`), :math:`\bar S_i = A_i^\top \bar W_i`, since
        :math:`W_i = A_i S_i`. :math:`W` is an input: no forward pass recomputes it.
        """
        factors = symbolic_factors()
        whitened = pt.matrix("whitened", dtype="float64")
        gram_bar, shift_bar = pt.matrix("gram_bar", dtype="float64"), pt.vector("shift_bar", dtype="float64")
        residuals = factors.whitened_residuals.reshape((-1,))
        whitened_bar = whitened @ (gram_bar + gram_bar.T) + residuals[:, None] * shift_bar[None, :]
        n_individuals, n_max = factors.whitened_residuals.shape
        slot_bar = factors.inverse_factors.mT @ whitened_bar.reshape((n_individuals, n_max, -1))
        inputs = [factors.inverse_factors, factors.whitened_residuals, whitened, gram_bar, shift_bar]
        return _compile(inputs, [slot_bar.reshape((n_individuals * n_max, -1))], self.structure.mode)

    @cached_property
    def distinct_vjp(self) -> Function:
        r"""The gradient's path through the loadings on the distinct inputs at fixed :math:`L_g`.

        ``(mean_hp, grid, distinct, jitter, distinct_bar) -> grad``: the vector-Jacobian product of
        :math:`S_u = K_0(u, g) L_g^{-\top}` (as :func:`magma_pymc.projected_step.build_projected_sums` computes
        it) with the cotangents ``distinct_bar`` ``(U, G)``, :math:`L_g` held constant
        (:func:`magma_pymc.projected_step.build_grid_vjp` takes that path on the client).
        """
        mean_hp, grid, distinct, _, _, _, jitter = _projected_inputs()
        distinct_bar = pt.matrix("distinct_bar", dtype="float64")
        prior = self.structure.mean_kernel.covariance(mean_hp)
        chol_grid = cholesky(with_jitter(prior(grid), jitter), lower=True)
        distinct_loadings = solve_triangular(chol_grid, prior(grid, distinct), lower=True, b_ndim=2).T
        grad = pytensor.grad(
            None, mean_hp, known_grads={distinct_loadings: distinct_bar}, consider_constant=[chol_grid])
        return _compile([mean_hp, grid, distinct, jitter, distinct_bar], [grad], self.structure.mode)


def _projected_inputs() -> tuple:
    return (pt.vector("mean_log_params", dtype="float64"), pt.matrix("grid", dtype="float64"),
            pt.matrix("distinct_inputs", dtype="float64"), pt.matrix("positions", dtype="int64"),
            pt.matrix("mask", dtype="float64"), symbolic_factors(), pt.scalar("jitter", dtype="float64"))


def _symbolic_terms() -> EStepTerms:
    return EStepTerms(
        pt.matrix("gram", dtype="float64"), pt.vector("shift", dtype="float64"),
        pt.scalar("quad_residuals", dtype="float64"), pt.scalar("half_logdet_psi", dtype="float64"),
        pt.scalar("n_obs", dtype="float64"),
    )


def _chol_prior(mean_kernel: Kernel, mean_hp, grid, jitter):
    cov = mean_kernel.covariance(mean_hp)(grid) + jitter * pt.eye(grid.shape[0])
    return pt.linalg.cholesky(cov, lower=True)
