r"""Client side of the partitioned EM.

The same iterations as :func:`magma_pymc.em.run_em`, with every sum over individuals computed partition by partition on
a Dask cluster.

One iteration, with P partitions (:mod:`magma_pymc.distributed.partition` runs the tasks):

1. E-step: each partition returns its :class:`~magma_pymc.hyperposterior.EStepTerms`
   (:math:`O(N^2)` numbers on the union grid, :math:`O(G^2)` on G inducing points); the client adds
   them and finishes the E-step; the fitted hyper-posterior (:math:`O(N^2)`) goes back to every
   partition, which keeps its individuals' :math:`y_i - \hat m_i` and :math:`\hat K_i`.
2. Individual M-step: common HP, one L-BFGS-B on the client whose every evaluation sums the
   partitions' values and gradients (P + 1 numbers each); different HP, each partition runs its
   individuals' own L-BFGS-B where its data live and returns their new HP.
3. Mean-process M-step (ECME): exact model, the partitions' shares of the data's information form
   (:math:`O(N^2)` each) at the new individual HP, then the same optimisation as in process on the
   client; projected model, each partition keeps the factors of its individuals at the new individual HP, and
   each evaluation sums the partitions' E-step terms, then their vector-Jacobian products
   (:mod:`magma_pymc.projected_step`), each partition's product starting from the whitened loadings its sums'
   task kept on the worker.

Sums are taken in partition order, so a fit does not depend on which worker answers first; it
equals the in-process fit up to the rounding of the sums' order.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from magma_pymc.distributed import partition as tasks
from magma_pymc.distributed.graphs import Structure, client_graphs
from magma_pymc.em import EMState, EMTrace, EStepResult, iterate_em
from magma_pymc.jitter import smallest_working_jitter
from magma_pymc.mstep import minimize_log_params
from magma_pymc.projected_step import projected_step_graphs

__all__ = ["PartitionedProblem", "DistributedEStep", "run_distributed_em", "Communication"]


@dataclass
class Communication:
    """Bytes of the arrays sent to and received from the partitions (task arguments and results).

    Per EM iteration (entry 0: the first E-step).
    """

    sent: list = field(default_factory=lambda: [0])
    received: list = field(default_factory=lambda: [0])
    round_trips: list = field(default_factory=lambda: [0])

    def next_iteration(self) -> None:
        """Start counting a new EM iteration."""
        self.sent.append(0)
        self.received.append(0)
        self.round_trips.append(0)

    def count(self, sent, received) -> None:
        """Add the bytes of one round trip's arguments and results to the current iteration."""
        self.sent[-1] += _nbytes(sent)
        self.received[-1] += _nbytes(received)


def _nbytes(value) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return sys.getsizeof(value) if isinstance(value, (float, int)) else 0


@dataclass
class PartitionedProblem:
    """The client's view of a partitioned fit: cluster, partition futures, graphs and bounds."""

    client: object
    partitions: list              # futures of magma_pymc.distributed.partition.Partition
    row_offsets: np.ndarray       # (P + 1,) first individual of each partition (different HP)
    structure: Structure
    grid: np.ndarray              # union grid or inducing points
    mean_bounds: list
    row_bounds: list              # bounds of one individual's log HP
    output_scale: float
    n_individuals: int
    mean_step: str = "marginal"
    communication: Communication = field(default_factory=Communication)

    def __post_init__(self) -> None:
        self.core = self.structure.model_graphs()
        self.graphs = client_graphs(self.structure)

    @property
    def bounds(self) -> list:
        """Bounds of the individual log HP as the optimiser sees them (flattened per individual when HP differ)."""
        return self.row_bounds * (1 if self.structure.common_hp else self.n_individuals)

    def hp_of(self, log_params: np.ndarray, p: int) -> np.ndarray:
        """The individual HP partition ``p`` needs: all of them (common HP) or its rows."""
        if self.structure.common_hp:
            return log_params
        return log_params[self.row_offsets[p] : self.row_offsets[p + 1]]

    def map_gather(self, task: Callable, *args, per_partition: Callable | None = None, shared=()) -> list:
        """Run ``task(partition, *args, *per_partition(p))`` on every partition; results in partition order.

        ``shared`` arrays travel once as a task of their own (recomputable, unlike scattered data).
        """
        client = self.client
        shared_futures = [client.submit(tasks.identity, value) for value in shared]
        futures = []
        for p, part in enumerate(self.partitions):
            extra = per_partition(p) if per_partition is not None else ()
            futures.append(client.submit(task, part, *args, *extra, *shared_futures))
            self.communication.count((args, extra), ())
        self.communication.count(tuple(shared) * len(self.partitions), ())
        results = client.gather(futures)
        self.communication.count((), results)
        self.communication.round_trips[-1] += 1
        return results


class DistributedEStep(NamedTuple):
    """The E-step on the client, and the futures of the partitions' blocks.

    The blocks are :class:`~magma_pymc.distributed.partition.EStepBlocks`.
    """

    result: EStepResult          # deviations / cov_blocks: None (they stay on the workers)
    alpha: np.ndarray
    chol_b: np.ndarray
    blocks: list


def _sum_terms(results: list) -> tuple:
    return tuple(sum(r[k] for r in results) for k in range(len(results[0])))


def estep(state: EMState, problem: PartitionedProblem) -> tuple[DistributedEStep, EMState]:
    """E-step with the smallest working jitter, as :func:`magma_pymc.em.estep`."""
    def attempt(jitter: float):
        terms = _terms_at(state.mean_log_params, state.log_params, jitter, problem)
        mean, cov, cov_factor, log_likelihood, alpha, chol_b = (
            np.asarray(x) for x in problem.graphs.finish(state.mean_log_params, problem.grid, *terms, jitter)
        )
        ok = np.isfinite(log_likelihood) and np.all(np.isfinite(mean))
        return (mean, cov, cov_factor, float(log_likelihood), alpha, chol_b) if ok else None

    def failure(jitter: float) -> str:
        return (f"the E-step failed even with jitter {jitter:.3g} on the covariance diagonals: the hyper-parameters "
                f"give numerically singular covariances (mean process {np.exp(state.mean_log_params)}, "
                f"individuals {np.exp(state.log_params)})")

    (mean, cov, cov_factor, log_likelihood, alpha, chol_b), jitter = smallest_working_jitter(
        attempt, state.jitter, problem.output_scale, failure)
    state = state._replace(jitter=jitter)
    client = problem.client
    fitted = client.submit(tasks.identity, (mean, cov, alpha, chol_b))
    problem.communication.count((mean, cov, alpha, chol_b) * len(problem.partitions), ())
    blocks = [
        client.submit(tasks.estep_blocks, part, problem.structure, state.mean_log_params, jitter, fitted)
        for part in problem.partitions
    ]
    result = EStepResult(mean, cov, cov_factor, log_likelihood, None, None)
    return DistributedEStep(result, alpha, chol_b, blocks), state


def _terms_at(mean_log_params, log_params, jitter, problem: PartitionedProblem) -> tuple:
    return _sum_terms(problem.map_gather(
        tasks.estep_terms, problem.structure, mean_log_params,
        per_partition=lambda p: (problem.hp_of(log_params, p), jitter),
    ))


def em_step(state: EMState, problem: PartitionedProblem, current: DistributedEStep) -> EMState:
    """Individual then mean-process M-step, as :func:`magma_pymc.em.em_step` (ECME by default)."""
    structure, core, jitter = problem.structure, problem.core, state.jitter
    if structure.common_hp:

        def individual_objective(log_params):
            results = problem.map_gather(
                tasks.individual_value_grad, per_partition=lambda p: (current.blocks[p], structure, log_params, jitter)
            )
            return sum(r[0] for r in results), sum(r[1] for r in results)

        individual_log_params = minimize_log_params(individual_objective, state.log_params, problem.bounds).x
    else:
        rows = problem.map_gather(
            tasks.fit_individuals,
            per_partition=lambda p: (
                current.blocks[p], structure, problem.hp_of(state.log_params, p), problem.row_bounds, jitter
            ),
        )
        individual_log_params = np.concatenate(rows)

    grid = problem.grid
    if problem.mean_step == "marginal" and core.precision_mean_step:
        summary = _sum_terms(problem.map_gather(
            tasks.data_precision, structure, per_partition=lambda p: (problem.hp_of(individual_log_params, p), jitter)
        ))
        pseudo = core.pseudo_observations(*summary)
        if np.isfinite(pseudo[2]):

            def mean_objective(log_params):
                return core.mean_process_pseudo_step(log_params, grid, *pseudo, jitter)

        else:

            def mean_objective(log_params):
                return core.mean_process_precision_step(log_params, grid, *summary, jitter)

    elif problem.mean_step == "marginal":
        # Projected model: each partition keeps its factors at the new individual HP (magma_pymc.projected_step);
        # each evaluation sums the partitions' E-step terms, then their share of the gradient.
        step = projected_step_graphs(core)
        factors = [
            problem.client.submit(tasks.projected_factors, part, structure, problem.hp_of(individual_log_params, p),
                                  jitter)
            for p, part in enumerate(problem.partitions)
        ]

        def mean_objective(log_params):
            return _projected_value_grad(problem, step, factors, log_params, jitter)

    else:

        def mean_objective(log_params):
            return core.mean_process_step(log_params, grid, current.result.mean, current.result.cov_factor, jitter)

    mean_fit = minimize_log_params(mean_objective, state.mean_log_params, problem.mean_bounds)
    return state._replace(mean_log_params=mean_fit.x, log_params=individual_log_params)


def _projected_value_grad(problem: PartitionedProblem, step, factors: list, log_params, jitter: float) -> tuple:
    """One evaluation of the projected mean-process step: the partitions' sums, then their share of the gradient.

    Each partition's sums task keeps its whitened loadings on its worker (:class:`~magma_pymc.distributed.partition.
    KeptSums`): only the E-step terms travel to the client, and the gradient's task of the same partition starts from
    them where they live instead of recomputing them. The kept results are released when the evaluation ends; a
    lost one is recomputed from its lineage.
    """
    client, structure = problem.client, problem.structure
    kept = [client.submit(tasks.projected_sums, part, structure, log_params, jitter, factors[p])
            for p, part in enumerate(problem.partitions)]
    problem.communication.count((log_params, jitter) * len(kept), ())
    terms = client.gather([client.submit(tasks.kept_terms, k) for k in kept])
    problem.communication.count((), terms)
    problem.communication.round_trips[-1] += 1
    value, gram_bar, shift_bar, grid_path = step.loss(log_params, problem.grid, *_sum_terms(terms), jitter)
    if not np.isfinite(value):
        return value, np.full_like(log_params, np.nan)
    bars = (np.asarray(gram_bar), np.asarray(shift_bar))
    shared = client.submit(tasks.identity, bars)
    grads = client.gather([
        client.submit(tasks.projected_vjp, part, structure, log_params, jitter, factors[p], kept[p], shared)
        for p, part in enumerate(problem.partitions)
    ])
    problem.communication.count((log_params, jitter, bars) * len(kept), grads)
    problem.communication.round_trips[-1] += 1
    return value, np.asarray(grid_path) + sum(grads)


def run_distributed_em(
    state: EMState,
    problem: PartitionedProblem,
    *,
    max_iter: int = 25,
    tol: float = 1e-3,
    callback: Callable[[int, EMState, float], None] | None = None,
) -> tuple[EMTrace, DistributedEStep]:
    """Iterate as :func:`magma_pymc.em.run_em` (same stopping rule and warnings).

    Returns the trace (its ``estep`` without the per-individual blocks, which stay on the workers) and the last E-step.
    """
    problem.seconds = [0.0]

    def advance(state: EMState, current: DistributedEStep) -> tuple[DistributedEStep, EMState]:
        start = time.perf_counter()
        problem.communication.next_iteration()
        current, state = estep(em_step(state, problem, current), problem)
        problem.seconds.append(time.perf_counter() - start)
        return current, state

    trace = iterate_em(estep(state, problem), advance, log_likelihood=lambda current: current.result.log_likelihood,
                       max_iter=max_iter, tol=tol, callback=callback)
    return trace._replace(estep=trace.estep.result), trace.estep
