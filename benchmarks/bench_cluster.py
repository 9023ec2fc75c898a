"""MagmaClust on simulated clustered data: recovery, V-BIC choice, forecasts against MAGMA, and speed.

Scheme (:func:`magma_pymc.cluster.simulate_clustered`): K = 3 well-separated clusters (intercepts
stratified over [0, 45], mean processes at least 10 apart in RMS distance on the grid), M = 60
training individuals with 30 points each on an uncommon grid,
common HP, plus 20 new individuals per seed whose first 20 inputs are observed and last 10 forecast.

Per seed: adjusted Rand index of the K = 3 fit against the true labels; the V-BIC choice among
K = 1..5; forecast MSE and 95 % interval coverage of MagmaClust (K = 3) and MAGMA (``mp.Magma``) on
the new individuals; fit and selection times. The first fit of the process pays for compiling the
graphs (``cold``); the others reuse them (``warm``).

Times are wall-clock (``_s``) and CPU time of the process (``_cpu_s``, BLAS limited to one thread by
the library): on a shared machine the CPU time is the more faithful measure of the work. Run:
``python benchmarks/bench_cluster.py [n_seeds]`` from the repository root.

Large union grid (``python benchmarks/bench_cluster.py large [seed] [n_inducing]``): the same clusters, but
every individual observed at 30 inputs drawn uniformly on [0, 10] (the simulated noise-free curves, on the
simulator's 201-point grid with spacing 0.05 and lengthscales >= e, interpolated linearly, then the
simulated noise added), so the union grid has about 1800 distinct inputs. The exact fit against
``inducing=100`` evenly spaced inducing points: fit time, adjusted Rand index, bound, and forecasts of
20 new individuals (first 20 points observed, last 10 forecast), with the load average at start and end.

NUTS (``python benchmarks/bench_cluster.py nuts [seed]``): ``MagmaClust.fit(method="nuts")`` (VEM, then NUTS over
the weights, the K x N mean-process values and the HP) on (a) the size of the test suite: K = 2, M = 8 individuals
x 6 of 10 common inputs, 2 chains x (200 + 200); (b) K = 3, M = 30 x 10 points on a common grid of 10 inputs
(``simulate_clustered``, intercepts over [0, 45], clusters 10 apart), 2 chains x (200 + 200). Chains run one after
the other in this process (``cores=1``) so that the CPU time counts all the work: wall and CPU time (fit, and the
sampling alone), max r_hat and min bulk ESS (ArviZ, all sampled variables), divergences, relabelled draws, mean tree
depth, ARI of the posterior labels against the truth, and the largest gap between the NUTS posterior mean of
mu_k and VEM's q(mu_k) mean in posterior sd.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import warnings

import numpy as np
import pandas as pd

T0 = time.perf_counter()
import magma_pymc as mp  # noqa: E402 (timed: the import cost is reported)
from magma_pymc.cluster import (  # noqa: E402
    ClusterWarning,
    MagmaClust,
    adjusted_rand_index,
    select_n_clusters,
    simulate_clustered,
)
from magma_pymc.datasets.simulate import se_kernel  # noqa: E402

IMPORT_S = time.perf_counter() - T0
N_OBSERVED = 20


def forecast_scores(model, sim) -> tuple[float, float]:
    """MSE and 95 % coverage over the new individuals' last points given their first N_OBSERVED."""
    errors, covered = [], []
    for _, frame in sim.new.groupby("ID", sort=True):
        frame = frame.sort_values("Input")
        observed, target = frame.iloc[:N_OBSERVED], frame.iloc[N_OBSERVED:]
        pred = model.predict((observed["Input"].to_numpy(), observed["Output"].to_numpy()), target["Input"].to_numpy())
        y = target["Output"].to_numpy()
        errors.append((pred["mean"].values - y) ** 2)
        covered.append((pred["lower"].values <= y) & (y <= pred["upper"].values))
    return float(np.mean(np.concatenate(errors))), float(100 * np.mean(np.concatenate(covered)))


def run_seed(seed: int) -> dict:
    sim = simulate_clustered(3, 60, 30, seed=seed, n_new=20, intercept_range=(0.0, 45.0), min_separation=10.0)
    start, cpu = time.perf_counter(), time.process_time()
    model = MagmaClust(3, random_state=seed).fit(sim.data)
    fit_s, fit_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    truth = sim.labels.loc[[str(i) for i in model.labels_.index]].to_numpy()
    start, cpu = time.perf_counter(), time.process_time()
    selection = select_n_clusters(sim.data, range(1, 6), random_state=seed)
    select_s, select_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    magma = mp.Magma().fit(sim.data)
    magma_s, magma_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    clust_mse, clust_cov = forecast_scores(model, sim)
    magma_mse, magma_cov = forecast_scores(magma, sim)
    return {"seed": seed, "ari": adjusted_rand_index(truth, model.labels_.values), "vbic_k": selection.best,
            "mse_clust": clust_mse, "mse_magma": magma_mse, "cover95_clust": clust_cov, "cover95_magma": magma_cov,
            "fit_s": fit_s, "fit_cpu_s": fit_cpu_s, "select_s": select_s, "select_cpu_s": select_cpu_s,
            "magma_fit_s": magma_s, "magma_cpu_s": magma_cpu_s, "iterations": model.n_iter_}


def main(n_seeds: int = 10) -> pd.DataFrame:
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.ConvergenceWarning)
        warnings.simplefilter("ignore", ClusterWarning)  # K = 4, 5 on three clusters: emptied clusters are expected
        for seed in range(n_seeds):
            rows.append(run_seed(seed))
            print(pd.DataFrame(rows[-1:]).round(3).to_string(index=False, header=len(rows) == 1), flush=True)
    table = pd.DataFrame(rows).set_index("seed")
    pd.set_option("display.width", 200)
    print(f"\nimport_s = {IMPORT_S:.2f}; seed 0 includes compilation (cold): fit {table['fit_s'].iloc[0]:.2f} s")
    print(table.round(3).to_string())
    warm = table.iloc[1:] if len(table) > 1 else table
    print(
        f"\nARI >= 0.9: {(table['ari'] >= 0.9).sum()}/{len(table)}; "
        f"V-BIC picks 3: {(table['vbic_k'] == 3).sum()}/{len(table)}; "
        f"MSE clust < MAGMA: {(table['mse_clust'] < table['mse_magma']).sum()}/{len(table)}; "
        f"mean MSE {table['mse_clust'].mean():.3f} vs {table['mse_magma'].mean():.3f}; "
        f"mean coverage {table['cover95_clust'].mean():.1f} % vs {table['cover95_magma'].mean():.1f} %; "
        f"warm fit median {warm['fit_s'].median():.2f} s wall / {warm['fit_cpu_s'].median():.2f} s CPU, warm selection "
        f"(K = 1..5) median {warm['select_s'].median():.2f} s wall / {warm['select_cpu_s'].median():.2f} s CPU; "
        f"MAGMA warm fit median {warm['magma_fit_s'].median():.2f} s wall / {warm['magma_cpu_s'].median():.2f} s CPU"
    )
    return table


def off_grid(sim, frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Each individual of ``frame`` at as many uniform inputs on [0, 10] (module docstring, large union grid)."""
    noise = sim.hyperparameters["individual"]["noise"]
    rows = []
    for ident, group in frame.groupby("ID", sort=True):
        inputs = np.sort(rng.uniform(0.0, 10.0, len(group)))
        latent = np.interp(inputs, sim.grid, sim.latent[ident])
        rows.append(pd.DataFrame({"ID": ident, "Input": inputs,
                                  "Output": latent + np.sqrt(noise[ident]) * rng.standard_normal(len(inputs))}))
    return pd.concat(rows, ignore_index=True)


def run_large(seed: int = 0, n_inducing: int = 100) -> pd.DataFrame:
    """Exact fit against inducing points on a union grid of about 1800 distinct inputs (module docstring)."""
    sim = simulate_clustered(3, 60, 30, seed=seed, n_new=20, intercept_range=(0.0, 45.0), min_separation=10.0)
    rng = np.random.default_rng(seed + 1000)
    data, new = off_grid(sim, sim.data, rng), off_grid(sim, sim.new, rng)
    large = dataclasses.replace(sim, data=data, new=new)
    load_start = os.getloadavg()
    rows = []
    for name, inducing in (("inducing", n_inducing), ("exact", None)):
        start, cpu = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", mp.ConvergenceWarning)
            model = MagmaClust(3, random_state=seed, inducing=inducing).fit(data)
        fit_s, fit_cpu_s = time.perf_counter() - start, time.process_time() - cpu
        truth = sim.labels.loc[[str(i) for i in model.labels_.index]].to_numpy()
        start = time.process_time()
        mse, cover = forecast_scores(model, large)
        rows.append({"model": name, "grid": len(model.mean_process_grid), "ari": adjusted_rand_index(truth,
                     model.labels_.values), "elbo": model.elbo_, "iterations": model.n_iter_, "fit_s": fit_s,
                     "fit_cpu_s": fit_cpu_s, "mse": mse, "cover95": cover,
                     "predict_cpu_s": time.process_time() - start})
        print(pd.DataFrame(rows[-1:]).round(3).to_string(index=False, header=len(rows) == 1), flush=True)
    return _summary(rows, "model", f"seed {seed}: {data['Input'].nunique()} distinct training inputs, {len(data)} "
                    "observations", load_start)


def _summary(rows: list[dict], index: str, heading: str, load_start: tuple) -> pd.DataFrame:
    """The rows as a table, printed under ``heading`` with the load average at start and end."""
    table = pd.DataFrame(rows).set_index(index)
    print(f"\n{heading}; load average (1 min) {load_start[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end, on "
          f"{os.cpu_count()} cores")
    print(table.round(3).to_string())
    return table


def two_groups(seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """The test suite's data: two groups 8 apart, 4 individuals each at 6 of 10 common inputs: the group's curve,
    an individual process (SE, variance 1, lengthscale 2) and noise (sd 0.3)."""
    rng = np.random.default_rng(seed)
    grid, frames, labels = np.linspace(0.0, 10.0, 10), [], []
    for k, level in enumerate((0.0, 8.0)):
        for _ in range(4):
            t = np.sort(rng.choice(grid, 6, replace=False))
            f = np.linalg.cholesky(se_kernel(t, t, 1.0, 2.0) + 1e-9 * np.eye(6)) @ rng.standard_normal(6)
            frames.append(pd.DataFrame({"ID": f"i{len(frames)}", "Input": t,
                                        "Output": level + np.sin(t) + f + rng.normal(0, 0.3, 6)}))
            labels.append(k)
    return pd.concat(frames, ignore_index=True), np.array(labels)


def run_nuts(seed: int = 0) -> pd.DataFrame:
    """VEM + NUTS at the test size and at K = 3, M = 30 x 10 (module docstring)."""
    small = two_groups(seed)
    sim = simulate_clustered(3, 30, 10, common_grid=True, seed=seed, intercept_range=(0.0, 45.0), min_separation=10.0)
    cases = [("K=2, M=8 x 6", 2, small[0], small[1], 200),
             ("K=3, M=30 x 10", 3, sim.data, sim.labels, 200)]
    load_start, rows = os.getloadavg(), []
    for name, k, data, truth, n in cases:
        start, cpu = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", mp.ConvergenceWarning)
            model = MagmaClust(k, random_state=seed).fit(data, method="nuts", draws=n, tune=n, chains=2, cores=1,
                                                         random_seed=seed, progressbar=False)
        fit_s, fit_cpu_s = time.perf_counter() - start, time.process_time() - cpu
        tree = model.idata_
        labels = model.posterior_responsibilities_.to_numpy().argmax(axis=1)
        if isinstance(truth, pd.Series):
            truth = truth.loc[[str(i) for i in model.labels_.index]].to_numpy()
        mu = tree["posterior"]["mu"]
        gap = np.abs(mu.mean(("chain", "draw")).values - tree["hyperposterior"]["mu_mean"].values)
        rows.append({"case": name, "grid": len(model.mean_process_grid), "free_dims": int(sum(
            tree["unconstrained_posterior"][v].isel(chain=0, draw=0).size for v in tree["unconstrained_posterior"])
            + k - 1), "draws": f"2 x ({n} + {n})", "fit_s": fit_s, "fit_cpu_s": fit_cpu_s,
            "sampling_s": tree.attrs["sampling_seconds"], "sampling_cpu_s": tree.attrs["sampling_cpu_seconds"],
            "max_r_hat": tree.attrs["max_r_hat"], "min_ess_bulk": tree.attrs["min_ess_bulk"],
            "divergences": tree.attrs["divergences"], "relabelled": tree.attrs["relabelled_draws"],
            "tree_depth": float(tree["sample_stats"]["tree_depth"].mean()),
            "ari": adjusted_rand_index(truth, labels), "vem_agree": bool((labels == model.labels_.to_numpy()).all()),
            "max_gap_sd": float((gap / mu.std(("chain", "draw")).values).max())})
        print(pd.DataFrame(rows[-1:]).round(3).to_string(index=False, header=len(rows) == 1), flush=True)
    return _summary(rows, "case", f"seed {seed}", load_start)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "large":
        run_large(*(int(a) for a in sys.argv[2:4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "nuts":
        run_nuts(*(int(a) for a in sys.argv[2:3]))
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
