r"""Worker side of the partitioned EM: one partition's individuals, and the tasks run on them.

A partition is validated where it lives, with the same checks (and the same errors, naming the
individual) as an in-process fit (:func:`magma_pymc.data.as_training_data`). Its padded arrays stay
on the worker; tasks return only sums over its individuals (E-step terms, M-step values and
gradients, the data's information form) or its individuals' own HP (different HP).

Every task is a pure function of its arguments, so Dask can recompute any lost result from its
lineage when a worker dies.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import sparse
from threadpoolctl import threadpool_limits

from magma_pymc.batched_lbfgsb import minimize_separable
from magma_pymc.data import TrainingData, as_training_data
from magma_pymc.distributed.graphs import WORKER_LOCK, Structure, worker_graphs
from magma_pymc.population import laplace_covariances
from magma_pymc.population_em import real_points
from magma_pymc.projected_step import distinct_inputs, projected_step_graphs

__all__ = ["Partition", "PartitionSummary", "validate", "summarise", "prepare"]


class PartitionSummary(NamedTuple):
    """What the client learns of a partition before fitting: IDs, distinct inputs and output moments."""

    ids: np.ndarray          # (M_p,) object
    grid: np.ndarray | None  # (N_p, d) distinct inputs (None when not needed: inducing points)
    input_min: np.ndarray    # (d,)
    input_max: np.ndarray    # (d,)
    output_sum: float
    n_obs: int
    n_distinct: int          # distinct inputs of the partition
    input_names: tuple


@dataclass(frozen=True, eq=False)
class Partition:
    """A partition's individuals as the compiled graphs take them.

    ``arrays``: grid, inputs, residuals, mask, index; ``index`` points into the global union grid.
    """

    ids: np.ndarray
    arrays: tuple

    @property
    def n_individuals(self) -> int:
        """Number of individuals in the partition."""
        return len(self.ids)


def on_worker(task: Callable) -> Callable:
    """Run a task with one BLAS thread and the process's graph lock (see :data:`WORKER_LOCK`).

    On aligned arrays (Dask may deserialise arrays into unaligned buffers, which PyTensor refuses).
    """

    @functools.wraps(task)
    def wrapper(*args, **kwargs):
        args = tuple(_aligned(arg) for arg in args)
        with WORKER_LOCK, threadpool_limits(limits=1, user_api="blas"):
            return task(*args, **kwargs)

    return wrapper


def _aligned(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return np.require(value, requirements="A")  # a copy only when unaligned
    if isinstance(value, Partition):
        return Partition(value.ids, tuple(_aligned(a) for a in value.arrays))
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_aligned(v) for v in value)
    if isinstance(value, tuple):  # NamedTuple
        return type(value)(*(_aligned(v) for v in value))
    return value


def validate(frame: pd.DataFrame, input_dim: int, options: dict) -> TrainingData:
    """Validate one partition's long frame (errors name the individual, as in process)."""
    return as_training_data(frame, input_dim=input_dim, **options)


def summarise(train: TrainingData | None, with_grid: bool) -> PartitionSummary | None:
    """The partition's :class:`PartitionSummary` (distinct inputs only if ``with_grid``); ``None`` if it is empty."""
    if train is None:  # an empty partition of a dask frame
        return None
    outputs = np.concatenate([ind.outputs for ind in train.individuals])
    return PartitionSummary(
        train.ids, train.grid if with_grid else None, train.grid.min(axis=0), train.grid.max(axis=0),
        float(outputs.sum()), int(outputs.size), train.n_inputs, train.input_names,
    )


def output_square_deviation(train: TrainingData, centre: float) -> float:
    r""":math:`\sum (y - c)^2` over the partition's outputs (the output variance, in two passes)."""
    outputs = np.concatenate([ind.outputs for ind in train.individuals])
    return float(((outputs - centre) ** 2).sum())


def prepare(train: TrainingData, grid: np.ndarray, prior_mean: Callable, projected: bool) -> Partition:
    """Padded arrays of the partition on the global ``grid`` (union grid, or inducing points)."""
    flat_inputs = train.inputs.reshape(-1, train.input_dim)
    residuals = (train.outputs - prior_mean(flat_inputs).reshape(train.mask.shape)) * train.mask
    if projected:
        index = train.index  # unused by the projected model's graphs
    else:
        position = {tuple(row): k for k, row in enumerate(grid)}
        local_to_global = np.array([position[tuple(row)] for row in train.grid] + [len(grid)], dtype=np.int64)
        index = local_to_global[train.index]
    return Partition(train.ids, (grid, train.inputs, residuals, train.mask, index))


class EStepBlocks(NamedTuple):
    r"""What the individual M-step needs of a partition: :math:`y_i - \hat m_i` and :math:`\hat K_i` (padded)."""

    deviations: np.ndarray
    cov_blocks: np.ndarray


@on_worker
def estep_terms(part: Partition, structure: Structure, mean_hp, hp, jitter: float) -> tuple:
    _, graphs = worker_graphs(structure)
    return tuple(np.asarray(x) for x in graphs.estep_terms(mean_hp, hp, *part.arrays, jitter))


@on_worker
def estep_blocks(part: Partition, structure: Structure, mean_hp, jitter: float, fitted: tuple) -> EStepBlocks:
    _, graphs = worker_graphs(structure)
    return EStepBlocks(*(np.asarray(x) for x in graphs.estep_blocks(mean_hp, *part.arrays, jitter, *fitted)))


def _individual_args(part: Partition, blocks: EStepBlocks) -> tuple:
    _, inputs, _, mask, _ = part.arrays
    return inputs, blocks.deviations, blocks.cov_blocks, mask


@on_worker
def individual_value_grad(part: Partition, blocks: EStepBlocks, structure: Structure, hp, jitter: float) -> tuple:
    r""":math:`-\sum_{i\in p} Q_i` and its gradient w.r.t. the common individual HP."""
    core, _ = worker_graphs(structure)
    value, grad = core.individual_step(hp, *_individual_args(part, blocks), jitter)
    return float(value), np.asarray(grad)


@on_worker
def fit_individuals(part: Partition, blocks: EStepBlocks, structure: Structure, start: np.ndarray,
                    row_bounds: list, jitter: float) -> np.ndarray:
    """Different HP: each individual's L-BFGS-B, as in process (:func:`magma_pymc.em.em_step`)."""
    core, _ = worker_graphs(structure)
    inputs, deviations, cov_blocks, mask = _individual_args(part, blocks)

    def objectives(log_params, rows):
        take = rows if rows.size < len(inputs) else slice(None)
        return core.individual_steps(log_params, inputs[take], deviations[take], cov_blocks[take], mask[take], jitter)

    return minimize_separable(objectives, start, row_bounds * len(start)).x


@on_worker
def estimation_covariances(part: Partition, blocks: EStepBlocks, structure: Structure, hp: np.ndarray,
                           jitter: float) -> np.ndarray:
    """Different HP: the Laplace covariances of the partition's fitted individual HP.

    As in process (:func:`magma_pymc.population.estimation_covariances`), from the last E-step's blocks.
    """
    core, _ = worker_graphs(structure)
    inputs, deviations, cov_blocks, mask = _individual_args(part, blocks)
    return laplace_covariances(
        lambda log_params: core.individual_steps(log_params, inputs, deviations, cov_blocks, mask, jitter)[1], hp)


def likelihood_points(part: Partition, blocks: EStepBlocks, local_rows: np.ndarray) -> list:
    """Different HP: what the marginal population estimate needs of the partition's individuals ``local_rows``.

    Their real points at the last E-step (:func:`magma_pymc.population_em.real_points`, ``None`` for an
    individual on the measurement model): :math:`O(n^2)` numbers for each of at most
    :data:`~magma_pymc.population_em.MAX_INDIVIDUALS` individuals of the whole fit.
    """
    inputs, deviations, cov_blocks, mask = _individual_args(part, blocks)
    return [real_points(inputs[j], deviations[j], cov_blocks[j], mask[j]) for j in local_rows]


@on_worker
def data_precision(part: Partition, structure: Structure, hp, jitter: float) -> tuple:
    """The partition's share of the data's information form.

    As :func:`magma_pymc.information_form.build_data_precision`.
    """
    core, _ = worker_graphs(structure)
    return tuple(np.asarray(x) for x in core.data_precision(hp, *part.arrays, jitter))


@on_worker
def projected_factors(part: Partition, structure: Structure, hp, jitter: float) -> tuple:
    """The partition's distinct inputs, positions and :class:`~magma_pymc.projected_step.ProjectedFactors`.

    Kept on the worker for one M-step (:func:`magma_pymc.projected_step.distinct_inputs`).
    """
    core, _ = worker_graphs(structure)
    _, inputs, _, mask, _ = part.arrays
    factors = projected_step_graphs(core).factors(hp, *part.arrays, jitter)
    return (*distinct_inputs(inputs, mask), *(np.asarray(x) for x in factors))


class KeptSums(NamedTuple):
    """One evaluation's result of :func:`projected_sums`: the E-step terms, and the whitened loadings.

    Held on the worker as one Dask result: the client gathers only ``terms`` (:func:`kept_terms`), and
    :func:`projected_vjp` of the same evaluation takes the whole, where it lives.
    """

    terms: tuple
    whitened: np.ndarray


@on_worker
def projected_sums(part: Partition, structure: Structure, mean_hp, jitter: float, factors: tuple) -> KeptSums:
    """The partition's E-step terms at ``mean_hp`` from its factors, and its whitened loadings for the gradient.

    As :func:`magma_pymc.projected_step.build_projected_sums` (:attr:`DistributedGraphs.projected_sums`).
    """
    _, graphs = worker_graphs(structure)
    grid, _, _, mask, _ = part.arrays
    distinct, positions, *rest = factors
    *terms, whitened = graphs.projected_sums(mean_hp, grid, distinct, positions, mask, *rest, jitter)
    return KeptSums(tuple(np.asarray(x) for x in terms), np.asarray(whitened))


def kept_terms(kept: KeptSums) -> tuple:
    """The E-step terms of a :class:`KeptSums` (what travels to the client: G^2 + G + 3 numbers)."""
    return kept.terms


@on_worker
def projected_vjp(part: Partition, structure: Structure, mean_hp, jitter: float, factors: tuple, kept: KeptSums,
                  bars: tuple) -> np.ndarray:
    r"""The partition's share of the mean-process gradient from the kept whitened loadings of the same evaluation.

    As :func:`magma_pymc.projected_step.build_sums_vjp`, in three stages: the slots' cotangents
    :math:`\bar S_i = A_i^\top \bar W_i` (:attr:`DistributedGraphs.slot_cotangents`), their sum over the slots of
    each distinct input (the transpose of the gather, weighted by the mask: one sparse product), and the path through
    the kernel on the distinct inputs (:attr:`DistributedGraphs.distinct_vjp`).
    """
    _, graphs = worker_graphs(structure)
    grid, _, _, mask, _ = part.arrays
    distinct, positions, inverse_factors, whitened_residuals, *_ = factors
    slot_bar = graphs.slot_cotangents(inverse_factors, whitened_residuals, _aligned(kept.whitened), *bars)[0]
    gather = sparse.csr_array((mask.ravel(), (positions.ravel(), np.arange(mask.size))),
                              shape=(len(distinct), mask.size))
    distinct_bar = gather @ np.asarray(slot_bar)
    return np.asarray(graphs.distinct_vjp(mean_hp, grid, distinct, jitter, distinct_bar)[0])


def identity(value: Any) -> Any:
    """A task holding ``value``: shared arguments travel once per worker and can be recomputed."""
    return value
