"""MagmaClust(method="nuts"): the sampled log density against a dense reference, relabelling against brute force,
the posterior against VEM on well-separated clusters, and the option errors."""

import itertools

import numpy as np
import pandas as pd
import pytest
from conftest import make_long
from reference import se
from scipy import stats
from scipy.special import logsumexp

from magma_pymc.cluster import MagmaClust
from magma_pymc.cluster.model import build_cluster_model
from magma_pymc.cluster.sampling import relabel, relabelling_permutations
from magma_pymc.data import as_training_data

GRID = np.linspace(0.0, 10.0, 10)


def two_groups(seed=0, n_per_group=4, n_points=6, gap=8.0):
    """Two groups ``gap`` apart, each individual at ``n_points`` of the 10 inputs of GRID: the group's curve, an
    individual process (SE, variance 1, lengthscale 2) and noise (sd 0.3), as the model says."""
    rng = np.random.default_rng(seed)
    individuals = []
    for level in (0.0, gap):
        for _ in range(n_per_group):
            t = np.sort(rng.choice(GRID, n_points, replace=False))
            f = np.linalg.cholesky(se(t, t, 1.0, 2.0) + 1e-9 * np.eye(n_points)) @ rng.standard_normal(n_points)
            individuals.append((t, level + np.sin(t) + f + rng.normal(0, 0.3, n_points)))
    return individuals


def prior_mean(x):
    return 1.0 + 0.3 * x[:, 0]


@pytest.mark.parametrize("noncentred", [False, True], ids=["centred", "noncentred"])
@pytest.mark.parametrize("common_hp", [True, False], ids=["common", "different"])
def test_log_density_equals_dense_mixture_and_priors(noncentred, common_hp):
    """Log density at a point = sum_i log sum_k pi_k N(y_i; mu_k(t_i), Psi_i) + priors (dense SciPy, no Jacobian)."""
    individuals = two_groups(seed=3, n_per_group=2, n_points=5)
    train = as_training_data(make_long(individuals))
    clust = MagmaClust(2)
    centres = (np.array([1.0, 0.5]), np.array([0.2, 0.4, -1.0]))
    jitter = 1e-6
    model = build_cluster_model(train, 2, clust.mean_kernel, clust.kernel, prior_mean, centres=centres,
                                common_hp=common_hp, noncentred=noncentred, jitter=jitter)
    rng = np.random.default_rng(1)
    point = model.initial_point()
    point["weights_simplex__"] = rng.normal(0, 0.5, 1)
    point["log_mu_hp"] = np.log([[4.0, 1.2], [2.0, 2.5]])
    point["log_hp"] = np.log([1.0, 1.5, 0.2]) if common_hp else np.log(rng.uniform(0.2, 2.0, (4, 3)))
    free = "mu_white" if noncentred else "mu"
    point[free] = rng.normal(0, 1.5, (2, len(GRID)))
    weights = model.compile_fn(model.replace_rvs_by_values([model["weights"]])[0], inputs=model.value_vars,
                               on_unused_input="ignore", mode="FAST_COMPILE")(point)
    logp = model.compile_logp(jacobian=False, mode="FAST_COMPILE")(point)

    m = prior_mean(GRID[:, None])
    prior_covs = [se(GRID, GRID, *np.exp(point["log_mu_hp"][k])) + jitter * np.eye(len(GRID)) for k in range(2)]
    if noncentred:
        mu = np.stack([m + np.linalg.cholesky(c) @ z for c, z in zip(prior_covs, point["mu_white"], strict=True)])
        log_mu_prior = stats.norm.logpdf(point["mu_white"]).sum()
    else:
        mu = point["mu"]
        log_mu_prior = sum(stats.multivariate_normal(m, c).logpdf(v) for c, v in zip(prior_covs, mu, strict=True))
    mixture = 0.0
    for i, (t, y) in enumerate(individuals):
        v, ls, noise = np.exp(point["log_hp"] if common_hp else point["log_hp"][i])
        psi = se(t, t, v, ls) + (noise + jitter) * np.eye(len(t))
        pos = np.searchsorted(GRID, t)
        mixture += logsumexp([np.log(weights[k]) + stats.multivariate_normal(mu[k][pos], psi).logpdf(y)
                              for k in range(2)])
    hp_prior = (stats.norm.logpdf(point["log_mu_hp"], centres[0], 2.0).sum()
                + stats.norm.logpdf(point["log_hp"], centres[1], 2.0).sum())
    reference = mixture + log_mu_prior + hp_prior + stats.dirichlet.logpdf(weights, np.ones(2))
    np.testing.assert_allclose(logp, reference, rtol=1e-9)


def test_relabelling_equals_brute_force_on_switched_draws():
    """Draws built from the reference with known permutations: the Hungarian permutation is the brute-force
    minimiser, undoes the switch, and relabel() restores every per-cluster array."""
    rng = np.random.default_rng(0)
    n_clusters, n_grid = 3, 6
    reference = rng.normal(0, 3, (n_clusters, n_grid))
    chains, draws = 2, 40
    switches = np.array([rng.permutation(n_clusters) if rng.random() < 0.4 else np.arange(n_clusters)
                         for _ in range(chains * draws)]).reshape(chains, draws, n_clusters)
    unswitched = reference + rng.normal(0, 0.3, (chains, draws, n_clusters, n_grid))
    mu = np.take_along_axis(unswitched, switches[..., None], axis=2)   # draw's cluster j is reference's switches[j]
    perms = relabelling_permutations(mu, reference)
    for c, d in itertools.product(range(chains), range(draws)):
        costs = {p: ((mu[c, d, list(p)] - reference) ** 2).sum() for p in itertools.permutations(range(n_clusters))}
        assert tuple(perms[c, d]) == min(costs, key=costs.get)
        np.testing.assert_array_equal(switches[c, d, perms[c, d]], np.arange(n_clusters))
    np.testing.assert_array_equal(relabel(mu, perms), unswitched)
    weights = rng.dirichlet(np.ones(n_clusters), (chains, draws))
    restored = relabel(weights[np.arange(chains)[:, None, None], np.arange(draws)[None, :, None], switches], perms)
    np.testing.assert_array_equal(restored, weights)
    assert (np.any(perms != np.arange(n_clusters), axis=-1)).sum() == np.any(
        switches != np.arange(n_clusters), axis=-1).sum()


@pytest.fixture(scope="module")
def nuts_fit():
    """K = 2, M = 8 individuals x 6 points on a grid of 10 inputs, 2 chains x (200 + 200)."""
    data = make_long(two_groups())
    model = MagmaClust(2, random_state=0).fit(data, method="nuts", draws=200, tune=200, chains=2, cores=1,
                                              random_seed=1, progressbar=False)
    return model


@pytest.mark.slow  # 46 s with Numba's cache warm; compiling the sampler's log-density first costs 1-3 minutes
def test_nuts_posterior_agrees_with_vem_on_separated_clusters(nuts_fit, tmp_path):
    model = nuts_fit
    tree = model.idata_
    assert tree.attrs["method"] == "nuts"
    mu = tree["posterior"]["mu"]
    assert mu.dims == ("chain", "draw", "cluster", "input") and mu.shape == (2, 200, 2, len(GRID))
    assert tree["posterior"]["mu_lengthscale"].dims == ("chain", "draw", "cluster")
    assert "diverging" in tree["sample_stats"] and "relabelled" in tree["sample_stats"]
    assert 0 <= tree.attrs["relabelled_draws"] <= 400
    assert np.isfinite(tree.attrs["max_r_hat"]) and np.isfinite(tree.attrs["min_ess_bulk"])
    # VEM's q(mu_k) is at point HP, NUTS integrates them: the means differ by a few posterior sd at most, far less
    # than the groups' separation (8, about 25 sd), in the same labelling.
    mean, sd = mu.mean(("chain", "draw")).values, mu.std(("chain", "draw")).values
    gap = np.abs(mean - tree["hyperposterior"]["mu_mean"].values) / sd
    assert gap.max() < 4 and gap.mean() < 1.5, gap
    # Responsibilities: certain, and the same partition as VEM's.
    tau = model.posterior_responsibilities_
    assert tau.shape == (8, 2) and np.allclose(tau.sum(axis=1), 1.0)
    assert tau.max(axis=1).min() > 0.99
    np.testing.assert_array_equal(tau.to_numpy().argmax(axis=1), model.labels_.to_numpy())
    np.testing.assert_array_equal(model.labels_.to_numpy(), [0, 0, 0, 0, 1, 1, 1, 1])
    # The draws and both sets of responsibilities survive save/load.
    model.save(tmp_path / "nuts.nc")
    loaded = MagmaClust.load(tmp_path / "nuts.nc")
    pd.testing.assert_frame_equal(loaded.posterior_responsibilities_, tau)
    np.testing.assert_array_equal(loaded.idata_["posterior"]["mu"].values, mu.values)
    assert loaded.idata_.attrs["relabelled_draws"] == tree.attrs["relabelled_draws"]


def test_bad_sampler_options_raise_before_any_work():
    data = make_long(two_groups())
    model = MagmaClust(2)
    with pytest.raises(TypeError, match=r"MagmaClust.fit\(method='nuts'\).*'n_draws'"):
        model.fit(data, method="nuts", n_draws=10)
    with pytest.raises(TypeError, match="return_inferencedata"):
        model.fit(data, method="nuts", return_inferencedata=False)
    with pytest.raises(ValueError, match="draws"):
        model.fit(data, method="nuts", draws=0)
    with pytest.raises(ValueError, match="target_accept"):
        model.fit(data, method="nuts", target_accept=1.5)
    with pytest.raises(ValueError, match="method"):
        model.fit(data, method="mcmc")
    with pytest.raises(ValueError, match="inducing"):
        MagmaClust(2, inducing=5).fit(data, method="nuts")
    assert not hasattr(model, "responsibilities_")
