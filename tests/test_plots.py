"""Plots render (Agg, set in conftest) with the expected artists; one small model fitted per module."""

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.animation import FuncAnimation
from matplotlib.collections import PathCollection, PolyCollection, QuadMesh

import magma_pymc as mp
from magma_pymc import plots


@pytest.fixture(scope="module")
def fitted():
    sim = mp.simulate(n_individuals=6, n_points=10, seed=0, n_new=1, scheme="smooth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short EM: ConvergenceWarning expected
        model = mp.Magma(common_hp=True, max_iter=3).fit(sim.data)
    observed, target = mp.split_observed(sim.new, 6)
    grid = np.linspace(0, 10, 60)
    return {
        "sim": sim,
        "model": model,
        "observed": observed,
        "target": target,
        "grid": grid,
        "pred": model.predict(observed, grid, full_cov=True),
        "pred_diag": model.predict(observed, grid),
        "hyper": model.hyperposterior(grid),
    }


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _save(ax, tmp_path, name):
    path = tmp_path / f"{name}.png"
    ax.figure.savefig(path)
    assert path.stat().st_size > 1000
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def _of(ax, kind):
    return [c for c in ax.get_children() if isinstance(c, kind)]


def _labels(ax):
    return ax.get_legend_handles_labels()[1]


def _tick_labels(ax, which="x"):
    """The drawn (non-empty, in view) major and minor tick labels of one axis, with their extents in pixels."""
    ax.figure.canvas.draw()
    axis = ax.xaxis if which == "x" else ax.yaxis
    lo, hi = sorted(ax.get_xlim() if which == "x" else ax.get_ylim())
    renderer = ax.figure.canvas.get_renderer()
    return [
        (tick.label1.get_text(), tick.label1.get_window_extent(renderer))
        for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]
        if tick.label1.get_visible() and tick.label1.get_text() and lo <= tick.get_loc() <= hi
    ]


def _overlaps(labels):
    return [(a, b) for k, (a, box_a) in enumerate(labels) for b, box_b in labels[k + 1:] if box_a.overlaps(box_b)]


def test_plot_data(fitted, tmp_path):
    data = fitted["sim"].data
    ax = plots.plot_data(data)
    _save(ax, tmp_path, "data")
    lines = ax.get_lines()
    assert len(lines) == data["ID"].nunique() == 6
    first = data.loc[data["ID"] == "i0"].sort_values("Input")
    np.testing.assert_allclose(lines[0].get_xdata(), first["Input"])
    np.testing.assert_allclose(lines[0].get_ydata(), first["Output"])
    assert ax.get_legend() is not None and ax.get_xlabel() == "Input"
    assert len(plots.plot_data(data, max_individuals=3).get_lines()) == 3


def test_plot_data_custom_columns_on_given_axes(fitted):
    data = fitted["sim"].data.rename(columns={"ID": "child", "Input": "age", "Output": "weight"})
    fig, ax = plt.subplots()
    out = plots.plot_data(data, ax, id_col="child", input_col="age", output_col="weight")
    assert out is ax and len(ax.get_lines()) == 6
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("age", "weight")


def test_plot_mean_process_from_model(fitted, tmp_path):
    sim = fitted["sim"]
    ax = plots.plot_mean_process(fitted["model"], fitted["grid"], truth=(sim.grid, sim.mean_process), data=sim.data)
    _save(ax, tmp_path, "mean_process")
    assert len(_of(ax, PolyCollection)) == 1  # credible band
    assert len(ax.get_lines()) == 2  # posterior mean, truth
    (points,) = _of(ax, PathCollection)
    assert points.get_offsets().shape == (len(sim.data), 2)
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), fitted["hyper"]["mean"].values)
    assert "true $\\mu_0$" in _labels(ax)


def test_plot_mean_process_from_dataset(fitted):
    ax = plots.plot_mean_process(fitted["hyper"])
    assert len(_of(ax, PolyCollection)) == 1 and len(ax.get_lines()) == 1
    assert not _of(ax, PathCollection)


def test_plot_prediction_full(fitted, tmp_path):
    sim = fitted["sim"]
    ax = plots.plot_prediction(
        fitted["pred"], observed=fitted["observed"], data=sim.data, target=fitted["target"],
        mean_process=fitted["hyper"], samples=4, seed=1,
    )
    _save(ax, tmp_path, "prediction")
    (band,) = _of(ax, PolyCollection)
    assert len(ax.get_lines()) == 4 + 1 + 1  # samples, mean, mu0 mean
    sizes = sorted(c.get_offsets().shape[0] for c in _of(ax, PathCollection))
    assert sizes == sorted([len(sim.data), len(fitted["observed"]), len(fitted["target"])])
    assert {"observed", "target", "training data", "posterior samples", "$\\mu_0$ mean"} <= set(_labels(ax))
    # the band spans the predictive interval
    verts = band.get_paths()[0].vertices
    assert verts[:, 1].max() == pytest.approx(fitted["pred"]["upper"].max().item())
    assert verts[:, 1].min() == pytest.approx(fitted["pred"]["lower"].min().item())


def test_plot_prediction_latent_band_and_samples_seeded(fitted):
    pred = fitted["pred"]
    ax = plots.plot_prediction(pred, latent=True, observed=(fitted["observed"]["Input"], fitted["observed"]["Output"]))
    verts = _of(ax, PolyCollection)[0].get_paths()[0].vertices
    assert verts[:, 1].max() == pytest.approx(pred["latent_upper"].max().item())
    assert "95% latent interval" in _labels(ax)
    a = plots.plot_prediction(pred, samples=2, seed=3).get_lines()[0].get_ydata()
    b = plots.plot_prediction(pred, samples=2, seed=3).get_lines()[0].get_ydata()
    c = plots.plot_prediction(pred, samples=2, seed=4).get_lines()[0].get_ydata()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_plot_prediction_samples_need_full_cov(fitted):
    with pytest.raises(ValueError, match="full_cov=True"):
        plots.plot_prediction(fitted["pred_diag"], samples=3)
    ax = plots.plot_prediction(fitted["pred_diag"])  # no samples: fine without cov
    assert len(ax.get_lines()) == 1


def test_plot_prediction_unsorted_inputs(fitted):
    x = fitted["grid"][::-1]
    pred = fitted["model"].predict(fitted["observed"], x)
    line = plots.plot_prediction(pred).get_lines()[0]
    assert np.all(np.diff(line.get_xdata()) > 0)


def test_plot_heatmap(fitted, tmp_path):
    ax = plots.plot_heatmap(fitted["pred"], n_levels=50, observed=fitted["observed"])
    _save(ax, tmp_path, "heatmap")
    (mesh,) = _of(ax, QuadMesh)
    density = mesh.get_array().reshape(50, len(fitted["grid"]))
    # each column is a normal density on the y-grid: positive, peaked near the mean
    assert np.all(density >= 0) and density.max() > 0
    y = np.linspace(*ax.get_ylim(), 50)
    peak = y[np.argmax(density, axis=0)]
    step = y[1] - y[0]
    assert np.all(np.abs(peak - fitted["pred"]["mean"].values) <= step)
    assert len(ax.figure.axes) == 2  # plot + colorbar
    assert len(ax.get_lines()) == 1 and len(_of(ax, PathCollection)) == 1
    ax = plots.plot_heatmap(fitted["pred"], y_range=(-5.0, 20.0))
    assert ax.get_ylim() == (-5.0, 20.0)


def test_plot_em_trace_common(fitted, tmp_path):
    model, sim = fitted["model"], fitted["sim"]
    axes = plots.plot_em_trace(model, truth=sim.hyperparameters)
    _save(axes[0], tmp_path, "em_trace")
    trace = model.idata_["em_trace"]
    # 5 HP, the log-likelihood, and the log posterior under the default weak mean-process prior
    assert len(axes) == len(trace.data_vars) == 7
    assert [ax.get_title() for ax in axes][:3] == ["log-likelihood", "mu0_variance", "mu0_lengthscale"]
    np.testing.assert_allclose(axes[0].get_lines()[0].get_ydata(), trace["log_likelihood"].values)
    truth = {ax.get_title(): ax.get_lines()[1].get_ydata()[0] for ax in axes[1:] if len(ax.get_lines()) > 1}
    assert truth["mu0_variance"] == pytest.approx(sim.hyperparameters["mean_process"]["variance"])
    assert truth["noise"] == pytest.approx(sim.hyperparameters["individual"]["noise"].iloc[0])
    assert len(axes[0].get_lines()) == 1  # no truth for the log-likelihood
    for ax in axes:  # iterations are whole numbers: integer ticks only, labelled plainly, not overlapping
        ticks = [tick for tick in ax.get_xticks() if ax.get_xlim()[0] <= tick <= ax.get_xlim()[1]]
        assert len(ticks) >= 2 and np.allclose(ticks, np.round(ticks)), ticks
        labels = _tick_labels(ax, "x")
        assert [text for text, _ in labels] == [str(int(t)) for t in ticks]
        assert not _overlaps(labels) and not _overlaps(_tick_labels(ax, "y"))
    # also from the DataTree, on given axes
    fig, grid = plt.subplots(2, 4)
    out = plots.plot_em_trace(model.idata_, grid)
    assert len(out) == 7 and all(len(ax.get_lines()) == 1 for ax in out)


def test_plot_em_trace_different_hp(fitted):
    trace = fitted["model"].idata_["em_trace"].to_dataset()
    ids = ["i0", "i1", "i2"]
    rng = np.random.default_rng(0)
    for name in ("variance", "lengthscale", "noise"):
        factors = np.exp(rng.normal(0, 0.3, (trace.sizes["em_iteration"], len(ids))))
        trace[name] = (("em_iteration", "individual"), trace[name].values[:, None] * factors)
    trace = trace.assign_coords(individual=ids)
    truth = {"mean_process": {"variance": 2.0, "lengthscale": 1.5},
             "individual": pd.DataFrame({"variance": [1.0, 2.0], "lengthscale": [1.0, 1.0], "noise": [0.1, 0.2]},
                                        index=pd.Index(["i0", "i2"], name="ID"))}
    axes = plots.plot_em_trace(trace, truth=truth)
    by_title = {ax.get_title(): ax for ax in axes}
    assert len(by_title["variance"].get_lines()) == 3 + 2  # one per individual + matching truths
    assert len(by_title["mu0_variance"].get_lines()) == 2
    with pytest.raises(ValueError, match="axes"):
        plots.plot_em_trace(trace, axes=plt.subplots(1, 2)[1])


def test_animate_prediction_gif(fitted, tmp_path):
    from PIL import Image

    path = tmp_path / "pred.gif"
    new = fitted["sim"].new
    anim = plots.animate_prediction(fitted["model"], new, fitted["grid"], path=path, n_frames=4,
                                    interval=200, data=fitted["sim"].data, mean_process=fitted["hyper"])
    assert isinstance(anim, FuncAnimation)
    assert path.read_bytes()[:4] == b"GIF8"
    with Image.open(path) as im:
        assert im.n_frames == 4
    ax = plt.gcf().axes[0]  # after saving, the figure shows the last frame: all points observed
    assert f"{len(new)} of {len(new)} observed" in ax.get_title() and "(type I)" in ax.get_title()
    (points,) = [c for c in _of(ax, PathCollection) if c.get_label() == "observed"]
    assert points.get_offsets().shape == (len(new), 2)
    assert len(_of(ax, PolyCollection)) == 1 and len(ax.get_lines()) == 2


def test_animate_prediction_pairs_type_ii_and_samples(fitted, tmp_path):
    obs = fitted["observed"]
    path = tmp_path / "one.gif"
    plots.animate_prediction(fitted["model"], (obs["Input"].values, obs["Output"].values), fitted["grid"],
                             path=path, n_frames=1, samples=2, latent=True)
    ax = plt.gcf().axes[0]  # the single frame: type II, no observed point yet
    assert "type II" in ax.get_title() and "observed" not in _labels(ax)
    assert len(ax.get_lines()) == 3 and "95% latent interval" in _labels(ax)
    assert path.read_bytes()[:4] == b"GIF8"


def test_plot_hp_posterior(fitted, tmp_path):
    """One log-x histogram per HP of the draws, the EM estimate and the truth as vertical lines."""
    import xarray as xr

    rng = np.random.default_rng(0)
    names = ["mu0_variance", "mu0_lengthscale", "variance", "lengthscale", "noise"]
    post = xr.Dataset({n: (("chain", "draw"), np.exp(rng.normal(0, 0.3, (2, 100)))) for n in names})
    post["log_hp"] = (("chain", "draw", "hp"), rng.normal(size=(2, 100, 3)))  # not drawn: log scale
    tree = xr.DataTree.from_dict({"posterior": post})
    sim, model = fitted["sim"], fitted["model"]
    axes = plots.plot_hp_posterior(tree, {"EM": model}, truth=sim.hyperparameters, bins=20)
    assert [ax.get_title() for ax in axes] == names
    for ax, name in zip(axes, names, strict=True):
        assert len(ax.patches) == 20 and ax.get_xscale() == "log"
        assert ax.get_xlabel() == f"{name} (log scale)"
        labels = _tick_labels(ax, "x")  # a few plain labels (0.5, 1, 2), none overlapping another
        assert 2 <= len(labels) <= 4 and not _overlaps(labels), [text for text, _ in labels]
        assert all(float(text) > 0 for text, _ in labels)
        em_value = float(model.idata_["posterior"][name].values.ravel()[0])
        xs = [line.get_xdata()[0] for line in ax.get_lines()]
        assert np.isclose(xs[0], em_value)
    truth_lines = [ln for ln in axes[0].get_lines() if ln.get_label() == "truth"]
    assert np.isclose(truth_lines[0].get_xdata()[0], sim.hyperparameters["mean_process"]["variance"])
    assert {"NUTS draws", "EM", "truth"} <= set(_labels(axes[0]))
    _save(axes[0], tmp_path, "hp_posterior")


@pytest.mark.parametrize(
    "span", [(5, 40), (1.5, 80), (0.13, 0.23), (4.6, 7.5), (0.17, 4), (1e-6, 1e3), (35, 45), (0.01, 10)], ids=str
)
def test_log_axis_ticks_plain_and_few(span):
    """On a log axis of any span, 2 to 4 plainly labelled ticks in view (e.g. 5, 10, 20), none overlapping."""
    from magma_pymc.hp_plots import _plain_log_ticks

    fig, ax = plt.subplots(figsize=(3.2, 2.8))
    ax.set_xscale("log")
    ax.set_xlim(*span)
    _plain_log_ticks(ax.xaxis)
    labels = _tick_labels(ax, "x")
    values = [float(text) for text, _ in labels]  # plain numbers, not mathtext such as 2 x 10^1
    assert 2 <= len(values) <= 4 and all(span[0] <= v <= span[1] for v in values), values
    if span[1] / span[0] > 10:  # over a decade or more the ticks are 1, 2, 3 or 5 times a power of ten
        assert all(round(v / 10 ** np.floor(np.log10(v)), 6) in (1, 2, 3, 5) for v in values), values
    assert not _overlaps(labels)
