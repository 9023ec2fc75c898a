"""MagmaClust with inducing points: dense references, the exact model on the union grid, K = 1 against MAGMA's
projected model, a monotone bound, the mean-process gradient against finite differences, errors, save/load."""

import warnings

import numpy as np
import pytest
from conftest import make_long
from reference import clustered_prediction, se
from scipy import stats
from test_cluster import HP, two_groups
from test_inducing import BAD_INDUCING

import magma_pymc as mp
from magma_pymc import guards
from magma_pymc.cluster import MagmaClust
from magma_pymc.cluster.inducing import projected_estep, projected_mean_objectives
from magma_pymc.cluster.linalg import individual_terms
from magma_pymc.cluster.simulate import simulate_clustered
from magma_pymc.jitter import JITTER_DEFAULT

T_PRED = np.array([0.0, 2.5, 5.0, 7.5, 11.0])
G7 = np.linspace(0.0, 10.0, 7)   # inducing points, well conditioned for dense inverses at lengthscale 1
M0 = 1.0


def soft_tau():
    tau = np.full((8, 2), 0.1)
    tau[:4, 0] = tau[4:, 1] = 0.9
    tau[0] = (0.6, 0.4)
    return tau


def fixed_fit(inducing, jitter=JITTER_DEFAULT):
    model = MagmaClust(2, max_iter=0, prior_mean=M0, inducing=inducing, jitter=jitter)
    return model.fit(make_long(two_groups()), responsibilities=soft_tau(), hyperparameters=HP)


def dense_projected_posterior(model, k, s):
    """Projected model, textbook dense formulas: mu_k(t) = m + K(t, g) Kgg^{-1} (mu_k(g) - m), u = mu_k(g) - m.

    Returns q(u) (mean, cov) on g and the mean process at inputs s given u (mean with m, cov).
    """
    state, train = model._state, model.data_
    v0, l0 = np.exp(state.mean_log_params[k])
    g = model.mean_process_grid[:, 0]
    kgg = se(g, g, v0, l0) + state.jitter * np.eye(len(g))
    kgg_inv = np.linalg.inv(kgg)
    precision, shift = kgg_inv.copy(), np.zeros(len(g))
    for i, ind in enumerate(train.individuals):
        v, ls, s2 = np.exp(state.log_params if state.log_params.ndim == 1 else state.log_params[i])
        t = ind.inputs[:, 0]
        psi_inv = np.linalg.inv(se(t, t, v, ls) + (s2 + state.jitter) * np.eye(len(t)))
        a = se(t, g, v0, l0) @ kgg_inv
        precision += state.tau[i, k] * a.T @ psi_inv @ a
        shift += state.tau[i, k] * a.T @ psi_inv @ (ind.outputs - M0)
    cov = np.linalg.inv(precision)
    mean = cov @ shift
    gain = se(s, g, v0, l0) @ kgg_inv
    mean_s = M0 + gain @ mean
    cov_s = se(s, s, v0, l0) + state.jitter * np.eye(len(s)) - gain @ se(g, s, v0, l0) + gain @ cov @ gain.T
    return mean, cov, mean_s, cov_s


@pytest.fixture(scope="module")
def fixed_model():
    """K = 2 on 7 inducing points, fixed HP and soft responsibilities (no VEM iteration)."""
    return fixed_fit(G7)


def test_q_mu_on_inducing_points_matches_dense_projected_reference(fixed_model):
    model = fixed_model
    post = model._estep.posterior
    np.testing.assert_array_equal(model.mean_process_grid[:, 0], G7)
    hyper = model.hyperposterior(T_PRED)
    for k in range(2):
        mean, cov, mean_s, cov_s = dense_projected_posterior(model, k, T_PRED)
        np.testing.assert_allclose(post.mean[k], mean, atol=1e-9)
        np.testing.assert_allclose(post.cov[k], cov, atol=1e-9)
        np.testing.assert_allclose(hyper["mean"].values[k], mean_s, atol=1e-9)
        np.testing.assert_allclose(hyper["cov"].values[k], cov_s, atol=1e-9)
    np.testing.assert_allclose(model.idata_["hyperposterior"]["mu_mean"].values, M0 + post.mean)
    assert model.idata_.attrs["inducing_points"] == len(G7)


def test_elbo_equals_dense_collapsed_bound_of_the_projected_model(fixed_model):
    """ELBO at the optimal q = sum tau (log pi - log tau) + sum_k log int p(u_k) prod_i N(y_i; mu_k(t_i), Psi_i)^tau_ik,
    the latter a dense joint Gaussian: prior covariance K(t, g) Kgg^{-1} K(g, t), tempered blocks Psi_i / tau_ik."""
    model = fixed_model
    state, train = model._state, model.data_
    tau = state.tau
    total = float((tau * (state.log_weights[None] - np.log(tau))).sum())
    t_all = np.concatenate([ind.inputs[:, 0] for ind in train.individuals])
    y_all = np.concatenate([ind.outputs for ind in train.individuals])
    v, ls, s2 = np.exp(state.log_params)
    for k in range(2):
        v0, l0 = np.exp(state.mean_log_params[k])
        kgg = se(G7, G7, v0, l0) + state.jitter * np.eye(len(G7))
        cross = se(t_all, G7, v0, l0)
        cov = cross @ np.linalg.solve(kgg, cross.T)
        start, correction = 0, 0.0
        for i, ind in enumerate(train.individuals):
            n = ind.n_points
            psi = se(ind.inputs[:, 0], ind.inputs[:, 0], v, ls) + (s2 + state.jitter) * np.eye(n)
            cov[start:start + n, start:start + n] += psi / tau[i, k]
            correction += (0.5 * (1 - tau[i, k]) * (n * np.log(2 * np.pi) + np.linalg.slogdet(psi)[1])
                           - 0.5 * n * np.log(tau[i, k]))
            start += n
        total += stats.multivariate_normal(np.full(len(y_all), M0), cov).logpdf(y_all) + correction
    np.testing.assert_allclose(model.elbo_, total, rtol=1e-10)


def test_mixture_prediction_on_inducing_points_equals_brute_force(fixed_model):
    model = fixed_model
    t_obs, y_obs = np.array([1.0, 4.0, 6.5]), np.array([7.5, 7.0, 8.8])
    pred = model.predict((t_obs, y_obs), T_PRED)
    weights, means, variances = clustered_prediction(
        model._state.log_weights, lambda k, s: dense_projected_posterior(model, k, s)[2:],
        np.exp(model._state.log_params), t_obs, y_obs, T_PRED)
    np.testing.assert_allclose(pred["cluster_probability"].values, weights, atol=1e-9)
    np.testing.assert_allclose(pred["cluster_mean"].values, means, atol=1e-8)
    np.testing.assert_allclose(pred["cluster_variance"].values, variances, atol=1e-8)
    np.testing.assert_allclose(pred["mean"].values, weights @ means, atol=1e-8)
    type2 = model.predict(None, T_PRED)
    np.testing.assert_allclose(type2["cluster_probability"].values, np.exp(model._state.log_weights))
    np.testing.assert_allclose(type2["cluster_mean"].values[0], dense_projected_posterior(model, 0, T_PRED)[2],
                               atol=1e-8)


def test_inducing_points_on_the_union_grid_give_the_exact_fit():
    """With g = t, K(t_i, g) L_g^{-T} = P_i L_g up to the jitter's j P_i L_g^{-T}.

    Without jitter the fixed-HP fits agree to rounding, and a whole VEM fit (default jitter) to ~1e-8.
    """
    exact = fixed_fit(None, jitter=0.0)
    union = exact.data_.grid
    projected = fixed_fit(union, jitter=0.0)
    assert projected._problem_.graphs.projected and not exact._problem_.graphs.projected
    np.testing.assert_allclose(projected.elbo_, exact.elbo_, rtol=1e-12)
    np.testing.assert_allclose(projected._estep.posterior.mean, exact._estep.posterior.mean, atol=1e-10)
    np.testing.assert_allclose(projected._estep.posterior.cov, exact._estep.posterior.cov, atol=1e-10)
    np.testing.assert_allclose(projected._estep.expected, exact._estep.expected, atol=1e-10)
    new = (np.array([1.0, 4.0, 6.5]), np.array([7.5, 7.0, 8.8]))
    for name in ("mean", "variance", "cluster_probability"):
        np.testing.assert_allclose(projected.predict(new, T_PRED)[name], exact.predict(new, T_PRED)[name], atol=1e-10)

    data = make_long(two_groups())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.ConvergenceWarning)
        exact = MagmaClust(2, prior_mean=M0, random_state=0).fit(data)
        projected = MagmaClust(2, prior_mean=M0, random_state=0, inducing=union).fit(data)
    assert projected.n_iter_ == exact.n_iter_ >= 2
    np.testing.assert_allclose(projected._state.mean_log_params, exact._state.mean_log_params, atol=1e-7)
    np.testing.assert_allclose(projected._state.log_params, exact._state.log_params, atol=1e-7)
    np.testing.assert_allclose(projected.responsibilities_.values, exact.responsibilities_.values, atol=1e-8)
    np.testing.assert_allclose(projected._trace.elbo, exact._trace.elbo, rtol=1e-9)
    for name in ("mean", "variance", "lower", "upper", "cluster_probability"):
        np.testing.assert_allclose(projected.predict(new, T_PRED)[name], exact.predict(new, T_PRED)[name], atol=1e-7,
                                   err_msg=name)


@pytest.mark.parametrize("common_hp", [True, False], ids=["commonHP", "differentHP"])
def test_one_cluster_with_inducing_points_is_magma_with_them(common_hp):
    sim = mp.simulate(n_individuals=8, n_points=10, seed=4, common_grid=False, common_hp=True, scheme="smooth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # MagmaClust fits the mean-process HP by maximum likelihood and the new individual's HP by MAP
        magma = mp.Magma(common_hp=common_hp, mean_process_prior=None, new_individual_hp="map",
                         inducing=12).fit(sim.data)
        clust = MagmaClust(1, common_hp=common_hp, inducing=12).fit(sim.data)
    np.testing.assert_array_equal(clust.mean_process_grid, magma.mean_process_grid)
    # The two codes round differently (MAGMA's mean-process step on inducing points has its own closed-form
    # gradient, magma_pymc.projected_step); L-BFGS-B stops within its tolerance on a flat likelihood (measured:
    # 1e-7 on the mean-process HP, 1.4e-6 on the individual HP with different HP).
    np.testing.assert_allclose(np.exp(clust._state.mean_log_params[0]), magma.hyperparameters_.mean_process,
                               rtol=1e-6)
    np.testing.assert_allclose(np.exp(clust._state.log_params), magma.hyperparameters_.individual.values.squeeze(),
                               rtol=1e-5)
    # Equal while the HP paths are (1e-13 at the first iterations), then within their ~1e-6 (measured 6.6e-9).
    np.testing.assert_allclose(clust._trace.elbo, magma.idata_["em_trace"]["log_likelihood"].values, rtol=1e-7)
    np.testing.assert_allclose(clust._trace.elbo[:3], magma.idata_["em_trace"]["log_likelihood"].values[:3],
                               rtol=1e-10)
    new = sim.data[sim.data["ID"] == sim.data["ID"].iloc[0]].iloc[:4]
    expected, got = magma.predict(new, T_PRED), clust.predict(new, T_PRED)
    for name in ("mean", "variance", "lower", "upper", "latent_variance"):
        # HP within ~1e-6 (above): predictions within 1e-6 (measured 2.9e-7); exact at fixed HP (dense tests).
        np.testing.assert_allclose(got[name].values, expected[name].values, rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("settings", [{}, {"common_hp": False}, {"shared_mean_hp": True}],
                         ids=["default", "differentHP", "sharedMeanHP"])
def test_elbo_never_decreases_with_inducing_points(settings):
    sim = simulate_clustered(3, 12, 8, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.ConvergenceWarning)
        model = MagmaClust(3, random_state=0, max_iter=6, inducing=15, **settings).fit(sim.data)
    elbo = model.idata_["vem_trace"]["elbo"].values
    assert len(elbo) >= 3
    assert np.all(np.diff(elbo) >= -1e-6 * np.abs(elbo[:-1])), np.diff(elbo)
    np.testing.assert_allclose(model.responsibilities_.sum(axis=1), 1.0)
    assert model.hyperposterior()["mean"].shape == (model.n_clusters_, 15)
    pred = model.predict(sim.data[sim.data["ID"] == sim.data["ID"].iloc[0]].iloc[:4], T_PRED)
    assert np.all(np.isfinite(pred["mean"].values)) and np.all(pred["lower"].values < pred["upper"].values)


def test_mean_hp_gradient_of_the_projected_bound_against_finite_differences(fixed_model):
    """The mean-process objective (minus each cluster's collapsed bound, through the loadings S_ik(gamma_k)):
    PyTensor's gradient against central differences, and its value against the E-step's bound and the ELBO."""
    model = fixed_model
    state, problem = model._state, model._problem_
    terms = individual_terms(problem.psi(state.log_params, state.jitter), problem.residuals, problem.mask)
    objectives = projected_mean_objectives(problem, state.tau, terms, state.jitter)
    bounds = projected_estep(problem, state.mean_log_params, terms, state.tau, state.jitter)[4]
    entropy = float((state.tau * (state.log_weights[None] - np.log(state.tau))).sum())
    values = [objectives[k](state.mean_log_params[k])[0] for k in range(2)]
    np.testing.assert_allclose(values, -bounds, rtol=1e-12)
    np.testing.assert_allclose(entropy - sum(values), model.elbo_, rtol=1e-10)
    step = 1e-5
    for k, point in enumerate((np.log([4.0, 1.0]), np.log([2.5, 1.8]))):
        value, grad = objectives[k](point)
        assert np.isfinite(value)
        numeric = [(objectives[k](point + step * e)[0] - objectives[k](point - step * e)[0]) / (2 * step)
                   for e in np.eye(len(point))]
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-7)
        assert np.max(np.abs(grad)) > 1e-3   # not a vacuous comparison at a stationary point


@pytest.mark.parametrize("kwargs,message", BAD_INDUCING, ids=[m for _, m in BAD_INDUCING])
def test_bad_inducing_settings_fail_early_as_magma(kwargs, message):
    with pytest.raises(ValueError, match=message) as clust_error:
        MagmaClust(2, **kwargs)
    with pytest.raises(ValueError) as magma_error:
        mp.Magma(**kwargs)
    assert str(clust_error.value) == str(magma_error.value)


def test_more_inducing_points_than_inputs_and_points_off_the_data():
    data = make_long(two_groups())
    n_inputs = len(np.unique(data["Input"]))
    with pytest.raises(ValueError, match=f"only {n_inputs} distinct input"):
        MagmaClust(2, inducing=n_inputs + 1).fit(data)
    with pytest.warns(mp.MagmaWarning, match="outside the inducing points' range"):
        MagmaClust(2, max_iter=0, inducing=np.linspace(0.0, 2.0, 4)).fit(data, responsibilities=soft_tau(),
                                                                          hyperparameters=HP)


def test_costly_inducing_points_warn_as_magma(monkeypatch):
    """MAGMA's cost guard (magma_pymc.guards), here with its threshold lowered so that a small fit crosses it."""
    monkeypatch.setattr(guards, "WARN_SECONDS", -1.0)
    with pytest.warns(mp.PerformanceWarning, match="7 inducing points"):
        fixed_fit(7)


@pytest.mark.parametrize("inducing", [7, G7], ids=["int", "array"])
def test_save_and_load_round_trip_with_inducing_points(tmp_path, inducing):
    model = fixed_fit(inducing)
    path = tmp_path / "clust.nc"
    model.save(path)
    loaded = MagmaClust.load(path)
    np.testing.assert_array_equal(np.asarray(loaded.inducing), np.asarray(model.inducing))
    np.testing.assert_array_equal(loaded.mean_process_grid, model.mean_process_grid)
    assert loaded.idata_.attrs["inducing_points"] == 7
    new = (np.array([1.0, 4.0]), np.array([0.5, -0.3]))
    for name in ("mean", "lower", "upper", "cluster_probability"):
        np.testing.assert_array_equal(loaded.predict(new, T_PRED)[name].values, model.predict(new, T_PRED)[name].values)
    assert loaded.elbo_ == pytest.approx(model.elbo_, rel=1e-12)
