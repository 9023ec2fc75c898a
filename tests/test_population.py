"""The population distribution of the individual HP with their estimation error removed (magma_pymc.population)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from reference import se

import magma_pymc as mp
from magma_pymc.population import MIN_CURVATURE, estimation_covariances, population_prior, random_effects_population


@pytest.mark.parametrize("seed", [0, 1])
def test_random_effects_recover_a_known_population_from_noisy_estimates(seed):
    """Simulation with known truth: x_i ~ N(m, S), estimates x_i + N(0, V_i) with known V_i.

    The random-effects estimate is within sampling error of (m, S) (measured: 0.02 on the mean, 0.008-0.02 on
    S at M = 2000), while the estimates' own covariance carries the estimation error (off by 0.43-0.51)."""
    rng = np.random.default_rng(seed)
    m = 2000
    true_mean = np.array([1.0, -0.5, 0.3])
    a = rng.normal(size=(3, 3)) * 0.4
    true_cov = a @ a.T + 0.05 * np.eye(3)
    truth = rng.multivariate_normal(true_mean, true_cov, size=m)
    b = rng.normal(size=(m, 3, 3)) * rng.uniform(0.1, 0.6, size=(m, 1, 1))
    errors = b @ b.mT + 0.01 * np.eye(3)
    estimates = truth + np.einsum("mij,mj->mi", np.linalg.cholesky(errors), rng.normal(size=(m, 3)))
    mean, cov = random_effects_population(estimates, errors)
    np.testing.assert_allclose(mean, true_mean, atol=0.1)
    np.testing.assert_allclose(cov, true_cov, atol=0.06)
    assert np.abs(np.cov(estimates, rowvar=False) - true_cov).max() > 0.2


def test_without_estimation_error_it_is_the_maximum_likelihood_gaussian():
    rng = np.random.default_rng(2)
    estimates = rng.normal(size=(40, 3)) @ np.array([[1.0, 0.3, 0.0], [0.0, 0.5, 0.2], [0.0, 0.0, 2.0]]) + 1.0
    mean, cov = random_effects_population(estimates, np.zeros((40, 3, 3)))
    np.testing.assert_allclose(mean, estimates.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(cov, np.cov(estimates, rowvar=False, bias=True), rtol=1e-3, atol=1e-4)


@pytest.fixture(scope="module")
def different_hp_fit():
    sim = mp.simulate(n_individuals=8, n_points=12, common_grid=False, common_hp=False, seed=3)
    with warnings.catch_warnings():  # 12 points leave one noise variance on its bound: its direction is floored
        warnings.simplefilter("ignore", mp.ConvergenceWarning)
        return mp.Magma(common_hp=False, max_iter=5).fit(sim.data)


def _dense_minus_q(model, i):
    """-Q_i(x) of individual i at its log HP x, from the fit's hyper-posterior of mu0, written with NumPy."""
    data, jitter = model.data_, model.result_.point.jitter
    keep = data.mask[i] > 0
    t, y = data.inputs[i][keep], data.outputs[i][keep]
    post = model.hyperposterior(t)
    r, c = y - post["mean"].to_numpy(), post["cov"].to_numpy()

    def value(x):
        variance, lengthscale, noise = np.exp(x)
        psi = se(t, t, variance, lengthscale) + (noise + jitter) * np.eye(len(t))
        inv = np.linalg.inv(psi)
        return 0.5 * (r @ inv @ r + np.trace(inv @ c) + np.linalg.slogdet(psi)[1])

    return value


def test_estimation_covariances_invert_the_dense_hessian_of_the_m_step_objective(different_hp_fit):
    model = different_hp_fit
    covs = estimation_covariances(model.result_.problem, model.result_.point)
    assert covs.shape == (8, 3, 3)
    checked = 0
    for i in range(8):
        value, x = _dense_minus_q(model, i), model.result_.point.log_params[i]
        step, p = 1e-3, 3
        hessian = np.empty((p, p))
        for j in range(p):
            for k in range(p):
                ej, ek = step * np.eye(p)[j], step * np.eye(p)[k]
                hessian[j, k] = (value(x + ej + ek) - value(x + ej - ek) - value(x - ej + ek) + value(x - ej - ek)) / (
                    4 * step**2)
        if np.linalg.eigvalsh(hessian).min() > 10 * MIN_CURVATURE:  # no floored direction
            np.testing.assert_allclose(np.linalg.inv(covs[i]), hessian, rtol=2e-3, atol=1e-3 * np.abs(hessian).max())
            checked += 1
    assert checked >= 4


def test_population_prior_is_narrower_than_the_empirical_one_and_falls_back_with_few_individuals(different_hp_fit):
    model = different_hp_fit
    point = model.result_.point
    prior = population_prior(model.result_.problem, point)
    empirical = mp.hp_integration.PopulationPrior.from_training(point.log_params)
    assert np.trace(prior.cov) < np.trace(empirical.cov)
    assert np.all(np.linalg.eigvalsh(prior.cov) > 0)
    few = point._replace(log_params=point.log_params[:3])
    fallback = population_prior(model.result_.problem, few)
    np.testing.assert_array_equal(fallback.cov, mp.hp_integration.PopulationPrior.from_training(few.log_params).cov)
