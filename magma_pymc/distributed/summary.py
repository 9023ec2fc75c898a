r"""A distributed fit as a :class:`~magma_pymc.fit_result.FitResult`, without the training data.

Prediction and the hyper-posterior of :math:`\mu_0` at new inputs need the training data only
through the fitted hyper-posterior on the grid: :math:`\hat m - m_0 = L_0\alpha`,
:math:`\hat K = L_0 B^{-1} L_0^\top` (theory page, *Prediction*). The record built here holds
:math:`(\alpha, L_B)` in place of the training arrays (:class:`SummaryArrays`), and graphs that
compute the E-step's factors from them (:class:`SummaryGraphs`); everything else is the
in-process record, so :mod:`magma_pymc.predictive` predicts from it as from an in-process fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import xarray as xr

from magma_pymc.compiled import ModelGraphs
from magma_pymc.distributed.graphs import DistributedGraphs
from magma_pymc.em import EMState, Problem
from magma_pymc.fit_result import FitResult

__all__ = ["SummaryArrays", "SummaryGraphs", "PartitionedData", "summary_result"]


class SummaryArrays(NamedTuple):
    r"""What stands for the training arrays: the grid (union grid or inducing points), :math:`\alpha`, :math:`L_B`."""

    grid: np.ndarray
    alpha: np.ndarray
    chol_b: np.ndarray


class SummaryGraphs:
    r"""The model's compiled graphs, with :math:`\mu_0` at new inputs computed from :class:`SummaryArrays`."""

    def __init__(self, core: ModelGraphs, distributed: DistributedGraphs) -> None:
        self._core, self._distributed = core, distributed

    def __getattr__(self, name: str):
        return getattr(self._core, name)

    def estep_factors(self, mean_hp, hp, grid, alpha, chol_b, jitter):
        """``ModelGraphs.estep_factors``'s signature, the training arrays replaced by :class:`SummaryArrays`."""
        (chol_prior,) = self._distributed.prior_factor(mean_hp, grid, jitter)
        return chol_prior, chol_b, alpha


@dataclass(frozen=True, eq=False)
class PartitionedData:
    """What a distributed fit knows of its training data (they stay on the workers)."""

    ids: np.ndarray
    input_names: tuple[str, ...]
    input_range: float
    output_variance: float

    @property
    def input_dim(self) -> int:
        """Number of input columns."""
        return len(self.input_names)

    @property
    def n_individuals(self) -> int:
        """Number of training individuals."""
        return len(self.ids)


def summary_result(
    method: str,
    state: EMState,
    graphs: tuple[ModelGraphs, DistributedGraphs],
    arrays: SummaryArrays,
    bounds: tuple[list, list],
    data: PartitionedData,
    prior_mean,
    hp_names: tuple[str, ...],
    tree: xr.DataTree | None = None,
) -> FitResult:
    """The :class:`~magma_pymc.fit_result.FitResult` of a distributed point fit (module docstring).

    ``bounds``: the mean-process HP's and one individual's log bounds (the new individual's HP are
    fitted within the latter).
    """
    mean_bounds, row_bounds = bounds
    n_rows = 1 if np.ndim(state.log_params) == 1 else len(state.log_params)
    problem = Problem(SummaryGraphs(*graphs), arrays, list(mean_bounds), list(row_bounds) * n_rows,
                      data.output_variance)
    return FitResult.from_point(
        method, state, problem=problem, data=data, prior_mean=prior_mean, hp_names=hp_names,
        tree=xr.DataTree() if tree is None else tree,
    )
