"""Compiled PyTensor functions for one model structure, built once and reused across fits.

A *structure* is (mean-process kernel, individual kernel, common HP or not, common-grid fast path
or not, exact or projected mean process, compile mode). All data enter the graphs as inputs with symbolic shapes, so fitting other
data, another number of individuals or another grid reuses the same compiled functions: only
the first fit of a structure in a process pays for compilation. Functions are compiled lazily
(prediction graphs only when predicting).

Compile mode (``Magma(compile_mode=...)``, or ``MAGMA_PYMC_COMPILE_MODE`` for the process-wide
default), measured in ``docs/performance.md``; all modes compute the same numbers:

* ``"NUMPY"`` (default, :mod:`magma_pymc.modes`): PyTensor's full graph rewrites, then each op's
  NumPy/SciPy implementation; nothing is compiled, so a first fit on a fresh machine takes about
  2 s. MAGMA's graphs are dominated by a few factorisations that run in LAPACK whatever the
  backend; the price is Python overhead per op: 1.1-2.3x the C backend's warm time on small
  problems (20 individuals), 1.1-1.3x on larger ones (200-2000 individuals).
* ``"CVM"``: the C backend compiles each op once per machine (about a minute on an empty cache,
  ~5 s per new process afterwards) and is the fastest warm, for long or repeated fits.
* ``"NUMBA"``: JIT-compiles every new graph (80-90 s on an empty cache); fast per call, for
  NUTS's log-density.
* ``"FAST_COMPILE"``: PyTensor's own Python mode (fewer graph rewrites), slower than ``"NUMPY"``.

NUTS evaluates its log-density thousands of times, so :func:`sampling_mode` gives it the C backend
when the model's mode is one of the Python modes.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import pytensor
import pytensor.tensor as pt
from pytensor.compile import Function
from pytensor.tensor.linalg import solve_triangular

from magma_pymc.hyperposterior import (
    EStep,
    TrainingTensors,
    build_estep,
    build_estep_common,
    build_estep_projected,
    build_mean_process_at,
)
from magma_pymc.information_form import (
    DataPrecision,
    PseudoObservations,
    build_data_precision,
    build_data_precision_common,
    build_log_likelihood_from_precision,
    build_log_likelihood_from_pseudo_observations,
    build_pseudo_observations,
)
from magma_pymc.kernels import Kernel
from magma_pymc.modes import NUMPY_MODE_NAME
from magma_pymc.mstep import (
    individual_objective_common,
    individual_objectives,
    mean_process_objective,
)
from magma_pymc.predict_graphs import build_new_individual_objective, build_predictive
from magma_pymc.threads import COMPILE_LOCK, PerThreadFunction, limited_blas

__all__ = ["BLAS_THREADS", "DEFAULT_MODE", "PYTHON_MODES", "ModelGraphs", "blas_limited", "build_estep_for", "graphs_for",
           "sampling_mode"]

#: PyTensor compile mode used unless the user chooses another (``Magma(compile_mode=...)``, or the
#: environment variable ``MAGMA_PYMC_COMPILE_MODE`` for the process-wide default).
DEFAULT_MODE = os.environ.get("MAGMA_PYMC_COMPILE_MODE", NUMPY_MODE_NAME)

#: Modes that run PyTensor's Python implementations of the ops (nothing compiled).
PYTHON_MODES = frozenset({NUMPY_MODE_NAME, "FAST_COMPILE"})

#: BLAS threads while fitting and predicting (``None``: leave the process's setting). The
#: matrices of MAGMA are small (N_i x N_i blocks, an N x N grid of a few hundred): there threads
#: only add synchronisation, pathologically so on a busy machine (measured: a 30 x 30 triangular
#: solve took 20 ms with OpenBLAS's default threads on 2 loaded cores, 0.04 ms with one thread).
BLAS_THREADS: int | None = 1


def blas_limited(method: Callable) -> Callable:
    """Run ``method`` with at most :data:`BLAS_THREADS` BLAS threads (read at call time)."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with limited_blas(BLAS_THREADS):  # counted: threads in parallel fits do not undo each other's limit
            return method(*args, **kwargs)

    return wrapper


def sampling_mode(mode: str) -> str:
    """Compile mode of a NUTS log-density for a model compiled with ``mode``: ``"CVM"`` instead of
    the Python modes (:data:`PYTHON_MODES`), whose per-op overhead would dominate the thousands of
    small evaluations of a chain (measured: the test suite's NUTS runs took 2.2x longer)."""
    return "CVM" if mode.upper() in PYTHON_MODES else mode


def _compile(inputs, outputs, mode: str) -> Function:
    with warnings.catch_warnings():
        # PyTensor warns once that pip installs find no BLAS to link its C code to; it then uses
        # NumPy's BLAS through the C-API, which is what the benchmarks measure.
        warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS", category=UserWarning)
        # In NUMBA mode the batched block loss (magma_pymc.ops) runs its NumPy `perform` in object
        # mode, which is its intended path (one call into NumPy's batched LAPACK per evaluation).
        warnings.filterwarnings("ignore", message="Numba will use object mode to run GaussianBlockLoss")
        with COMPILE_LOCK:
            # One copy per calling thread: a compiled function's storage is not safe to share (magma_pymc.threads).
            return PerThreadFunction(pytensor.function(inputs, outputs, mode=mode, on_unused_input="ignore"))


@dataclass(frozen=True)
class ModelGraphs:
    """Lazily compiled functions of one model structure (see module docstring)."""

    mean_kernel: Kernel
    individual_kernel: Kernel
    common_hp: bool
    common_grid: bool
    mode: str = DEFAULT_MODE
    #: mu0 represented on inducing points (``data.grid``) instead of the union grid
    #: (:func:`magma_pymc.hyperposterior.build_estep_projected`).
    projected: bool = False

    @property
    def fast_path(self) -> bool:
        """Common grid and common HP: one factorisation per evaluation instead of M."""
        return self.common_hp and self.common_grid and not self.projected

    @property
    def precision_mean_step(self) -> bool:
        """Whether the ECME mean-process step runs on the data's information form
        (:meth:`data_precision`): the exact models, where the data enter the likelihood of
        :math:`\\theta_0` only through :math:`S, b` (in the projected model the loadings depend on
        :math:`\\theta_0`)."""
        return not self.projected

    # ---- symbolic inputs -------------------------------------------------------------------
    def _hp(self):
        mean_hp = pt.vector("mean_log_params", dtype="float64")
        ind_hp = pt.vector("log_params", dtype="float64") if self.common_hp else pt.matrix("log_params", dtype="float64")
        return mean_hp, ind_hp

    def _estep_graph(self, mean_hp, ind_hp) -> tuple[list, EStep, TrainingTensors]:
        data = TrainingTensors.symbolic()
        estep = build_estep_for(self, self.mean_kernel, self.individual_kernel, mean_hp, ind_hp, data)
        return [mean_hp, ind_hp, *data], estep, data

    # ---- E-step ----------------------------------------------------------------------------
    @cached_property
    def estep(self) -> Function:
        """``(mean_hp, hp, grid, inputs, residuals, mask, index, jitter) ->
        (mean, cov, cov_factor, log_likelihood, deviations, cov_blocks)``.

        ``deviations`` (:math:`y_i - \\hat m_i`) and ``cov_blocks`` (:math:`\\hat K_i`) are what the
        individual M-step needs, padded like the data (on the fast path: ``(M, N)`` and ``Khat``).
        """
        inputs, estep, data = self._estep_graph(*self._hp())
        if self.fast_path:
            deviations = data.residuals - estep.mean[None, :]
            blocks = estep.cov
        elif self.projected:
            # mu0(t_i) - m0 = S_i z with z | y ~ N(alpha, B^{-1}): mean S_i alpha, cov (S_i L_B^{-T})(.)'
            deviations = (data.residuals - estep.loadings @ estep.alpha) * data.mask
            flat = estep.loadings.reshape((-1, estep.alpha.shape[0]))
            reduced = solve_triangular(estep.chol_b, flat.T, lower=True, b_ndim=2).T.reshape(estep.loadings.shape)
            blocks = reduced @ reduced.mT
        else:
            n_grid = data.grid.shape[0]
            mean_padded = pt.concatenate([estep.mean, pt.zeros((1,))])
            cov_padded = pt.zeros((n_grid + 1, n_grid + 1))[:n_grid, :n_grid].set(estep.cov)
            deviations = (data.residuals - mean_padded[data.index]) * data.mask
            blocks = cov_padded[data.index[:, :, None], data.index[:, None, :]]
        outputs = [estep.mean, estep.cov, estep.cov_factor, estep.log_likelihood, deviations, blocks]
        return _compile(inputs, outputs, self.mode)

    @cached_property
    def estep_factors(self) -> Function:
        """``(mean_hp, hp, <training data>, jitter) -> (chol_prior, chol_b, alpha)``: what the
        hyper-posterior of :math:`\\mu_0` at new inputs needs from the E-step
        (:func:`magma_pymc.predict_diag.mean_process_parts`)."""
        inputs, estep, _ = self._estep_graph(*self._hp())
        return _compile(inputs, [estep.chol_prior, estep.chol_b, estep.alpha], self.mode)

    @cached_property
    def log_likelihood(self) -> Function:
        """Exact marginal log-likelihood (theory page, *Marginal likelihood*) and its gradient w.r.t. both HP blocks."""
        mean_hp, ind_hp = self._hp()
        inputs, estep, _ = self._estep_graph(mean_hp, ind_hp)
        grads = pytensor.grad(estep.log_likelihood, [mean_hp, ind_hp])
        return _compile(inputs, [estep.log_likelihood, *grads], self.mode)

    # ---- M-step ----------------------------------------------------------------------------
    @cached_property
    def mean_process_marginal_step(self) -> Function:
        """``(mean_hp, hp, <training data>, jitter) -> (value, grad)`` of :math:`-\\log p(y)` w.r.t. the
        mean-process HP at fixed individual HP (the ECME variant of the mean-process M-step)."""
        mean_hp, ind_hp = self._hp()
        inputs, estep, _ = self._estep_graph(mean_hp, ind_hp)
        value = -estep.log_likelihood
        return _compile(inputs, [value, pytensor.grad(value, mean_hp)], self.mode)

    @staticmethod
    def _symbolic_summary() -> DataPrecision:
        return DataPrecision(
            pt.matrix("precision", dtype="float64"), pt.vector("shift", dtype="float64"),
            pt.scalar("quad_residuals", dtype="float64"), pt.scalar("half_logdet_psi", dtype="float64"),
            pt.scalar("n_obs", dtype="float64"),
        )

    def _mean_step(self, data_inputs, objective) -> Function:
        """``(mean_hp, grid, *data_inputs, jitter) -> (value, grad)`` of ``objective(mean_hp, grid, jitter)``
        (a graph in ``data_inputs`` too), the gradient w.r.t. the mean-process HP: the shape of every
        mean-process M-step."""
        log_params = pt.vector("mean_log_params", dtype="float64")
        grid = pt.matrix("grid", dtype="float64")
        jitter = pt.scalar("jitter", dtype="float64")
        value = objective(log_params, grid, jitter)
        return _compile([log_params, grid, *data_inputs, jitter], [value, pytensor.grad(value, log_params)], self.mode)

    @cached_property
    def data_precision(self) -> Function:
        """``(hp, grid, inputs, residuals, mask, index, jitter) -> (precision, shift, quad_residuals,
        half_logdet_psi, n_obs)``: :func:`~magma_pymc.information_form.build_data_precision` (on the fast
        path :func:`~magma_pymc.information_form.build_data_precision_common`)."""
        _, ind_hp = self._hp()
        data = TrainingTensors.symbolic()
        if self.fast_path:
            summary = build_data_precision_common(self.individual_kernel, ind_hp, data.grid, data.residuals, data.jitter)
        else:
            summary = build_data_precision(self.individual_kernel, ind_hp, data)
        return _compile([ind_hp, *data], list(summary), self.mode)

    @cached_property
    def mean_process_precision_step(self) -> Function:
        """``(mean_hp, grid, precision, shift, quad_residuals, half_logdet_psi, n_obs, jitter) -> (value,
        grad)`` of :math:`-\\log p(y)` w.r.t. the mean-process HP, from :meth:`data_precision`'s
        summary: :math:`O(N^3)` per call whatever the number of individuals."""
        summary = self._symbolic_summary()
        return self._mean_step(
            summary,
            lambda log_params, grid, jitter: -build_log_likelihood_from_precision(
                self.mean_kernel, log_params, grid, summary, jitter
            ),
        )

    @cached_property
    def pseudo_observations(self) -> Function:
        """``(precision, shift, quad_residuals, half_logdet_psi, n_obs) -> (noise_cov, observations,
        offset)``: :func:`~magma_pymc.information_form.build_pseudo_observations` of
        :meth:`data_precision`'s summary (NaN where the data precision is not positive definite)."""
        summary = self._symbolic_summary()
        return _compile(list(summary), list(build_pseudo_observations(summary)), self.mode)

    @cached_property
    def mean_process_pseudo_step(self) -> Function:
        """``(mean_hp, grid, noise_cov, observations, offset, jitter) -> (value, grad)`` of
        :math:`-\\log p(y)` w.r.t. the mean-process HP from :meth:`pseudo_observations`: one
        :math:`N \\times N` factorisation per call."""
        pseudo = PseudoObservations(
            pt.matrix("noise_cov", dtype="float64"), pt.vector("observations", dtype="float64"),
            pt.scalar("offset", dtype="float64"),
        )
        return self._mean_step(
            pseudo,
            lambda log_params, grid, jitter: -build_log_likelihood_from_pseudo_observations(
                self.mean_kernel, log_params, grid, pseudo, jitter
            ),
        )

    @cached_property
    def mean_process_step(self) -> Function:
        """``(mean_hp, grid, centred_mean, cov_factor, jitter) -> (value, grad)`` of :math:`-Q_0`."""
        centred_mean = pt.vector("centred_mean", dtype="float64")
        cov_factor = pt.matrix("cov_factor", dtype="float64")
        return self._mean_step(
            (centred_mean, cov_factor),
            lambda log_params, grid, jitter: mean_process_objective(
                self.mean_kernel, log_params, grid, centred_mean, cov_factor, jitter
            ),
        )

    @cached_property
    def individual_step(self) -> Function:
        """``(hp, inputs, deviations, cov_blocks, mask, jitter) -> (value, grad)`` of :math:`-\\sum_i Q_i`.

        On the fast path ``inputs`` is the grid ``(N, d)``, ``deviations`` ``(M, N)``, ``cov_blocks``
        the ``(N, N)`` hyper-posterior covariance and ``mask`` is ignored.
        """
        _, log_params = self._hp()
        if self.fast_path:
            jitter = pt.scalar("jitter", dtype="float64")
            mask = pt.matrix("mask", dtype="float64")
            deviations = pt.matrix("deviations", dtype="float64")
            inputs = pt.matrix("grid", dtype="float64")
            blocks = pt.matrix("cov", dtype="float64")
            args = [log_params, inputs, deviations, blocks, mask, jitter]
            value = individual_objective_common(self.individual_kernel, log_params, inputs, deviations, blocks, jitter)
        else:
            args = [log_params, *_padded_individual_inputs()]
            value = individual_objectives(self.individual_kernel, *args).sum()
        return _compile(args, [value, pytensor.grad(value, log_params)], self.mode)

    @cached_property
    def individual_steps(self) -> Function:
        """``(hp (B, P + 1), inputs, deviations, cov_blocks, mask, jitter) -> (values (B,), grad (B, P + 1))``:
        :math:`-Q_i` of each of B individuals (rows of the padded data) and its gradient w.r.t. the
        individual's own HP (different HP; :func:`~magma_pymc.mstep.individual_objectives`)."""
        if self.common_hp:
            raise ValueError("individual_steps needs different HP: with common HP the individual terms share parameters")
        args = [pt.matrix("log_params", dtype="float64"), *_padded_individual_inputs()]
        values = individual_objectives(self.individual_kernel, *args)
        return _compile(args, [values, pytensor.grad(values.sum(), args[0])], self.mode)

    # ---- prediction ------------------------------------------------------------------------
    @cached_property
    def mean_process_at(self) -> Function:
        """``(mean_hp, hp, <training data>, new_inputs) -> (centred mean, cov)`` of :math:`\\mu_0` at new inputs."""
        mean_hp, ind_hp = self._hp()
        inputs, estep, data = self._estep_graph(mean_hp, ind_hp)
        new_inputs = pt.matrix("new_inputs", dtype="float64")
        mean, cov = build_mean_process_at(self.mean_kernel, mean_hp, data.grid, estep, new_inputs, data.jitter)
        return _compile([*inputs, new_inputs], [mean, cov], self.mode)

    @cached_property
    def new_individual_step(self) -> Function:
        """``(hp, obs_inputs, obs_outputs, mean, cov, jitter) -> (value, grad)``: negative
        log-likelihood of the new individual's HP (theory page, *Prediction*)."""
        log_params = pt.vector("log_params", dtype="float64")
        args = _new_individual_inputs()
        value = build_new_individual_objective(self.individual_kernel, log_params, *args)
        return _compile([log_params, *args], [value, pytensor.grad(value, log_params)], self.mode)

    @cached_property
    def predictive(self) -> Function:
        """``(hp, obs_inputs, obs_outputs, obs_mean, pred_inputs, joint_mean, joint_cov, jitter) ->
        (mean, latent_cov, predictive_cov)`` (theory page, *Prediction*)."""
        log_params = pt.vector("log_params", dtype="float64")
        obs_inputs = pt.matrix("obs_inputs", dtype="float64")
        obs_outputs = pt.vector("obs_outputs", dtype="float64")
        pred_inputs = pt.matrix("pred_inputs", dtype="float64")
        joint_mean = pt.vector("joint_mean", dtype="float64")
        joint_cov = pt.matrix("joint_cov", dtype="float64")
        jitter = pt.scalar("jitter", dtype="float64")
        outputs = build_predictive(
            self.individual_kernel, log_params, obs_inputs, obs_outputs, pred_inputs, joint_mean, joint_cov, jitter
        )
        return _compile(
            [log_params, obs_inputs, obs_outputs, pred_inputs, joint_mean, joint_cov, jitter], list(outputs), self.mode
        )


def build_estep_for(structure: ModelGraphs, mean_kernel: Kernel, kernel: Kernel, mean_hp, ind_hp,
                    data: TrainingTensors) -> EStep:
    """The E-step graph (and marginal likelihood) of ``structure``'s model: the one dispatch shared
    by EM's compiled functions and the model NUTS samples (:func:`magma_pymc.sampling.build_marginal_model`)."""
    if structure.fast_path:
        # Common grid: `residuals` is (M, N) on the grid itself; inputs/mask/index unused.
        return build_estep_common(mean_kernel, kernel, mean_hp, ind_hp, data.grid, data.residuals, data.jitter)
    if structure.projected:  # mu0 on inducing points (`grid`)
        return build_estep_projected(mean_kernel, kernel, mean_hp, ind_hp, data)
    return build_estep(mean_kernel, kernel, mean_hp, ind_hp, data)


def _padded_individual_inputs():
    """``(inputs, deviations, cov_blocks, mask, jitter)`` of the individual M-step on padded batches."""
    return (
        pt.tensor3("inputs", dtype="float64"),
        pt.matrix("deviations", dtype="float64"),
        pt.tensor3("cov_blocks", dtype="float64"),
        pt.matrix("mask", dtype="float64"),
        pt.scalar("jitter", dtype="float64"),
    )


def _new_individual_inputs():
    return (
        pt.matrix("obs_inputs", dtype="float64"),
        pt.vector("obs_outputs", dtype="float64"),
        pt.vector("obs_mean", dtype="float64"),
        pt.matrix("obs_cov", dtype="float64"),
        pt.scalar("jitter", dtype="float64"),
    )


_GRAPHS: dict[tuple, ModelGraphs] = {}


def graphs_for(
    mean_kernel: Kernel,
    individual_kernel: Kernel,
    *,
    common_hp: bool,
    common_grid: bool,
    mode: str = DEFAULT_MODE,
    projected: bool = False,
) -> ModelGraphs:
    """The (process-wide, shared) compiled functions of a model structure."""
    key = (mean_kernel, individual_kernel, common_hp, common_grid, mode, projected)
    with COMPILE_LOCK:
        if key not in _GRAPHS:
            _GRAPHS[key] = ModelGraphs(mean_kernel, individual_kernel, common_hp, common_grid, mode, projected)
        return _GRAPHS[key]
