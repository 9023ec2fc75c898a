"""Result datasets and trees (magma_pymc.results): coordinates, dims, shapes, credible bounds, groups."""

import warnings

import numpy as np
import pytest
from conftest import COMMON, DIFFERENT, HP0, fixed_model
from scipy import special, stats

import magma_pymc as mp
from magma_pymc.data import as_training_data
from magma_pymc.results import (
    gaussian_dataset,
    hp_dataset,
    hyperposterior_dataset,
    input_coords,
    latent_bounds,
    observed_dataset,
)

RNG = np.random.default_rng(7)
X2 = RNG.normal(size=(4, 2))
A = RNG.normal(size=(4, 4))
COV = A @ A.T + 0.1 * np.eye(4)
MEAN = RNG.normal(size=4)


def quantile(prob):
    """Central-interval half-width factor sqrt(2) erfinv(prob) (the N(0, 1) quantile at (1 + prob) / 2)."""
    return np.sqrt(2.0) * special.erfinv(prob)


def test_input_coords_one_and_two_dimensional():
    t = np.array([[3.0], [1.0], [2.0]])
    coords = input_coords(t, ("Input",))
    assert list(coords) == ["input"]
    np.testing.assert_array_equal(coords["input"], [3.0, 1.0, 2.0])
    coords = input_coords(X2, ("x", "y"), dim="obs")
    np.testing.assert_array_equal(coords["obs"], np.arange(4))
    assert coords["x"][0] == "obs" and coords["y"][0] == "obs"
    np.testing.assert_array_equal(coords["x"][1], X2[:, 0])
    np.testing.assert_array_equal(coords["y"][1], X2[:, 1])


@pytest.mark.parametrize("prob", [0.5, 0.9, 0.95])
def test_gaussian_bounds_are_mean_plus_minus_the_normal_quantile(prob):
    ds = gaussian_dataset(X2[:, :1], ("Input",), MEAN, COV, prob, full_cov=False)
    sd = np.sqrt(np.diag(COV))
    np.testing.assert_allclose(ds["variance"].values, np.diag(COV), rtol=1e-15)
    np.testing.assert_allclose(ds["lower"].values, MEAN - quantile(prob) * sd, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ds["upper"].values, MEAN + quantile(prob) * sd, rtol=1e-12, atol=1e-14)
    assert ds.attrs["prob"] == prob
    assert set(ds.data_vars) == {"mean", "variance", "lower", "upper"}
    assert all(ds[name].dims == ("input",) for name in ds.data_vars)


def test_variances_alone_give_the_full_covariances_dataset_without_cov():
    full = gaussian_dataset(X2, ("x", "y"), MEAN, COV, 0.8, full_cov=True)
    diagonal = gaussian_dataset(X2, ("x", "y"), MEAN, np.diag(COV).copy(), 0.8, full_cov=False)
    for name in ("mean", "variance", "lower", "upper"):
        np.testing.assert_array_equal(diagonal[name].values, full[name].values)
    assert "cov" not in diagonal
    assert full["cov"].dims == ("input", "input_bis")
    np.testing.assert_array_equal(full["cov"].values, COV)
    np.testing.assert_array_equal(full["input_bis"].values, full["input"].values)
    np.testing.assert_array_equal(full["y"].values, X2[:, 1])


def test_negative_rounding_variance_gives_zero_width_and_bad_prob_is_refused():
    ds = gaussian_dataset(X2[:2, :1], ("Input",), MEAN[:2], np.array([-1e-18, 4.0]), 0.95, full_cov=False)
    np.testing.assert_array_equal(ds["lower"].values[0], MEAN[0])
    np.testing.assert_allclose(ds["upper"].values[1], MEAN[1] + 2 * quantile(0.95), rtol=1e-12)
    for prob in (0.0, 1.0, -0.5, np.nan):
        with pytest.raises(ValueError, match="prob must be a number strictly between 0 and 1"):
            gaussian_dataset(X2[:, :1], ("Input",), MEAN, COV, prob, full_cov=False)


def test_latent_bounds_use_the_latent_covariance():
    class Pred:  # the two fields latent_bounds reads
        mean, latent_cov = MEAN, COV / 2

    ds = latent_bounds(gaussian_dataset(X2[:, :1], ("Input",), MEAN, COV, 0.9, False), Pred, 0.9)
    half = quantile(0.9) * np.sqrt(np.diag(COV) / 2)
    np.testing.assert_allclose(ds["latent_variance"].values, np.diag(COV) / 2, rtol=1e-15)
    np.testing.assert_allclose(ds["latent_upper"].values, MEAN + half, rtol=1e-12)
    np.testing.assert_allclose(ds["latent_lower"].values, MEAN - half, rtol=1e-12)


@pytest.mark.parametrize("ids", [None, ["a", "b", "c"]], ids=["common", "different"])
def test_hp_dataset_dims_names_and_natural_scale(ids):
    rng = np.random.default_rng(3)
    mean_log = rng.normal(size=(2, 5, 2))
    log_params = rng.normal(size=(2, 5, 3) if ids is None else (2, 5, 3, 3))
    ds = hp_dataset(
        ("variance", "lengthscale"), ("variance", "lengthscale"), mean_log, log_params, ("chain", "draw"), ids
    )
    assert set(ds.data_vars) == {"mu0_variance", "mu0_lengthscale", "variance", "lengthscale", "noise"}
    assert ds["mu0_lengthscale"].dims == ("chain", "draw")
    np.testing.assert_array_equal(ds["mu0_lengthscale"].values, np.exp(mean_log[..., 1]))
    np.testing.assert_array_equal(ds["noise"].values, np.exp(log_params[..., 2]))
    assert ds["noise"].dims == (("chain", "draw") if ids is None else ("chain", "draw", "individual"))
    if ids is not None:
        np.testing.assert_array_equal(ds["individual"].values, ids)


def test_hyperposterior_and_observed_datasets():
    grid = np.array([[0.0], [1.0], [2.5]])
    ds = hyperposterior_dataset(grid, ("Input",), MEAN[:3], COV[:3, :3])
    assert ds["mu0_mean"].dims == ("input",) and ds["mu0_cov"].dims == ("input", "input_bis")
    np.testing.assert_array_equal(ds["input_bis"].values, grid[:, 0])
    data = as_training_data({7: ([2.0, 0.0], [1.0, 2.0]), 3: ([1.0], [3.0])})
    obs = observed_dataset(data)
    assert set(obs.data_vars) == {"ID", "Input", "Output"} and obs["ID"].dims == ("obs",)
    long = data.to_long()
    np.testing.assert_array_equal(obs["ID"].values, long["ID"].astype(str).to_numpy())
    np.testing.assert_array_equal(obs["Input"].values, long["Input"].to_numpy())
    np.testing.assert_array_equal(obs["Output"].values, long["Output"].to_numpy())


@pytest.mark.parametrize("common_hp", [True, False], ids=["commonHP", "differentHP"])
def test_em_datatree_of_a_fixed_fit(small_problem, common_hp):
    model, reference = fixed_model(small_problem, common_hp)
    tree = model.idata_
    assert set(tree.children) == {"posterior", "em_trace", "hyperposterior", "observed_data"}
    assert tree.attrs["method"] == "fixed" and tree.attrs["common_hp"] == int(common_hp)
    assert tree.attrs["n_individuals"] == 4 and tree.attrs["inducing_points"] == 0
    np.testing.assert_allclose(tree.attrs["log_likelihood"], reference.log_likelihood(), rtol=1e-9)
    post = tree["posterior"].to_dataset()
    np.testing.assert_allclose(post["mu0_variance"].values, [[HP0[0]]], rtol=1e-14)
    expected = np.array(COMMON if common_hp else DIFFERENT)
    np.testing.assert_allclose(post["noise"].values[0, 0], expected[..., 2], rtol=1e-14)
    if not common_hp:
        np.testing.assert_array_equal(post["individual"].values, ["i0", "i1", "i2", "i3"])
    trace = tree["em_trace"].to_dataset()
    assert trace.sizes["em_iteration"] == 1 and "log_posterior" not in trace
    np.testing.assert_allclose(trace["log_likelihood"].values, [reference.log_likelihood()], rtol=1e-9)
    grid = model.data_.grid[:, 0]
    np.testing.assert_array_equal(tree["hyperposterior"]["input"].values, grid)
    np.testing.assert_allclose(tree["hyperposterior"]["mu0_mean"].values, reference.mean_process(grid)[0], atol=1e-7)
    assert tree["observed_data"].sizes["obs"] == sum(len(t) for t, _ in small_problem)


def test_em_datatree_of_an_em_fit_records_every_iteration():
    sim = mp.simulate(n_individuals=4, n_points=8, seed=3, scheme="smooth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.ConvergenceWarning)
        model = mp.Magma(max_iter=3, tol=1e-12).fit(sim.data)
    trace = model.idata_["em_trace"].to_dataset()
    np.testing.assert_array_equal(trace["em_iteration"].values, np.arange(4))
    assert trace.attrs["converged"] == 0 and trace.attrs["tol"] == 1e-12
    initial = model.initial_hyperparameters(model.data_)
    np.testing.assert_allclose(trace["mu0_lengthscale"].values[0], initial.mean_process["lengthscale"], rtol=1e-12)
    np.testing.assert_allclose(
        trace["noise"].values[-1], model.hyperparameters_.individual["noise"].iloc[0], rtol=1e-12
    )
    assert model.log_likelihood_ == trace["log_likelihood"].values[-1]
    # The weak mean-process prior (independent N(log initial HP, 2^2) on the log HP) makes EM a MAP
    # fit: log_posterior - log_likelihood is that log prior at each iteration's HP.
    log_hp = np.log(np.stack([trace["mu0_variance"].values, trace["mu0_lengthscale"].values], axis=1))
    log_prior = stats.norm(np.log(initial.mean_process.to_numpy()), 2.0).logpdf(log_hp).sum(axis=1)
    np.testing.assert_allclose(
        trace["log_posterior"].values - trace["log_likelihood"].values, log_prior, rtol=1e-9, atol=1e-9
    )
