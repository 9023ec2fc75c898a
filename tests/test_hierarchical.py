"""Population layer on the individuals' log HP (magma_pymc.hierarchical): implied prior, and a light
simulation-based calibration of NUTS under it."""

import warnings

import numpy as np
import pandas as pd
import pymc as pm
import pytest
from reference import se
from scipy import stats

import magma_pymc as mp
from magma_pymc.hierarchical import (
    POPULATION_MEAN,
    POPULATION_OFFSET,
    POPULATION_SCALE,
    hierarchical_log_hp,
    hierarchical_prior,
    population_draws,
)

CENTRE = np.log([1.0, 1.5, 0.1])


@pytest.mark.parametrize("centred", [False, True])
def test_implied_prior_of_the_log_hp(centred):
    """x_ik = m_k + tau_k z_ik: mean c_k, variance s_m^2 + s_tau^2, and two individuals' x correlated
    through the shared m (covariance s_m^2); the same with either parameterisation."""
    coords = {"individual": [f"i{k}" for k in range(5)], "hp": ["variance", "lengthscale", "noise"]}
    with pm.Model(coords=coords) as model:
        hierarchical_log_hp("log_hp", CENTRE, mean_sd=0.5, scale_sd=0.8, centred=centred)
    assert (POPULATION_OFFSET in model.named_vars) == (not centred)
    assert model.named_vars_to_dims["log_hp"] == ("individual", "hp")
    draws = pm.draw(model["log_hp"], draws=20000, random_seed=1)             # (S, 5, 3)
    np.testing.assert_allclose(draws.mean(axis=(0, 1)), CENTRE, atol=0.03)
    np.testing.assert_allclose(draws.var(axis=(0, 1)), 0.5**2 + 0.8**2, rtol=0.05)
    covariance = np.mean((draws[:, 0] - CENTRE) * (draws[:, 1] - CENTRE), axis=0)
    np.testing.assert_allclose(covariance, 0.5**2, atol=0.03)


def test_prior_factory_needs_individual_dims():
    with pm.Model(coords={"hp": ["a"]}), pytest.raises(ValueError, match="different HP"):
        hierarchical_prior(np.zeros(1))("log_hp", ("hp",))


def simulate_hierarchical(rng, n_individuals, n_points, mean_log0, population_mean, population_scale):
    """Data from the hierarchical MAGMA model with SE kernels (tests/reference.py), m0 = 0."""
    grid = np.linspace(0.0, 10.0, 41)
    inputs = [np.sort(rng.choice(grid, n_points, replace=False)) for _ in range(n_individuals)]
    union = np.unique(np.concatenate(inputs))
    mean_process = rng.multivariate_normal(np.zeros(len(union)), se(union, union, *np.exp(mean_log0))
                                           + 1e-8 * np.eye(len(union)))
    log_hp = population_mean + population_scale * rng.normal(size=(n_individuals, 3))
    rows = []
    for i, t in enumerate(inputs):
        variance, lengthscale, noise = np.exp(log_hp[i])
        f = rng.multivariate_normal(np.zeros(n_points), se(t, t, variance, lengthscale) + 1e-8 * np.eye(n_points))
        y = mean_process[np.searchsorted(union, t)] + f + rng.normal(0.0, np.sqrt(noise), n_points)
        rows.append(pd.DataFrame({"ID": f"i{i}", "Input": t, "Output": y}))
    return pd.concat(rows, ignore_index=True), log_hp


@pytest.mark.slow
def test_simulation_based_calibration_light_hierarchical():
    """Data drawn from the priors (mean-process log HP, population mean and scale, then each
    individual's log HP): the central 90% posterior intervals of the 2 + 3 + 3 population-level
    quantities cover the truth at about the nominal rate. 6 seeds x 8 = 48 checks, expected 43.2;
    at least 38 required (P(X <= 37) = 0.7% for a calibrated sampler)."""
    mean_centre, mean_sd, scale_sd = np.log([2.0, 2.0]), 0.4, 0.4
    hits, divergences = [], 0
    for seed in range(6):
        rng = np.random.default_rng([2027, seed])
        mean_log0 = rng.normal(mean_centre, mean_sd)
        population_mean = rng.normal(CENTRE, mean_sd)
        population_scale = np.abs(rng.normal(0.0, scale_sd, 3))
        data, _ = simulate_hierarchical(rng, 6, 8, mean_log0, population_mean, population_scale)
        priors = {"mean_hp": lambda name, dims: pm.Normal(name, mu=mean_centre, sigma=mean_sd, dims=dims),
                  "hp": hierarchical_prior(CENTRE, mean_sd=mean_sd, scale_sd=scale_sd)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", mp.ConvergenceWarning)
            fit = mp.Magma(common_hp=False, prior_mean=0.0).fit(
                data, method="nuts", draws=300, tune=300, chains=2, random_seed=seed, priors=priors,
                target_accept=0.9, nuts_sampler="pymc", progressbar=False)
        tree = fit.idata_
        divergences += int(tree["sample_stats"]["diverging"].sum())
        mean, scale = population_draws(tree)
        mean0 = tree["unconstrained_posterior"]["log_mu0_hp"].values.reshape(-1, 2)
        draws = np.concatenate([mean0, mean, scale], axis=1)
        lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
        truth = np.concatenate([mean_log0, population_mean, population_scale])
        hits.extend((lo < truth) & (truth < hi))
    print(f"SBC light (population layer): {sum(hits)} of {len(hits)} inside the central 90% intervals; "
          f"{divergences} divergences in 6 x 600 draws")
    assert stats.binom(len(hits), 0.9).cdf(37) < 0.02
    assert sum(hits) >= 38
    assert POPULATION_MEAN in tree["unconstrained_posterior"] and POPULATION_SCALE in tree["unconstrained_posterior"]
    assert tree.attrs["hierarchical"] == 1
