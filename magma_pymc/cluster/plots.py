"""Plots of MagmaClust fits (matplotlib; 1-D inputs): clusters, mixture predictions, V-BIC.

Every function draws on ``ax`` (a new figure when ``None``) and returns the axes. Cluster ``k`` is
drawn in colour ``C{k}`` everywhere, so the panels of a figure agree.

>>> from magma_pymc.cluster import plots
>>> plots.plot_clusters(model)                                                 # doctest: +SKIP
>>> plots.plot_cluster_prediction(model.predict(observed, grid), observed=observed)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from magma_pymc.plots import _axes, _finish, _xy

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from magma_pymc.cluster.estimator import MagmaClust
    from magma_pymc.cluster.selection import ClusterSelection

__all__ = ["plot_cluster_prediction", "plot_clusters", "plot_vbic"]


def plot_clusters(model: MagmaClust, ax: Axes | None = None, *, inputs: Any = None, prob: float = 0.95,
                  lines: bool = True) -> Axes:
    r"""Each cluster's mean process (mean and central ``prob`` band of :math:`q(\mu_k)`) over the training data.

    Every individual coloured by its most probable cluster (line opacity: that probability).
    """
    ax = _axes(ax)
    grid = model.mean_process_grid[:, 0]
    x = np.linspace(grid.min(), grid.max(), 200) if inputs is None else np.asarray(inputs, dtype=float)
    hyper = model.hyperposterior(x, prob=prob)
    tau = model.responsibilities_.to_numpy()
    for individual, row in zip(model.data_.individuals, tau, strict=True):
        k = int(np.argmax(row))
        style = {"color": f"C{k}", "alpha": 0.25 + 0.5 * float(row[k])}
        if lines:
            ax.plot(individual.inputs[:, 0], individual.outputs, lw=0.7, **style, zorder=1)
        ax.scatter(individual.inputs[:, 0], individual.outputs, s=6, linewidths=0, **style, zorder=1)
    for k in hyper["cluster"].values:
        weight = float(hyper["weight"].values[k])
        ax.fill_between(x, hyper["lower"].values[k], hyper["upper"].values[k], color=f"C{k}", alpha=0.2, zorder=2)
        ax.plot(x, hyper["mean"].values[k], color=f"C{k}", lw=2.5, zorder=3,
                label=f"cluster {k}: $\\mu_{{{k}}}$ (weight {weight:.2f})")
    _finish(ax, f"{len(hyper['cluster'])} clusters: mean processes and {int(100 * prob)} % bands")
    return ax


def plot_cluster_prediction(prediction: xr.Dataset, ax: Axes | None = None, *, observed: Any = None,
                            target: Any = None, components: bool = True) -> Axes:
    """The mixture prediction (mean and quantile interval).

    Also drawn: each cluster's prediction mean (dashed, opacity by its probability), the observed points and
    optionally held-out ``target`` points.
    """
    ax = _axes(ax)
    x = prediction["input"].values
    order = np.argsort(x)
    prob = prediction.attrs.get("prob", 0.95)
    if components:
        for k, weight in enumerate(prediction["cluster_probability"].values):
            ax.plot(x[order], prediction["cluster_mean"].values[k][order], "--", color=f"C{k}",
                    alpha=0.2 + 0.8 * float(weight), label=f"cluster {k} (p = {weight:.2f})")
    ax.fill_between(x[order], prediction["lower"].values[order], prediction["upper"].values[order], color="0.5",
                    alpha=0.25, label=f"{int(100 * prob)} % interval (mixture quantiles)")
    ax.plot(x[order], prediction["mean"].values[order], color="k", lw=2, label="mixture mean")
    if observed is not None:
        ox, oy = _xy(observed)
        ax.scatter(ox, oy, color="k", s=25, zorder=4, label="observed")
    if target is not None:
        tx, ty = _xy(target)
        ax.scatter(tx, ty, facecolors="none", edgecolors="C3", s=30, zorder=4, label="held out")
    _finish(ax, f"Mixture prediction (type {prediction.attrs.get('prediction_type', '?')})")
    return ax


def plot_vbic(selection: ClusterSelection, ax: Axes | None = None) -> Axes:
    """V-BIC and ELBO against the number of clusters, the chosen K marked."""
    ax = _axes(ax)
    table = selection.table
    ax.plot(table.index, table["vbic"], "o-", color="C0", label="V-BIC")
    ax.plot(table.index, table["elbo"], "s--", color="0.5", label="ELBO")
    ax.axvline(selection.best, color="C3", ls=":", label=f"chosen K = {selection.best}")
    ax.set_xticks(list(table.index))
    _finish(ax, "Choosing the number of clusters", xlabel="number of clusters K", ylabel="value")
    return ax
