"""Plots of MAGMA data, fits and predictions (matplotlib; 1-D inputs).

Every plotting function draws on ``ax`` (a new figure when ``None``) and returns the axes. The
plots of fitted hyper-parameters (``plot_em_trace``, ``plot_hp_posterior``) are written in
:mod:`magma_pymc.hp_plots` and public here.

>>> from magma_pymc import plots
>>> model = mp.Magma().fit(sim.data)                                           # doctest: +SKIP
>>> pred = model.predict(observed, sim.grid, full_cov=True)                   # doctest: +SKIP
>>> plots.plot_prediction(pred, observed=observed, data=sim.data, samples=5)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from magma_pymc.hp_plots import plot_em_trace, plot_hp_posterior

if TYPE_CHECKING:
    from matplotlib.animation import FuncAnimation
    from matplotlib.axes import Axes

__all__ = ["plot_data", "plot_mean_process", "plot_prediction", "plot_heatmap", "plot_em_trace",
           "plot_hp_posterior", "animate_prediction"]

#: Points of one individual: a long frame (``Input``, ``Output`` columns) or an ``(x, y)`` pair.
Points = pd.DataFrame | tuple[Any, Any]

_MEAN_COLOR, _MU0_COLOR = "C0", "C3"
_FAINT = dict(s=10, color="0.55", alpha=0.35, linewidths=0, label="training data", zorder=1)  # training points


def _axes(ax: Axes | None) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7.5, 4.5), layout="constrained")[1]


def _xy(points: Points, input_col: str = "Input", output_col: str = "Output") -> tuple[np.ndarray, np.ndarray]:
    """Inputs and outputs of a long frame or an ``(x, y)`` pair, as flat float arrays."""
    if isinstance(points, pd.DataFrame):
        missing = [c for c in (input_col, output_col) if c not in points.columns]
        if missing:
            raise ValueError(f"points lack column(s) {missing}; columns are {list(points.columns)}")
        x, y = points[input_col].to_numpy(float), points[output_col].to_numpy(float)
    else:
        x, y = (np.asarray(v, dtype=float).ravel() for v in points)
    if x.shape != y.shape:
        raise ValueError(f"inputs and outputs differ in length ({x.size} and {y.size})")
    return x, y


def _inputs(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Inputs of a prediction Dataset and the order that sorts them (1-D inputs only)."""
    extra = [name for name, c in ds.coords.items() if c.dims == ("input",) and name != "input"]
    if extra or "input" not in ds.coords:
        raise ValueError(f"plots need 1-D inputs; this Dataset has input coordinates {extra or 'none'}")
    x = ds["input"].to_numpy().astype(float)
    return x, np.argsort(x, kind="stable")


def _scatter(ax: Axes, points: Points | None, **kwargs: Any) -> None:
    if points is not None:
        ax.scatter(*_xy(points), **kwargs)


def _finish(ax: Axes, title: str, xlabel: str = "Input", ylabel: str = "Output") -> None:
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small", framealpha=0.8)


def plot_data(
    data: pd.DataFrame, ax: Axes | None = None, *, id_col: str = "ID", input_col: str = "Input",
    output_col: str = "Output", max_individuals: int | None = None,
) -> Axes:
    """Training data, one line with markers per individual (legend up to 10 individuals).

    Parameters
    ----------
    data : pandas.DataFrame
        Long frame with columns ``id_col``, ``input_col`` and ``output_col``.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on (a new figure when ``None``; likewise below).
    id_col, input_col, output_col : str
        Column names.
    max_individuals : int, optional
        Draw only the first individuals (in order of appearance); ``None`` draws all.

    Returns
    -------
    matplotlib.axes.Axes
    """
    import matplotlib.pyplot as plt

    ax = _axes(ax)
    ids = pd.unique(data[id_col])[:max_individuals]
    cmap = plt.get_cmap("tab20" if len(ids) > 10 else "tab10")
    for k, ident in enumerate(ids):
        x, y = _xy(data.loc[data[id_col] == ident].sort_values(input_col), input_col, output_col)
        ax.plot(x, y, "-o", color=cmap(k % cmap.N), alpha=0.6, lw=1, ms=3.5, label=str(ident))
    ax.set(xlabel=input_col, ylabel=output_col, title=f"Training data ({len(ids)} individuals)")
    if len(ids) <= 10:
        ax.legend(title=id_col, fontsize="small", ncols=2 if len(ids) > 5 else 1)
    return ax


def plot_mean_process(
    model_or_dataset: Any, inputs: Any | None = None, ax: Axes | None = None, *,
    truth: tuple[Any, Any] | None = None, data: pd.DataFrame | None = None,
) -> Axes:
    r"""Hyper-posterior mean of :math:`\mu_0` with its credible band.

    Parameters
    ----------
    model_or_dataset : Magma or xarray.Dataset
        A fitted :class:`~magma_pymc.Magma` (its ``hyperposterior(inputs)`` is drawn) or the
        Dataset such a call returns.
    inputs : array-like, optional
        Where to evaluate the hyper-posterior (model only; default: the training grid).
    truth : (x, y), optional
        The true mean process, drawn dashed (e.g. ``(sim.grid, sim.mean_process)``).
    data : pandas.DataFrame, optional
        Training data (long frame), drawn as faint points.

    Returns
    -------
    matplotlib.axes.Axes
    """
    ds = model_or_dataset if isinstance(model_or_dataset, xr.Dataset) else model_or_dataset.hyperposterior(inputs)
    x, order = _inputs(ds)
    ax = _axes(ax)
    _scatter(ax, data, **_FAINT)
    ax.fill_between(x[order], ds["lower"].values[order], ds["upper"].values[order], color=_MU0_COLOR,
                    alpha=0.2, lw=0, label=f"{ds.attrs.get('prob', 0.95):.0%} credible interval")
    ax.plot(x[order], ds["mean"].values[order], color=_MU0_COLOR, lw=2, label=r"$\mu_0$ posterior mean")
    if truth is not None:
        ax.plot(*_xy(truth), "--", color="k", lw=1.5, label=r"true $\mu_0$")
    _finish(ax, r"Mean process $\mu_0$ (hyper-posterior)")
    return ax


def plot_prediction(
    prediction: xr.Dataset, ax: Axes | None = None, *, observed: Points | None = None,
    data: pd.DataFrame | None = None, target: Points | None = None, mean_process: xr.Dataset | None = None,
    latent: bool = False, samples: int = 0, seed: int = 0,
) -> Axes:
    r"""Prediction of a new individual: mean, credible band, points and optional sample curves.

    Parameters
    ----------
    prediction : xarray.Dataset
        Result of :meth:`Magma.predict` (with ``full_cov=True`` when ``samples > 0``).
    observed, target : Points, optional
        Observed and held-out points of the new individual (long frame or ``(x, y)``).
    data : pandas.DataFrame, optional
        Training data (long frame), drawn as faint points.
    mean_process : xarray.Dataset, optional
        Result of :meth:`Magma.hyperposterior`: its mean is drawn dashed.
    latent : bool
        Band of the noise-free process :math:`\mu_0 + f_*` (``latent_lower``, ``latent_upper``)
        instead of the predictive band of a new noisy observation (``lower``, ``upper``).
    samples : int
        Number of posterior curves of :math:`\mu_0 + f_*`, drawn from a normal with covariance
        ``cov`` less the noise variance on its diagonal (``variance - latent_variance``).
    seed : int
        Seed of the sample curves.

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    ValueError
        When ``samples > 0`` and ``prediction`` has no ``cov`` (predict with ``full_cov=True``).
    """
    if samples and "cov" not in prediction:
        raise ValueError("samples > 0 needs the full covariance: call model.predict(..., full_cov=True)")
    if latent and "latent_lower" not in prediction:
        raise ValueError("latent=True needs latent_lower and latent_upper in the prediction")
    x, order = _inputs(prediction)
    ax = _axes(ax)
    _scatter(ax, data, **_FAINT)
    mean = prediction["mean"].to_numpy()
    lower, upper = (prediction[("latent_" if latent else "") + b].values for b in ("lower", "upper"))
    ax.fill_between(x[order], lower[order], upper[order], color=_MEAN_COLOR, alpha=0.2, lw=0,
                    label=f"{prediction.attrs.get('prob', 0.95):.0%} {'latent' if latent else 'predictive'} interval")
    if samples:
        cov = prediction["cov"].to_numpy()
        if "latent_variance" in prediction:
            cov = cov - np.diag(np.maximum(prediction["variance"].values - prediction["latent_variance"].values, 0))
        rng = np.random.default_rng(seed)
        draws = rng.multivariate_normal(mean, cov, size=samples, method="eigh", check_valid="ignore")
        for k, draw in enumerate(draws):
            ax.plot(x[order], draw[order], color=_MEAN_COLOR, lw=0.8, alpha=0.45,
                    label=None if k else "posterior samples")
    ax.plot(x[order], mean[order], color=_MEAN_COLOR, lw=2, label="predictive mean")
    if mean_process is not None:
        mx, morder = _inputs(mean_process)
        ax.plot(mx[morder], mean_process["mean"].values[morder], "--", color=_MU0_COLOR, lw=1.5, label=r"$\mu_0$ mean")
    _scatter(ax, target, s=30, facecolors="none", edgecolors="C1", linewidths=1.3, label="target", zorder=3)
    _scatter(ax, observed, s=24, color="k", label="observed", zorder=4)
    who, kind = prediction.attrs.get("individual"), prediction.attrs.get("prediction_type")
    _finish(ax, f"Prediction{f' of {who}' if who else ''}{f' (type {kind})' if kind else ''}")
    return ax


def plot_heatmap(
    prediction: xr.Dataset, ax: Axes | None = None, *, n_levels: int = 100,
    y_range: tuple[float, float] | None = None, observed: Points | None = None, latent: bool = False,
) -> Axes:
    """Heatmap of the predictive density of the output at each input (as MagmaClustR), with the mean.

    Parameters
    ----------
    prediction : xarray.Dataset
        Result of :meth:`Magma.predict`.
    n_levels : int
        Number of output values on the vertical grid.
    y_range : (float, float), optional
        Span of the vertical grid; default: mean ± 2.5 standard deviations at every input (and
        the observed points), widened by 10 %.
    observed : Points, optional
        The new individual's observed points (long frame or ``(x, y)``).
    latent : bool
        Density of the noise-free process (``latent_variance``) instead of a new observation.

    Returns
    -------
    matplotlib.axes.Axes
    """
    x, keep = np.unique(_inputs(prediction)[0], return_index=True)  # sorted, duplicates dropped
    mean = prediction["mean"].values[keep]
    sd = np.sqrt(np.maximum(prediction["latent_variance" if latent else "variance"].values[keep], 1e-300))
    if y_range is None:
        ys = np.concatenate([mean - 2.5 * sd, mean + 2.5 * sd, _xy(observed)[1] if observed is not None else []])
        lo, hi = float(ys.min()), float(ys.max())
        y_range = (lo - 0.1 * (hi - lo or 1.0), hi + 0.1 * (hi - lo or 1.0))
    y = np.linspace(*y_range, n_levels)
    z = (y[:, None] - mean[None, :]) / sd[None, :]
    density = np.exp(-0.5 * z**2) / (sd[None, :] * np.sqrt(2 * np.pi))
    ax = _axes(ax)
    mesh = ax.pcolormesh(x, y, density, shading="nearest", cmap="RdPu", rasterized=True)
    ax.figure.colorbar(mesh, ax=ax, label="density")
    ax.plot(x, mean, color="k", lw=1.2, label="predictive mean")
    _scatter(ax, observed, s=22, color="k", edgecolors="w", linewidths=0.6, label="observed", zorder=4)
    ax.set_ylim(*y_range)
    _finish(ax, "Predictive density" + (" (latent)" if latent else ""))
    return ax


def animate_prediction(
    model: Any, new_data: Points, inputs: Any, *, path: str | None = None, n_frames: int | None = None,
    interval: int = 500, **plot_kwargs: Any,
) -> FuncAnimation:
    r"""Animate the prediction of a new individual as its points arrive (as MagmaClustR's pred_gif).

    Frame ``k`` draws ``model.predict(first k points, inputs)`` with :func:`plot_prediction`, from
    ``k = 0`` (type II: :math:`\mu_0` alone) to all points, taken in increasing input order; the
    vertical axis is the same in every frame.

    Parameters
    ----------
    model : Magma
        A fitted model.
    new_data : Points
        The new individual's points: long frame (``Input``, ``Output`` columns) or ``(x, y)``.
    inputs : array-like
        Where to predict (1-D).
    path : str or path-like, optional
        Save the animation there as a GIF (Pillow writer).
    n_frames : int, optional
        Number of frames, spread evenly over ``k = 0 .. n``; default: every ``k``.
    interval : int
        Delay between frames, in milliseconds.
    **plot_kwargs
        Passed to :func:`plot_prediction` (``data``, ``target``, ``mean_process``, ``latent``,
        ``samples``, ``seed``; ``observed`` is set per frame). ``samples > 0`` predicts with
        ``full_cov=True``.

    Returns
    -------
    matplotlib.animation.FuncAnimation
        Keep a reference to it while it is displayed.
    """
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation, PillowWriter

    plot_kwargs.pop("observed", None)
    if not isinstance(new_data, pd.DataFrame):
        new_data = pd.DataFrame(dict(zip(("Input", "Output"), _xy(new_data), strict=True)))
    frame = new_data.sort_values("Input", kind="stable").reset_index(drop=True)
    n = len(frame)
    ks = np.unique(np.linspace(0, n, n + 1 if n_frames is None else max(int(n_frames), 1)).round().astype(int))
    full_cov = bool(plot_kwargs.get("samples", 0))
    preds = [model.predict(frame.iloc[:k] if k else None, inputs, full_cov=full_cov) for k in ks]
    band = "latent_" if plot_kwargs.get("latent") else ""
    bands = [p[band + b].values for p in preds for b in ("lower", "upper")]
    extra = [_xy(plot_kwargs[key])[1] for key in ("data", "target") if plot_kwargs.get(key) is not None]
    ys = np.concatenate([*bands, frame["Output"].to_numpy(float), *extra])
    lo, hi = float(ys.min()), float(ys.max())
    pad = 0.05 * (hi - lo or 1.0)
    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")

    def draw(i: int) -> list:
        ax.clear()
        k = int(ks[i])
        plot_prediction(preds[i], ax=ax, observed=frame.iloc[:k] if k else None, **plot_kwargs)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(f"Prediction from {k} of {n} observed point{'s' * (n != 1)} (type {'I' if k else 'II'})")
        return []

    anim = FuncAnimation(fig, draw, frames=len(ks), interval=interval, blit=False, repeat=True)
    if path is not None:
        anim.save(str(path), writer=PillowWriter(fps=1000.0 / interval))
    return anim
