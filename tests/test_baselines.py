"""SingleGP (one GP per individual, HP by maximum likelihood) against a dense NumPy/SciPy GP."""

import numpy as np
import pandas as pd
import pytest
from reference import se
from scipy import optimize, stats

import magma_pymc as mp
from magma_pymc.baselines import SingleGP

T_PRED = np.array([11.0, 0.5, 3.0, 3.0, -2.0])  # unsorted, a duplicate, outside the range on both sides


@pytest.fixture(scope="module")
def observed():
    """One individual: 12 noisy points of a sine around 2, seeded."""
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 10, 12))
    return t, 2.0 + np.sin(t) + rng.normal(0, 0.3, t.size)


@pytest.fixture(scope="module")
def fitted(observed):
    return SingleGP().fit(observed)


def dense_nll(log_hp, t, y, m0, jitter=0.0):
    """-log N(y; m0, C_theta(t, t) + (sigma^2 + jitter) I) with the SE kernel written out."""
    v, l, s2 = np.exp(log_hp)
    cov = se(t, t, v, l) + (s2 + jitter) * np.eye(len(t))
    return -stats.multivariate_normal(np.full(len(t), m0), cov).logpdf(y)


def dense_posterior(log_hp, t, y, m0, s):
    """Conditional Gaussian of m0 + f at s given y: mean and latent covariance, by np.linalg.solve."""
    v, l, s2 = np.exp(log_hp)
    k_obs = se(t, t, v, l) + s2 * np.eye(len(t))
    k_cross = se(s, t, v, l)
    mean = m0 + k_cross @ np.linalg.solve(k_obs, y - m0)
    return mean, se(s, s, v, l) - k_cross @ np.linalg.solve(k_obs, k_cross.T)


def test_fitted_likelihood_is_the_dense_density(observed, fitted):
    t, y = observed
    assert fitted.prior_mean_ == pytest.approx(np.mean(y), rel=1e-14)
    assert fitted.hp_.source == "fitted"
    expected = dense_nll(fitted.hp_.log_params, t, y, np.mean(y), fitted.jitter_)
    np.testing.assert_allclose(fitted.hp_.neg_log_likelihood, expected, rtol=1e-10)


def test_optimum_is_the_dense_likelihoods_maximum(observed, fitted):
    """SciPy's L-BFGS-B on the dense likelihood (numerical gradients, same box, several starts) finds
    no better HP, and the two optima agree; random perturbations only lower the likelihood."""
    t, y = observed
    m0, best = np.mean(y), fitted.hp_.log_params
    variance, span = np.var(y), np.ptp(t)
    bounds = [
        (np.log(1e-8 * variance), np.log(1e4 * variance)),
        (np.log(1e-3 * span), np.log(1e2 * span)),
        (np.log(1e-8 * variance), np.log(1e4 * variance)),
    ]
    starts = [
        np.log([variance, 0.1 * span, 0.1 * variance]),
        np.log([0.3 * variance, 0.5 * span, 0.01 * variance]),
        np.log([3 * variance, 0.03 * span, variance]),
    ]
    dense = min(
        (optimize.minimize(dense_nll, x0, args=(t, y, m0), method="L-BFGS-B", bounds=bounds) for x0 in starts),
        key=lambda r: r.fun,
    )
    at_best = dense_nll(best, t, y, m0)
    assert at_best <= dense.fun + 1e-6
    np.testing.assert_allclose(best, dense.x, atol=2e-3)
    rng = np.random.default_rng(1)
    for _ in range(20):
        assert dense_nll(best + rng.normal(0, 0.05, 3), t, y, m0) > at_best
    # Interior optimum: the dense gradient vanishes there.
    step = 1e-6
    grad = [
        (dense_nll(best + step * e, t, y, m0) - dense_nll(best - step * e, t, y, m0)) / (2 * step) for e in np.eye(3)
    ]
    np.testing.assert_allclose(grad, 0.0, atol=1e-3)


def test_prediction_is_the_dense_conditional_gaussian(observed, fitted):
    t, y = observed
    pred = fitted.predict(T_PRED, full_cov=True, prob=0.9)
    log_hp = fitted.hp_.log_params
    noise = np.exp(log_hp[2])
    mean, latent = dense_posterior(log_hp, t, y, np.mean(y), T_PRED)
    np.testing.assert_array_equal(pred["input"].values, T_PRED)
    np.testing.assert_allclose(pred["mean"].values, mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(pred["latent_variance"].values, np.diag(latent), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(pred["cov"].values, latent + noise * np.eye(len(T_PRED)), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(pred["variance"].values, np.diag(latent) + noise, rtol=1e-7, atol=1e-9)
    z = stats.norm.ppf(0.95)
    np.testing.assert_allclose(pred["upper"].values, mean + z * np.sqrt(np.diag(latent) + noise), rtol=1e-8)
    np.testing.assert_allclose(pred["latent_lower"].values, mean - z * np.sqrt(np.diag(latent)), rtol=1e-8)
    assert pred.attrs["prob"] == 0.9
    # Far from the data the prediction reverts to the prior m0 + N(0, v + s2).
    far = fitted.predict([1e3])
    np.testing.assert_allclose(far["mean"].values, np.mean(y), rtol=1e-12)
    np.testing.assert_allclose(far["variance"].values, np.exp(log_hp[0]) + noise, rtol=1e-9)


def test_given_prior_mean_and_dataframe_input(observed):
    """A constant prior mean is used as given; a long DataFrame in any row order fits the same GP."""
    t, y = observed
    model = SingleGP(prior_mean=0.0, n_restarts=1).fit(pd.DataFrame({"Input": t[::-1], "Output": y[::-1]}))
    assert model.prior_mean_ == 0.0
    np.testing.assert_allclose(
        model.hp_.neg_log_likelihood, dense_nll(model.hp_.log_params, t, y, 0.0, model.jitter_), rtol=1e-10
    )
    mean, _ = dense_posterior(model.hp_.log_params, t, y, 0.0, T_PRED)
    np.testing.assert_allclose(model.predict(T_PRED)["mean"].values, mean, rtol=1e-9, atol=1e-9)


def test_bad_input_gives_a_clear_error(observed):
    t, y = observed
    with pytest.raises(ValueError, match="individual 'new': a single GP needs at least 2 points, got 1"):
        SingleGP().fit((t[:1], y[:1]))
    with pytest.raises(mp.MagmaInputError, match=r"individual 'new': 1 NaN/inf value\(s\) in output 'Output'"):
        SingleGP().fit((t, np.where(np.arange(t.size) == 3, np.nan, y)))
    with pytest.raises(RuntimeError, match=r"not fitted yet: call \.fit\(data\) first"):
        SingleGP().predict(T_PRED)
    model = SingleGP(n_restarts=1).fit(observed)
    with pytest.raises(ValueError, match="prob must be a number strictly between 0 and 1, got 1.5"):
        model.predict(T_PRED, prob=1.5)
