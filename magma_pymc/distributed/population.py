r"""The population distribution of the individual HP of a distributed fit (different HP), as in process.

The estimate is :func:`magma_pymc.population.population_estimate`, the in-process fit's, on the same
inputs: the fitted log HP (on the client), their Laplace covariances (:math:`(P + 1)^2` numbers per
individual, computed where the data live) and, for the marginal-likelihood estimate
(:mod:`magma_pymc.population_em`), the real points of the individuals it samples at the last
E-step (:func:`~magma_pymc.population.sampled_rows`: at most
:data:`~magma_pymc.population_em.MAX_INDIVIDUALS`, the same seeded subset of the same rows). Only
those individuals' inputs, :math:`y_i - \hat m(t_i)` and :math:`\hat K(t_i, t_i)` travel to the
client, which then leaves each out of :math:`\mu_0` and runs the Monte Carlo EM: the client's memory
grows with the sampled individuals, not with M. A distributed fit and an in-process fit of the same
data and HP give the same :math:`(m, S)` up to the rounding of the sums in the E-step.
"""

from __future__ import annotations

import numpy as np

from magma_pymc.distributed import partition as tasks
from magma_pymc.distributed.em import DistributedEStep, PartitionedProblem
from magma_pymc.em import EMState
from magma_pymc.hp_integration import PopulationPrior
from magma_pymc.population import population_estimate
from magma_pymc.population_em import IndividualTerms, terms_of_points

__all__ = ["distributed_population", "sampled_terms"]


def distributed_population(problem: PartitionedProblem, last: DistributedEStep, state: EMState, *,
                           method: str = "marginal", seed: int = 0) -> PopulationPrior:
    """:func:`magma_pymc.population.population_estimate` of a distributed fit at its last E-step ``last``.

    ``state``: the fit's state (different HP, ``M > P + 1`` individuals); ``method`` and ``seed`` as
    :func:`magma_pymc.population.population_prior`.
    """
    log_params = np.asarray(state.log_params)
    covariances = problem.map_gather(tasks.estimation_covariances, per_partition=lambda p: (
        last.blocks[p], problem.structure, problem.hp_of(log_params, p), state.jitter))
    core = problem.core
    return population_estimate(
        log_params, np.concatenate(covariances),
        lambda rows: sampled_terms(problem, last.blocks, log_params, state.jitter, rows),
        core.individual_kernel, core.mode, state.jitter, method=method, seed=seed,
    )


def sampled_terms(problem: PartitionedProblem, blocks: list, log_params: np.ndarray, jitter: float,
                  rows: np.ndarray) -> list[IndividualTerms | None]:
    """:class:`~magma_pymc.population_em.IndividualTerms` of the individuals ``rows`` (global, any order).

    One task per partition holding some of them (:func:`~magma_pymc.distributed.partition.likelihood_points`,
    on its last E-step ``blocks``), then :func:`~magma_pymc.population_em.terms_of_points` on the client.
    """
    rows = np.asarray(rows, dtype=int)
    partition_of = np.searchsorted(problem.row_offsets, rows, side="right") - 1
    client, futures, positions = problem.client, [], []
    for p in np.unique(partition_of):
        where = np.flatnonzero(partition_of == p)
        local = rows[where] - problem.row_offsets[p]
        futures.append(client.submit(tasks.likelihood_points, problem.partitions[p], blocks[p], local))
        positions.append(where)
        problem.communication.count(local, ())
    points: list = [None] * len(rows)
    gathered = client.gather(futures)
    for where, part in zip(positions, gathered, strict=True):
        for k, point in zip(where, part, strict=True):
            points[k] = point
    problem.communication.count((), [a for point in points if point is not None for a in point])
    problem.communication.round_trips[-1] += 1
    core = problem.core
    return terms_of_points(core.individual_kernel, core.mode, log_params[rows], jitter, points)
