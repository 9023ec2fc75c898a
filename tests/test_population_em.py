"""The population of the individual HP by Monte Carlo EM (magma_pymc.population_em) against closed forms."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import multivariate_normal, norm

import magma_pymc as mp
import magma_pymc.predictive as predictive
from magma_pymc import hp_integration as hpi
from magma_pymc.population import population_prior, random_effects_population
from magma_pymc.population_em import IndividualTerms, batched_log_likelihoods, leave_one_out, monte_carlo_em


def test_leave_one_out_undoes_the_individuals_update():
    """The hyper-posterior at t_i updated by y_i ~ N(mu0(t_i), Psi) and then undone gives back the prior."""
    rng = np.random.default_rng(0)
    n = 6
    a = rng.normal(size=(n, n))
    prior_cov = a @ a.T / n + 0.1 * np.eye(n)          # mu0(t_i) given the other individuals
    prior_mean = rng.normal(size=n)
    b = rng.normal(size=(n, n))
    psi = b @ b.T / n + 0.3 * np.eye(n)
    y = rng.normal(size=n)
    # Dense reference: Gaussian conditioning on y with noise Psi.
    gain = prior_cov @ np.linalg.inv(prior_cov + psi)
    post_mean = prior_mean + gain @ (y - prior_mean)
    post_cov = prior_cov - gain @ prior_cov
    residuals, cov = leave_one_out(y - post_mean, post_cov, psi)
    np.testing.assert_allclose(cov, prior_cov, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(residuals, y - prior_mean, rtol=1e-9, atol=1e-12)


def test_batched_likelihoods_equal_the_per_individual_ones():
    rng = np.random.default_rng(1)
    kernel = mp.SquaredExponential()
    terms = []
    for n in (3, 5, 3, 7):
        inputs = np.sort(rng.uniform(0, 10, n))[:, None]
        a = rng.normal(size=(n, n))
        terms.append(IndividualTerms(inputs, rng.normal(size=n), a @ a.T / n))
    draws = rng.normal(0.0, 0.7, size=(len(terms), 9, 3))
    values = batched_log_likelihoods(kernel, terms, draws, 1e-8, "NUMPY", chunk=200)  # several chunks
    for k, term in enumerate(terms):
        expected = hpi.log_likelihoods(kernel, draws[k], term.inputs, term.residuals, np.zeros(len(term.residuals)),
                                       term.cov, 1e-8, "NUMPY")
        np.testing.assert_allclose(values[k], expected, rtol=1e-10)


def test_gaussian_likelihoods_reduce_to_the_random_effects_estimate():
    """With N(xhat_i; x, V_i) as every individual's likelihood, the marginal likelihood is the random-effects one."""
    rng = np.random.default_rng(2)
    m, p = 60, 3
    true_cov = np.array([[0.6, 0.2, 0.0], [0.2, 0.4, -0.1], [0.0, -0.1, 0.3]])
    x = rng.multivariate_normal([1.0, -0.5, 0.2], true_cov, size=m)
    scales = rng.uniform(0.05, 0.5, size=m)
    covariances = scales[:, None, None] * np.eye(p)
    estimates = x + rng.normal(size=(m, p)) * np.sqrt(scales)[:, None]

    def log_likelihood(points):
        centred = estimates[:, None] - points
        return -0.5 * (centred**2).sum(axis=-1) / scales[:, None] - 0.5 * p * np.log(2 * np.pi * scales)[:, None]

    reference_mean, reference_cov = random_effects_population(estimates, covariances)
    start = (estimates.mean(axis=0), np.cov(estimates, rowvar=False))
    mean, cov, ess = monte_carlo_em(log_likelihood, np.ones(m, dtype=bool), estimates, covariances, *start)
    np.testing.assert_allclose(mean, reference_mean, atol=0.02)
    np.testing.assert_allclose(cov, reference_cov, atol=0.03)
    assert np.median(ess) > 100  # Laplace proposals at exact Gaussian posteriors
    # Every individual on the measurement model: EM's fixed point is the random-effects maximum itself.
    mean, cov, ess = monte_carlo_em(log_likelihood, np.zeros(m, dtype=bool), estimates, covariances, *start,
                                    rounds=1)
    assert np.isnan(ess).all()


def _exact_population_scale_model(y: list[np.ndarray]) -> tuple[float, float]:
    """ML (m, s) of x_i ~ N(m, s^2), y_ij ~ N(0, e^{x_i}), by Gauss-Hermite quadrature of each marginal."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    sum_sq = np.array([np.sum(v**2) for v in y])
    counts = np.array([len(v) for v in y])

    def minus_log_likelihood(z):
        mean, scale = z[0], np.exp(z[1])
        x = mean + scale * nodes[None, :]
        log_lik = -0.5 * counts[:, None] * (np.log(2 * np.pi) + x) - 0.5 * sum_sq[:, None] * np.exp(-x)
        top = log_lik.max(axis=1, keepdims=True)
        return -np.sum(top[:, 0] + np.log(np.exp(log_lik - top) @ weights / np.sqrt(2 * np.pi)))

    fit = minimize(minus_log_likelihood, [0.0, 0.0], method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-10})
    return fit.x[0], np.exp(fit.x[1])


def test_skewed_likelihoods_recover_the_exact_maximum_likelihood_population():
    """Log variances seen through two draws each: a skewed likelihood the measurement model misreads."""
    rng = np.random.default_rng(3)
    m = 400
    x = rng.normal(0.5, 0.3, size=m)
    y = [rng.normal(0.0, np.exp(0.5 * xi), size=2) for xi in x]
    sum_sq = np.array([np.sum(v**2) for v in y])
    estimates = np.log(sum_sq / 2)[:, None]                  # maximum likelihood of each x_i
    covariances = np.full((m, 1, 1), 2.0 / 2)                 # inverse Fisher information, 2 / n

    def log_likelihood(points):
        xs = points[..., 0]
        return -0.5 * 2 * (np.log(2 * np.pi) + xs) - 0.5 * sum_sq[:, None] * np.exp(-xs)

    exact_mean, exact_scale = _exact_population_scale_model(y)
    re_mean, re_cov = random_effects_population(estimates, covariances)
    mean, cov, _ = monte_carlo_em(log_likelihood, np.ones(m, dtype=bool), estimates, covariances, re_mean, re_cov)
    assert abs(mean[0] - exact_mean) < 0.03
    assert abs(np.sqrt(cov[0, 0]) - exact_scale) < 0.05
    # The measurement model is off by more (its mean is biased by E[log chi2_2 / 2] = -0.58).
    assert abs(re_mean[0] - exact_mean) > 0.3


@pytest.fixture(scope="module")
def fitted_different_hp():
    sim = mp.simulate(n_individuals=12, n_points=8, common_grid=False, common_hp=False, seed=4, n_new=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mp.Magma(common_hp=False).fit(sim.data), sim


def test_population_prior_marginal_is_deterministic_and_proper(fitted_different_hp):
    model, _ = fitted_different_hp
    result = model.result_
    first = population_prior(result.problem, result.point)
    second = population_prior(result.problem, result.point)
    np.testing.assert_array_equal(first.mean, second.mean)
    np.testing.assert_array_equal(first.cov, second.cov)
    assert np.all(np.linalg.eigvalsh(first.cov) > 0) and np.isfinite(first.mean).all()
    with pytest.raises(ValueError, match="method must be one of"):
        population_prior(result.problem, result.point, method="bogus")


def test_prediction_uses_the_chosen_population(fitted_different_hp, monkeypatch):
    model, sim = fitted_different_hp
    observed, target = mp.split_observed(sim.new, 4)
    default = model.predict(observed, target["Input"])
    result = model.result_
    expected = population_prior(result.problem, result.point, method="marginal")
    np.testing.assert_array_equal(result.__dict__["_population"].mean, expected.mean)
    # The random-effects estimate gives another prediction (a refitted model: the population is cached).
    monkeypatch.setattr(predictive, "POPULATION_ESTIMATE", "random_effects")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = mp.Magma(common_hp=False).fit(sim.data).predict(observed, target["Input"])
    assert np.isfinite(other["mean"]).all() and np.isfinite(default["upper"]).all()
    assert not np.allclose(other["upper"], default["upper"])


def test_gaussian_reference_density_in_the_helper_matches_scipy():
    """The closed-form helper of the test above is a Gaussian log density (guards the reference itself)."""
    x = np.array([[0.3, -0.2, 1.0]])
    assert multivariate_normal(np.zeros(3), 0.2 * np.eye(3)).logpdf(x[0]) == pytest.approx(
        norm(0, np.sqrt(0.2)).logpdf(x[0]).sum())
