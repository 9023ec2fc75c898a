"""Gaussian mixtures (magma_pymc.mixture): moments and quantiles against brute force."""

import numpy as np
from scipy import integrate, optimize, stats

from magma_pymc.mixture import GaussianMixture, mixture_quantiles


def _random_components(seed, n_components=5, n=3):
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1, (n_components, n))
    factors = rng.normal(0, 1, (n_components, n, n))
    covs = factors @ np.swapaxes(factors, 1, 2) + 0.1 * np.eye(n)
    weights = rng.dirichlet(np.ones(n_components))
    return means, covs, weights


def test_mixture_quantiles_against_root_finding():
    rng = np.random.default_rng(0)
    means, variances = rng.normal(0, 1, (5, 3)), rng.uniform(0.1, 2.0, (5, 3))
    weights = rng.dirichlet(np.ones(5))
    for w in (None, weights):
        ww = np.full(5, 0.2) if w is None else w
        q = mixture_quantiles(means, variances, (0.025, 0.5, 0.975), w)
        for j in range(3):
            for k, p in enumerate((0.025, 0.5, 0.975)):
                cdf = lambda x: ww @ stats.norm(means[:, j], np.sqrt(variances[:, j])).cdf(x) - p  # noqa: E731, B023
                np.testing.assert_allclose(q[k, j], optimize.brentq(cdf, -20, 20, xtol=1e-14), atol=1e-10)
    one = mixture_quantiles(means[:1], variances[:1], (0.025, 0.975))
    np.testing.assert_allclose(one, means[0] + stats.norm.ppf([[0.025], [0.975]]) * np.sqrt(variances[0]), rtol=1e-12)


def test_moments_against_numerical_integration_and_sampling():
    means, covs, weights = _random_components(1)
    mixture = GaussianMixture()
    for m, c, w in zip(means, covs, weights, strict=True):
        mixture.add(m, c, 10 * w)  # unnormalised weights are normalised
    mean, cov = mixture.moments()
    # Marginal mean and variance of each coordinate by quadrature of the mixture density.
    for j in range(means.shape[1]):
        pdf = lambda x: weights @ stats.norm(means[:, j], np.sqrt(covs[:, j, j])).pdf(x)  # noqa: E731,B023
        m1 = integrate.quad(lambda x: x * pdf(x), -40, 40, limit=200)[0]  # noqa: B023
        m2 = integrate.quad(lambda x: (x - m1) ** 2 * pdf(x), -40, 40, limit=200)[0]  # noqa: B023
        np.testing.assert_allclose(mean[j], m1, atol=1e-9)
        np.testing.assert_allclose(cov[j, j], m2, rtol=1e-8)
    # Cross-covariances by Monte Carlo (seeded): within 5 standard errors.
    rng = np.random.default_rng(2)
    n = 400_000
    which = rng.choice(len(weights), n, p=weights)
    draws = means[which] + np.einsum("sij,sj->si", np.linalg.cholesky(covs)[which], rng.normal(size=(n, 3)))
    sample_cov = np.cov(draws.T)
    se = np.sqrt((np.diag(sample_cov)[:, None] * np.diag(sample_cov)[None, :] + sample_cov**2) / n)
    assert np.all(np.abs(cov - sample_cov) < 5 * se)


def test_one_component_is_the_gaussian_itself():
    means, covs, _ = _random_components(3, n_components=1)
    mixture = GaussianMixture()
    mixture.add(means[0], covs[0])
    mean, cov = mixture.moments()
    np.testing.assert_array_equal(mean, means[0])
    np.testing.assert_array_equal(cov, covs[0])
    np.testing.assert_allclose(mixture.quantiles((0.1,))[0],
                               stats.norm.ppf(0.1, means[0], np.sqrt(np.diag(covs[0]))), rtol=1e-13)


def test_equal_weights_by_default():
    means, covs, _ = _random_components(4)
    equal, explicit = GaussianMixture(), GaussianMixture()
    for m, c in zip(means, covs, strict=True):
        equal.add(m, c)
        explicit.add(m, c, 1 / len(means))
    for a, b in zip(equal.moments(), explicit.moments(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13)
    np.testing.assert_allclose(equal.quantiles((0.05, 0.95)), explicit.quantiles((0.05, 0.95)), rtol=1e-13)


def test_mixture_quantiles_with_disparate_components_against_root_finding():
    """Components whose standard deviations span four orders of magnitude, with skewed weights (the
    shape of importance-weighted HP draws): the safeguarded Newton iteration lands on the root that
    bracketing root-finding finds, in the tails and the centre."""
    rng = np.random.default_rng(3)
    n_components, n = 60, 4
    means = rng.normal(0, 3, (n_components, n))
    variances = (10.0 ** rng.uniform(-3, 1, (n_components, n))) ** 2
    weights = rng.dirichlet(np.full(n_components, 0.3))
    probs = (0.001, 0.025, 0.5, 0.9, 0.975)
    q = mixture_quantiles(means, variances, probs, weights)
    for j in range(n):
        dist = stats.norm(means[:, j], np.sqrt(variances[:, j]))
        for k, p in enumerate(probs):
            reference = optimize.brentq(lambda x: weights @ dist.cdf(x) - p, -200, 200, xtol=1e-13)  # noqa: B023
            np.testing.assert_allclose(q[k, j], reference, atol=1e-9)
