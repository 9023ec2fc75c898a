"""New-individual prediction (Type I and II) against the dense joint-GP reference."""

import numpy as np
import pandas as pd
import pytest
from conftest import DIFFERENT, NEW_T, NEW_Y, T_PRED, fit_fixed
from reference import central_differences


@pytest.mark.parametrize("common_hp", [True, False], ids=["commonHP", "differentHP"])
@pytest.mark.parametrize("type_", ["I", "II"])
def test_prediction_matches_dense_joint_gp(small_problem, common_hp, type_):
    # The plug-in prediction at the new individual's HP (the integrated one: test_hp_integration.py).
    model, reference = fit_fixed(small_problem, common_hp, new_individual_hp="map")
    new = (NEW_T, NEW_Y) if type_ == "I" else None
    pred = model.predict(new, T_PRED, full_cov=True)
    assert pred.attrs["prediction_type"] == type_
    hp_new = (pred.attrs["hp_variance"], pred.attrs["hp_lengthscale"], pred.attrs["hp_noise"])
    if common_hp:
        assert pred.attrs["hp_source"] == "common" and np.allclose(hp_new, (1.0, 0.8, 0.25))
    elif type_ == "II":
        assert pred.attrs["hp_source"] == "median"
        np.testing.assert_allclose(hp_new, np.exp(np.median(np.log(DIFFERENT), axis=0)))
    obs_t, obs_y = (NEW_T, NEW_Y) if type_ == "I" else (np.empty(0), np.empty(0))
    mean, latent = reference.predict(obs_t, obs_y, T_PRED, hp_new)
    np.testing.assert_allclose(pred["mean"].values, mean, atol=1e-7)
    np.testing.assert_allclose(pred["latent_variance"].values, np.diag(latent), atol=1e-7)
    np.testing.assert_allclose(pred["variance"].values, np.diag(latent) + hp_new[2], atol=1e-7)
    np.testing.assert_allclose(pred["cov"].values, latent + hp_new[2] * np.eye(len(T_PRED)), atol=1e-7)
    half = 1.959963984540054 * np.sqrt(pred["variance"].values)
    np.testing.assert_allclose(pred["upper"].values - pred["mean"].values, half, rtol=1e-9)
    np.testing.assert_array_equal(pred["input"].values, T_PRED)


def dense_new_individual_nll(reference, log_hp):
    """-log N(y*; mhat(t*), Khat(t*, t*) + C(t*, t*) + s2 I) from the dense reference."""
    return reference.new_individual_nll(NEW_T, NEW_Y, log_hp)


def test_new_individual_objective_matches_dense_density_and_finite_differences(small_problem):
    """The compiled negative log-likelihood of a new individual's HP (one Gaussian block) is the
    dense -log N(y*; mhat, Khat + Psi*) and its gradient matches central differences."""
    model, reference = fit_fixed(small_problem, common_hp=False)
    mhat, khat = reference.mean_process(NEW_T)
    step = model._problem_.graphs.new_individual_step
    for log_hp in (np.log([1.0, 0.8, 0.25]), np.log([0.3, 2.5, 0.05])):
        value, grad = step(log_hp, NEW_T[:, None], NEW_Y, mhat, khat, 0.0)
        np.testing.assert_allclose(value, dense_new_individual_nll(reference, log_hp), rtol=1e-10)
        fd = central_differences(lambda x: step(x, NEW_T[:, None], NEW_Y, mhat, khat, 0.0)[0], log_hp)
        np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7)


def test_new_individual_hp_maximise_its_likelihood(small_problem):
    """Different HP, Type I, new_individual_hp="ml": the fitted HP are a local maximum of
    log N(y*; mhat, Khat + Psi*)."""
    model, reference = fit_fixed(small_problem, common_hp=False, new_individual_hp="ml")
    pred = model.predict((NEW_T, NEW_Y), T_PRED)
    assert pred.attrs["hp_source"] == "fitted"
    best = np.log([pred.attrs["hp_variance"], pred.attrs["hp_lengthscale"], pred.attrs["hp_noise"]])
    at_best = dense_new_individual_nll(reference, best)
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert dense_new_individual_nll(reference, best + rng.normal(0, 0.05, 3)) >= at_best - 1e-6
    assert dense_new_individual_nll(reference, np.log(np.median(DIFFERENT, axis=0))) >= at_best


def test_new_individual_hp_map_under_the_empirical_prior(small_problem):
    """new_individual_hp="map": the HP are a local maximum of the likelihood times the
    Gaussian prior fitted to the training individuals' log HP (mean, covariance + ridge on the
    diagonal), computed densely here; the likelihood alone is maximised elsewhere."""
    from magma_pymc.predict import PRIOR_RIDGE

    model, reference = fit_fixed(small_problem, common_hp=False, new_individual_hp="map")
    pred = model.predict((NEW_T, NEW_Y), T_PRED)
    assert pred.attrs["hp_source"] == "map"
    best = np.log([pred.attrs["hp_variance"], pred.attrs["hp_lengthscale"], pred.attrs["hp_noise"]])
    population = np.log(DIFFERENT)
    prior = stats_mvn(population.mean(axis=0), np.cov(population, rowvar=False) + PRIOR_RIDGE * np.eye(3))

    def neg_log_posterior(log_hp):
        return dense_new_individual_nll(reference, log_hp) - prior.logpdf(log_hp)

    at_best = neg_log_posterior(best)
    rng = np.random.default_rng(1)
    for _ in range(20):
        assert neg_log_posterior(best + rng.normal(0, 0.05, 3)) >= at_best - 1e-6
    ml = fit_fixed(small_problem, common_hp=False, new_individual_hp="ml")[0].predict((NEW_T, NEW_Y), T_PRED)
    ml_best = np.log([ml.attrs["hp_variance"], ml.attrs["hp_lengthscale"], ml.attrs["hp_noise"]])
    assert not np.allclose(ml_best, best, atol=1e-3)
    assert neg_log_posterior(ml_best) > at_best


def stats_mvn(mean, cov):
    from scipy import stats

    return stats.multivariate_normal(mean, cov)


def test_prediction_accepts_long_dataframe_and_keeps_user_order(small_problem):
    model, _ = fit_fixed(small_problem, common_hp=True)
    frame = pd.DataFrame({"ID": "new", "Input": NEW_T, "Output": NEW_Y})
    a = model.predict(frame, T_PRED)
    b = model.predict((NEW_T[::-1], NEW_Y[::-1]), T_PRED)
    np.testing.assert_allclose(a["mean"].values, b["mean"].values, atol=1e-12)
    assert a.attrs["individual"] == "new"
