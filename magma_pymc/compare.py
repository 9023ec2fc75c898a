"""``compare_fits``: fitted models side by side (HP, marginal likelihood, forecast scores, time)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from magma_pymc.em import estep
from magma_pymc.results import MEAN_PREFIX

if TYPE_CHECKING:  # annotations only: compare reads the estimator's public attributes
    from magma_pymc.estimator import Magma

__all__ = ["compare_fits"]


def compare_fits(
    *models: Magma | Mapping[str, Magma],
    new_data: pd.DataFrame | None = None,
    target: pd.DataFrame | None = None,
    prob: float = 0.95,
    id_col: str = "ID",
    output_col: str = "Output",
) -> pd.DataFrame:
    r"""Side-by-side table of fitted models (EM, NUTS, fixed...), one row per model.

    ``compare_fits(em, nuts, ...)`` labels rows ``"0: em"``, ``"1: nuts"``;
    ``compare_fits({"EM": em, "NUTS": nuts}, ...)`` uses the given labels.

    Columns: ``method``; the HP estimates (EM: the optimum; NUTS: the posterior median; with
    different HP, the median over individuals) named as in ``idata_.posterior``; ``log_likelihood``,
    the exact marginal :math:`\log p(y\mid\hat\Theta)` at those HP (comparable across models fitted
    to the same data); ``fit_seconds`` (wall time of ``fit``). With ``new_data`` (observed points of
    new individuals, long format) and ``target`` (their points to forecast, long format; an ID absent
    from ``new_data`` is a Type II prediction): ``mse`` of the predictive mean over all target
    points and ``coverage`` of the central ``prob`` predictive intervals.
    """
    if len(models) == 1 and isinstance(models[0], Mapping):
        models = models[0]
    else:
        models = {f"{i}: {m.idata_.attrs.get('method', '?')}": m for i, m in enumerate(models)}
    rows = {}
    for label, model in models.items():
        result = model.result_  # raises before fit
        hp = model.hyperparameters_
        row: dict[str, Any] = {"method": model.idata_.attrs.get("method", "?")}
        row.update({MEAN_PREFIX + k: float(v) for k, v in hp.mean_process.items()})
        row.update({k: float(v) for k, v in hp.individual.median(axis=0).items()})
        row["log_likelihood"] = float(estep(result.point, result.problem)[0].log_likelihood)
        row["fit_seconds"] = float(getattr(model, "fit_seconds_", np.nan))
        if target is not None:
            row.update(_forecast_scores(model, new_data, target, prob, id_col, output_col))
        rows[label] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def _forecast_scores(model: Magma, new_data, target, prob: float, id_col: str, output_col: str) -> dict[str, float]:
    names = list(model.data_.input_names)
    errors, inside = [], []
    for ident, rows in target.groupby(id_col, sort=False):
        observed = None if new_data is None else new_data[new_data[id_col] == ident]
        observed = None if observed is None or observed.empty else observed
        pred = model.predict(observed, rows[names].to_numpy(dtype=float), prob=prob, id_col=id_col,
                             input_cols=names, output_col=output_col)
        y = rows[output_col].to_numpy(dtype=float)
        errors.append((pred["mean"].values - y) ** 2)
        inside.append((pred["lower"].values <= y) & (y <= pred["upper"].values))
    return {"mse": float(np.concatenate(errors).mean()), "coverage": float(np.concatenate(inside).mean())}
