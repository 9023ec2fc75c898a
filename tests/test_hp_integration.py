"""The new individual's HP integrated over their posterior: against dense quadrature and the plug-in limit."""

import itertools

import numpy as np
import pytest
from conftest import NEW_T, NEW_Y, T_PRED, fit_fixed
from scipy import optimize, stats

import magma_pymc as mp
from magma_pymc import hp_integration as hpi
from magma_pymc.predict import mean_process_at

PRIOR = hpi.PopulationPrior(np.log([1.0, 0.8, 0.25]),
                            np.array([[0.09, 0.02, 0.0], [0.02, 0.09, 0.0], [0.0, 0.0, 0.16]]))


@pytest.fixture
def fitted(small_problem):
    model, reference = fit_fixed(small_problem, common_hp=False)
    joint_inputs = np.concatenate([NEW_T, T_PRED])[:, None]
    state, problem = model.result_.point, model.result_.problem
    joint_mean, joint_cov = mean_process_at(problem.graphs, (state.mean_log_params, state.log_params),
                                            problem.data_args, state.jitter, joint_inputs,
                                            model.result_.prior_mean(joint_inputs))
    return model, reference, joint_mean, joint_cov


def dense_log_posterior(reference, x):
    return -reference.new_individual_nll(NEW_T, NEW_Y, x) + stats.multivariate_normal(PRIOR.mean, PRIOR.cov).logpdf(x)


def quadrature_moments(reference, prior, likelihood_weight):
    """Predictive mean and variance at T_PRED by a 15^3-node trapezoid rule over the log HP (+-4.5 prior sd)
    of the posterior with the likelihood to the power ``likelihood_weight``, each node from the dense joint GP."""
    sd = np.sqrt(np.diag(prior.cov))
    axes = [np.linspace(m - 4.5 * s, m + 4.5 * s, 15) for m, s in zip(prior.mean, sd, strict=True)]
    nodes = np.array(list(itertools.product(*axes)))
    density = stats.multivariate_normal(prior.mean, prior.cov)
    log_post = np.array([-likelihood_weight * reference.new_individual_nll(NEW_T, NEW_Y, x) + density.logpdf(x)
                         for x in nodes])
    w = np.exp(log_post - log_post.max())
    keep = w > 1e-9
    nodes, w = nodes[keep], w[keep] / w[keep].sum()
    preds = [reference.predict(NEW_T, NEW_Y, T_PRED, np.exp(x)) for x in nodes]
    means = np.array([m for m, _ in preds])
    variances = np.array([np.diag(c) for _, c in preds]) + np.exp(nodes[:, 2])[:, None]
    mean = w @ means
    return mean, w @ variances + w @ (means - mean) ** 2


def test_batched_likelihood_and_conditionals_match_dense_reference(fitted):
    model, reference, joint_mean, joint_cov = fitted
    n = len(NEW_T)
    xs = np.log([[1.0, 0.8, 0.25], [0.3, 2.5, 0.05], [4.0, 0.2, 1.0]])
    values = hpi.log_likelihoods(model.kernel, xs, NEW_T[:, None], NEW_Y, joint_mean[:n], joint_cov[:n, :n], 0.0)
    np.testing.assert_allclose(values, [-reference.new_individual_nll(NEW_T, NEW_Y, x) for x in xs], rtol=1e-10)
    comp = hpi.conditional_predictions(model.kernel, xs, NEW_T[:, None], NEW_Y, T_PRED[:, None], joint_mean, joint_cov,
                                       0.0)
    for k, x in enumerate(xs):
        mean, latent = reference.predict(NEW_T, NEW_Y, T_PRED, np.exp(x))
        np.testing.assert_allclose(comp.means[k], mean, atol=1e-8)
        np.testing.assert_allclose(comp.latent_covs[k], latent, atol=1e-8)
        assert comp.noise[k] == pytest.approx(np.exp(x[2]))


@pytest.mark.parametrize("likelihood_weight", [1.0, 0.2])
def test_integrated_prediction_matches_dense_quadrature(fitted, likelihood_weight):
    """Mixture mean and variance from 4000 importance draws against a 15^3-node trapezoid rule over
    the log HP (+-4.5 prior sd), every node's posterior weight and prediction from the dense joint GP;
    the posterior (weight 1) and the tempered posterior (likelihood to the power 0.2)."""
    model, reference, joint_mean, joint_cov = fitted
    n = len(NEW_T)
    ref_mean, ref_var = quadrature_moments(reference, PRIOR, likelihood_weight)

    def neg_log_post(x):
        return -dense_log_posterior(reference, x)

    # The proposal is centred on the posterior mode (what Magma.predict passes, whatever the weight).
    mode = optimize.minimize(neg_log_post, PRIOR.mean, method="Nelder-Mead", options=dict(xatol=1e-9, fatol=1e-12)).x
    draws = hpi.posterior_draws(
        model.kernel, NEW_T[:, None], NEW_Y, joint_mean[:n], joint_cov[:n, :n], PRIOR, mode, 0.0, n_draws=4000, seed=1,
        likelihood_weight=likelihood_weight,
    )
    assert draws.ess > 1000
    comp = hpi.conditional_predictions(model.kernel, draws.log_params, NEW_T[:, None], NEW_Y, T_PRED[:, None],
                                       joint_mean, joint_cov, 0.0)
    mean = draws.weights @ comp.means
    var = draws.weights @ (np.diagonal(comp.latent_covs, axis1=1, axis2=2) + comp.noise[:, None])
    var += draws.weights @ (comp.means - mean) ** 2
    # Importance-sampling error: well under 1 % of the predictive sd (mean) and 2 % (variance).
    np.testing.assert_allclose(mean, ref_mean, atol=0.01 * np.sqrt(ref_var).min())
    np.testing.assert_allclose(var, ref_var, rtol=0.02)
    # The integration matters here: the plug-in at the mode is measurably narrower.
    plug_mean, plug_latent = reference.predict(NEW_T, NEW_Y, T_PRED, np.exp(mode))
    assert np.max(np.abs(np.diag(plug_latent) + np.exp(mode[2]) - ref_var) / ref_var) > 0.05


def test_point_mass_posterior_reduces_to_the_plug_in_prediction(fitted):
    """A population distribution of (numerically) zero spread: every draw sits at its centre."""
    model, reference, joint_mean, joint_cov = fitted
    n = len(NEW_T)
    centre = np.log([0.7, 1.1, 0.2])
    tight = hpi.PopulationPrior(centre, 1e-16 * np.eye(3))
    draws = hpi.posterior_draws(model.kernel, NEW_T[:, None], NEW_Y, joint_mean[:n], joint_cov[:n, :n], tight, centre,
                                0.0, n_draws=50)
    comp = hpi.conditional_predictions(model.kernel, draws.log_params, NEW_T[:, None], NEW_Y, T_PRED[:, None],
                                       joint_mean, joint_cov, 0.0)
    mean, latent = reference.predict(NEW_T, NEW_Y, T_PRED, np.exp(centre))
    np.testing.assert_allclose(draws.weights @ comp.means, mean, atol=1e-7)
    var = draws.weights @ np.diagonal(comp.latent_covs, axis1=1, axis2=2) + draws.weights @ comp.noise
    np.testing.assert_allclose(var, np.diag(latent) + np.exp(centre[2]), rtol=1e-6)


def test_population_prior_estimate_and_fallbacks():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 3))
    prior = hpi.PopulationPrior.from_training(x)
    np.testing.assert_allclose(prior.mean, x.mean(axis=0))
    np.testing.assert_allclose(prior.cov, np.cov(x, rowvar=False) + hpi.POPULATION_RIDGE * np.eye(3))
    assert not prior.diagonal
    few = hpi.PopulationPrior.from_training(x[:3])  # 3 individuals, 3 log HP: diagonal covariance
    assert few.diagonal and np.count_nonzero(few.cov - np.diag(np.diag(few.cov))) == 0
    np.testing.assert_allclose(np.diag(few.cov), x[:3].var(axis=0, ddof=1) + hpi.POPULATION_RIDGE)
    with pytest.raises(ValueError, match="at least 2 training"):
        hpi.PopulationPrior.from_training(x[:1])
    with pytest.raises(ValueError, match="NaN"):
        hpi.PopulationPrior.from_training(np.vstack([x, [np.nan, 0, 0]]))


def test_type_ii_draws_follow_the_population():
    draws = hpi.population_draws(PRIOR, n_draws=4000, seed=3)
    np.testing.assert_allclose(draws.weights.sum(), 1.0)
    np.testing.assert_allclose(draws.log_params.mean(axis=0), PRIOR.mean, atol=4 * 0.4 / np.sqrt(4000))
    np.testing.assert_allclose(np.cov(draws.log_params, rowvar=False), PRIOR.cov, atol=0.015)


def test_finite_difference_hessian_of_a_quadratic():
    a = np.array([[2.0, 0.3, -0.1], [0.3, 1.0, 0.2], [-0.1, 0.2, 0.5]])
    centre = np.array([0.1, -0.4, 0.7])
    log_density = lambda x: -0.5 * np.einsum("si,ij,sj->s", x - centre, a, x - centre)  # noqa: E731
    np.testing.assert_allclose(hpi._hessian(log_density, np.array([0.3, 0.2, -0.1])), a, atol=1e-6)


def test_predict_integrates_by_default_and_states_its_fallbacks(small_problem):
    """Magma.predict (different HP) returns the mixture of hp_integration's draws; with as many
    training individuals as log HP the population covariance is diagonal (stated in attrs); with one
    individual there is no population to estimate: the HP are plugged in, with a warning; an
    interval level outside (0, 1): an error."""
    model, _ = fit_fixed(small_problem, common_hp=False)
    pred = model.predict((NEW_T, NEW_Y), T_PRED, components=True)
    assert pred.attrs["hp_source"] == "integrated" and pred.attrs["population_cov"] == "full"
    w = pred["component_weight"].values
    np.testing.assert_allclose(w.sum(), 1.0)
    np.testing.assert_allclose(w @ pred["component_mean"].values, pred["mean"].values, rtol=1e-10)
    between = w @ (pred["component_mean"].values - pred["mean"].values) ** 2
    np.testing.assert_allclose(w @ pred["component_variance"].values + between, pred["variance"].values, rtol=1e-8)
    three, _ = fit_fixed(small_problem[:3], common_hp=False)
    assert three.predict((NEW_T, NEW_Y), T_PRED).attrs["population_cov"] == "diagonal"
    one, _ = fit_fixed(small_problem[:1], common_hp=False)
    with pytest.warns(mp.MagmaWarning, match="one training individual"):
        fallback = one.predict((NEW_T, NEW_Y), T_PRED)
    assert fallback.attrs["hp_source"] == "fitted" and np.all(np.isfinite(fallback["upper"].values))
    with pytest.raises(ValueError, match="at least 2 training individuals"):
        hpi.PopulationPrior.from_training(np.zeros((1, 3)))
    for prob in (0.0, 1.0, 1.2, float("nan")):
        with pytest.raises(ValueError, match="prob"):
            model.predict((NEW_T, NEW_Y), T_PRED, prob=prob)


def test_calibrated_option_predicts_the_tempered_mixture(small_problem):
    """``new_individual_hp="calibrated"`` at a likelihood weight of 0.2 (set on the fit, as its choice is
    cached): Magma.predict's mixture mean and variance match a dense trapezoid rule over the tempered
    posterior under the fit's population distribution (200 importance draws: within 3 % of the sd and of
    the variance); the posterior's (weight 1) variance lies outside that tolerance; a weight outside
    [0, 1] is an error."""
    from magma_pymc.likelihood_weight import WeightChoice
    from magma_pymc.predictive import _population

    model, reference = fit_fixed(small_problem, common_hp=False)
    model.new_individual_hp = "calibrated"
    object.__setattr__(model.result_, "_likelihood_weight", WeightChoice(0.2, {}, 0))
    pred = model.predict((NEW_T, NEW_Y), T_PRED, components=True)
    assert pred.attrs["hp_source"] == "tempered" and pred.attrs["hp_likelihood_weight"] == 0.2
    prior = _population(model.result_, model.result_.point)
    ref_mean, ref_var = quadrature_moments(reference, prior, 0.2)
    np.testing.assert_allclose(pred["mean"].values, ref_mean, atol=0.03 * np.sqrt(ref_var).min())
    np.testing.assert_allclose(pred["variance"].values, ref_var, rtol=0.03)
    # The weight matters here: the untempered posterior's variance is more than twice that tolerance away.
    _, posterior_var = quadrature_moments(reference, prior, 1.0)
    assert np.max(np.abs(posterior_var - ref_var) / ref_var) > 0.06
    n = len(NEW_T)
    with pytest.raises(ValueError, match="likelihood_weight"):
        hpi.posterior_draws(model.kernel, NEW_T[:, None], NEW_Y, NEW_Y * 0, np.eye(n), prior, prior.mean, 0.0,
                            likelihood_weight=1.5)
    with pytest.raises(ValueError, match="new_individual_hp"):
        mp.Magma(common_hp=False, new_individual_hp="tempered")
