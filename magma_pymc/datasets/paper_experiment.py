r"""The MAGMA paper's simulation experiment, run with :class:`magma_pymc.Magma` on the paper's data.

Protocol of Leroy et al. (2022, section 5; the authors' ``simulation_study.R``): for each data set
of :func:`~magma_pymc.datasets.load_paper_simulations`, fit MAGMA on the 20 training individuals
with prior mean 0, observe the first ``N`` points of the test individual and forecast its last
10; score the forecast by its MSE and by the percentage of the 10 points inside the 95 %
predictive interval (CI95). The mean process's hyper-posterior is scored likewise against the
true :math:`\mu_0` at the training inputs.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .paper import load_paper_simulations, paper_data_set
from .simulate import split_observed

__all__ = ["interval_coverage", "run_paper_experiment", "paired_with_authors", "summary_table", "worst_datasets",
           "paired_difference"]

N_FORECAST = 10


def interval_coverage(lower: np.ndarray, upper: np.ndarray, values: np.ndarray) -> float:
    """Percentage of ``values`` strictly inside ``(lower, upper)`` (the authors' ``ratio_IC``)."""
    values = np.asarray(values, dtype=float)
    return float(100 * np.mean((np.asarray(lower) < values) & (values < np.asarray(upper))))


def _score_dataset(setting: str, frame: pd.DataFrame, dataset: int, n_observed: Sequence[int],
                   magma_options: dict[str, Any]) -> list[dict[str, Any]]:
    from magma_pymc import ConvergenceWarning, Magma  # the package imports this module's package

    data = paper_data_set(frame, dataset)
    target = data.test.iloc[-N_FORECAST:]
    x, y = target["Input"].to_numpy(), target["Output"].to_numpy()
    options = {"prior_mean": 0.0, **magma_options}
    options.setdefault("common_hp", setting[1] == "T")
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)  # recorded in `converged` and `fit_warnings`
        model = Magma(**options).fit(data.training)
    fit_seconds = time.perf_counter() - start
    messages = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
    for w in caught:  # other warnings are passed on, not swallowed
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    base = dict(setting=setting, dataset=dataset, converged=bool(model.converged_), n_iter=model.n_iter_,
                fit_seconds=fit_seconds, fit_warnings=" | ".join(messages) or None)
    # Mean process at the training inputs, against the truth (ID 0 on the 201-point grid).
    inputs = np.unique(data.training["Input"].to_numpy())
    truth = np.interp(inputs, data.mean_process["Input"], data.mean_process["Output"])
    mu0 = model.hyperposterior(inputs)
    rows = [dict(base, target="mu0", N=np.nan,
                 MSE=float(np.mean((mu0["mean"].to_numpy() - truth) ** 2)),
                 CI95=interval_coverage(mu0["lower"].to_numpy(), mu0["upper"].to_numpy(), truth))]
    for n in n_observed:
        observed = split_observed(data.test.iloc[:-N_FORECAST], n)[0]
        pred = model.predict(observed, x)
        rows.append(dict(base, target="forecast", N=float(n),
                         MSE=float(np.mean((pred["mean"].to_numpy() - y) ** 2)),
                         CI95=interval_coverage(pred["lower"].to_numpy(), pred["upper"].to_numpy(), y),
                         hp_source=pred.attrs.get("hp_source")))
    return rows


def run_paper_experiment(
    settings: Iterable[str] = ("TT", "TF", "FT", "FF"),
    datasets: Iterable[int] | None = None,
    *,
    n_observed: Sequence[int] = (20,),
    progress: bool = False,
    **magma_options: Any,
) -> pd.DataFrame:
    """Fit and score MAGMA on the paper's data sets (the protocol of the module docstring).

    Parameters
    ----------
    settings
        Settings among ``"TT"``, ``"TF"``, ``"FT"``, ``"FF"``.
    datasets
        Data-set numbers (1..100); default all 100.
    n_observed
        Numbers ``N`` of observed points of the test individual (its first ``N``), each scored on
        the same fit; the paper uses 20, and 1..20 in its figure on ``N``.
    progress
        Print one line per data set.
    **magma_options
        Passed to :class:`~magma_pymc.Magma` (default ``prior_mean=0`` as the authors, and
        ``common_hp`` from the setting's second letter).

    Returns
    -------
    pd.DataFrame
        One row per setting, data set and target: ``target`` ``"mu0"`` (mean-process estimate at
        the training inputs; ``N`` NaN) or ``"forecast"`` (one row per ``N``), with ``MSE``,
        ``CI95`` (%), ``converged``, ``n_iter``, ``fit_seconds``, ``fit_warnings`` (EM's convergence warnings,
        e.g. a HP ending on its bound) and ``hp_source`` (how the test
        individual's HP were set). A data set whose fit raises is recorded with NaN scores and the
        error in ``error``, never dropped.
    """
    rows: list[dict[str, Any]] = []
    for setting in settings:
        frame = load_paper_simulations(setting)
        numbers = sorted(frame["dataset"].unique()) if datasets is None else list(datasets)
        for dataset in numbers:
            try:
                new = _score_dataset(setting, frame, int(dataset), n_observed, magma_options)
            except Exception as err:  # noqa: BLE001 -- recorded and reported, not dropped
                new = [dict(setting=setting, dataset=int(dataset), target="forecast", N=float(n), MSE=np.nan,
                            CI95=np.nan, error=repr(err)) for n in n_observed]
            rows.extend(new)
            if progress:
                scores = ", ".join(f"{r['target']}{'' if np.isnan(r['N']) else int(r['N'])} {r['MSE']:.2f}"
                                   for r in new[-2:])
                print(f"{setting} {int(dataset):3d}: {scores}", flush=True)
    out = pd.DataFrame(rows)
    if "error" not in out:
        out["error"] = None
    return out


def paired_with_authors(runs: pd.DataFrame) -> pd.DataFrame:
    """Each run of :func:`run_paper_experiment` beside the authors' runs on the same data set.

    Returns ``runs`` with, for each of the authors' methods (``Algo`` = their MAGMA, ``One GP``,
    ``GPFDA``), the columns ``<method> MSE`` and ``<method> CI95`` of the same setting, data set,
    target and ``N`` (from :func:`~magma_pymc.datasets.load_paper_results`).
    """
    from .paper import load_paper_results

    parts = []
    for (setting, target), group in runs.groupby(["setting", "target"], sort=False):
        theirs = load_paper_results(setting, "pred" if target == "forecast" else "mu")
        keys = ["dataset", "N"] if target == "forecast" else ["dataset"]
        wide = theirs.pivot_table(index=keys, columns="method", values=["MSE", "CI95"], dropna=False)
        wide.columns = [f"{method} {metric}" for metric, method in wide.columns]
        parts.append(group.merge(wide, left_on=keys, right_index=True, how="left"))
    return pd.concat(parts, ignore_index=True)


def summary_table(paired: pd.DataFrame, target: str = "forecast", n_observed: float | None = 20.0) -> pd.DataFrame:
    """Table 1 of the paper from :func:`paired_with_authors`: one row per setting.

    Columns: ``n`` data sets; ``MSE``, ``CI95`` (means), ``median MSE`` of magma_pymc; the same
    for the authors' MAGMA (``Algo``), and the means of their ``One GP`` and ``GPFDA``;
    ``better`` = data sets where magma_pymc's MSE is below the authors' MAGMA's.
    """
    rows = paired.loc[paired["target"] == target]
    if n_observed is not None and target == "forecast":
        rows = rows.loc[rows["N"] == n_observed]
    grouped = rows.groupby("setting", sort=False)
    table = pd.DataFrame(
        {
            "n": grouped["MSE"].count(),
            "MSE": grouped["MSE"].mean(),
            "CI95": grouped["CI95"].mean(),
            "median MSE": grouped["MSE"].median(),
            "authors MSE": grouped["Algo MSE"].mean(),
            "authors CI95": grouped["Algo CI95"].mean(),
            "authors median MSE": grouped["Algo MSE"].median(),
            "better": grouped.apply(lambda g: int((g["MSE"] < g["Algo MSE"]).sum()), include_groups=False),
        }
    )
    for method in ("One GP", "GPFDA"):
        if f"{method} MSE" in rows and rows[f"{method} MSE"].notna().any():
            table[f"{method} MSE"] = grouped[f"{method} MSE"].mean()
            table[f"{method} CI95"] = grouped[f"{method} CI95"].mean()
    return table


def worst_datasets(paired: pd.DataFrame, k: int = 5, n_observed: float = 20.0) -> pd.DataFrame:
    """The ``k`` forecasts (all settings) where magma_pymc's MSE exceeds the authors' the most."""
    rows = paired.loc[(paired["target"] == "forecast") & (paired["N"] == n_observed)]
    rows = rows.assign(excess=rows["MSE"] - rows["Algo MSE"])
    return rows.nlargest(k, "excess")[["setting", "dataset", "MSE", "Algo MSE", "excess", "CI95", "Algo CI95"]]


def paired_difference(
    paired: pd.DataFrame,
    n_observed: float = 20.0,
    *,
    n_resamples: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    r"""Is magma_pymc's mean forecast MSE different from the authors' MAGMA's? One row per setting.

    On the data sets of a setting, :math:`d_j = \mathrm{MSE}_j - \mathrm{MSE}^{\mathrm{authors}}_j`
    (paired: both fitted on data set :math:`j`). Columns: ``n``; ``mean difference``
    :math:`\bar d`; ``ci low`` / ``ci high``, the percentile bootstrap interval of :math:`\bar d` at
    ``level`` (``n_resamples`` resamples of the data sets, seeded); ``wilcoxon p``, the two-sided
    Wilcoxon signed-rank p-value (SciPy) of the null "the differences are symmetric about 0",
    which the few data sets where every method forecasts badly do not dominate as they dominate
    the means; ``better``, data sets with :math:`d_j < 0`.
    """
    from scipy.stats import wilcoxon

    rows = paired.loc[(paired["target"] == "forecast") & (paired["N"] == n_observed)]
    rng = np.random.default_rng(seed)
    table = {}
    for setting, group in rows.groupby("setting", sort=False):
        difference = (group["MSE"] - group["Algo MSE"]).dropna().to_numpy()
        if difference.size == 0:
            continue
        means = difference[rng.integers(0, difference.size, (n_resamples, difference.size))].mean(axis=1)
        low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
        table[setting] = {
            "n": difference.size,
            "mean difference": difference.mean(),
            "ci low": low,
            "ci high": high,
            "wilcoxon p": float(wilcoxon(difference).pvalue) if np.any(difference != 0) else 1.0,
            "better": int((difference < 0).sum()),
        }
    return pd.DataFrame.from_dict(table, orient="index")
