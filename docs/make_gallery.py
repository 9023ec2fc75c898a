"""Draw every plot of ``magma_pymc.plots`` on one simulated problem, for the documentation's gallery.

Run from the repository root: ``python docs/make_gallery.py`` (a few minutes: one EM fit and one
short NUTS run). It writes the figures to ``docs/gallery/`` and the page ``docs/gallery.md``, both
committed; rerun it after changing a plot.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.animation import PillowWriter  # noqa: E402

# Run as a script, Python looks for modules beside it (docs/) and then in the environment: put this
# checkout first, so that the figures are drawn by its magma_pymc rather than by an installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import magma_pymc as mp  # noqa: E402
from magma_pymc import plots  # noqa: E402

HERE = Path(__file__).parent
OUT = HERE / "gallery"
DPI = 80  # small files: the page shows them at about 800 pixels wide

INTRO = """# Gallery

Every plot of [`magma_pymc.plots`](api.md#magma_pymc.plots), drawn by `docs/make_gallery.py` on one
simulated problem: {n} training individuals observed at {p} points each of a {g}-point grid on
[0, 10] (uncommon inputs, common hyper-parameters, `seed=3`), and a new individual of which the
first {k} points are observed. The notebooks show the same plots on the four settings and on real
data.
"""


def main() -> None:
    """Fit the models, draw the figures and write the page."""
    OUT.mkdir(exist_ok=True)
    n, p, k, g = 20, 15, 6, 51  # a coarse grid keeps the union of inputs, and so the NUTS run, small
    sim = mp.simulate(n, p, common_grid=False, common_hp=True, seed=3, n_new=1, grid=np.linspace(0, 10, g))
    observed, target = mp.split_observed(sim.new, k)
    model = mp.Magma(common_hp=True).fit(sim.data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.ConvergenceWarning)  # a short run, for the picture only
        bayes = mp.Magma(common_hp=True).fit(sim.data, method="nuts", draws=300, tune=300, chains=2, random_seed=0)
    fine = np.linspace(0, 10, 201)  # predictions are drawn on a finer grid than the data's
    mu0 = model.hyperposterior(fine)
    pred = model.predict(observed, fine, full_cov=True)

    figures = []  # (file, function, caption)

    def save(ax, name: str, function: str, caption: str) -> None:
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.savefig(OUT / f"{name}.png", dpi=DPI)
        plt.close(fig)
        figures.append((f"{name}.png", function, caption))

    save(plots.plot_data(sim.data, max_individuals=10), "data", "plot_data",
         "The training data: one line per individual (the first 10 of 20).")
    save(plots.plot_mean_process(model, fine, truth=(sim.grid, sim.mean_process), data=sim.data),
         "mean_process", "plot_mean_process",
         "Hyper-posterior of the mean process: mean and 95 % credible band, beside the true mean process.")
    save(plots.plot_prediction(pred, observed=observed, target=target, data=sim.data, mean_process=mu0,
                               samples=5, seed=0),
         "prediction", "plot_prediction",
         f"Type I prediction of the new individual from its first {k} points: predictive mean, 95 % band, "
         "five posterior curves and the held-out points (circles).")
    save(plots.plot_heatmap(pred, observed=observed), "heatmap", "plot_heatmap",
         "Predictive density of a new observation at each input, with the predictive mean.")
    save(plots.plot_em_trace(model, truth=sim.hyperparameters), "em_trace", "plot_em_trace",
         "Log-likelihood and every hyper-parameter per EM iteration; dashed: the true values.")
    save(plots.plot_hp_posterior(bayes, {"EM": model}, truth=sim.hyperparameters), "hp_posterior",
         "plot_hp_posterior",
         "NUTS draws of each hyper-parameter (2 chains of 300 draws), the EM estimate and the truth.")
    anim = plots.animate_prediction(model, sim.new, fine, n_frames=8, interval=600, data=sim.data)
    anim.save(OUT / "animation.gif", writer=PillowWriter(fps=1000 / 600), dpi=60)
    plt.close("all")
    figures.append(("animation.gif", "animate_prediction",
                    "The prediction as the new individual's points arrive, from Type II (no point) to all of them."))

    lines = [INTRO.format(n=n, p=p, k=k, g=g)]
    for file, function, caption in figures:
        lines += [f"## `{function}`", "", caption, "", f"![{function}](gallery/{file})", ""]
    (HERE / "gallery.md").write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {len(figures)} figures to {OUT} and {HERE / 'gallery.md'}")


if __name__ == "__main__":
    main()
