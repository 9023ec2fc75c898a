r"""Prediction from a distributed fit, on the client or on the workers, many new individuals at once.

Prediction needs the HP and the hyper-posterior of :math:`\mu_0` on the grid only: with
:math:`\hat m - m_0 = L_0\alpha` and :math:`\hat K = L_0 B^{-1} L_0^\top` (theory page,
*Prediction*), :math:`\mu_0` at new inputs follows from :math:`(\alpha, L_B)`
(:func:`magma_pymc.hyperposterior.build_mean_process_at`), :math:`O(N^2)` numbers that every
worker receives once. Each new individual then goes through the steps of
:meth:`magma_pymc.Magma.predict` (:mod:`magma_pymc.predict`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from magma_pymc.data import as_individual, as_inputs
from magma_pymc.distributed.graphs import Structure, worker_graphs
from magma_pymc.distributed.partition import identity, on_worker
from magma_pymc.em import EMState
from magma_pymc.estimator import _warn_far_inputs
from magma_pymc.predict import fit_new_individual, predict_individual
from magma_pymc.results import gaussian_dataset, latent_bounds

__all__ = ["Predictor", "predict_frame", "predict_partitions"]

#: Columns of :func:`predict_frame`'s result besides the ID and the inputs.
PREDICTION_COLUMNS = ("mean", "variance", "lower", "upper", "latent_variance", "latent_lower", "latent_upper")


@dataclass(frozen=True, eq=False)
class Predictor:
    """What prediction needs of a fit; compiled graphs are rebuilt in each process (:func:`worker_graphs`)."""

    structure: Structure
    state: EMState
    grid: np.ndarray
    alpha: np.ndarray
    chol_b: np.ndarray
    prior_mean: Callable[[np.ndarray], np.ndarray]
    row_bounds: tuple
    input_names: tuple[str, ...]
    input_range: float
    new_individual_hp: str = "map"

    def mean_process_at(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hyper-posterior mean (with :math:`m_0`) and covariance of :math:`\\mu_0` at ``inputs``."""
        _, graphs = worker_graphs(self.structure)
        centred, cov = graphs.mean_process_at(
            self.state.mean_log_params, self.grid, self.alpha, self.chol_b, self.state.jitter, inputs
        )
        return self.prior_mean(inputs) + np.asarray(centred), np.asarray(cov)

    def predict(self, new_data: Any, inputs: Any, *, prob: float = 0.95, full_cov: bool = False,
                **data_options: Any) -> xr.Dataset:
        """:meth:`magma_pymc.Magma.predict`'s steps, with :math:`\\mu_0` from :meth:`mean_process_at`."""
        d = self.grid.shape[1]
        individual = as_individual(new_data, input_dim=d, **data_options)
        pred_inputs = as_inputs(inputs, input_dim=d)
        joint_inputs = np.concatenate([individual.inputs, pred_inputs])
        _warn_far_inputs(joint_inputs, self.input_range, self.input_names, "predict")
        joint_mean, joint_cov = self.mean_process_at(joint_inputs)
        n_obs = individual.n_points
        core, _ = worker_graphs(self.structure)
        jitter = self.state.jitter
        hp = fit_new_individual(
            core, individual, joint_mean[:n_obs], joint_cov[:n_obs, :n_obs], self.state.log_params,
            list(self.row_bounds), jitter, empirical_prior=self.new_individual_hp == "map",
        )
        pred = predict_individual(core, individual, pred_inputs, joint_mean, joint_cov, hp, jitter)
        ds = gaussian_dataset(pred_inputs, self.input_names, pred.mean, pred.predictive_cov, prob, full_cov)
        ds = latent_bounds(ds, pred, prob)
        names = (*self.structure.kernel.names, "noise")
        ds.attrs.update(
            individual=str(individual.id),
            prediction_type="I" if n_obs else "II",
            hp_source=hp.source,
            **{f"hp_{name}": float(v) for name, v in zip(names, np.exp(hp.log_params), strict=True)},
        )
        return ds


@on_worker
def predict_frame(frame: pd.DataFrame, predictor: Predictor, inputs: np.ndarray, prob: float,
                  options: dict) -> pd.DataFrame:
    """Predict every individual of a long frame at ``inputs``: one row per individual and input."""
    id_col = options.get("id_col", "ID")
    rows = []
    for ident, group in frame.groupby(id_col, sort=False):
        ds = predictor.predict(group, inputs, prob=prob, **options)
        table = {id_col: np.repeat(np.asarray([ident], dtype=object), len(inputs))}
        table.update({name: inputs[:, j] for j, name in enumerate(predictor.input_names)})
        table.update({column: ds[column].to_numpy() for column in PREDICTION_COLUMNS})
        rows.append(pd.DataFrame(table))
    return pd.concat(rows, ignore_index=True) if rows else _empty(predictor, id_col)


def _empty(predictor: Predictor, id_col: str) -> pd.DataFrame:
    return pd.DataFrame(
        {id_col: pd.Series(dtype=object), **{n: pd.Series(dtype=float) for n in (*predictor.input_names, *PREDICTION_COLUMNS)}}
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
