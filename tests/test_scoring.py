"""Calibration scores of Gaussian mixtures against numerical integration and root finding."""

import numpy as np
import pytest
from scipy import integrate, optimize, stats

from magma_pymc import scoring

WEIGHTS = np.array([0.2, 0.5, 0.3])
MEANS = np.array([[0.0, 1.0], [1.5, -2.0], [-1.0, 0.5]])
SDS = np.array([[0.5, 1.0], [1.2, 0.3], [0.8, 2.0]])


def cdf(x, j):
    return float(WEIGHTS @ stats.norm.cdf(x, MEANS[:, j], SDS[:, j]))


def test_cdf_and_quantiles_match_scipy_root_finding():
    y = np.array([0.3, -1.0])
    np.testing.assert_allclose(scoring.mixture_cdf(y, WEIGHTS, MEANS, SDS), [cdf(0.3, 0), cdf(-1.0, 1)], rtol=1e-12)
    for level in (0.5, 0.95):
        lower, upper = scoring.central_interval(level, WEIGHTS, MEANS, SDS)
        for j in range(2):
            for bound, p in ((lower, (1 - level) / 2), (upper, (1 + level) / 2)):
                root = optimize.brentq(lambda x: cdf(x, j) - p, -50, 50, xtol=1e-14)  # noqa: B023 (called here)
                assert bound[j] == pytest.approx(root, abs=1e-10)


def test_one_component_interval_is_gaussian():
    lower, upper = scoring.central_interval(0.8, [1.0], [[2.0]], [[3.0]])
    np.testing.assert_allclose([lower[0], upper[0]], stats.norm.ppf([0.1, 0.9], 2.0, 3.0), rtol=1e-12)


def test_crps_matches_numerical_integral_of_squared_cdf_difference():
    """CRPS(F, y) = int (F(x) - 1{x >= y})^2 dx."""
    y = np.array([0.7, 3.0])
    crps = scoring.crps_mixture(y, WEIGHTS, MEANS, SDS)
    for j in range(2):
        left = integrate.quad(lambda x: cdf(x, j) ** 2, -np.inf, y[j], epsabs=1e-12)[0]  # noqa: B023 (called here)
        right = integrate.quad(lambda x: (1 - cdf(x, j)) ** 2, y[j], np.inf, epsabs=1e-12)[0]  # noqa: B023 (called here)
        assert crps[j] == pytest.approx(left + right, rel=1e-8)


def test_gaussian_crps_closed_form():
    """One component: sigma (z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)) (Gneiting & Raftery 2007)."""
    y, mu, sd = 1.3, 0.2, 0.7
    z = (y - mu) / sd
    expected = sd * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi))
    assert scoring.crps_mixture([y], [1.0], [[mu]], [[sd]])[0] == pytest.approx(expected, rel=1e-12)


def test_interval_score():
    np.testing.assert_allclose(
        scoring.interval_score([0.0, 2.0, -1.5], [-1, -1, -1], [1, 1, 1], 0.05), [2.0, 2.0 + 40.0, 2.0 + 20.0]
    )


@pytest.mark.parametrize("level", [0.0, 1.0, -0.2, 1.5, float("nan"), "x"])
def test_levels_outside_the_unit_interval_are_rejected(level):
    with pytest.raises(ValueError, match="between 0 and 1|number in"):
        scoring.check_level(level)
    with pytest.raises(ValueError, match="level"):
        scoring.central_interval(level, [1.0], [[0.0]], [[1.0]])


def test_bad_mixtures_are_rejected():
    with pytest.raises(ValueError, match="sum to 1"):
        scoring.mixture_cdf([0.0], [0.5, 0.2], [[0.0], [1.0]], [[1.0], [1.0]])
    with pytest.raises(ValueError, match="shapes"):
        scoring.mixture_cdf([0.0], [1.0], [[0.0], [1.0]], [[1.0], [1.0]])
