"""Plots of fitted hyper-parameters: the EM trace and the NUTS posterior draws (matplotlib).

Public through :mod:`magma_pymc.plots` (``plots.plot_em_trace``, ``plots.plot_hp_posterior``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["plot_em_trace", "plot_hp_posterior"]


def _plain_log_ticks(axis: Any, max_ticks: int = 4) -> None:
    """Two to ``max_ticks`` plainly labelled ticks (``0.2``, ``1e-06``) on a log-scaled axis.

    Of powers of ten, and of 1-2-5, 1-3, 1-2-3-5 and all integer multiples of them, the set that
    puts the most ticks in view without exceeding ``max_ticks`` (the first such, on a tie). Over more
    decades than ``max_ticks``, every few powers of ten; when no set puts two ticks in view, "nice"
    linear values. Minor ticks are unlabelled, so labels never pile up.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    class PlainLogLocator(LogLocator):
        def tick_values(self, vmin: float, vmax: float) -> np.ndarray:
            lo, hi = sorted((vmin, vmax))
            if lo <= 0:
                return super().tick_values(vmin, vmax)
            best = np.array([])
            for subs in ((1.0,), (1.0, 2.0, 5.0), (1.0, 3.0), (1.0, 2.0, 3.0, 5.0), np.arange(1.0, 10.0)):
                ticks = LogLocator(subs=subs, numticks=99).tick_values(lo, hi)
                shown = ticks[(ticks >= lo * (1 - 1e-9)) & (ticks <= hi * (1 + 1e-9))]
                if len(shown) > max_ticks and len(subs) == 1:
                    return super().tick_values(lo, hi)  # many decades: every few powers of ten
                if len(best) < len(shown) <= max_ticks:
                    best = shown
            if len(best) >= 2:
                return best
            ticks = MaxNLocator(nbins=max_ticks - 1, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
            return ticks[ticks > 0]

    axis.set_major_locator(PlainLogLocator(numticks=max_ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _truth_value(truth: Mapping, name: str) -> Any:
    """True value of a trace variable in a dict laid out as ``simulate(...).hyperparameters``."""
    if name.startswith("mu0_"):
        return truth.get("mean_process", {}).get(name[4:])
    ind = truth.get("individual")
    if isinstance(ind, pd.DataFrame):
        return ind[name] if name in ind.columns else None
    return ind.get(name) if isinstance(ind, Mapping) else None


def plot_em_trace(model_or_idata: Any, axes: Any = None, *, truth: Mapping | None = None) -> np.ndarray:
    """Log-likelihood and every hyper-parameter per EM iteration, one panel each.

    Parameters
    ----------
    model_or_idata : Magma, xarray.DataTree or xarray.Dataset
        A fitted :class:`~magma_pymc.Magma`, its ``idata_``, or the ``em_trace`` Dataset. Variables
        with an ``individual`` dim (different HP) get one faint line per individual.
    axes : array of matplotlib.axes.Axes, optional
        At least one per variable; a new figure when ``None``.
    truth : dict, optional
        True HP as in ``simulate(...).hyperparameters``, drawn as dashed horizontal lines:
        ``truth["mean_process"]["variance"]`` on the ``mu0_variance`` panel, etc.; the
        ``individual`` frame (or dict) on the other panels: its first row for common HP, one
        line per matching ID for different HP.

    Returns
    -------
    numpy.ndarray
        The axes, one per variable (log-likelihood first), flat.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    trace = getattr(model_or_idata, "idata_", model_or_idata)
    if isinstance(trace, xr.DataTree):
        if "em_trace" not in trace.children:
            raise ValueError("no em_trace group: the model was not fitted with EM")
        trace = trace["em_trace"].to_dataset()
    names = ["log_likelihood", *(v for v in trace.data_vars if v != "log_likelihood")]
    if axes is None:
        ncols = min(3, len(names))
        nrows = -(-len(names) // ncols)
        fig, grid = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.8 * nrows), squeeze=False, layout="constrained")
        for extra in grid.ravel()[len(names):]:
            fig.delaxes(extra)
        axes = grid
    axes = np.asarray(axes, dtype=object).ravel()
    if axes.size < len(names):
        raise ValueError(f"need {len(names)} axes (one per variable), got {axes.size}")
    axes, it = axes[: len(names)], trace["em_iteration"].values
    for ax, name in zip(axes, names, strict=True):
        var = trace[name]
        ids = var["individual"].values if "individual" in var.dims else None
        if ids is None:
            ax.plot(it, var.values, "-o", color="C0", ms=3.5, lw=1.5, label="EM")
        else:
            for k, ident in enumerate(ids):
                ax.plot(it, var.sel(individual=ident).values, color=f"C{k % 10}", alpha=0.45, lw=1)
        value = None if truth is None or name == "log_likelihood" else _truth_value(truth, name)
        if isinstance(value, pd.Series) and ids is not None:
            for k, ident in enumerate(ids):
                if ident in value.index:
                    ax.axhline(value[ident], ls="--", color=f"C{k % 10}", alpha=0.6, lw=0.8)
        elif value is not None:
            ax.axhline(float(value.iloc[0] if isinstance(value, pd.Series) else value), ls="--", color="k",
                       lw=1.2, label="truth")
        values = var.values
        if name != "log_likelihood" and values.min() > 0 and values.max() / values.min() > 20:
            ax.set_yscale("log")  # HP spanning decades
            _plain_log_ticks(ax.yaxis)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # iterations are whole numbers
        ax.set(title=name.replace("_", "-") if name == "log_likelihood" else name, xlabel="EM iteration")
    legend_ax = axes[1] if len(axes) > 1 and truth is not None else axes[0]
    legend_ax.legend(fontsize="small")
    return axes


def plot_hp_posterior(
    nuts: Any, point_estimates: Mapping[str, Any] | None = None, axes: Any = None, *, truth: Mapping | None = None,
    bins: int = 40,
) -> np.ndarray:
    """Posterior draws of every hyper-parameter (log-scale histograms), beside point estimates.

    Parameters
    ----------
    nuts : Magma or xarray.DataTree
        A model fitted with ``method="nuts"`` (or its ``idata_``). With different HP, each
        individual HP panel pools the draws of all individuals.
    point_estimates : dict, optional
        ``{label: fitted Magma or its idata_}`` (e.g. ``{"EM": em_model}``), drawn as vertical
        lines at their ``posterior`` values (chain 0, draw 0; one line per individual).
    truth : dict, optional
        True HP laid out as ``simulate(...).hyperparameters``, dashed black lines.

    Returns
    -------
    numpy.ndarray
        The axes, one per hyper-parameter, flat.
    """
    import matplotlib.pyplot as plt

    post = getattr(nuts, "idata_", nuts)["posterior"]
    drawn_dims = {"chain", "draw", "individual"}
    names = [v for v in post.data_vars if not v.startswith("log_") and set(post[v].dims) <= drawn_dims]
    if axes is None:
        fig, grid = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), squeeze=False, layout="constrained")
        axes = grid
    axes = np.asarray(axes, dtype=object).ravel()
    if axes.size < len(names):
        raise ValueError(f"need {len(names)} axes (one per hyper-parameter), got {axes.size}")
    for ax, name in zip(axes, names, strict=False):  # extra axes stay empty
        draws = post[name].values.ravel()
        edges = np.geomspace(draws.min(), draws.max(), bins + 1) if draws.min() < draws.max() else bins
        ax.hist(draws, bins=edges, density=True, color="0.7", label="NUTS draws")
        for k, (label, fitted) in enumerate((point_estimates or {}).items()):
            values = np.ravel(getattr(fitted, "idata_", fitted)["posterior"][name].isel(chain=0, draw=0).values)
            for j, v in enumerate(values):
                ax.axvline(v, color=f"C{k}", lw=1.5, label=label if j == 0 else None)
        value = None if truth is None else _truth_value(truth, name)
        if value is not None:
            for j, v in enumerate(np.ravel(np.asarray(value, dtype=float))):
                ax.axvline(v, ls="--", color="k", lw=1.2, label="truth" if j == 0 else None)
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
        ax.set(title=name, xlabel=f"{name} (log scale)", yticks=[])
    axes[0].legend(fontsize="small")
    return axes[: len(names)]
