"""The MAGMA paper's bundled data sets and the authors' results: layout, generating model, protocol."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import multivariate_normal

import magma_pymc as mp
from magma_pymc.datasets import load_paper_results, load_paper_simulations, paper_data_set
from magma_pymc.datasets.paper_experiment import (
    interval_coverage,
    paired_difference,
    paired_with_authors,
    run_paper_experiment,
)

GRID = np.round(np.arange(201) * 0.05, 2)
SETTINGS = ["TT", "TF", "FT", "FF"]
#: Leroy et al. (2022), Table 1: MAGMA's mean forecast MSE and CI95 coverage per setting.
TABLE_1 = {"TT": (18.7, 93.8), "TF": (19.9, 91.6), "FT": (19.2, 94.6), "FF": (14.5, 89.1)}


@pytest.mark.parametrize("setting", SETTINGS)
def test_simulations_layout_and_generating_hp(setting):
    frame = load_paper_simulations(setting)
    assert list(frame.columns) == ["dataset", "ID", "Input", "Output", "variance", "lengthscale", "noise"]
    assert len(frame) == 100 * (201 + 21 * 30)
    assert sorted(frame["dataset"].unique()) == list(range(1, 101))
    assert frame[["Input", "Output"]].notna().all().all()
    counts = frame.groupby(["dataset", "ID"]).size().unstack()
    assert (counts["0"] == 201).all() and (counts.drop(columns="0") == 30).all().all()
    assert np.isin(np.round(frame["Input"], 2), GRID).all()
    hp = frame.loc[frame["ID"] != "0"]
    # a ~ U[0, 5], b ~ U[0, 2], sigma ~ U[0, 2]: variance e^a, lengthscale e^(b/2), noise sigma^2.
    assert hp["variance"].between(1, np.exp(5) + 1e-9).all()
    assert hp["lengthscale"].between(1, np.e + 1e-9).all()
    assert hp["noise"].between(0, 4 + 1e-9).all()
    one = paper_data_set(frame, 7)
    assert len(one.training) == 600 and one.training["ID"].nunique() == 20 and len(one.test) == 30
    np.testing.assert_allclose(one.mean_process["Input"], GRID, atol=1e-9)
    inputs = one.training.groupby("ID")["Input"].apply(tuple)
    individual_hp = one.hyperparameters.drop(index="0")
    assert (inputs.nunique() == 1) == (setting[0] == "T")
    assert (len(individual_hp.drop_duplicates()) == 1) == (setting[1] == "T")


def test_noise_column_is_a_variance():
    """The documented model (noise variance sigma^2) fits the data far better than variance sigma."""
    frame = load_paper_simulations("FF")
    loglik = {"sigma^2": 0.0, "sigma": 0.0}
    for dataset in range(1, 6):
        one = paper_data_set(frame, dataset)
        truth = one.mean_process.set_index(np.round(one.mean_process["Input"], 2))["Output"]
        for key, rows in one.training.groupby("ID"):
            t = rows["Input"].to_numpy()
            residual = rows["Output"].to_numpy() - truth.loc[np.round(t, 2)].to_numpy()
            v, ell, noise = one.hyperparameters.loc[key]
            cov = v * np.exp(-0.5 * np.subtract.outer(t, t) ** 2 / ell**2)
            for name, variance in (("sigma^2", noise), ("sigma", np.sqrt(noise))):
                loglik[name] += multivariate_normal.logpdf(residual, cov=cov + (variance + 1e-6) * np.eye(t.size))
    assert loglik["sigma^2"] > loglik["sigma"] + 100


@pytest.mark.parametrize("setting", SETTINGS)
def test_authors_results_reproduce_table_1(setting):
    pred = load_paper_results(setting)
    assert list(pred.columns) == ["dataset", "method", "N", "MSE", "CI95", "time_train", "time_pred"]
    at20 = pred.loc[(pred["N"] == 20) & (pred["method"] == "Algo")]
    assert len(at20) == 100 and list(at20["dataset"]) == list(range(1, 101))
    assert (round(at20["MSE"].mean(), 1), round(at20["CI95"].mean(), 1)) == TABLE_1[setting]
    # Rows are aligned on data sets: the authors' training time is one per data set, the same
    # in the forecast file (for every N) and in the mean-process file.
    algo = pred.loc[pred["method"] == "Algo"]
    assert (algo.groupby("dataset")["time_train"].nunique() == 1).all()
    mu = load_paper_results(setting, "mu")
    assert len(mu) == 300 and mu["N"].isna().all()
    mu_times = mu.loc[mu["method"] == "Algo"].set_index("dataset")["time_train"]
    pd.testing.assert_series_equal(at20.set_index("dataset")["time_train"], mu_times)
    if setting == "TT":
        assert sorted(pred["N"].unique()) == list(range(1, 21))
    assert pred.loc[pred["method"] == "GPFDA", "MSE"].notna().all() == (setting[0] == "T")


def test_bad_arguments():
    with pytest.raises(ValueError, match="setting must be one of"):
        load_paper_simulations("TX")
    with pytest.raises(ValueError, match="kind must be"):
        load_paper_results("TT", "sigma")
    with pytest.raises(ValueError, match="no data set 101"):
        paper_data_set(load_paper_simulations("TT"), 101)


def test_interval_coverage_strict():
    assert interval_coverage(np.zeros(4), np.ones(4), np.array([0.5, 0.0, 1.0, 2.0])) == 25.0


def test_experiment_scores_follow_the_protocol():
    """One TT data set: the runner's scores equal a direct fit (prior mean 0), first 20 points
    observed, last 10 forecast, mu0 scored at the training inputs against ID 0."""
    runs = run_paper_experiment(["TT"], [3], n_observed=(5, 20))
    assert list(runs["target"]) == ["mu0", "forecast", "forecast"] and runs["error"].isna().all()
    assert "fit_warnings" in runs
    one = paper_data_set(load_paper_simulations("TT"), 3)
    model = mp.Magma(common_hp=True, prior_mean=0.0).fit(one.training)
    x, y = one.test["Input"].to_numpy()[20:], one.test["Output"].to_numpy()[20:]
    for n, row in zip((5, 20), runs.iloc[1:].itertuples(), strict=True):
        pred = model.predict(one.test.iloc[:n], x)
        assert n == row.N
        np.testing.assert_allclose(row.MSE, np.mean((pred["mean"].to_numpy() - y) ** 2), rtol=1e-6)
    inputs = np.unique(one.training["Input"])
    truth = one.mean_process.set_index(np.round(one.mean_process["Input"], 2)).loc[np.round(inputs, 2), "Output"]
    mu0 = model.hyperposterior(inputs)["mean"].to_numpy()
    np.testing.assert_allclose(runs["MSE"].iloc[0], np.mean((mu0 - truth.to_numpy()) ** 2), rtol=1e-6)
    paired = paired_with_authors(runs)
    theirs = load_paper_results("TT").query("dataset == 3 and method == 'Algo' and N in (5, 20)")
    np.testing.assert_allclose(paired["Algo MSE"].iloc[1:], theirs["MSE"])
    np.testing.assert_allclose(paired["Algo MSE"].iloc[0],
                               load_paper_results("TT", "mu").query("dataset == 3 and method == 'Algo'")["MSE"])


def test_experiment_records_convergence_warnings():
    """EM stopped after one iteration warns; the runner records the warning instead of hiding it."""
    runs = run_paper_experiment(["TT"], [3], max_iter=1)
    assert not runs["converged"].any()
    assert runs["fit_warnings"].notna().all() and runs["fit_warnings"].str.len().min() > 0


def _paired_rows(differences: np.ndarray, setting: str = "TT") -> pd.DataFrame:
    authors = np.linspace(1.0, 50.0, differences.size)
    return pd.DataFrame({"setting": setting, "target": "forecast", "N": 20.0, "dataset": np.arange(differences.size),
                         "MSE": authors + differences, "Algo MSE": authors})


def test_paired_difference_against_closed_forms():
    rng = np.random.default_rng(3)
    differences = rng.normal(2.0, 5.0, 400)
    row = paired_difference(_paired_rows(differences)).loc["TT"]
    assert row["n"] == 400 and row["better"] == int((differences < 0).sum())
    assert row["mean difference"] == pytest.approx(differences.mean(), rel=1e-12)
    # The bootstrap interval of a mean of 400 draws is the normal one, mean +- 1.96 s / sqrt(n), to
    # within its Monte Carlo error (10^4 resamples: about 2 % of the half-width).
    half = 1.959964 * differences.std(ddof=1) / np.sqrt(differences.size)
    assert row["ci low"] == pytest.approx(differences.mean() - half, abs=0.06 * half)
    assert row["ci high"] == pytest.approx(differences.mean() + half, abs=0.06 * half)
    # A shift of 2 sd / 5 over 400 pairs: the signed-rank test rejects symmetry about 0.
    assert row["wilcoxon p"] < 1e-6
    # Differences symmetric about 0 (each value and its opposite): p-value 1, interval around 0.
    centred = differences - differences.mean()
    symmetric = paired_difference(_paired_rows(np.concatenate([centred, -centred]))).loc["TT"]
    assert symmetric["wilcoxon p"] > 0.99 and symmetric["ci low"] < 0 < symmetric["ci high"]
    # Identical forecasts: no difference at all.
    same = paired_difference(_paired_rows(np.zeros(10))).loc["TT"]
    assert same["mean difference"] == 0 and same["ci low"] == same["ci high"] == 0 and same["wilcoxon p"] == 1.0
