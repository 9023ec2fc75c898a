"""MagmaClust: VEM against dense NumPy references, K = 1 against MAGMA, mixture predictions, bad input."""

import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import make_long
from reference import clustered_prediction, se
from scipy import optimize, stats
from scipy.special import logsumexp

import magma_pymc as mp
from magma_pymc.cluster import ClusterWarning, MagmaClust
from magma_pymc.cluster.metrics import adjusted_rand_index
from magma_pymc.cluster.mixture import mixture_interval, mixture_moments
from magma_pymc.cluster.simulate import simulate_clustered

T_PRED = np.array([0.0, 2.5, 5.0, 7.5, 11.0])
HP = {"mean_process": {"variance": 4.0, "lengthscale": 1.0},  # well conditioned for dense inverses
      "individual": {"variance": 1.0, "lengthscale": 1.5, "noise": 0.2}}


def two_groups(seed=0, n_per_group=4, n_points=6):
    """Two well-separated groups of curves on an uncommon grid."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(0, 10, 21)
    individuals = []
    for level in (0.0, 8.0):
        for _ in range(n_per_group):
            t = np.sort(rng.choice(grid, n_points, replace=False))
            individuals.append((t, level + np.sin(t) + rng.normal(0, 0.4, n_points)))
    return individuals


def dense_cluster_posterior(model, k, s):
    """q(mu_k) at inputs s from the textbook (dense inverse) formulas of the docs, given the model's tau and HP."""
    state, train = model._state, model.data_
    v0, l0 = np.exp(state.mean_log_params[k])
    grid = train.grid[:, 0]
    prior = se(grid, grid, v0, l0) + state.jitter * np.eye(len(grid))
    m = model._prior_mean_value(train.grid)
    precision, shift = np.linalg.inv(prior), np.linalg.inv(prior) @ m
    for i, ind in enumerate(train.individuals):
        v, l, s2 = np.exp(state.log_params if state.log_params.ndim == 1 else state.log_params[i])
        t = ind.inputs[:, 0]
        psi_inv = np.linalg.inv(se(t, t, v, l) + (s2 + state.jitter) * np.eye(len(t)))
        pos = np.searchsorted(grid, t)
        precision[np.ix_(pos, pos)] += state.tau[i, k] * psi_inv
        shift[pos] += state.tau[i, k] * psi_inv @ ind.outputs
    cov = np.linalg.inv(precision)
    mean = cov @ shift
    k_sg = se(s, grid, v0, l0)
    solve = np.linalg.solve(prior, k_sg.T).T
    mean_s = model._prior_mean_value(s[:, None]) + solve @ (mean - m)
    cov_s = se(s, s, v0, l0) - solve @ k_sg.T + solve @ cov @ solve.T
    return mean, cov, mean_s, cov_s


@pytest.fixture(scope="module")
def fixed_model():
    """K = 2 at fixed HP and soft responsibilities (no VEM iteration)."""
    individuals = two_groups()
    tau = np.full((8, 2), 0.1)
    tau[:4, 0] = tau[4:, 1] = 0.9
    tau[0] = (0.6, 0.4)
    model = MagmaClust(2, max_iter=0, prior_mean=1.0)
    return model.fit(make_long(individuals), responsibilities=tau, hyperparameters=HP), individuals


def test_q_mu_at_fixed_responsibilities_matches_dense_reference(fixed_model):
    model, _ = fixed_model
    post = model._estep.posterior
    grid = model.data_.grid[:, 0]
    for k in range(2):
        mean, cov, mean_s, cov_s = dense_cluster_posterior(model, k, T_PRED)
        np.testing.assert_allclose(model._prior_mean_value(model.data_.grid) + post.mean[k], mean, atol=1e-8)
        np.testing.assert_allclose(post.cov[k], cov, atol=1e-8)
        hyper = model.hyperposterior(T_PRED)
        np.testing.assert_allclose(hyper["mean"].values[k], mean_s, atol=1e-8)
        np.testing.assert_allclose(hyper["cov"].values[k], cov_s, atol=1e-8)
    assert model.hyperposterior()["mean"].shape == (2, len(grid))


def test_elbo_equals_collapsed_bound(fixed_model):
    """ELBO at the optimal q(mu) = sum tau (log pi - log tau) + sum_k log int p(mu_k) prod_i N(y_i; mu_k, Psi_i)^tau_ik,
    the latter from a dense joint Gaussian with tempered covariances Psi_i / tau_ik."""
    model, _ = fixed_model
    state, train = model._state, model.data_
    tau, log_pi = state.tau, state.log_weights
    total = float((tau * (log_pi[None] - np.log(tau))).sum())
    t_all = np.concatenate([ind.inputs[:, 0] for ind in train.individuals])
    y_all = np.concatenate([ind.outputs for ind in train.individuals])
    v, l, s2 = np.exp(state.log_params)
    for k in range(2):
        v0, l0 = np.exp(state.mean_log_params[k])
        cov = se(t_all, t_all, v0, l0) + state.jitter * np.eye(len(t_all))  # jitter of K_k through P_i
        start, correction = 0, 0.0
        for i, ind in enumerate(train.individuals):
            n = ind.n_points
            psi = se(ind.inputs[:, 0], ind.inputs[:, 0], v, l) + (s2 + state.jitter) * np.eye(n)
            cov[start:start + n, start:start + n] += psi / tau[i, k]
            # N(y; mu, Psi)^tau = N(y; mu, Psi / tau) (2 pi)^{n(1 - tau)/2} |Psi|^{(1 - tau)/2} tau^{-n/2}
            correction += (0.5 * (1 - tau[i, k]) * (n * np.log(2 * np.pi) + np.linalg.slogdet(psi)[1])
                           - 0.5 * n * np.log(tau[i, k]))
            start += n
        total += stats.multivariate_normal(np.full(len(y_all), 1.0), cov).logpdf(y_all) + correction
    # The jitter enters K_k on the grid, not on every observation: compare with a tolerance above its effect.
    np.testing.assert_allclose(model.elbo_, total, rtol=1e-7)


def test_mixture_prediction_equals_brute_force_mixture(fixed_model):
    model, _ = fixed_model
    t_obs, y_obs = np.array([1.0, 4.0, 6.5]), np.array([7.5, 7.0, 8.8])
    pred = model.predict((t_obs, y_obs), T_PRED, full_cov=True)
    weights, means, variances = clustered_prediction(
        model._state.log_weights, lambda k, s: dense_cluster_posterior(model, k, s)[2:],
        np.exp(model._state.log_params), t_obs, y_obs, T_PRED)
    np.testing.assert_allclose(pred["cluster_probability"].values, weights, atol=1e-8)
    np.testing.assert_allclose(pred["cluster_mean"].values, means, atol=1e-7)
    np.testing.assert_allclose(pred["cluster_variance"].values, variances, atol=1e-7)
    np.testing.assert_allclose(pred["mean"].values, weights @ means, atol=1e-7)
    second = weights @ (variances + means**2) - (weights @ means) ** 2
    np.testing.assert_allclose(pred["variance"].values, second, atol=1e-7)
    np.testing.assert_allclose(np.diag(pred["cov"].values), second, atol=1e-7)
    for j in range(len(T_PRED)):
        def cdf(x, j=j):
            return weights @ stats.norm.cdf(x, means[:, j], np.sqrt(variances[:, j]))
        for bound, p in (("lower", 0.025), ("upper", 0.975)):
            root = optimize.brentq(lambda x, p=p: cdf(x) - p, -100, 100, xtol=1e-12)
            np.testing.assert_allclose(pred[bound].values[j], root, atol=1e-7)
    assert pred.attrs["prediction_type"] == "I" and pred.attrs["hp_source"] == "common"
    type2 = model.predict(None, T_PRED)
    np.testing.assert_allclose(type2["cluster_probability"].values, np.exp(model._state.log_weights))


def test_mixture_quantiles_against_root_finding():
    rng = np.random.default_rng(3)
    weights = np.array([0.2, 0.5, 0.3])
    means, variances = rng.normal(0, 3, (3, 7)), rng.uniform(0.1, 2, (3, 7))
    lower, upper = mixture_interval(weights, means, variances, 0.9)
    for j in range(7):
        cdf = lambda x, j=j: weights @ stats.norm.cdf(x, means[:, j], np.sqrt(variances[:, j]))  # noqa: E731
        assert cdf(lower[j]) == pytest.approx(0.05, abs=1e-12)
        assert cdf(upper[j]) == pytest.approx(0.95, abs=1e-12)
    mean, variance = mixture_moments(weights, means, variances)
    np.testing.assert_allclose(variance, weights @ (variances + means**2) - mean**2)


@pytest.mark.parametrize(
    "settings", [{"common_hp": True}, {"common_hp": False}, {"common_hp": True, "common_grid": True}],
    ids=["commonHP", "differentHP", "commonHP-commonGrid"],
)
def test_one_cluster_reproduces_magma(settings):
    common_grid = settings.pop("common_grid", False)
    sim = mp.simulate(n_individuals=8, n_points=10, seed=4, common_grid=common_grid, common_hp=True, scheme="smooth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # MagmaClust fits the mean-process HP by maximum likelihood and the new individual's HP by MAP
        magma = mp.Magma(**settings, mean_process_prior=None, new_individual_hp="map").fit(sim.data)
        clust = MagmaClust(1, **settings).fit(sim.data)
    np.testing.assert_allclose(np.exp(clust._state.mean_log_params[0]), magma.hyperparameters_.mean_process, rtol=1e-8)
    np.testing.assert_allclose(np.exp(clust._state.log_params), magma.hyperparameters_.individual.values.squeeze(),
                               rtol=1e-8)
    np.testing.assert_allclose(clust.elbo_, magma.log_likelihood_, rtol=1e-10)
    np.testing.assert_allclose(clust._trace.elbo, magma.idata_["em_trace"]["log_likelihood"].values, rtol=1e-10)
    new = sim.data[sim.data["ID"] == sim.data["ID"].iloc[0]].iloc[:4]
    expected, got = magma.predict(new, T_PRED), clust.predict(new, T_PRED)
    for name in ("mean", "variance", "lower", "upper", "latent_variance", "latent_lower", "latent_upper"):
        np.testing.assert_allclose(got[name].values, expected[name].values, rtol=1e-8, atol=1e-8, err_msg=name)
    assert got.attrs["hp_source"] == expected.attrs["hp_source"]


@pytest.mark.parametrize("settings", [{}, {"common_hp": False}, {"shared_mean_hp": True},
                                      {"mean_step": "expected"}],
                         ids=["default", "differentHP", "sharedMeanHP", "expectedMeanStep"])
def test_elbo_never_decreases(settings):
    sim = simulate_clustered(3, 12, 8, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.ConvergenceWarning)
        model = MagmaClust(3, random_state=0, max_iter=6, **settings).fit(sim.data)
    elbo = model.idata_["vem_trace"]["elbo"].values
    assert np.all(np.diff(elbo) >= -1e-6 * np.abs(elbo[:-1])), np.diff(elbo)
    assert np.all(np.isfinite(model.responsibilities_.values))
    np.testing.assert_allclose(model.responsibilities_.sum(axis=1), 1.0)
    assert model.idata_["clusters"]["responsibilities"].dims == ("individual", "cluster")
    first = sim.data[sim.data["ID"] == sim.data["ID"].iloc[0]].iloc[:4]
    pred = model.predict(first, T_PRED)
    assert np.all(np.isfinite(pred["mean"].values)) and np.all(pred["lower"].values < pred["upper"].values)
    np.testing.assert_allclose(pred["cluster_probability"].values.sum(), 1.0)
    assert pred.attrs["hp_source"] == ("common" if model.common_hp else "map")


def test_labels_are_canonical_and_groups_recovered():
    individuals = two_groups(seed=2)
    data = make_long(individuals)
    truth = np.repeat([0, 1], 4)
    first = MagmaClust(2).fit(data, responsibilities=np.eye(2)[truth])
    swapped = MagmaClust(2).fit(data, responsibilities=np.eye(2)[1 - truth])
    np.testing.assert_array_equal(first.labels_.values, swapped.labels_.values)
    np.testing.assert_allclose(first._state.mean_log_params, swapped._state.mean_log_params, rtol=1e-6)
    assert adjusted_rand_index(truth, MagmaClust(2, random_state=0).fit(data).labels_) == 1.0
    assert first.hyperposterior()["mean"].values[0].mean() < first.hyperposterior()["mean"].values[1].mean()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_bad_number_of_clusters(bad):
    with pytest.raises(ValueError, match="n_clusters"):
        MagmaClust(bad)


def test_more_clusters_than_individuals_and_bad_responsibilities():
    data = make_long(two_groups()[:3])
    with pytest.raises(ValueError, match="exceeds the number of individuals"):
        MagmaClust(4).fit(data)
    with pytest.raises(mp.MagmaInputError, match="shape"):
        MagmaClust(2).fit(data, responsibilities=np.ones((3, 3)) / 3)
    with pytest.raises(RuntimeError, match="fit"):
        MagmaClust(2).predict(None, T_PRED)


def test_emptied_cluster_is_dropped_without_nan():
    individuals = two_groups(seed=5)
    tau = np.zeros((8, 3))
    tau[:4, 0] = tau[4:, 1] = 0.98
    tau[:, 2] = 0.02  # a third cluster nobody belongs to
    tau[:, :2] += 0.0
    tau /= tau.sum(axis=1, keepdims=True)
    with pytest.warns(ClusterWarning, match="emptied"):
        model = MagmaClust(3, max_iter=5).fit(make_long(individuals), responsibilities=tau)
    assert model.n_clusters_ == 2 and model.responsibilities_.shape == (8, 2)
    assert np.isfinite(model.elbo_) and np.all(np.isfinite(model._state.mean_log_params))
    assert np.all(np.isfinite(model.predict(None, T_PRED)["mean"].values))


def test_save_and_load_round_trip(tmp_path, fixed_model):
    model, _ = fixed_model
    path = tmp_path / "clust.nc"
    model.save(path)
    loaded = MagmaClust.load(path)
    new = (np.array([1.0, 4.0]), np.array([0.5, -0.3]))
    for name in ("mean", "lower", "upper", "cluster_probability"):
        np.testing.assert_array_equal(loaded.predict(new, T_PRED)[name].values, model.predict(new, T_PRED)[name].values)
    np.testing.assert_array_equal(loaded.responsibilities_.values, model.responsibilities_.values)
    assert loaded.elbo_ == pytest.approx(model.elbo_, rel=1e-12)
    with pytest.raises(ValueError, match="MagmaClust"):
        mp.Magma().fit(make_long(two_groups()), method="fixed", hyperparameters=HP).save(tmp_path / "m.nc") or \
            MagmaClust.load(tmp_path / "m.nc")


def test_simulator_is_seeded_and_labelled():
    first, second = simulate_clustered(3, 12, 5, seed=7, n_new=2), simulate_clustered(3, 12, 5, seed=7, n_new=2)
    assert first.data.equals(second.data) and set(first.labels) == {0, 1, 2}
    assert first.data["ID"].nunique() == 12 and first.new["ID"].nunique() == 2
    assert np.allclose(first.latent_at(first.data), first.latent_at(second.data))


def test_adjusted_rand_index():
    assert adjusted_rand_index([0, 0, 1, 1], [1, 1, 0, 0]) == 1.0
    # Hubert & Arabie's example value, computed by hand from the contingency table [[2, 1], [0, 2]]
    assert adjusted_rand_index([0, 0, 0, 1, 1], [0, 0, 1, 1, 1]) == pytest.approx((2 - 4 * 4 / 10) / (4 - 4 * 4 / 10))


def test_selection_table_and_plots(fixed_model):
    from magma_pymc.cluster import plots, select_n_clusters

    data = make_long(two_groups(seed=3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        selection = select_n_clusters(data, [1, 2, 3], random_state=0, max_iter=10)
    # short runs may stop early (ConvergenceWarning); K = 3 on two groups may empty a cluster (ClusterWarning)
    assert all(issubclass(w.category, (mp.ConvergenceWarning, ClusterWarning)) for w in caught), caught
    table = selection.table
    assert list(table.index) == [1, 2, 3] and selection.best == 2
    assert table.loc[3, "n_clusters_kept"] in (2, 3)  # a fit that emptied a cluster does not compete
    emptied = [w for w in caught if issubclass(w.category, ClusterWarning) and "emptied" in str(w.message)]
    assert bool(emptied) == (table.loc[3, "n_clusters_kept"] < 3)
    log_n = np.log(8 * 6)
    np.testing.assert_allclose(table["vbic"], table["elbo"] - 0.5 * table["n_params"] * log_n)
    assert list(table["n_params"][: 2]) == [5, 8]  # (K - 1) + 2 K + 3, common individual HP
    with pytest.raises(ValueError, match="n_clusters"):
        select_n_clusters(data, [0, 2])
    model, _ = fixed_model
    assert plots.plot_clusters(model).get_title().startswith("2 clusters")
    pred = model.predict((np.array([1.0, 4.0]), np.array([7.5, 7.0])), np.linspace(0, 10, 30))
    assert len(plots.plot_cluster_prediction(pred, observed=(np.array([1.0, 4.0]), np.array([7.5, 7.0]))).lines) == 3
    assert plots.plot_vbic(selection).get_xlabel() == "number of clusters K"


@pytest.mark.slow
def test_well_separated_clusters_recovered_selected_and_forecast_better_than_one_mean():
    """The benchmark's scheme (benchmarks/bench_cluster.py), its first seed: recovery, V-BIC choice, forecasts."""
    sim = simulate_clustered(3, 60, 30, seed=0, n_new=10, intercept_range=(0, 45), min_separation=10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.ConvergenceWarning)
        selection = select_n_clusters_(sim.data)
    assert selection.best == 3
    model, single = selection.models[3], selection.models[1]   # K = 1 is MAGMA
    truth = sim.labels.loc[model.labels_.index].to_numpy()
    assert adjusted_rand_index(truth, model.labels_.values) >= 0.9
    errors = {3: [], 1: []}
    for _, frame in sim.new.groupby("ID"):
        frame = frame.sort_values("Input")
        seen, rest = frame.iloc[:20], frame.iloc[20:]
        for k, fitted in ((3, model), (1, single)):
            errors[k].append((fitted.predict(seen, rest["Input"])["mean"].values - rest["Output"].values) ** 2)
    assert np.mean(errors[3]) < np.mean(errors[1])


def select_n_clusters_(data):
    from magma_pymc.cluster import select_n_clusters

    return select_n_clusters(data, range(1, 6), random_state=0)


def test_pymc_declaration_marginal_likelihood_matches_dense_mixture():
    """The declared model's label-marginalised likelihood term equals sum_i log sum_k pi_k N(y_i; mu_k(t_i), Psi_i)."""
    individuals = two_groups()
    model = MagmaClust(2).build_model(make_long(individuals), jitter=1e-6)
    point = model.initial_point()
    rng = np.random.default_rng(0)
    point["mu"] = rng.normal(0, 3, point["mu"].shape)
    point["log_hp"] = np.log([1.0, 1.5, 0.2])
    outputs = model.replace_rvs_by_values([model["y"], model["weights"]])
    potential, pi = model.compile_fn(outputs, inputs=model.value_vars, on_unused_input="ignore",
                                     mode="FAST_COMPILE")(point)
    grid = np.unique(np.concatenate([t for t, _ in individuals]))
    total = 0.0
    for t, y in individuals:
        psi = se(t, t, 1.0, 1.5) + (0.2 + 1e-6) * np.eye(len(t))
        pos = np.searchsorted(grid, t)
        total += logsumexp([np.log(pi[k]) + stats.multivariate_normal(point["mu"][k][pos], psi).logpdf(y)
                            for k in range(2)])
    np.testing.assert_allclose(potential, total, rtol=1e-10)
    assert set(model.named_vars) >= {"weights", "mu", "log_mu_hp", "log_hp", "y"}


def test_top_level_simulate_with_n_clusters_is_the_clustered_simulator():
    """``mp.simulate(n_clusters=K)`` draws exactly what ``simulate_clustered`` draws for the shared
    arguments, and refuses MAGMA-only arguments instead of ignoring them."""
    ours = mp.simulate(30, 8, n_clusters=3, common_hp=False, n_new=2, seed=4)
    reference = simulate_clustered(3, 30, 8, common_hp=False, n_new=2, seed=4)
    pd.testing.assert_frame_equal(ours.data, reference.data)
    pd.testing.assert_frame_equal(ours.new, reference.new)
    pd.testing.assert_series_equal(ours.labels, reference.labels)
    assert ours.labels.nunique() == 3
    with pytest.raises(ValueError, match="noise_range"):
        mp.simulate(n_clusters=2, noise_range=(0.0, 1.0))
