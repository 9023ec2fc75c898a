"""Full-Bayesian mode (NUTS over the HP, mu0 marginalised): target density, sampling, prediction."""

import warnings

import arviz as az
import numpy as np
import pandas as pd
import pymc as pm
import pytest
import xarray as xr
from conftest import make_long
from reference import JointGP
from scipy import optimize, stats

import magma_pymc as mp
from magma_pymc.compare import compare_fits
from magma_pymc.diagnostics import MAX_RHAT, MIN_ESS, check_diagnostics, extreme
from magma_pymc.jitter import SAMPLING_JITTER
from magma_pymc.model import PRIOR_SD
from magma_pymc.sampling import build_marginal_model

HP0 = (3.0, 2.0)
DIFFERENT = [(1.0, 0.8, 0.25), (2.0, 1.5, 0.1), (0.5, 0.5, 0.3), (1.5, 1.0, 0.2)]
HP_NAMES = ["mu0_variance", "mu0_lengthscale", "variance", "lengthscale", "noise"]
SAMPLER = dict(nuts_sampler="pymc", progressbar=False)


# ----------------------------------------------------------------------------- target density
@pytest.mark.parametrize("setting", ["common", "different", "common_grid"])
def test_potential_is_dense_joint_gp_log_density(small_problem, setting):
    """The Potential is log N(y; m0, K) with K((t,i),(t',j)) = k0(t,t') + d_ij (c_i(t,t') + s_i^2 d_tt')
    (dense, SE kernels by hand in tests/reference.py); the model's logp adds the default N(c, 2^2) priors."""
    individuals = small_problem
    if setting == "common_grid":
        t = np.linspace(0.0, 10.0, 7)
        individuals = [(t, np.sin(t) + 0.3 * k) for k in range(4)]
    common = setting != "different"
    hps = [(1.0, 0.8, 0.25)] * 4 if common else DIFFERENT
    ids = [f"i{k}" for k in range(4)]
    individual = dict(zip(("variance", "lengthscale", "noise"), hps[0])) if common else pd.DataFrame(
        hps, index=ids, columns=["variance", "lengthscale", "noise"])
    hp = {"mean_process": dict(variance=HP0[0], lengthscale=HP0[1]), "individual": individual}
    model = mp.Magma(common_hp=common, prior_mean=0.4)
    model.fit(make_long(individuals, ids), method="fixed", hyperparameters=hp)
    assert model._problem_.graphs.fast_path == (setting == "common_grid")
    # The "common" case also overrides the prior of the individual log HP (priors={"hp": ...}).
    custom = {"hp": lambda name, dims: pm.Normal(name, mu=0.0, sigma=1.0, dims=dims)} if setting == "common" else None
    pm_model = build_marginal_model(model._spec(model.data_), model._problem_, 1e-10, priors=custom)
    expected = {"log_mu0_hp", "log_hp", "mu0_variance", "variance", "noise", "marginal_likelihood"}
    assert set(pm_model.named_vars) >= expected
    assert pm_model.named_vars_to_dims["log_hp"] == (("hp",) if common else ("individual", "hp"))
    potential_term = pm_model.logp(vars=[pm_model["marginal_likelihood"]])
    fn = pm_model.compile_fn([potential_term, pm_model.logp()], point_fn=True, mode=model.compile_mode)
    log_mu0 = np.log(HP0)
    log_hp = np.log(hps[0]) if common else np.log(hps)
    potential, logp = fn({"log_mu0_hp": log_mu0, "log_hp": log_hp})
    reference = JointGP(individuals, HP0, hps, m0=0.4)
    np.testing.assert_allclose(potential, reference.log_likelihood(), rtol=1e-8)

    initial = model.initial_hyperparameters(model.data_)
    centre0, centre = np.log(initial.mean_process.to_numpy()), np.log(initial.individual.to_numpy()[0])
    hp_prior = stats.norm(0.0, 1.0) if custom else stats.norm(centre, PRIOR_SD)
    priors = stats.norm(centre0, PRIOR_SD).logpdf(log_mu0).sum() + hp_prior.logpdf(log_hp).sum()
    np.testing.assert_allclose(logp, potential + priors, rtol=1e-8)


def test_diagnostics_warn_on_divergences_rhat_and_ess():
    rng = np.random.default_rng(1)
    post = xr.Dataset({
        "log_mu0_hp": (("chain", "draw", "mean_hp"), rng.normal(0, 1, (2, 50, 2)) + np.array([0, 5])[:, None, None]),
        "log_hp": (("chain", "draw", "hp"), rng.normal(0, 1, (2, 50, 3))),
    })
    stats_ = xr.Dataset({"diverging": (("chain", "draw"), np.arange(100).reshape(2, 50) == 7)})
    tree = xr.DataTree.from_dict({"posterior": post, "sample_stats": stats_})
    with pytest.warns(mp.ConvergenceWarning, match="1 divergent") as record:
        problems = check_diagnostics(tree)
    assert "r_hat" in str(record[0].message) and "ESS" in str(record[0].message) and len(problems) == 3
    # The chains of log_mu0_hp differ by 5 sd: the worst r_hat is there, and the warning says so.
    assert "r_hat" in problems[1] and " at log_mu0_hp[mean_hp=" in problems[1]


def test_extreme_names_the_entry_and_skips_nan():
    values = xr.Dataset(
        {"a": (("individual", "hp"), np.array([[1.0, np.nan], [1.2, 1.05]])), "b": ((), 1.1),
         "c": (("hp",), np.array([np.nan, np.nan]))},
        coords={"individual": ["x", "y"], "hp": ["variance", "noise"]})
    assert extreme(values, largest=True) == (1.2, "a[individual=y, hp=variance]")
    assert extreme(values, largest=False) == (1.0, "a[individual=x, hp=variance]")
    assert extreme(values[["b"]], largest=True) == (1.1, "b")
    value, where = extreme(values[["c"]], largest=True)
    assert np.isnan(value) and where == "c"


# ----------------------------------------------------------------------------------- sampling
@pytest.fixture(scope="module")
def simulation():
    return mp.simulate(n_individuals=8, n_points=10, common_grid=True, seed=3, n_new=2, scheme="smooth")


@pytest.fixture(scope="module")
def nuts_common(simulation):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = mp.Magma(common_hp=True).fit(simulation.data, method="nuts", draws=300, tune=300, chains=2,
                                             cores=2, random_seed=11, thin=10, **SAMPLER)
    return model, [w for w in caught if issubclass(w.category, mp.ConvergenceWarning)]


@pytest.fixture(scope="module")
def em_common(simulation):
    """EM-MAP under the default priors: the mode of the posterior that nuts_common samples."""
    return mp.Magma(common_hp=True).fit(simulation.data, priors={})


def test_nuts_posterior_contains_em_estimate(nuts_common, em_common):
    model, convergence_warnings = nuts_common
    tree = model.idata_
    print("diagnostics:", tree.attrs["diagnostics"], "sampling_time:", tree["posterior"].attrs.get("sampling_time"))
    summary = az.summary(tree, var_names=HP_NAMES)
    print(summary)
    assert "r_hat" in summary.columns and "ess_bulk" in summary.columns
    assert list(summary.index) == HP_NAMES  # each HP once, on one scale
    assert tree["posterior"]["variance"].dims == ("chain", "draw")
    # One scale in the posterior (natural, one variable per HP); the sampled log HP on their own.
    assert set(tree["posterior"].data_vars) == set(HP_NAMES)
    assert dict(tree["posterior"].sizes) == {"chain": 2, "draw": 300}
    assert tree["unconstrained_posterior"]["log_hp"].dims == ("chain", "draw", "hp")
    assert {"sample_stats", "hyperposterior", "observed_data", "constant_data"} <= set(tree.children)
    # constant_data: every dimension named.
    constant = tree["constant_data"]
    assert constant["inputs"].dims == ("individual", "slot", "input_dim")
    assert constant["grid"].dims == ("grid_point", "input_dim")
    assert not [d for v in constant.data_vars for d in constant[v].dims if "_dim_" in d]
    assert tree.attrs["divergences"] == int(tree["sample_stats"]["diverging"].sum())
    assert tree["hyperposterior"]["mu0_mean_draws"].dims == ("chain", "draw", "input")
    assert tree["hyperposterior"].sizes["draw"] == 30            # thin=10
    # converged_ and the ConvergenceWarning follow the library's thresholds, recomputed here from the draws
    # (a short run: with 2 x 300 draws the mean-process HP reach r_hat ~1.02, which must be reported).
    log_vars = ["log_mu0_hp", "log_hp"]
    group = "unconstrained_posterior"
    rhat = max(float(v.max()) for v in az.rhat(tree, group=group, var_names=log_vars).data_vars.values())
    ess = min(float(v.min()) for v in az.ess(tree, group=group, var_names=log_vars,
                                             method="bulk").data_vars.values())
    n_div = int(tree["sample_stats"]["diverging"].sum())
    healthy = rhat <= MAX_RHAT and ess >= MIN_ESS and n_div == 0
    assert model.converged_ == healthy and (not convergence_warnings) == healthy
    assert ("r_hat" in tree.attrs["diagnostics"]) == (rhat > MAX_RHAT)
    assert n_div == 0
    # EM's MAP estimate (same priors) lies in the central 95% posterior interval of every HP.
    em = em_common.idata_["posterior"]
    for name in HP_NAMES:
        draws = tree["posterior"][name].values.ravel()
        lo, hi = np.quantile(draws, [0.025, 0.975])
        assert lo < float(em[name].values.ravel()[0]) < hi, (name, lo, hi, float(em[name].values.ravel()[0]))
    # hyperparameters_ is the posterior median; the likelihood is evaluated there.
    np.testing.assert_allclose(model.hyperparameters_.individual["noise"].iloc[0],
                               np.median(tree["posterior"]["noise"].values), rtol=1e-4)
    assert np.isfinite(model.log_likelihood_) and model.fit_seconds_ > 0


def test_nuts_predict_is_mixture_over_draws(nuts_common, simulation, tmp_path):
    model, _ = nuts_common
    observed, _ = mp.split_observed(simulation.new, 6)
    new = observed[observed["ID"] == simulation.new_ids[0]]
    t_pred = np.array([0.5, 3.0, 7.7, 12.0])
    pred = model.predict(new, t_pred)
    assert pred.attrs["n_draws"] == 60
    for name in ("mean", "variance", "lower", "upper", "latent_variance", "latent_lower", "latent_upper"):
        assert np.all(np.isfinite(pred[name].values)), name
    # Reference: a fixed-HP MAGMA prediction at every (thinned) draw, averaged (law of total variance).
    post = model.idata_["posterior"].to_dataset().isel(draw=slice(None, None, 10)).stack(sample=("chain", "draw"))
    means, variances = [], []
    for s in range(post.sizes["sample"]):
        hp = {"mean_process": {n: float(post["mu0_" + n][s]) for n in ("variance", "lengthscale")},
              "individual": {n: float(post[n][s]) for n in ("variance", "lengthscale", "noise")}}
        fixed = mp.Magma(common_hp=True, jitter=SAMPLING_JITTER)
        fixed.fit(simulation.data, method="fixed", hyperparameters=hp)
        one = fixed.predict(new, t_pred)
        means.append(one["mean"].values), variances.append(one["variance"].values)
    means, variances = np.array(means), np.array(variances)
    np.testing.assert_allclose(pred["mean"].values, means.mean(0), rtol=1e-6)
    np.testing.assert_allclose(pred["variance"].values, variances.mean(0) + means.var(0), rtol=1e-6)
    assert np.all(pred["variance"].values >= variances.mean(0))
    assert np.all(pred["lower"].values < pred["mean"].values) and np.all(pred["mean"].values < pred["upper"].values)
    hyper = model.hyperposterior()
    np.testing.assert_allclose(hyper["mean"].values, model.idata_["hyperposterior"]["mu0_mean"].values, rtol=1e-6)
    # Saved and loaded, the model still predicts by averaging over its draws.
    model.save(tmp_path / "nuts.nc")
    loaded = mp.Magma.load(tmp_path / "nuts.nc")
    np.testing.assert_allclose(loaded.predict(new, t_pred)["variance"].values, pred["variance"].values, rtol=1e-10)


@pytest.fixture(scope="module")
def laplace_common(simulation):
    return mp.Magma(common_hp=True).fit(simulation.data, method="laplace", draws=200, random_seed=3)


def test_compare_fits_table(nuts_common, em_common, laplace_common, simulation):
    model, _ = nuts_common
    observed, target = mp.split_observed(simulation.new, 6)
    table = compare_fits({"em": em_common, "nuts": model, "laplace": laplace_common}, new_data=observed,
                         target=target)
    print(table.T)
    assert list(table.index) == ["em", "nuts", "laplace"] and list(table["method"]) == ["em", "nuts", "laplace"]
    assert set(HP_NAMES) | {"log_likelihood", "fit_seconds", "mse", "coverage"} <= set(table.columns)
    assert table[["log_likelihood", "fit_seconds", "mse"]].notna().all().all()
    # Simulated from the model: each fit's 95 % intervals cover the held-out points as often as a
    # Binomial(n, 0.95) count allows (two-sided 0.1 % limits).
    n_target = len(target)
    low, high = stats.binom.ppf([0.0005, 0.9995], n_target, 0.95)
    for label in ("em", "nuts"):
        assert low <= round(table.loc[label, "coverage"] * n_target) <= high, (label, table.loc[label, "coverage"])
    # EM maximises the likelihood: the posterior median cannot beat it by more than EM's tolerance.
    em_ll = table.loc["em", "log_likelihood"]
    assert em_ll >= table.loc["nuts", "log_likelihood"] - 1e-3 * abs(em_ll)


def test_laplace_fit_is_a_draws_record_around_the_map(laplace_common, em_common):
    """method="laplace": draws of a Gaussian at the MAP of the same posterior as NUTS; its log-HP
    draws centre on EM's MAP (same default priors), and predictions average over them."""
    tree = laplace_common.idata_
    assert tree.attrs["method"] == "laplace" and set(tree["posterior"].data_vars) == set(HP_NAMES)
    assert dict(tree["posterior"].sizes) == {"chain": 1, "draw": 200}
    log_draws = np.concatenate([tree["unconstrained_posterior"]["log_mu0_hp"].values.reshape(200, -1),
                                tree["unconstrained_posterior"]["log_hp"].values.reshape(200, -1)], axis=1)
    state = em_common.result_.point
    em_map = np.concatenate([state.mean_log_params, state.log_params])
    se = log_draws.std(axis=0) / np.sqrt(200)
    assert np.all(np.abs(log_draws.mean(axis=0) - em_map) < 5 * se + 0.02), (log_draws.mean(axis=0), em_map)
    pred = laplace_common.predict(None, [1.0, 2.0])
    assert pred.attrs["n_draws"] == 200 and np.all(np.isfinite(pred["variance"].values))


def test_fit_rejects_unknown_options_naming_the_public_call(simulation):
    with pytest.raises(TypeError, match=r"Magma.fit\(\) got unexpected keyword argument\(s\) 'coress'"):
        mp.Magma().fit(simulation.data, method="nuts", coress=2)
    with pytest.raises(TypeError, match="does not take 'tune'"):
        mp.Magma().fit(simulation.data, method="laplace", tune=10)
    with pytest.raises(ValueError, match="need method='nuts'"):
        mp.Magma().fit(simulation.data, chains=2)


def test_em_result_works_with_arviz_summary_and_forest(em_common):
    summary = az.summary(em_common.idata_, kind="stats")
    assert set(HP_NAMES) <= {name.split("[")[0] for name in summary.index}
    az.plot_forest(em_common.idata_, var_names=HP_NAMES)


def test_nuts_different_hp_reproducible(small_problem):
    """Different HP: posterior dims (chain, draw, individual, hp); same seed, identical draws; Type II prediction."""
    data = make_long(small_problem)
    fits = []
    for _ in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", mp.ConvergenceWarning)
            fits.append(mp.Magma(common_hp=False).fit(data, method="nuts", draws=30, tune=30, chains=1,
                                                      random_seed=5, thin=10, **SAMPLER))
    first, second = (f.idata_["unconstrained_posterior"] for f in fits)
    assert first["log_hp"].dims == ("chain", "draw", "individual", "hp")
    assert fits[0].idata_["posterior"]["noise"].dims == ("chain", "draw", "individual")
    # Different HP: the population layer by default, summarised on the natural scale.
    assert fits[0].idata_.attrs["hierarchical"] == 1
    assert fits[0].idata_["posterior"]["population_median"].dims == ("chain", "draw", "hp")
    assert {"population_mean", "population_scale", "population_offset"} <= set(first.data_vars)
    np.testing.assert_array_equal(first["log_hp"].values, second["log_hp"].values)
    np.testing.assert_array_equal(first["log_mu0_hp"].values, second["log_mu0_hp"].values)
    pred = fits[0].predict(None, [1.0, 2.0])
    # Type II, different HP: each draw's new-individual HP drawn from its population distribution
    assert pred.attrs["hp_source"] == "population" and pred.attrs["n_draws"] == 3
    assert np.all(np.isfinite(pred["variance"].values)) and np.all(pred["variance"].values > 0)


@pytest.mark.slow
def test_literal_model_gives_the_same_hp_posterior():
    """Marginalised target vs the literal model (mu0 and every f_i latent, non-centred): posterior
    means of every log HP agree within 4 combined Monte Carlo standard errors, sds within 30%."""
    sim = mp.simulate(n_individuals=3, n_points=5, common_grid=False, seed=7, scheme="smooth")
    summaries = []
    for marginalised in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", mp.ConvergenceWarning)  # a few divergences in the literal funnel
            fit = mp.Magma().fit(sim.data, method="nuts", marginalised=marginalised, draws=300, tune=300, chains=2,
                                 random_seed=2, target_accept=0.95, compile_mode="NUMBA", **SAMPLER)
        assert fit.idata_.attrs["marginalised"] == int(marginalised)
        summaries.append(az.summary(fit.idata_, group="unconstrained_posterior",
                                    var_names=["log_mu0_hp", "log_hp"]).astype(float))
    marginal, literal = summaries
    print(pd.concat({"marginal": marginal[["mean", "sd", "mcse_mean"]], "literal": literal[["mean", "sd", "mcse_mean"]]}, axis=1))
    z = (marginal["mean"] - literal["mean"]).abs() / np.hypot(marginal["mcse_mean"], literal["mcse_mean"])
    assert (z < 4).all(), z
    np.testing.assert_allclose(literal["sd"], marginal["sd"], rtol=0.3)


@pytest.mark.slow
def test_simulation_based_calibration_light():
    """On data simulated from the priors, the central 90% posterior intervals of the five log HP
    cover the truth at about the nominal rate: over 6 seeds x 5 HP = 30 checks, expected 27; at
    least 22 required (P(X <= 21) = 0.2% for a calibrated sampler)."""
    mean_centre, centre, sd = np.log([2.0, 2.0]), np.log([1.0, 1.5, 0.1]), 0.4
    priors = {"mean_hp": lambda name, dims: pm.Normal(name, mu=mean_centre, sigma=sd, dims=dims),
              "hp": lambda name, dims: pm.Normal(name, mu=centre, sigma=sd, dims=dims)}
    hits = []
    for seed in range(6):
        rng = np.random.default_rng([2026, seed])
        log_mean_hp, log_hp = rng.normal(mean_centre, sd), rng.normal(centre, sd)
        # Degenerate log-uniform ranges fix the HP at the draw; m0 = 0 as in the fitted model.
        sim = mp.simulate(8, 10, seed=rng, slope_range=(0.0, 0.0), intercept_range=(0.0, 0.0),
                          mean_variance_range=(log_mean_hp[0],) * 2, mean_lengthscale_range=(log_mean_hp[1],) * 2,
                          variance_range=(log_hp[0],) * 2, lengthscale_range=(log_hp[1],) * 2,
                          noise_range=(log_hp[2],) * 2, scheme="smooth")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", mp.ConvergenceWarning)
            fit = mp.Magma(prior_mean=0.0).fit(sim.data, method="nuts", draws=200, tune=200, chains=2,
                                               random_seed=seed, priors=priors, **SAMPLER)
        post = fit.idata_["unconstrained_posterior"]
        draws = np.concatenate([post["log_mu0_hp"].values.reshape(-1, 2), post["log_hp"].values.reshape(-1, 3)], axis=1)
        lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
        truth = np.concatenate([log_mean_hp, log_hp])
        hits.extend((lo < truth) & (truth < hi))
    print(f"SBC light: {sum(hits)} of {len(hits)} truths inside the central 90% intervals")
    assert sum(hits) >= 22


def test_em_map_is_the_mode_of_the_nuts_target(small_problem):
    """fit(priors=...) with EM: the result maximises log p(y | HP) + log p(HP) (dense JointGP
    likelihood + the Normal priors, optimised here with SciPy), differs from the MLE, and EM's
    log posterior never decreases."""
    mean_centre, centre, sd = np.log([1.0, 1.0]), np.log([1.0, 1.0, 0.1]), 0.5
    priors = {"mean_hp": lambda name, dims: pm.Normal(name, mu=mean_centre, sigma=sd, dims=dims),
              "hp": lambda name, dims: pm.Normal(name, mu=centre, sigma=sd, dims=dims)}
    data = make_long(small_problem)
    em_map = mp.Magma(prior_mean=0.4, tol=1e-10, max_iter=300).fit(data, priors=priors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.ConvergenceWarning)  # the MLE's individual lengthscale hits its bound
        mle = mp.Magma(prior_mean=0.4, tol=1e-10, max_iter=300).fit(data)

    def neg_log_posterior(x):
        reference = JointGP(small_problem, tuple(np.exp(x[:2])), [tuple(np.exp(x[2:]))] * len(small_problem), m0=0.4)
        prior = stats.norm(np.concatenate([mean_centre, centre]), sd).logpdf(x).sum()
        return -(reference.log_likelihood() + prior)

    state = em_map._state
    x_em = np.concatenate([state.mean_log_params, state.log_params])
    best = optimize.minimize(neg_log_posterior, x_em, method="Nelder-Mead",
                             options=dict(xatol=1e-7, fatol=1e-10, maxiter=4000))
    assert neg_log_posterior(x_em) - best.fun < 1e-4
    np.testing.assert_allclose(x_em, best.x, atol=0.02)
    x_mle = np.concatenate([mle._state.mean_log_params, mle._state.log_params])
    assert np.max(np.abs(x_mle - x_em)) > 0.05
    log_post = em_map.idata_["em_trace"]["log_posterior"].values
    assert np.all(np.diff(log_post) >= -1e-8 * np.abs(log_post[:-1]))
    assert not np.allclose(log_post, em_map.idata_["em_trace"]["log_likelihood"].values)
