r"""Prediction from a distributed fit, on the client or on the workers, many new individuals at once.

Prediction needs the HP and the hyper-posterior of :math:`\mu_0` on the grid only: with
:math:`\hat m - m_0 = L_0\alpha` and :math:`\hat K = L_0 B^{-1} L_0^\top` (theory page,
*Prediction*), :math:`\mu_0` at new inputs follows from :math:`(\alpha, L_B)`
(:func:`magma_pymc.hyperposterior.build_mean_process_at`), :math:`O(N^2)` numbers that every
worker receives once. Each new individual then goes through the steps of
:meth:`magma_pymc.Magma.predict` (:func:`magma_pymc.predictive.predict` on the fit's
:class:`~magma_pymc.fit_result.FitResult`, :mod:`magma_pymc.distributed.summary`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from magma_pymc import predictive
from magma_pymc.data import as_individual, as_inputs
from magma_pymc.distributed.graphs import Structure, worker_graphs
from magma_pymc.distributed.partition import identity, on_worker
from magma_pymc.distributed.summary import PartitionedData, SummaryArrays, summary_result
from magma_pymc.em import EMState
from magma_pymc.fit_result import FitResult
from magma_pymc.hp_integration import PopulationPrior
from magma_pymc.params import NOISE
from magma_pymc.settings import warn_far_inputs

__all__ = ["Predictor", "predict_frame", "predict_partitions"]

#: Columns of :func:`predict_frame`'s result besides the ID and the inputs.
PREDICTION_COLUMNS = ("mean", "variance", "lower", "upper", "latent_variance", "latent_lower", "latent_upper")


@dataclass(frozen=True, eq=False)
class Predictor:
    """What prediction needs of a distributed fit: small and picklable (no compiled graph, no data).

    :meth:`result` rebuilds the fit's record in each process with that process's graphs.
    """

    structure: Structure
    method: str
    state: EMState
    arrays: SummaryArrays
    bounds: tuple
    data: PartitionedData
    prior_mean: Callable[[np.ndarray], np.ndarray]
    new_individual_hp: str = "map"
    #: ``(mean, cov)`` of the population distribution of the individual HP (different HP fitted by EM,
    #: :mod:`magma_pymc.population`); ``None``: the fitted HP's mean and covariance.
    population: tuple | None = None

    @property
    def grid(self) -> np.ndarray:
        """The inputs of the mean-process hyper-posterior."""
        return self.arrays.grid

    def result(self, tree: xr.DataTree | None = None) -> FitResult:
        """The :class:`~magma_pymc.fit_result.FitResult` (:func:`~magma_pymc.distributed.summary.summary_result`)."""
        result = summary_result(
            self.method, self.state, worker_graphs(self.structure), self.arrays, self.bounds, self.data,
            self.prior_mean, (*self.structure.kernel.names, NOISE), tree,
        )
        if self.population is not None:  # computed at the end of the fit (magma_pymc.distributed.population)
            object.__setattr__(result, "_population", PopulationPrior(*self.population))
        return result

    def predict(self, new_data: Any, inputs: Any, *, prob: float = 0.95, full_cov: bool = False,
                result: FitResult | None = None, **data_options: Any) -> xr.Dataset:
        """:meth:`magma_pymc.Magma.predict`: the same checks, then :func:`magma_pymc.predictive.predict`."""
        d = self.data.input_dim
        individual = as_individual(new_data, input_dim=d, **data_options)
        pred_inputs = as_inputs(inputs, input_dim=d)
        joint_inputs = np.concatenate([individual.inputs, pred_inputs])
        warn_far_inputs(joint_inputs, self.data.input_range, self.data.input_names, "predict")
        return predictive.predict(self.result() if result is None else result, individual, pred_inputs, prob=prob,
                                  full_cov=full_cov, new_individual_hp=self.new_individual_hp)


@on_worker
def predict_frame(frame: pd.DataFrame, predictor: Predictor, inputs: np.ndarray, prob: float,
                  options: dict) -> pd.DataFrame:
    """Predict every individual of a long frame at ``inputs``: one row per individual and input."""
    id_col = options.get("id_col", "ID")
    rows, result = [], predictor.result()
    for ident, group in frame.groupby(id_col, sort=False):
        ds = predictor.predict(group, inputs, prob=prob, result=result, **options)
        table = {id_col: np.repeat(np.asarray([ident], dtype=object), len(inputs))}
        table.update({name: inputs[:, j] for j, name in enumerate(predictor.data.input_names)})
        table.update({column: ds[column].to_numpy() for column in PREDICTION_COLUMNS})
        rows.append(pd.DataFrame(table))
    return pd.concat(rows, ignore_index=True) if rows else _empty(predictor, id_col)


def _empty(predictor: Predictor, id_col: str) -> pd.DataFrame:
    return pd.DataFrame(
        {id_col: pd.Series(dtype=object),
         **{n: pd.Series(dtype=float) for n in (*predictor.data.input_names, *PREDICTION_COLUMNS)}}
    )


def predict_partitions(model, new_data: Any, inputs: Any, *, client: Any = None, prob: float = 0.95,
                       n_partitions: int | None = None, **data_options: Any):
    """Predict many new individuals in parallel, partition by partition, at the same ``inputs``.

    Parameters
    ----------
    model
        A fitted :class:`~magma_pymc.distributed.DistributedMagma`.
    new_data
        Long frame of the new individuals' observed points: a ``dask.dataframe`` (each partition
        holding whole individuals; the result is then a lazy ``dask.dataframe``) or a pandas frame
        (split into ``n_partitions`` on ``client``'s cluster; the result is a pandas frame).
    inputs
        Prediction inputs, the same for every individual.

    Returns
    -------
    DataFrame
        Columns ``ID``, the inputs, and ``mean``, ``variance``, ``lower``, ``upper`` (predictive),
        ``latent_variance``, ``latent_lower``, ``latent_upper``: one row per individual and input,
        equal to ``model.predict(individual's data, inputs)``.
    """
    from magma_pymc.distributed.frames import is_dask_frame, split_by_individual

    predictor = model.predictor
    pred_inputs = as_inputs(inputs, input_dim=predictor.grid.shape[1])
    id_col = data_options.get("id_col", "ID")
    if is_dask_frame(new_data):
        meta = _empty(predictor, id_col)
        return new_data.map_partitions(predict_frame, predictor, pred_inputs, prob, data_options, meta=meta)
    if client is None:
        raise ValueError("predicting a pandas frame on a cluster needs client=")
    if n_partitions is None:
        n_partitions = 2 * max(1, len(client.nthreads()))
    shared = client.submit(identity, predictor)  # sent once, recomputable
    futures = [
        client.submit(predict_frame, chunk, shared, pred_inputs, prob, data_options)
        for chunk in split_by_individual(new_data, n_partitions, id_col)
    ]
    return pd.concat(client.gather(futures), ignore_index=True)
