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
    """Simulation-based calibration (Talts et al. 2018) of NUTS under the population layer.

    Each replication draws the mean-process log HP, the population mean and scale, then every
    individual's log HP from the priors the fit uses, simulates 5 individuals x 6 points, samples
    2 chains x 100 draws and ranks each true value among 19 draws spread over both chains
    (rank 0..19). For a calibrated sampler every rank is uniform on 0..19; the 10 replications x
    (2 + 3 + 3 + 5 x 3) = 230 ranks fall in 4 bins of 5 ranks, each count Binomial(230, 1/4)
    (ranks within one replication share its posterior: the counts are only approximately
    binomial). Every bin must lie inside its two-sided binomial limits at a 1% family-wise level
    (Bonferroni over the 4 bins); a sampler with posteriors too narrow or biased piles ranks into
    the outer bins. The central 90% intervals' coverage is reported alongside.
    """
    mean_centre, mean_sd, scale_sd = np.log([2.0, 2.0]), 0.4, 0.4
    n_replications, n_ranked, n_bins = 10, 19, 4
    ranks, hits, divergences = [], [], 0
    for seed in range(n_replications):
        rng = np.random.default_rng([2027, seed])
        mean_log0 = rng.normal(mean_centre, mean_sd)
        population_mean = rng.normal(CENTRE, mean_sd)
        population_scale = np.abs(rng.normal(0.0, scale_sd, 3))
        data, log_hp = simulate_hierarchical(rng, 5, 6, mean_log0, population_mean, population_scale)
        priors = {"mean_hp": lambda name, dims: pm.Normal(name, mu=mean_centre, sigma=mean_sd, dims=dims),
                  "hp": hierarchical_prior(CENTRE, mean_sd=mean_sd, scale_sd=scale_sd)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", mp.ConvergenceWarning)
            fit = mp.Magma(common_hp=False, prior_mean=0.0).fit(
                data, method="nuts", draws=100, tune=200, chains=2, cores=1, random_seed=seed, priors=priors,
                thin=20, nuts_sampler="pymc", progressbar=False)
        tree = fit.idata_
        reported = int(tree["sample_stats"]["diverging"].sum())
        assert tree.attrs["divergences"] == reported      # reported in the result, never hidden
        divergences += reported
        mean, scale = population_draws(tree)
        posterior = tree["unconstrained_posterior"]
        mean0 = posterior["log_mu0_hp"].values.reshape(-1, 2)
        individual = posterior["log_hp"].transpose("chain", "draw", ...).values.reshape(mean0.shape[0], -1)
        draws = np.concatenate([mean0, mean, scale, individual], axis=1)
        truth = np.concatenate([mean_log0, population_mean, population_scale, log_hp.ravel()])
        kept = draws[np.linspace(0, len(draws) - 1, n_ranked).round().astype(int)]
        ranks.extend((kept < truth).sum(axis=0))
        lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
        hits.extend((lo < truth) & (truth < hi))
    counts = np.bincount(np.asarray(ranks) * n_bins // (n_ranked + 1), minlength=n_bins)
    binomial = stats.binom(len(ranks), 1 / n_bins)
    low, high = binomial.ppf(0.01 / (2 * n_bins)), binomial.isf(0.01 / (2 * n_bins))
    print(f"SBC light (population layer): rank counts in {n_bins} bins {counts.tolist()} (limits {low:.0f}-{high:.0f}"
          f" of {len(ranks)}); {sum(hits)} of {len(hits)} truths inside the central 90% intervals; "
          f"{divergences} divergences in {n_replications} x 200 draws")
    assert counts.sum() == n_replications * (2 + 3 + 3 + 5 * 3)
    assert np.all((low <= counts) & (counts <= high)), counts
    assert POPULATION_MEAN in tree["unconstrained_posterior"] and POPULATION_SCALE in tree["unconstrained_posterior"]
    # The layer came through priors["hp"]: the attribute records the library's default layer only.
    assert tree.attrs["hierarchical"] == 0
