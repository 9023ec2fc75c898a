r"""From validated training data to the :class:`~magma_pymc.em.Problem` every inference method solves.

The problem fixes the model structure (compiled graphs for common/different HP, common/uncommon
grid, exact or projected :math:`\mu_0`), the numeric arrays the graphs take
(:class:`~magma_pymc.em.TrainingArrays`, outputs centred on the prior mean :math:`m_0`) and the
box constraints of the log HP, in units of the data (:func:`magma_pymc.settings.scales`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from magma_pymc.batches import padded_batches, size_buckets
from magma_pymc.compiled import graphs_for
from magma_pymc.data import TrainingData
from magma_pymc.em import Problem, TrainingArrays
from magma_pymc.estep_buckets import residual_batches
from magma_pymc.guards import check_inducing_points
from magma_pymc.kernels import Kernel
from magma_pymc.settings import scales

__all__ = ["build_problem", "inducing_points", "bucket_sizes"]


def inducing_points(inducing: int | np.ndarray, train: TrainingData) -> np.ndarray:
    """``(G, d)`` inducing points: ``inducing`` itself, or G evenly spaced points over the training inputs' range."""
    if isinstance(inducing, int):
        low, high = train.grid.min(axis=0), train.grid.max(axis=0)
        return np.linspace(low, high, inducing)
    return inducing


def build_problem(
    train: TrainingData,
    prior_mean: Callable[[np.ndarray], np.ndarray],
    mean_kernel: Kernel,
    kernel: Kernel,
    *,
    common_hp: bool,
    compile_mode: str,
    inducing: int | np.ndarray | None,
    mean_step: str,
) -> Problem:
    """The problem of fitting ``train`` (module docstring).

    Residuals :math:`y - m_0`, bounds of the mean-process HP (``mean_kernel.log_bounds``), of each individual's HP
    (``kernel.log_bounds`` and the noise in :math:`[10^{-8}, 10^4]` times the output variance).
    """
    projected = inducing is not None
    graphs = graphs_for(
        mean_kernel, kernel, common_hp=common_hp, common_grid=train.common_grid, mode=compile_mode, projected=projected
    )
    if graphs.fast_path:
        residuals = np.stack([ind.outputs for ind in train.individuals]) - prior_mean(train.grid)[None, :]
    else:
        flat_inputs = train.inputs.reshape(-1, train.input_dim)
        residuals = (train.outputs - prior_mean(flat_inputs).reshape(train.mask.shape)) * train.mask
    if projected:
        # Sizes first: an int G is checked before G points are allocated.
        check_inducing_points(inducing, train.grid)
    grid = inducing_points(inducing, train) if projected else train.grid
    batches = None
    if not graphs.fast_path and not projected:
        buckets = size_buckets(train.n_points)
        if len(buckets) > 1:  # ragged data: each bucket padded to its own longest (magma_pymc.batches)
            batches = residual_batches(padded_batches(train, buckets), residuals)
    input_range, output_var = scales(train)
    ind_bounds = [*kernel.log_bounds(input_range, output_var), (np.log(1e-8 * output_var), np.log(1e4 * output_var))]
    return Problem(
        graphs=graphs,
        data_args=TrainingArrays(grid, train.inputs, residuals, train.mask, train.index),
        mean_bounds=mean_kernel.log_bounds(input_range, output_var),
        bounds=ind_bounds * (1 if common_hp else train.n_individuals),
        output_scale=output_var,
        mean_step=mean_step,
        batches=batches,
    )


def bucket_sizes(problem: Problem) -> list[tuple[int, int]]:
    """``(B_k, n_k)`` of the padded batches the problem's individual blocks are factorised in."""
    if problem.batches is not None:
        return [(len(b.rows), b.mask.shape[1]) for b in problem.batches]
    residuals = problem.data_args.residuals
    return [(residuals.shape[0], residuals.shape[1])]
