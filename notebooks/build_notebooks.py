"""Write the example notebooks of ``magma_pymc`` (without outputs) from the cell sources below.

Run ``python notebooks/build_notebooks.py --execute`` after editing this file (``--full`` for the
full-size runs; without ``--execute`` the notebooks are written without outputs); the ``.ipynb``
files are generated, so edit the cells here rather than in Jupyter. Every notebook starts with a title, a
one-paragraph purpose and a ``SMOKE`` switch (set by ``CI`` or ``MAGMA_SMOKE=1``) that shrinks the
problem sizes so that ``tests/test_notebooks.py`` can execute them quickly.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

SMOKE_CELL = '''import os

# Smoke mode (CI, tests/test_notebooks.py): tiny problems, few fits. Unset CI and MAGMA_SMOKE for the full run.
SMOKE = "CI" in os.environ or os.environ.get("MAGMA_SMOKE") == "1"
print("smoke mode" if SMOKE else "full mode")'''

METRICS_CELL = '''def mse(prediction, y):
    """Mean squared error of the predictive mean at the target points."""
    return float(np.mean((prediction["mean"].to_numpy() - np.asarray(y)) ** 2))


def ci95(prediction, y):
    """Coverage (in %) of the target points by the 95 % predictive interval (new noisy observation)."""
    y = np.asarray(y)
    inside = (y >= prediction["lower"].to_numpy()) & (y <= prediction["upper"].to_numpy())
    return float(100 * inside.mean())'''


# --------------------------------------------------------------------------------------- quickstart
QUICKSTART = [
    ("md", """# Quickstart: MAGMA with `magma_pymc`

This notebook walks through the whole workflow of `magma_pymc` on simulated data: simulate a set
of related curves from the MAGMA generative model, fit the model by EM, inspect the fitted
hyper-parameters and the ArviZ-ready results (`idata_`), and draw every plot of
`magma_pymc.plots` — the training data, the hyper-posterior of the mean process $\\mu_0$, Type I
(some observed points) and Type II (no observed point) predictions of a new individual, the
predictive-density heatmap, the EM trace and an animation of the prediction as points arrive.
The first fit in a Python process builds the model's PyTensor graphs (a couple of seconds; nothing
is compiled in the default mode, see the user guide's *Compilation and speed*)."""),
    ("code", SMOKE_CELL),
    ("code", '''import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import HTML, display

import magma_pymc as mp
from magma_pymc import plots
from magma_pymc.baselines import SingleGP

N_INDIVIDUALS = 6 if SMOKE else 20   # training individuals
N_POINTS = 12 if SMOKE else 30       # points per individual, drawn from a 201-point grid on [0, 10]
N_OBSERVED = 8 if SMOKE else 20      # points of the new individual that we observe (the rest is forecast)
MAX_ITER = 5 if SMOKE else 25        # EM iterations at most'''),
    ("md", """## Simulate

`mp.simulate` follows the paper's scheme: a linear prior mean $m_0(t) = at + b$, a mean process
$\\mu_0 \\sim GP(m_0, k_{\\theta_0})$, individual processes $f_i \\sim GP(0, c_{\\theta_i})$ and
Gaussian noise, each individual observed at random points of the grid. Here the individuals have
different input points (uncommon grid) and share their hyper-parameters (common HP). `n_new=1`
draws one more individual from the same model, to be predicted."""),
    ("code", '''sim = mp.simulate(N_INDIVIDUALS, N_POINTS, common_grid=False, common_hp=True, seed=3, n_new=1, scheme="smooth")
print(sim)
sim.data.head()'''),
    ("code", '''# The ground truth: the mean-process HP and the (common) individual HP
print("mean process:", {k: round(v, 3) for k, v in sim.hyperparameters["mean_process"].items()})
sim.hyperparameters["individual"].head(3)'''),
    ("code", '''plots.plot_data(sim.data, max_individuals=10);'''),
    ("md", """## Fit

`Magma(common_hp=True).fit(df)` runs EM on the long data frame (columns `ID`, `Input`, `Output`)
and returns the fitted model."""),
    ("code", '''model = mp.Magma(common_hp=True, max_iter=MAX_ITER)
with warnings.catch_warnings():
    if SMOKE:
        warnings.simplefilter("ignore", mp.ConvergenceWarning)  # few EM iterations on purpose
    model.fit(sim.data)
print(f"{model.n_iter_} EM iterations, converged: {model.converged_}, log-likelihood {model.log_likelihood_:.2f}")'''),
    ("md", """## Fitted hyper-parameters

`hyperparameters_` holds the natural-scale values: a Series for the mean process and a DataFrame
for the individuals (one row labelled `common` here)."""),
    ("code", '''hp = model.hyperparameters_
truth_ind = sim.hyperparameters["individual"].iloc[0]
comparison = pd.DataFrame(
    {
        "fitted": [*hp.mean_process.to_numpy(), *hp.individual.iloc[0].to_numpy()],
        "truth": [*sim.hyperparameters["mean_process"].values(), *truth_ind.to_numpy()],
    },
    index=[*(f"mu0_{k}" for k in hp.mean_process.index), *hp.individual.columns],
)
comparison.round(3)'''),
    ("md", """## `idata_`: the results as an `xarray.DataTree`

Groups: `posterior` (the point estimates of the HP, with `chain` and `draw` dims of size one so
that ArviZ functions accept them), `em_trace` (HP and log-likelihood per EM iteration),
`hyperposterior` (mean and covariance of $\\mu_0$ on the training inputs) and `observed_data`."""),
    ("code", '''model.idata_'''),
    ("code", '''model.idata_["em_trace"].to_dataset().to_dataframe().round(3)'''),
    ("md", """## The mean process

`hyperposterior(inputs)` returns the posterior of $\\mu_0$ at any inputs (mean, variance and a 95 %
credible interval); `plot_mean_process` draws it beside the training points and the true
$\\mu_0$."""),
    ("code", '''mu0 = model.hyperposterior(sim.grid)
print(f"MSE of the mu0 posterior mean vs the true mu0 on the grid: {np.mean((mu0['mean'].values - sim.mean_process) ** 2):.3f}")
plots.plot_mean_process(mu0, truth=(sim.grid, sim.mean_process), data=sim.data);'''),
    ("md", """## Predicting a new individual

The new individual's first points (in input order) are observed, the rest are held out.
*Type I* prediction conditions on the observed points; *Type II* (`predict(None, inputs)`) uses no
point of the individual and relies on $\\mu_0$ and the HP alone. Both return an `xarray.Dataset`
with the predictive mean, variance and 95 % interval, for a new noisy observation (`lower`,
`upper`) and for the noise-free curve (`latent_lower`, `latent_upper`)."""),
    ("code", '''observed, target = mp.split_observed(sim.new, N_OBSERVED)
pred_type1 = model.predict(observed, sim.grid, full_cov=True)  # full_cov for sample curves
pred_type2 = model.predict(None, sim.grid)
pred_type1'''),
    ("code", '''fig, axes = plt.subplots(1, 2, figsize=(14, 4.5), sharey=True, layout="constrained")
plots.plot_prediction(pred_type1, ax=axes[0], observed=observed, target=target, data=sim.data, mean_process=mu0, samples=3)
plots.plot_prediction(pred_type2, ax=axes[1], target=sim.new, data=sim.data, mean_process=mu0);'''),
    ("md", """Forecast errors at the held-out points, beside a GP fitted to the new individual's observed
points alone (`SingleGP`, the paper's baseline):"""),
    ("code", METRICS_CELL),
    ("code", '''x, y = target["Input"].to_numpy(), target["Output"].to_numpy()
single = SingleGP().fit(observed).predict(x)
pd.DataFrame(
    {
        "MSE": [mse(model.predict(observed, x), y), mse(model.predict(None, x), y), mse(single, y)],
        "CI95 (%)": [ci95(model.predict(observed, x), y), ci95(model.predict(None, x), y), ci95(single, y)],
    },
    index=["MAGMA type I", "MAGMA type II", "single GP"],
).round(3)'''),
    ("md", """## Predictive density heatmap

As in MagmaClustR: the predictive density of the output at every input, with the predictive
mean."""),
    ("code", '''plots.plot_heatmap(pred_type1, observed=observed);'''),
    ("md", """## EM trace

Log-likelihood and each hyper-parameter per EM iteration, with the true values dashed."""),
    ("code", '''plots.plot_em_trace(model, truth=sim.hyperparameters);'''),
    ("md", """## Animation

`animate_prediction` re-predicts as the observed points arrive one by one (frame 0 is the Type II
prediction). Pass `path="prediction.gif"` to save a GIF."""),
    ("code", '''anim = plots.animate_prediction(model, observed, sim.grid, n_frames=3 if SMOKE else 8, data=sim.data, target=target)
display(HTML(anim.to_jshtml()))
plt.close(anim._fig)'''),
]


# ------------------------------------------------------------------------------------ four settings
FOUR_SETTINGS = [
    ("md", """# The four settings of MAGMA

MAGMA handles individuals observed on a **common grid** of inputs or on **different inputs**, and
individuals that share their **common hyper-parameters** (HP) or have **different HP** each.
This notebook simulates one data set in each of the four settings (named as in the paper: first
letter common grid, second letter common HP, T/F), fits MAGMA, and reports the error of the
estimated mean process $\\mu_0$ against the truth on the 201-point grid and the forecast error for
a new individual (its first 20 of 30 points observed, the last 10 forecast), beside a GP fitted
to the new individual alone. It ends with Type I and Type II predictions in each setting."""),
    ("code", SMOKE_CELL),
    ("code", '''import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import magma_pymc as mp
from magma_pymc import plots
from magma_pymc.baselines import SingleGP

N_INDIVIDUALS = 5 if SMOKE else 20
N_POINTS, N_OBSERVED = (12, 8) if SMOKE else (30, 20)
MAX_ITER = 5 if SMOKE else 25
SETTINGS = {
    "TT": dict(common_grid=True, common_hp=True),
    "TF": dict(common_grid=True, common_hp=False),
    "FT": dict(common_grid=False, common_hp=True),
    "FF": dict(common_grid=False, common_hp=False),
}'''),
    ("code", METRICS_CELL),
    ("md", """## Fit each setting

Common or uncommon grids are detected from the data; only `common_hp` is passed to `Magma`. With
different HP, the new individual's HP are fitted on its observed points (Type I) or set to the
median of the training individuals' HP (Type II)."""),
    ("code", '''results, fits = [], {}
for k, (name, setting) in enumerate(SETTINGS.items()):
    sim = mp.simulate(N_INDIVIDUALS, N_POINTS, seed=100 + k, n_new=1, **setting, scheme="smooth")
    observed, target = mp.split_observed(sim.new, N_OBSERVED)
    x, y = target["Input"].to_numpy(), target["Output"].to_numpy()
    start = time.perf_counter()
    with warnings.catch_warnings():
        if SMOKE:
            warnings.simplefilter("ignore", mp.ConvergenceWarning)
        model = mp.Magma(common_hp=setting["common_hp"], max_iter=MAX_ITER).fit(sim.data)
    seconds = time.perf_counter() - start
    mu0 = model.hyperposterior(sim.grid)
    magma, single = model.predict(observed, x), SingleGP().fit(observed).predict(x)
    mu0_mse = float(np.mean((mu0["mean"].to_numpy() - sim.mean_process) ** 2))
    results += [
        dict(setting=name, method="MAGMA", mu0_MSE=mu0_mse, MSE=mse(magma, y), CI95=ci95(magma, y),
             EM_iterations=model.n_iter_, fit_seconds=seconds),
        dict(setting=name, method="single GP", mu0_MSE=np.nan, MSE=mse(single, y), CI95=ci95(single, y),
             EM_iterations=np.nan, fit_seconds=np.nan),
    ]
    fits[name] = dict(sim=sim, model=model, observed=observed, target=target, mu0=mu0)
    print(f"{name}: fitted in {seconds:.1f} s ({model.n_iter_} EM iterations)")'''),
    ("md", """## Errors

`mu0_MSE`: mean squared error of the hyper-posterior mean of $\\mu_0$ against the true $\\mu_0$ on
the grid (MAGMA only). `MSE` and `CI95`: forecast error of the new individual's held-out points and
the percentage of them inside the 95 % predictive interval. One data set per setting: the numbers
vary a lot from one draw to the next; `simulation_study.ipynb` averages over many."""),
    ("code", '''table = pd.DataFrame(results).set_index(["setting", "method"])
table.round(3)'''),
    ("md", """## Type I vs Type II predictions

Left: Type I (conditioned on the new individual's observed points, black); right: Type II (no
point of the new individual). Open circles: the held-out points; dashed red: the posterior mean of
$\\mu_0$."""),
    ("code", '''fig, axes = plt.subplots(len(fits), 2, figsize=(13, 3.6 * len(fits)), layout="constrained")
for row, (name, fit) in zip(axes, fits.items()):
    sim, model = fit["sim"], fit["model"]
    type1 = model.predict(fit["observed"], sim.grid)
    type2 = model.predict(None, sim.grid)
    plots.plot_prediction(type1, ax=row[0], observed=fit["observed"], target=fit["target"], data=sim.data, mean_process=fit["mu0"])
    plots.plot_prediction(type2, ax=row[1], target=sim.new, data=sim.data, mean_process=fit["mu0"])
    row[0].set_title(f"{name}: type I")
    row[1].set_title(f"{name}: type II")
    for ax in row[1:]:
        ax.get_legend().remove()'''),
    ("md", """## The mean process in each setting

Hyper-posterior of $\\mu_0$ (95 % credible band) against the true $\\mu_0$ (dashed)."""),
    ("code", '''fig, axes = plt.subplots(2, 2, figsize=(13, 8), layout="constrained")
for ax, (name, fit) in zip(axes.ravel(), fits.items()):
    plots.plot_mean_process(fit["mu0"], ax=ax, truth=(fit["sim"].grid, fit["sim"].mean_process), data=fit["sim"].data)
    ax.set_title(f"{name}: mu0 MSE {table.loc[(name, 'MAGMA'), 'mu0_MSE']:.3f}")'''),
]


# -------------------------------------------------------------------------------- simulation study
SIMULATION_STUDY = [
    ("md", """# Simulation study: the MAGMA paper's experiment on the paper's own data

Leroy, Latouche, Guedj & Gey (2022, *Machine Learning* 111, section 5, Table 1) evaluate MAGMA on
100 simulated data sets in each of four settings (common inputs T/F, common hyper-parameters T/F):
20 training individuals with 30 points each, one test individual whose first 20 points are
observed and last 10 forecast (MSE, and CI95: the percentage of the 10 points inside the 95 %
predictive interval). `magma_pymc` bundles the authors' own 400 data sets and their per-run
results (`mp.datasets.load_paper_simulations`, `mp.datasets.load_paper_results`; from the
authors' repository ArthurLeroy/MAGMA), so every number below is **computed on the paper's data
and paired, data set by data set, with the authors' run on the same data**: their MAGMA
(`Algo`), a GP fitted to the test individual alone (`One GP`) and GPFDA (common inputs only).

This notebook fits the first `N_DATASETS` data sets of each setting live (prior mean 0, as the
authors), then shows the tables of the full run of all 400 data sets produced by
`benchmarks/bench_paper.py` and checks that the live fits reproduce it."""),
    ("code", SMOKE_CELL),
    ("code", '''import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import magma_pymc as mp
from magma_pymc.datasets.paper_experiment import (
    paired_difference, paired_with_authors, run_paper_experiment, summary_table, worst_datasets)

SETTINGS = ["TT", "TF", "FT", "FF"]
N_DATASETS = 1 if SMOKE else int(os.environ.get("MAGMA_N_DATASETS", "10"))  # per setting, of 100
#: Rows of the full run over the 400 data sets: `python benchmarks/bench_paper.py --runs ...` (see its docstring).
FULL_RUN = Path(mp.__file__).resolve().parents[1] / "benchmarks" / "results" / "paper_runs.csv"'''),
    ("md", """## The paper's Table 1, from the authors' per-run files

Means over the 100 data sets of each setting (the published Table 1: MAGMA 18.7 / 19.9 / 19.2 /
14.5), with the medians, which the few data sets where every method fails dominate less."""),
    ("code", '''authors = pd.concat([mp.datasets.load_paper_results(s).assign(setting=s) for s in SETTINGS])
authors = authors.loc[authors["N"] == 20]
authors.groupby(["setting", "method"], sort=False).agg(
    MSE=("MSE", "mean"), median_MSE=("MSE", "median"), CI95=("CI95", "mean")).unstack("method").round(1)'''),
    ("md", """## Live run on the first data sets

One fit per data set; the test individual is forecast from its first N points, N = 20 in every
setting and N = 1, ..., 20 in TT (the paper's figure on N); the mean process's hyper-posterior is
scored against the true mean process (ID 0) at the training inputs, as the authors'."""),
    ("code", '''start = time.perf_counter()
datasets = range(1, N_DATASETS + 1)
runs = pd.concat([
    run_paper_experiment(["TT"], datasets, n_observed=range(1, 21)),
    run_paper_experiment(["TF", "FT", "FF"], datasets),
], ignore_index=True)
paired = paired_with_authors(runs)
print(f"{N_DATASETS} data set(s) per setting in {time.perf_counter() - start:.0f} s; "
      f"{int(runs['error'].notna().sum())} failed, {int((runs['converged'] == False).sum())} rows from fits stopped at max_iter")
summary_table(paired).round(2)'''),
    ("md", """Data set by data set (N = 20): magma_pymc's MSE and CI95 beside the authors' three methods."""),
    ("code", '''columns = ["setting", "dataset", "MSE", "Algo MSE", "One GP MSE", "GPFDA MSE", "CI95", "Algo CI95"]
paired.loc[(paired["target"] == "forecast") & (paired["N"] == 20), columns].round(2)'''),
    ("md", """## The full run: all 400 data sets

Rows written by `benchmarks/bench_paper.py` (fits with this version of `magma_pymc`); the live
rows above must agree with them."""),
    ("code", '''if FULL_RUN.is_file():
    full = pd.read_csv(FULL_RUN)
    key = ["setting", "dataset", "target", "N"]
    check = runs.merge(full, on=key, suffixes=("", "_full"))
    print(f"live rows matched in the full run: {len(check)} of {len(runs)}; "
          f"largest relative MSE difference {np.max(np.abs(check['MSE'] / check['MSE_full'] - 1)):.1e}")
    paired_full = paired_with_authors(full)
else:  # an installed package without the repository's benchmarks/
    print(f"{FULL_RUN} not found: the tables below use the live run only")
    paired_full = paired
summary_table(paired_full).round(2)'''),
    ("code", '''fig, axes = plt.subplots(1, 4, figsize=(16, 4), layout="constrained")
at20 = paired_full.loc[(paired_full["target"] == "forecast") & (paired_full["N"] == 20)]
for ax, setting in zip(axes, SETTINGS):
    rows = at20.loc[at20["setting"] == setting]
    ax.scatter(rows["Algo MSE"], rows["MSE"], s=12, label="magma_pymc")
    if rows["GPFDA MSE"].notna().any():
        ax.scatter(rows["Algo MSE"], rows["GPFDA MSE"], s=8, marker="x", alpha=0.5, label="GPFDA (authors)")
    lim = [0.05, 1000]
    ax.plot(lim, lim, "k--", lw=1)
    ax.set(xscale="log", yscale="log", xlim=lim, ylim=lim, title=setting, xlabel="authors' MAGMA: MSE")
axes[0].set_ylabel("MSE on the same data set")
axes[0].legend();'''),
    ("md", """The data sets where magma_pymc's forecast loses most to the authors' (N = 20):"""),
    ("code", '''worst_datasets(paired_full, 10).round(2)'''),
    ("md", """Is a difference of means more than the noise of a few data sets? The paired differences
`MSE - authors' MSE` per setting: their mean with a bootstrap 95 % interval over the data sets, and
the Wilcoxon signed-rank p-value (does a typical data set favour one implementation?)."""),
    ("code", '''paired_difference(paired_full).round(3)'''),
    ("md", """## The mean process

Error of the hyper-posterior mean of $\\mu_0$ against the true $\\mu_0$ at the training inputs,
and the coverage of the truth by its 95 % credible interval, beside the authors' (`res_mu_*`)."""),
    ("code", '''mu = summary_table(paired_full, target="mu0")
mu[[c for c in mu.columns if not c.startswith("One GP")]].round(3)'''),
    ("md", """## TT: forecast error against the number N of observed points"""),
    ("code", '''tt = paired_full.loc[(paired_full["setting"] == "TT") & (paired_full["target"] == "forecast")]
by_n = tt.groupby("N")[["MSE", "Algo MSE", "One GP MSE", "GPFDA MSE", "CI95", "Algo CI95"]].mean()
fig, ax = plt.subplots(figsize=(8, 4), layout="constrained")
for column, label in [("MSE", "magma_pymc"), ("Algo MSE", "MAGMA (authors)"), ("One GP MSE", "One GP (authors)"),
                      ("GPFDA MSE", "GPFDA (authors)")]:
    ax.plot(by_n.index, by_n[column], "o-", label=label)
ax.set(yscale="log", xlabel="N observed points of the test individual", ylabel="mean MSE (last 10 points)")
ax.legend()
by_n.round(2)'''),
]


# ----------------------------------------------------------------------------------------- real data
REAL_DATA = [
    ("md", """# Real data: swimmers, children's weight, heartbeats and traffic

MAGMA against a single GP on the four bundled real data sets, in both HP settings (common HP
shared by all individuals, and different HP per individual). **Swimmers**
(100 m freestyle times of French swimmers against age, one gender code of the MagmaClustR data):
MAGMA is trained on the full curves of M swimmers, then each held-out swimmer's last 40 % of
races are forecast from the first 60 %. **Weight** (children of the GUSTO cohort, weight against
age in months): the same protocol, held-out children's last 40 % of visits forecast from the
first 60 %. The single GP sees only the held-out individual's observed points. We report the
forecast MSE and the CI95 coverage (percentage of forecast points inside the 95 % predictive
interval) for a few training sizes M. **ECG5000** (normal heartbeats, 140 samples each) and
**traffic** (Dodgers loop sensor: car counts per 5 minutes over a day) follow the same protocol:
the last 40 % of each held-out heartbeat or day is forecast from its first 60 %."""),
    ("code", SMOKE_CELL),
    ("code", '''import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import magma_pymc as mp
from magma_pymc import plots
from magma_pymc.baselines import SingleGP

SEED = 0
OBSERVED_FRACTION = 0.6
GENDER = 1  # swimmers' competition gender code in the source data (1 or 2)
HP_SETTINGS = {"common HP": True, "different HP": False}
if SMOKE:
    SWIMMERS_M, SWIMMERS_TEST = [5], 2
    WEIGHT_M, WEIGHT_TEST = [10], 2
    ECG_M, ECG_TEST, TRAFFIC_M, TRAFFIC_TEST = [5], 2, [5], 2
else:
    SWIMMERS_M, SWIMMERS_TEST = [10, 20, 40], 20
    WEIGHT_M, WEIGHT_TEST = [20, 50, 100, 200], 30
    ECG_M, ECG_TEST, TRAFFIC_M, TRAFFIC_TEST = [10, 20, 50], 30, [10, 20, 50], 30'''),
    ("code", METRICS_CELL),
    ("code", '''def split_fraction(individual, fraction=OBSERVED_FRACTION):
    """First floor(fraction * n) points of one individual (by input) observed, the rest held out."""
    individual = individual.sort_values("Input")
    n_observed = max(1, int(np.floor(fraction * len(individual))))
    return individual.iloc[:n_observed], individual.iloc[n_observed:]


def experiment(data, label, m_list, n_test, seed=SEED):
    """Fit MAGMA (both HP settings) on the first M of a shuffled pool for each M; forecast the same
    held-out individuals."""
    ids = np.random.default_rng(seed).permutation(np.asarray(data["ID"].unique(), dtype=object))
    test_ids, pool = ids[:n_test], ids[n_test:]
    splits = {i: split_fraction(data[data["ID"] == i]) for i in test_ids}
    rows, models = [], {}
    for ident, (observed, target) in splits.items():  # the single GP does not depend on M
        pred = SingleGP().fit(observed).predict(target["Input"].to_numpy())
        y = target["Output"].to_numpy()
        rows.append(dict(data=label, M=0, method="single GP", ID=ident, MSE=mse(pred, y), CI95=ci95(pred, y)))
    for m in m_list:
        train = data[data["ID"].isin(pool[:m])]
        for setting, common_hp in HP_SETTINGS.items():
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", mp.ConvergenceWarning)  # reported in the line below
                model = mp.Magma(common_hp=common_hp).fit(train)
            seconds = time.perf_counter() - start
            print(f"{label}, {setting}: M = {m}: {train['Input'].nunique()} distinct inputs, fitted in {seconds:.1f} s "
                  f"({model.n_iter_} EM iterations, converged: {model.converged_})", flush=True)
            for ident, (observed, target) in splits.items():
                pred = model.predict(observed, target["Input"].to_numpy())
                y = target["Output"].to_numpy()
                rows.append(dict(data=label, M=m, method=f"MAGMA ({setting})", ID=ident, MSE=mse(pred, y),
                                 CI95=ci95(pred, y), fit_seconds=seconds))
            if common_hp:
                models[m] = model
    return pd.DataFrame(rows), models, splits


def summarise(runs):
    """One row per (HP setting, M): MAGMA's mean (sd) MSE and CI95 over held-out individuals, beside
    the single GP's."""
    agg = runs.groupby(["data", "method", "M"]).agg(
        n_test=("MSE", "count"), MSE=("MSE", "mean"), MSE_sd=("MSE", "std"), CI95=("CI95", "mean"))
    magma = agg.drop("single GP", level="method")
    gp = agg.xs("single GP", level="method").droplevel("M")
    return magma.join(gp.drop(columns="n_test").add_prefix("GP_"), on="data")'''),
    ("md", """## Swimmers

A random subset of the swimmers of one gender code: `SWIMMERS_TEST` held-out swimmers, and the
first M of the others for training. Ages are irregular (no common grid), so the union of the
training inputs grows with M and so does the cost of a fit."""),
    ("code", '''swimmers = mp.datasets.load_swimmers(gender=GENDER)[["ID", "Input", "Output"]]
print(f"{swimmers['ID'].nunique()} swimmers, {len(swimmers)} races, ages {swimmers['Input'].min():.1f}-{swimmers['Input'].max():.1f}")
swim_runs, swim_models, swim_splits = experiment(swimmers, "swimmers", SWIMMERS_M, SWIMMERS_TEST)
summarise(swim_runs).round(2)'''),
    ("code", '''def show(data, models, splits, xlabel, ylabel):
    m = max(models)
    model = models[m]
    ident = next(iter(splits))
    observed, target = splits[ident]
    grid = np.linspace(data["Input"].min(), data["Input"].max(), 200)
    mu0 = model.hyperposterior(grid)
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.3), layout="constrained")
    plots.plot_mean_process(mu0, ax=axes[0], data=data[data["ID"].isin(model.data_.ids)])
    axes[0].set_title(f"Mean process from M = {m}")
    plots.plot_prediction(model.predict(observed, grid), ax=axes[1], observed=observed, target=target, mean_process=mu0)
    axes[1].set_title(f"MAGMA (M = {m}), individual {ident}")
    plots.plot_prediction(SingleGP().fit(observed).predict(grid), ax=axes[2], observed=observed, target=target)
    axes[2].set_title(f"Single GP, individual {ident}")
    for ax in axes:
        ax.set(xlabel=xlabel, ylabel=ylabel)
    axes[2].set_ylim(axes[1].get_ylim())


show(swimmers, swim_models, swim_splits, "age (years)", "100 m time (s)")'''),
    ("md", """## Weight

Children's weight on the ages {0, 3, ..., 72} months, with some visits missing (6 to 11 per
child). Held-out children: the first 60 % of their visits observed, the rest (up to 6 years)
forecast."""),
    ("code", '''weight = mp.datasets.load_weight()[["ID", "Input", "Output"]]
print(f"{weight['ID'].nunique()} children, {len(weight)} visits")
weight_runs, weight_models, weight_splits = experiment(weight, "weight", WEIGHT_M, WEIGHT_TEST)
summarise(weight_runs).round(2)'''),
    ("code", '''show(weight, weight_models, weight_splits, "age (months)", "weight (kg)")'''),
    ("md", """## Heartbeats (ECG5000)

Normal beats (label 1), 140 regular samples each: a common grid, so the common-HP fit takes the
one-factorisation fast path. The first 84 samples of a held-out beat are observed, the last 56
forecast."""),
    ("code", '''ecg = mp.datasets.load_ecg5000(label=1)[["ID", "Input", "Output"]]
print(f"{ecg['ID'].nunique()} normal beats of {ecg.groupby('ID').size().iloc[0]} samples")
ecg_runs, ecg_models, ecg_splits = experiment(ecg, "ECG5000", ECG_M, ECG_TEST)
summarise(ecg_runs).round(3)'''),
    ("code", '''show(ecg, ecg_models, ecg_splits, "sample", "signal (z-score)")'''),
    ("md", """## Traffic (Dodgers loop sensor)

Car counts per 5-minute bin over a day (288 bins, a few missing): the morning and early
afternoon of a held-out day are observed, the evening forecast."""),
    ("code", '''traffic = mp.datasets.load_dodgerloop()[["ID", "Input", "Output"]]
print(f"{traffic['ID'].nunique()} days, {len(traffic)} counts")
traffic_runs, traffic_models, traffic_splits = experiment(traffic, "traffic", TRAFFIC_M, TRAFFIC_TEST)
summarise(traffic_runs).round(2)'''),
    ("code", '''show(traffic, traffic_models, traffic_splits, "hour of day", "cars per 5 minutes")'''),
    ("md", """## Summary

Forecast MSE (squared seconds for the swimmers, squared kilograms for the weight, squared
z-scores for ECG5000, squared car counts for traffic) and CI95 coverage in %, averaged over the
held-out individuals; the `GP_` columns are the single GP, which does not depend on M."""),
    ("code", '''pd.concat([summarise(r) for r in (swim_runs, weight_runs, ecg_runs, traffic_runs)]).round(3)'''),
]


# -------------------------------------------------------------------------------------- EM vs NUTS
EM_VS_NUTS = [
    ("md", """# EM vs NUTS: point estimates and the full hyper-parameter posterior

EM returns one value of the hyper-parameters (HP): the maximum of the exact marginal likelihood
with $\\mu_0$ integrated out. `method="nuts"` samples the posterior of the log HP under weakly
informative priors (normal, sd 2, centred on data-scaled values), with $\\mu_0$ still integrated
out exactly; the hyper-posterior of $\\mu_0$ and the predictions are then averaged over the draws
(a Gaussian mixture, Rao-Blackwellised). Both results are `xarray.DataTree`s with the same
`posterior` layout, so ArviZ summarises and plots either. This notebook fits both on one simulated
data set, checks the sampler's diagnostics, and compares HP, log-likelihood, forecast error,
interval coverage and time."""),
    ("code", SMOKE_CELL),
    ("code", """import warnings

import arviz as az
import matplotlib.pyplot as plt
import numpy as np

import magma_pymc as mp
from magma_pymc import plots

M, N_POINTS, N_OBSERVED = (6, 10, 6) if SMOKE else (20, 30, 20)
DRAWS, TUNE, CHAINS = (100, 100, 2) if SMOKE else (1000, 1000, 4)"""),
    ("code", """sim = mp.simulate(M, N_POINTS, common_grid=False, common_hp=True, seed=5, n_new=3, scheme="smooth")
observed, target = mp.split_observed(sim.new, N_OBSERVED)   # three new individuals: first points seen, rest forecast
em = mp.Magma(common_hp=True).fit(sim.data)
with warnings.catch_warnings():
    if SMOKE:
        warnings.simplefilter("ignore", mp.ConvergenceWarning)  # a short chain is expected to warn
    bayes = mp.Magma(common_hp=True).fit(sim.data, method="nuts", draws=DRAWS, tune=TUNE, chains=CHAINS,
                                         random_seed=0, thin=max(1, DRAWS // 100), progressbar=False)
print(f"EM: {em.fit_seconds_:.1f} s, NUTS: {bayes.fit_seconds_:.1f} s; diagnostics: {bayes.idata_.attrs['diagnostics']}")"""),
    ("md", """## Diagnostics with ArviZ

`r_hat` near 1 and large effective sample sizes (`ess_bulk`, `ess_tail`) say the chains agree;
the fit also warns (`ConvergenceWarning`) on divergences, `r_hat > 1.01` or bulk ESS below 100."""),
    ("code", """az.summary(bayes.idata_, var_names=["mu0_variance", "mu0_lengthscale", "variance", "lengthscale", "noise"])"""),
    ("code", """az.plot_trace(bayes.idata_, var_names=["mu0_variance", "mu0_lengthscale", "variance", "lengthscale", "noise"]);"""),
    ("md", """## HP posterior beside the EM estimate and the truth"""),
    ("code", """plots.plot_hp_posterior(bayes, {"EM": em}, truth=sim.hyperparameters);"""),
    ("md", """## One table

`compare_fits` evaluates the exact log-likelihood at each model's HP (NUTS: the posterior median),
and forecasts the held-out points of the new individuals (MSE, coverage of the 95% intervals).
A Laplace approximation at the MAP (`method="laplace"`) is a cheaper stand-in for NUTS: one
optimisation and one Hessian, then Gaussian draws of the log HP."""),
    ("code", """laplace = mp.Magma(common_hp=True).fit(sim.data, method="laplace", draws=DRAWS, random_seed=0)
mp.compare_fits({"EM": em, "NUTS": bayes, "Laplace": laplace}, new_data=observed, target=target).T"""),
    ("md", """## Predictions

NUTS averages the per-draw predictions: its band includes the HP uncertainty and is at least as
wide as EM's where the data constrain the HP weakly."""),
    ("code", """first = sim.new_ids[0]
seen, rest = observed[observed["ID"] == first], target[target["ID"] == first]
fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True, layout="constrained")
for ax, (label, fitted) in zip(axes, {"EM": em, "NUTS": bayes}.items()):
    pred = fitted.predict(seen, sim.grid)
    plots.plot_prediction(pred, observed=seen, target=rest, data=sim.data, ax=ax)
    ax.set_title(f"{label}: individual {first}")"""),
]


# --------------------------------------------------------------------------------------- clustering
CLUSTERING = [
    ("md", """# Clusters of individuals: MagmaClust

When individuals follow a few distinct typical curves, one shared mean process blurs them and
predictions suffer. MagmaClust (Leroy et al., JMLR 2023) gives each cluster its own mean process
$\\mu_k$ and learns, by variational EM, the probability $\\tau_{ik}$ that individual $i$ belongs to
cluster $k$. This notebook simulates clustered curves following the MagmaClust paper's scheme,
checks that the clusters are recovered (adjusted Rand index), chooses the number of clusters by the
variational BIC, compares forecasts of new individuals with MAGMA (one mean process), and ends with
a real data set where clusters make sense (ECG5000 heartbeats, normal against abnormal)."""),
    ("code", SMOKE_CELL),
    ("code", """import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import magma_pymc as mp
from magma_pymc.cluster import MagmaClust, adjusted_rand_index, plots, select_n_clusters, simulate_clustered

warnings.simplefilter("ignore", mp.ConvergenceWarning)
N_CLUSTERS = 3
N_INDIVIDUALS = 15 if SMOKE else 60   # training individuals
N_POINTS = 12 if SMOKE else 30        # points per individual, from a 201-point grid on [0, 10]
N_NEW = 3 if SMOKE else 20            # new individuals to forecast
N_OBSERVED = 8 if SMOKE else 20       # their first points, observed
K_RANGE = range(1, 4) if SMOKE else range(1, 6)
SEED = 3"""),
    ("md", """## Simulated clusters

Each cluster has a mean process $\\mu_k \\sim GP(a_k t + b_k, k_{\\gamma_k})$; every individual adds its own
process and noise to the mean process of its cluster. The intercepts $b_k$ are spread over
`intercept_range`, which sets how far apart the clusters are."""),
    ("code", """sim = simulate_clustered(N_CLUSTERS, N_INDIVIDUALS, N_POINTS, n_new=N_NEW, seed=SEED, intercept_range=(0, 45))
fig, ax = plt.subplots(figsize=(8, 4), layout="constrained")
for ident, frame in sim.data.groupby("ID"):
    ax.plot(frame["Input"], frame["Output"], color=f"C{sim.labels[ident]}", lw=0.8, alpha=0.6)
for k, curve in enumerate(sim.mean_processes):
    ax.plot(sim.grid, curve, color=f"C{k}", lw=3, label=f"true $\\\\mu_{k}$")
ax.set(title="Training data coloured by true cluster", xlabel="Input", ylabel="Output")
ax.legend();"""),
    ("md", """## Fit and recovery

`fit` starts from k-means on the curves brought to a common grid and runs variational EM. Labels are
put in a canonical order (by the level of each mean process), so runs compare; the adjusted Rand
index ignores label names anyway."""),
    ("code", """model = MagmaClust(N_CLUSTERS, random_state=0).fit(sim.data)
truth = sim.labels.loc[model.labels_.index].to_numpy()
print(f"fit in {model.fit_seconds_:.2f} s, {model.n_iter_} VEM iterations, ELBO {model.elbo_:.1f}")
print(f"adjusted Rand index against the true labels: {adjusted_rand_index(truth, model.labels_):.3f}")
display(pd.crosstab(pd.Series(truth, name="true cluster"), model.labels_.rename("fitted cluster")))
plots.plot_clusters(model);"""),
    ("md", """The results live in `model.idata_`, an `xarray.DataTree`: responsibilities with dims
`individual x cluster`, the HP (mean-process HP per cluster), the ELBO trace, and $q(\\mu_k)$ on the grid."""),
    ("code", """print(model.idata_)
model.idata_["vem_trace"]["elbo"].plot(marker="o");"""),
    ("md", """## How many clusters? The variational BIC

$\\mathrm{V\\text{-}BIC}(K) = \\mathcal L_K - \\tfrac{n_{params}(K)}{2} \\log \\sum_i N_i$; the highest wins."""),
    ("code", """selection = select_n_clusters(sim.data, K_RANGE, random_state=0)
display(selection.table.round(2))
selection.plot();"""),
    ("md", """## Forecasting new individuals: MagmaClust against MAGMA

Each new individual shows its first points; we forecast the rest. MagmaClust's prediction is a
Gaussian mixture over the clusters, weighted by the new individual's cluster probabilities; its
intervals are exact quantiles of that mixture."""),
    ("code", """magma = mp.Magma().fit(sim.data)
rows = []
for ident, frame in sim.new.groupby("ID"):
    frame = frame.sort_values("Input")
    seen, rest = frame.iloc[:N_OBSERVED], frame.iloc[N_OBSERVED:]
    for name, fitted in {"MagmaClust": model, "MAGMA": magma}.items():
        pred = fitted.predict(seen, rest["Input"])
        y = rest["Output"].to_numpy()
        rows.append({"model": name, "ID": ident, "mse": float(np.mean((pred["mean"].values - y) ** 2)),
                     "coverage_95": float(100 * np.mean((pred["lower"].values <= y) & (y <= pred["upper"].values)))})
scores = pd.DataFrame(rows)
scores.groupby("model")[["mse", "coverage_95"]].mean().round(3)"""),
    ("code", """first = sim.new["ID"].iloc[0]
frame = sim.new[sim.new["ID"] == first].sort_values("Input")
seen, rest = frame.iloc[:N_OBSERVED], frame.iloc[N_OBSERVED:]
fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True, layout="constrained")
plots.plot_cluster_prediction(model.predict(seen, sim.grid), observed=seen, target=rest, ax=axes[0])
mp.plots.plot_prediction(magma.predict(seen, sim.grid), observed=seen, target=rest, ax=axes[1])
axes[0].set_title(f"MagmaClust, {first} (true cluster {sim.labels[first]})")
axes[1].set_title("MAGMA (one mean process)");"""),
    ("md", """## Real data: ECG5000 heartbeats

Normal beats (class 1) and one abnormal class (class 2) of the UCR ECG5000 archive, each a curve of
140 samples (thinned here). Do two clusters separate them without seeing the labels?"""),
    ("code", """ecg = mp.datasets.load_ecg5000(split="train")
per_class, step = (6, 10) if SMOKE else (30, 4)
chosen = pd.concat([ecg[ecg["label"] == c]["ID"].drop_duplicates().iloc[:per_class] for c in (1, 2)])
beats = ecg[ecg["ID"].isin(chosen) & (ecg["Input"] % step == 0)]
ecg_model = MagmaClust(2, random_state=0).fit(beats[["ID", "Input", "Output"]])
labels = beats.groupby("ID")["label"].first().loc[ecg_model.labels_.index]
print(f"adjusted Rand index against the classes: {adjusted_rand_index(labels, ecg_model.labels_):.3f}")
display(pd.crosstab(labels.rename("class"), ecg_model.labels_.rename("cluster")))
plots.plot_clusters(ecg_model, lines=True);"""),
    ("md", """Two clusters recover the two classes; the V-BIC, which knows nothing of the classes, finds more
structure among these beats (measured on the full-mode sample: it prefers 4 clusters over 2), as
sub-shapes within each class."""),
    ("code", """ecg_selection = select_n_clusters(beats[["ID", "Input", "Output"]], range(1, 3 if SMOKE else 5), random_state=0)
display(ecg_selection.table.round(2))
ecg_selection.plot();"""),
]


NOTEBOOKS = {
    "quickstart": QUICKSTART,
    "four_settings": FOUR_SETTINGS,
    "simulation_study": SIMULATION_STUDY,
    "real_data": REAL_DATA,
    "em_vs_nuts": EM_VS_NUTS,
    "clustering": CLUSTERING,
}


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """A notebook (without outputs) from ``(kind, source)`` pairs, kind ``"md"`` or ``"code"``."""
    nb = new_notebook(
        cells=[new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells],
        metadata={
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
    )
    for k, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{k:02d}"  # stable ids: regenerating gives identical files
    nbformat.validate(nb)
    return nb


def main() -> None:
    """Write (and with ``--execute``, run) the notebooks named on the command line, or all."""
    import argparse

    parser = argparse.ArgumentParser(description="Write the example notebooks from their cells (and run them).")
    parser.add_argument("--execute", action="store_true", help="run each notebook and keep its outputs")
    parser.add_argument("--full", action="store_true", help="with --execute: full-size problems, not smoke mode")
    parser.add_argument("names", nargs="*", choices=list(NOTEBOOKS), help="notebooks to write (default: all)")
    args = parser.parse_args()
    for name in args.names or NOTEBOOKS:
        path = HERE / f"{name}.ipynb"
        nbformat.write(build(NOTEBOOKS[name]), path)
        print(f"wrote {path}")
        if args.execute:
            from execute import execute  # notebooks/execute.py, beside this file

            seconds = execute(path, smoke=not args.full)
            print(f"executed {path} in {seconds:.0f} s ({'full' if args.full else 'smoke'} mode)")


if __name__ == "__main__":
    main()
