"""Tests for magma_pymc.datasets: simulation scheme, split helper, real-data loaders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from magma_pymc.datasets import (
    Simulation,
    load_dodgerloop,
    load_ecg5000,
    load_swimmers,
    load_weight,
    simulate,
    split_observed,
)

GRID = np.linspace(0, 10, 201)


# --------------------------------------------------------------------------- simulate
def test_simulate_shapes_and_columns():
    sim = simulate(20, 30, seed=0, n_new=5)
    assert isinstance(sim, Simulation)
    assert list(sim.data.columns) == ["ID", "Input", "Output"]
    assert list(sim.new.columns) == ["ID", "Input", "Output"]
    assert len(sim.data) == 20 * 30 and sim.data["ID"].nunique() == 20
    assert len(sim.new) == 5 * 30 and sim.new["ID"].nunique() == 5
    assert sim.ids == [f"i{k:02d}" for k in range(20)]
    assert sim.new_ids == [f"new{k}" for k in range(5)]
    assert all(isinstance(v, str) for v in sim.data["ID"])
    np.testing.assert_array_equal(sim.grid, GRID)
    assert sim.mean_process.shape == (201,) and sim.prior_mean.shape == (201,)
    hp = sim.hyperparameters
    assert set(hp["mean_process"]) == {"variance", "lengthscale"}
    ind = hp["individual"]
    assert list(ind.columns) == ["variance", "lengthscale", "noise"]
    assert list(ind.index) == sim.ids + sim.new_ids
    assert set(sim.individual_processes) == set(sim.ids + sim.new_ids)
    assert all(v.shape == (201,) for v in sim.individual_processes.values())
    assert np.isfinite(sim.data["Output"]).all() and np.isfinite(sim.new["Output"]).all()
    # Sorted by ID then Input.
    for frame in (sim.data, sim.new):
        assert frame.groupby("ID")["Input"].apply(lambda x: x.is_monotonic_increasing).all()


def test_simulate_no_new_gives_empty_frame():
    sim = simulate(3, 5, seed=1)
    assert sim.new.empty and list(sim.new.columns) == ["ID", "Input", "Output"]
    assert sim.new_ids == []


def test_simulate_seed_reproducibility():
    a = simulate(10, 15, seed=42, n_new=2)
    b = simulate(10, 15, seed=42, n_new=2)
    c = simulate(10, 15, seed=43, n_new=2)
    pd.testing.assert_frame_equal(a.data, b.data)
    pd.testing.assert_frame_equal(a.new, b.new)
    np.testing.assert_array_equal(a.mean_process, b.mean_process)
    pd.testing.assert_frame_equal(a.hyperparameters["individual"], b.hyperparameters["individual"])
    assert not a.data["Output"].equals(c.data["Output"])
    assert not np.array_equal(a.mean_process, c.mean_process)


def test_inputs_are_grid_subsets_and_n_points():
    sim = simulate(15, 30, seed=3, n_new=4, n_points_new=12)
    for frame, n in ((sim.data, 30), (sim.new, 12)):
        counts = frame.groupby("ID").size()
        assert (counts == n).all()
        assert np.isin(frame["Input"], GRID).all()
        assert not frame.duplicated(["ID", "Input"]).any()
    # Uncommon grid: individuals do not all share the same inputs.
    inputs = {tuple(g["Input"]) for _, g in sim.data.groupby("ID")}
    assert len(inputs) > 1


def test_common_grid_identical_inputs():
    sim = simulate(8, 20, common_grid=True, seed=5, n_new=3)
    both = pd.concat([sim.data, sim.new])
    inputs = {tuple(g["Input"]) for _, g in both.groupby("ID")}
    assert len(inputs) == 1 and len(next(iter(inputs))) == 20


def test_common_hp_rows_identical_and_different_hp():
    common = simulate(6, 10, common_hp=True, seed=7, n_new=2).hyperparameters["individual"]
    assert (common.nunique() == 1).all()
    diff = simulate(6, 10, common_hp=False, seed=7, n_new=2).hyperparameters["individual"]
    assert (diff.nunique() == 8).all()


def test_hyperparameters_in_smooth_scheme_ranges():
    for seed in range(20):
        hp = simulate(5, 5, common_hp=False, seed=seed, scheme="smooth").hyperparameters
        for key in ("variance", "lengthscale"):
            assert np.exp(1) <= hp["mean_process"][key] <= np.exp(3)
            assert ((hp["individual"][key] >= np.exp(1)) & (hp["individual"][key] <= np.exp(3))).all()
        noise = hp["individual"]["noise"]
        assert ((noise >= np.exp(-3)) & (noise <= np.exp(-1))).all()
        assert -2 <= hp["prior_mean"]["slope"] <= 2
        assert 0 <= hp["prior_mean"]["intercept"] <= 10


def test_paper_scheme_ranges_and_noise_standard_deviation():
    for seed in range(20):
        hp = simulate(5, 5, common_hp=False, seed=seed).hyperparameters
        for who in (hp["mean_process"], hp["individual"]):
            assert np.all((np.asarray(who["variance"]) >= 1) & (np.asarray(who["variance"]) <= np.exp(5)))
            assert np.all((np.asarray(who["lengthscale"]) >= 1) & (np.asarray(who["lengthscale"]) <= np.e))
        assert hp["individual"]["noise"].between(0, 4).all()
    ind = simulate(2, 5, seed=1, noise_range=(0.5, 0.5), variance_range=(2, 2)).hyperparameters["individual"]
    np.testing.assert_allclose(ind["noise"], 0.25)  # the paper's noise_range bounds the standard deviation
    np.testing.assert_allclose(ind["variance"], np.exp(2))
    with pytest.raises(ValueError, match="scheme must be one of"):
        simulate(2, 5, scheme="easy")


def test_paper_scheme_matches_the_papers_data_sets():
    """The default scheme draws what the authors' own data sets hold (two-sample KS tests): the
    generating HP of individuals and of the mean process, and the spread of the outputs."""
    from scipy.stats import ks_2samp

    from magma_pymc.datasets import load_paper_simulations

    theirs = load_paper_simulations("FF")
    sims = [simulate(20, 30, common_hp=False, seed=seed, n_new=1) for seed in range(60)]
    ours_ind = pd.concat([s.hyperparameters["individual"] for s in sims])
    their_ind = theirs.loc[theirs["ID"] != "0"].drop_duplicates(["dataset", "ID"])
    for key in ("variance", "lengthscale", "noise"):
        assert ks_2samp(np.log(ours_ind[key] + 1e-12), np.log(their_ind[key] + 1e-12)).pvalue > 1e-3, key
    their_mu = theirs.loc[theirs["ID"] == "0"].drop_duplicates("dataset")
    for key in ("variance", "lengthscale"):
        ours = [s.hyperparameters["mean_process"][key] for s in sims]
        assert ks_2samp(ours, their_mu[key]).pvalue > 1e-3, key
    ours_sd = [s.data.groupby("ID")["Output"].std().median() for s in sims]
    their_sd = (theirs.loc[~theirs["ID"].isin(["0", "1"])].groupby(["dataset", "ID"])["Output"].std()
                .groupby("dataset").median())
    assert ks_2samp(ours_sd, their_sd).pvalue > 1e-3
    smooth_sd = [
        simulate(20, 30, common_hp=False, seed=seed, scheme="smooth").data.groupby("ID")["Output"].std().median()
        for seed in range(60)
    ]
    assert ks_2samp(smooth_sd, their_sd).pvalue < 1e-3  # the smooth scheme is not the paper's


def test_prior_mean_is_linear_and_overridable_ranges():
    sim = simulate(
        2, 5, seed=11, slope_range=(1, 1), intercept_range=(3, 3),
        mean_variance_range=(0, 0), lengthscale_range=(0.5, 0.5), noise_range=(-2, -2), scheme="smooth",
    )
    np.testing.assert_allclose(sim.prior_mean, GRID + 3)
    assert sim.hyperparameters["mean_process"]["variance"] == pytest.approx(1.0)
    ind = sim.hyperparameters["individual"]
    np.testing.assert_allclose(ind["lengthscale"], np.exp(0.5))
    np.testing.assert_allclose(ind["noise"], np.exp(-2))


def test_custom_grid_and_validation():
    grid = np.linspace(-1, 1, 50)
    sim = simulate(3, 50, grid=grid, seed=0)
    np.testing.assert_array_equal(sim.grid, grid)
    assert (sim.data.groupby("ID")["Input"].apply(lambda x: np.array_equal(x, grid))).all()
    with pytest.raises(ValueError):
        simulate(3, 202, seed=0)
    with pytest.raises(ValueError):
        simulate(3, 5, grid=np.array([0.0, 2.0, 1.0]))


def test_latent_and_noise_match_truth():
    sim = simulate(300, 30, seed=8, common_hp=True, n_new=2)
    latent = sim.latent(sim.data)
    for key, rows in sim.data.groupby("ID").groups.items():
        idx = np.searchsorted(GRID, sim.data.loc[rows, "Input"])
        np.testing.assert_array_equal(latent[rows], sim.individual_processes[key][idx])
    resid = sim.data["Output"].to_numpy() - latent
    noise = sim.hyperparameters["individual"]["noise"].iloc[0]
    # 9,000 i.i.d. N(0, noise) residuals: sample variance within ~6 standard errors.
    assert resid.var() / noise == pytest.approx(1.0, abs=6 * np.sqrt(2 / resid.size))
    assert abs(resid.mean()) < 5 * np.sqrt(noise / resid.size)
    assert sim.latent(sim.new).shape == (len(sim.new),)


def test_average_of_many_individuals_recovers_mean_process():
    """y_i(t) = mu0(t) + f_i(t) + eps_i: the average over M individuals at a common
    grid point has mean mu0(t) and standard error sqrt((v + sigma^2) / M)."""
    m = 2000
    sim = simulate(m, 30, common_grid=True, common_hp=True, seed=2024, noise_range=(-6, -5), scheme="smooth")
    hp = sim.hyperparameters["individual"].iloc[0]
    wide = sim.data.pivot(index="ID", columns="Input", values="Output")
    assert wide.shape == (m, 30)
    avg = wide.mean(axis=0)
    mu0 = sim.mean_process[np.searchsorted(GRID, avg.index.to_numpy())]
    se = np.sqrt((hp["variance"] + hp["noise"]) / m)
    z = (avg.to_numpy() - mu0) / se
    assert np.max(np.abs(z)) < 4.0
    # The spread across individuals matches the individual variance v + sigma^2.
    var = wide.var(axis=0, ddof=1).to_numpy() / (hp["variance"] + hp["noise"])
    np.testing.assert_allclose(var, 1.0, atol=6 * np.sqrt(2 / (m - 1)))


def test_mean_process_is_gp_around_prior_mean():
    """Across independent seeds, (mu0(t) - m0(t)) / sqrt(v0) is standard normal."""
    z = []
    for seed in range(400):
        sim = simulate(1, 1, seed=seed)
        v0 = sim.hyperparameters["mean_process"]["variance"]
        z.append((sim.mean_process[[0, 100, 200]] - sim.prior_mean[[0, 100, 200]]) / np.sqrt(v0))
    z = np.asarray(z)
    n = z.shape[0]
    assert np.all(np.abs(z.mean(axis=0)) < 4 / np.sqrt(n))
    assert np.all(np.abs(z.var(axis=0) - 1) < 4 * np.sqrt(2 / n))


# ---------------------------------------------------------------------- split_observed
def test_split_observed_first_points_by_input():
    df = pd.DataFrame(
        {
            "ID": ["b", "b", "b", "a", "a", "b", "c"],
            "Input": [3.0, 1.0, 2.0, 5.0, 4.0, 0.5, 1.0],
            "Output": [30.0, 10.0, 20.0, 50.0, 40.0, 5.0, 1.0],
            "extra": list("pqrstuv"),
        }
    )
    obs, tgt = split_observed(df, 2)
    assert list(obs.columns) == list(df.columns)
    assert obs["ID"].tolist() == ["b", "b", "a", "a", "c"]
    assert obs["Input"].tolist() == [0.5, 1.0, 4.0, 5.0, 1.0]
    assert tgt["ID"].tolist() == ["b", "b"] and tgt["Input"].tolist() == [2.0, 3.0]
    assert tgt["Output"].tolist() == [20.0, 30.0]
    assert obs.index.equals(pd.RangeIndex(5)) and tgt.index.equals(pd.RangeIndex(2))
    assert len(split_observed(df, 0)[0]) == 0


def test_split_observed_paper_protocol():
    sim = simulate(5, 30, seed=9, n_new=3)
    obs, tgt = split_observed(sim.new, 20)
    assert (obs.groupby("ID").size() == 20).all() and (tgt.groupby("ID").size() == 10).all()
    for key in sim.new_ids:
        assert obs.loc[obs["ID"] == key, "Input"].max() < tgt.loc[tgt["ID"] == key, "Input"].min()
    merged = pd.concat([obs, tgt]).sort_values(["ID", "Input"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(merged, sim.new.sort_values(["ID", "Input"]).reset_index(drop=True))


# ----------------------------------------------------------------------------- loaders
def _check_long(df: pd.DataFrame, columns: list[str]) -> None:
    assert list(df.columns) == columns
    assert df["Output"].notna().all() and df["Input"].notna().all()
    assert df["Input"].dtype == np.float64 and df["Output"].dtype == np.float64
    assert all(isinstance(v, str) for v in df["ID"].iloc[:: max(1, len(df) // 500)])
    assert not df.duplicated(["ID", "Input"]).any()


def test_load_weight():
    df = load_weight()
    _check_long(df, ["ID", "Input", "Output", "sex"])
    assert len(df) == 3629 and df["ID"].nunique() == 342
    assert set(df["sex"]) == {"Female", "Male"}
    assert set(df["Input"]) <= {0, 3, 6, 9, 12, 18, 24, 36, 48, 60, 72}
    assert df["Output"].between(1, 60).all()


def test_load_swimmers():
    df = load_swimmers()
    _check_long(df, ["ID", "Input", "Output", "Gender"])
    assert len(df) == 76832 and df["ID"].nunique() == 3456
    assert set(df["Gender"]) == {1, 2}
    assert df["Input"].between(10, 21).all() and df["Output"].between(40, 120).all()
    men, women = load_swimmers(gender=1), load_swimmers(gender=2)
    assert (men["Gender"] == 1).all() and (women["Gender"] == 2).all()
    assert len(men) + len(women) == len(df)
    assert men["ID"].nunique() + women["ID"].nunique() == 3456
    with pytest.raises(ValueError):
        load_swimmers(gender=3)


def test_load_ecg5000():
    df = load_ecg5000()
    _check_long(df, ["ID", "Input", "Output", "label", "split"])
    assert len(df) == 5000 * 140 and df["ID"].nunique() == 5000
    assert (df.groupby("ID").size() == 140).all()
    np.testing.assert_array_equal(np.sort(df["Input"].unique()), np.arange(140.0))
    assert set(df["label"]) == {1, 2, 3, 4, 5} and set(df["split"]) == {"train", "test"}
    train = load_ecg5000(split="train")
    assert train["ID"].nunique() == 500 and (train["split"] == "train").all()
    sub = load_ecg5000(split="test", label=5)
    assert ((sub["split"] == "test") & (sub["label"] == 5)).all() and len(sub) % 140 == 0
    assert set(sub["ID"]) <= set(df["ID"])
    with pytest.raises(ValueError):
        load_ecg5000(split="valid")


def test_load_dodgerloop():
    df = load_dodgerloop()
    _check_long(df, ["ID", "Input", "Output", "label", "split"])
    assert len(df) == 158 * 288 - 337 and df["ID"].nunique() == 158
    assert df.attrs["n_missing_dropped"] == 337
    assert (df.groupby("ID").size() < 288).sum() == 14
    assert df["Input"].min() == 0 and df["Input"].max() == pytest.approx(287 * 5 / 60)
    assert set(df["label"]) == set(range(1, 8)) and (df["Output"] >= 0).all()
    train, test = load_dodgerloop("train"), load_dodgerloop("test")
    assert train["ID"].nunique() == 78 and test["ID"].nunique() == 80
    assert len(train) + len(test) == len(df)
    assert train.attrs["n_missing_dropped"] + test.attrs["n_missing_dropped"] == 337
