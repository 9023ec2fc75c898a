r"""The EM loop: ``em_step(state, problem) -> (state, info)`` and :func:`run_em`.

One iteration alternates the closed-form E-step (hyper-posterior of :math:`\mu_0`) with the two
M-steps: individual HP, then mean-process HP (see :func:`em_step`). The exact marginal
log-likelihood of theory page, *Marginal likelihood* is computed with every E-step; EM never decreases it, up to the
M-step optimiser's tolerance. Iteration stops when its relative change falls below ``tol``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from magma_pymc.batched_lbfgsb import minimize_separable
from magma_pymc.compiled import ModelGraphs
from magma_pymc.estep_buckets import (
    bucketed_estep,
    bucketed_precision,
    common_individual_objective,
    separable_individual_objectives,
)
from magma_pymc.exceptions import ConvergenceWarning
from magma_pymc.exceptions import warn as _warn
from magma_pymc.jitter import smallest_working_jitter
from magma_pymc.mstep import minimize_log_params
from magma_pymc.projected_step import distinct_inputs, projected_step_graphs

__all__ = ["EMState", "EStepResult", "TrainingArrays", "Problem", "estep", "em_step", "run_em", "iterate_em", "EMTrace",
           "warn_not_converged"]



class EMState(NamedTuple):
    """Hyper-parameters on the log scale, and the jitter in use (absolute)."""

    mean_log_params: np.ndarray  # (P0,)
    log_params: np.ndarray       # (P + 1,) common HP, (M, P + 1) different HP; last column: log noise
    jitter: float


class EStepResult(NamedTuple):
    """Numeric outputs of the E-step at a state's HP."""

    mean: np.ndarray            # mhat - m0 on the grid
    cov: np.ndarray             # Khat
    cov_factor: np.ndarray      # V, Khat = V'V
    log_likelihood: float
    deviations: np.ndarray      # y_i - mhat_i (padded)
    cov_blocks: np.ndarray      # Khat_i (padded)


class TrainingArrays(NamedTuple):
    """The numeric training data in the order the compiled graphs take them."""

    grid: np.ndarray       # (N, d) union grid, or the inducing points of a projected fit
    inputs: np.ndarray     # (M, n_max, d) padded inputs
    residuals: np.ndarray  # (M, n_max) y - m0, padded; (M, N) on the grid on the fast path
    mask: np.ndarray       # (M, n_max) 1 where observed
    index: np.ndarray      # (M, n_max) position of each input in the union grid (N for padding)


@dataclass(frozen=True)
class Problem:
    """Everything EM needs besides the state: compiled graphs, numeric data and optimiser bounds."""

    graphs: ModelGraphs
    data_args: TrainingArrays   # as fed to the graphs, in this order
    mean_bounds: list
    bounds: list                # per individual parameter (flattened per individual when different HP)
    output_scale: float         # output variance, the unit of the jitter
    mean_step: str = "marginal"  # "marginal" (ECME) or "expected" (the textbook M-step of theta0)
    #: MAP mode: ``(mean_fn, individual_fn)``, log prior density and gradient of each HP block
    #: (:func:`magma_pymc.map_priors.compile_log_priors`), either ``None`` for a flat prior on that
    #: block; ``None``: maximum likelihood.
    log_priors: tuple | None = None
    #: Ragged data: the individuals in size buckets (:mod:`magma_pymc.batches`), residuals in their
    #: ``outputs``, when there is more than one bucket; ``None``: the one padded batch of ``data_args``.
    batches: tuple | None = None

    def log_prior(self, state: EMState) -> float:
        """Log prior density of the state's HP (0 without priors)."""
        if self.log_priors is None:
            return 0.0
        mean_fn, individual_fn = self.log_priors
        mean_part = 0.0 if mean_fn is None else float(mean_fn(state.mean_log_params)[0])
        return mean_part + (0.0 if individual_fn is None else float(individual_fn(state.log_params)[0]))

    @property
    def n_individuals(self) -> int:
        return self.data_args.residuals.shape[0]


def estep(state: EMState, problem: Problem) -> tuple[EStepResult, EMState]:
    """E-step with the smallest working jitter; returns the result and the state (jitter possibly grown).

    The jitter grows tenfold whenever a factorisation fails (PyTensor's Cholesky returns NaN),
    from the state's value up to ``JITTER_MAX`` times the output variance, and a
    :class:`NumericalWarning` reports the value that worked.
    """
    def attempt(jitter: float) -> EStepResult | None:
        result = _estep_at(state, problem, jitter)
        return result if np.isfinite(result.log_likelihood) and np.all(np.isfinite(result.mean)) else None

    def failure(jitter: float) -> str:
        return (f"the E-step failed even with jitter {jitter:.3g} on the covariance diagonals: "
                f"{_failure_cause(state, problem)} (mean process {np.exp(state.mean_log_params)}, "
                f"individuals {np.exp(state.log_params)})")

    result, jitter = smallest_working_jitter(attempt, state.jitter, problem.output_scale, failure)
    return result, state._replace(jitter=jitter)


def _estep_at(state: EMState, problem: Problem, jitter: float) -> EStepResult:
    """One E-step evaluation.

    The compiled graph on the padded batch, or on size buckets (then ``deviations`` and ``cov_blocks`` are tuples with
    one array per bucket).
    """
    if problem.batches is not None:
        mean, cov, factor, log_likelihood, blocks = bucketed_estep(
            problem.graphs, state.mean_log_params, state.log_params, problem.data_args.grid, problem.batches, jitter
        )
        return EStepResult(mean, cov, factor, log_likelihood, tuple(b[0] for b in blocks), tuple(b[1] for b in blocks))
    outputs = problem.graphs.estep(state.mean_log_params, state.log_params, *problem.data_args, jitter)
    return EStepResult(*(np.asarray(o) for o in outputs[:3]), float(outputs[3]), *outputs[4:])


def _failure_cause(state: EMState, problem: Problem) -> str:
    """Why an E-step failed: a kernel returning NaN/inf (a factory bug), or singular covariances."""
    from magma_pymc.files import kernel_values

    grid = problem.data_args.grid[:50]
    rows = np.atleast_2d(state.log_params)
    checks = [("mean_kernel", problem.graphs.mean_kernel, state.mean_log_params)]
    checks += [("kernel", problem.graphs.individual_kernel, row[:-1]) for row in rows[:20]]
    for role, kernel, log_params in checks:
        with np.errstate(all="ignore"):
            values = kernel_values(kernel, log_params, grid)
        if not np.all(np.isfinite(values)):
            return (f"the {role} returns NaN/inf covariances at hyper-parameters {np.exp(log_params)} on the training "
                    "inputs: check the kernel's factory")
    return "the hyper-parameters give numerically singular covariances"


def em_step(state: EMState, problem: Problem, current: EStepResult) -> EMState:
    """M-step given the current E-step: new HP for the individuals, then for the mean process.

    The individual step maximises the expected complete-data log-likelihood of the current E-step
    (so the marginal likelihood does not decrease at the current mean-process HP). With
    ``mean_step="marginal"`` the mean-process step then maximises the exact marginal likelihood at
    the *new* individual HP, so neither step can decrease it (ECME); run at the old individual HP,
    as both steps from one E-step, it could (the two gains are not additive).
    """
    graphs = problem.graphs
    grid, inputs, _, mask, _ = problem.data_args
    individual_inputs = grid if graphs.fast_path else inputs

    def individual_objective(log_params):
        return graphs.individual_step(
            log_params, individual_inputs, current.deviations, current.cov_blocks, mask, state.jitter
        )

    mean_prior, individual_prior = problem.log_priors if problem.log_priors is not None else (None, None)
    if problem.batches is not None:
        individual_fit = _bucketed_individual_step(state, problem, current, individual_prior)
    elif not graphs.common_hp and individual_prior is None:
        # Different HP, maximum likelihood: M independent problems, each solved by its own L-BFGS-B
        # on one batched evaluation per round (a MAP prior may couple the rows: one joint run then).
        def individual_objectives(log_params, rows):
            # Only the individuals still optimising (no copy of the data while all of them are).
            take = rows if rows.size < len(inputs) else slice(None)
            return graphs.individual_steps(
                log_params, inputs[take], current.deviations[take], current.cov_blocks[take], mask[take], state.jitter
            )

        individual_fit = minimize_separable(individual_objectives, state.log_params, problem.bounds)
    else:
        if individual_prior is not None:
            individual_objective = _minus_log_prior(individual_objective, individual_prior)
        individual_fit = minimize_log_params(individual_objective, state.log_params, problem.bounds)

    if problem.mean_step == "marginal" and graphs.precision_mean_step:
        # The data enter log p(y | theta0) only through their information form at the new individual
        # HP: computed once here, each evaluation then costs O(N^3) instead of O(N^2 sum_i N_i).
        if problem.batches is not None:
            summary = bucketed_precision(graphs, individual_fit.x, grid, problem.batches, state.jitter)
        else:
            summary = graphs.data_precision(individual_fit.x, *problem.data_args, state.jitter)
        pseudo = graphs.pseudo_observations(*summary)
        if np.isfinite(pseudo[2]):
            # S positive definite: the same objective as GP pseudo-observations, one N x N
            # factorisation per evaluation instead of two and four products.
            def mean_objective(log_params):
                return graphs.mean_process_pseudo_step(log_params, grid, *pseudo, state.jitter)

        else:

            def mean_objective(log_params):
                return graphs.mean_process_precision_step(log_params, grid, *summary, state.jitter)

    elif problem.mean_step == "marginal":
        # Projected model: what depends on the new individual HP only (L_Psi_i^-1, ...) computed once here;
        # each evaluation then costs two batched products per individual (magma_pymc.projected_step).
        step = projected_step_graphs(graphs)
        factors = step.factors(individual_fit.x, *problem.data_args, state.jitter)
        distinct, positions = distinct_inputs(inputs, mask)

        def mean_objective(log_params):
            return step.step(log_params, grid, distinct, positions, mask, *factors, state.jitter)

    else:

        def mean_objective(log_params):
            return graphs.mean_process_step(log_params, grid, current.mean, current.cov_factor, state.jitter)

    if mean_prior is not None:
        mean_objective = _minus_log_prior(mean_objective, mean_prior)
    mean_fit = minimize_log_params(mean_objective, state.mean_log_params, problem.mean_bounds)
    return state._replace(mean_log_params=mean_fit.x, log_params=individual_fit.x)


def _bucketed_individual_step(state: EMState, problem: Problem, current: EStepResult,
                              individual_prior: Callable | None):
    """The individual M-step of :func:`em_step` on size buckets (:mod:`magma_pymc.estep_buckets`).

    ``individual_prior``: the log prior of the individual HP (``None``: flat).
    """
    graphs, batches = problem.graphs, problem.batches
    blocks = list(zip(current.deviations, current.cov_blocks, strict=True))
    if graphs.common_hp:
        objective = common_individual_objective(graphs, batches, blocks, state.jitter)
    else:
        objectives = separable_individual_objectives(graphs, batches, blocks, state.jitter)
        if individual_prior is None:
            return minimize_separable(objectives, state.log_params, problem.bounds)
        every_row = np.arange(len(state.log_params))

        def objective(log_params):
            values, grads = objectives(log_params, every_row)
            return float(values.sum()), grads

    if individual_prior is not None:
        objective = _minus_log_prior(objective, individual_prior)
    return minimize_log_params(objective, state.log_params, problem.bounds)


def _minus_log_prior(objective: Callable, log_prior: Callable) -> Callable:
    """``objective - log prior`` (value and gradient): the MAP version of an M-step objective."""

    def penalised(log_params):
        value, grad = objective(log_params)
        prior_value, prior_grad = log_prior(log_params)
        return value - prior_value, np.asarray(grad) - np.asarray(prior_grad)

    return penalised


class EMTrace(NamedTuple):
    """What :func:`run_em` returns: final state and E-step, and the per-iteration trace."""

    state: EMState
    estep: EStepResult
    mean_log_params: np.ndarray  # (iterations + 1, P0), row 0: initial values
    log_params: np.ndarray       # (iterations + 1, ...) individual log HP
    log_likelihood: np.ndarray   # (iterations + 1,)
    converged: bool
    interrupted: bool
    log_posterior: np.ndarray    # (iterations + 1,) log_likelihood + log prior (MAP mode; else equal)


def run_em(
    state: EMState,
    problem: Problem,
    *,
    max_iter: int = 25,
    tol: float = 1e-3,
    callback: Callable[[int, EMState, float], None] | None = None,
    warn: bool = True,
) -> EMTrace:
    """Iterate E and M steps until the relative change of the log-likelihood is below ``tol``.

    This is :func:`iterate_em` with this module's E-step and M-step; ``warn=False`` leaves the
    non-convergence warning to the caller (:func:`warn_not_converged`).
    """

    def advance(state: EMState, current: EStepResult) -> tuple[EStepResult, EMState]:
        return estep(em_step(state, problem, current), problem)

    return iterate_em(estep(state, problem), advance, log_likelihood=lambda current: current.log_likelihood,
                      log_prior=problem.log_prior, max_iter=max_iter, tol=tol, callback=callback, warn=warn)


def iterate_em(
    start: tuple[Any, EMState],
    advance: Callable[[EMState, Any], tuple[Any, EMState]],
    *,
    log_likelihood: Callable[[Any], float],
    log_prior: Callable[[EMState], float] = lambda state: 0.0,
    max_iter: int = 25,
    tol: float = 1e-3,
    callback: Callable[[int, EMState, float], None] | None = None,
    warn: bool = True,
) -> EMTrace:
    r"""The EM loop of every backend (in process, distributed).

    ``start`` is the first E-step and its state, ``advance`` one M-step followed by an E-step.

    Stopping rule (as MagmaClustR): :math:`|J_k - J_{k-1}| < \mathrm{tol}\,|J_{k-1}|` on the
    objective :math:`J = \log p(y \mid \text{HP}) + \log p(\text{HP})` (the prior term is 0 for
    maximum likelihood). A :class:`ConvergenceWarning` is emitted after ``max_iter`` iterations
    without convergence (unless ``warn=False``). A ``KeyboardInterrupt`` stops the loop and keeps the last completed iteration.
    """
    current, state = start
    means, individuals, lls = [state.mean_log_params], [state.log_params], [log_likelihood(current)]
    objectives = [lls[0] + log_prior(state)]
    converged = interrupted = False
    try:
        for iteration in range(1, max_iter + 1):
            current, state = advance(state, current)
            means.append(state.mean_log_params)
            individuals.append(state.log_params)
            lls.append(log_likelihood(current))
            objectives.append(lls[-1] + log_prior(state))
            if callback is not None:
                callback(iteration, state, lls[-1])
            if abs(objectives[-1] - objectives[-2]) < tol * abs(objectives[-2]):
                converged = True
                break
    except KeyboardInterrupt:
        interrupted = True
        _warn(f"EM interrupted; keeping the last completed iteration ({len(lls) - 1})", ConvergenceWarning)
    trace = EMTrace(
        state, current, np.array(means), np.array(individuals), np.array(lls), converged, interrupted, np.array(objectives)
    )
    if warn:
        warn_not_converged(trace, max_iter, tol)
    return trace


def warn_not_converged(trace: EMTrace, max_iter: int, tol: float) -> None:
    """The :class:`ConvergenceWarning` of a run stopped by ``max_iter`` (none if it converged or was interrupted)."""
    objectives = trace.log_posterior
    if not trace.converged and not trace.interrupted and len(objectives) > 1:
        _warn(
            f"EM did not converge in {max_iter} iterations (last relative change "
            f"{abs(objectives[-1] - objectives[-2]) / abs(objectives[-2]):.2e} >= tol={tol:g}); increase max_iter",
            ConvergenceWarning,
        )

