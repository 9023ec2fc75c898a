"""EM restarts (magma_pymc.restarts): a start that ends on a bound is replaced by a better optimum,
checked against a dense log-likelihood; deterministic; a fit with no HP on a bound is unchanged."""

import warnings

import numpy as np
import pytest
from scipy import stats

import magma_pymc as mp
from magma_pymc.restarts import ALTERNATIVE_STARTS, check_restarts, shifted_start


def dense_log_likelihood(data, hp, prior_mean):
    r"""Log N(y; m0, Sigma) of all outputs stacked, Sigma = K0 (all pairs) + blockdiag(K_i + sigma^2 I): the
    marginal likelihood of MAGMA with common HP written out densely (squared exponential kernels)."""
    def se(x, y, variance, lengthscale):
        return variance * np.exp(-0.5 * (x[:, None] - y[None, :]) ** 2 / lengthscale**2)

    t, y = data["Input"].to_numpy(), data["Output"].to_numpy()
    ids = data["ID"].to_numpy()
    mean, ind = hp.mean_process, hp.individual.iloc[0]
    cov = se(t, t, mean["variance"], mean["lengthscale"])
    same = ids[:, None] == ids[None, :]
    cov += same * (se(t, t, ind["variance"], ind["lengthscale"]) + ind["noise"] * np.eye(len(t)))
    return stats.multivariate_normal(np.full(len(t), prior_mean), cov).logpdf(y)


@pytest.fixture(scope="module")
def bound_data():
    """Simulated data on which maximum-likelihood EM from the data-driven start ends with the mean-process
    variance on its lower bound and its lengthscale on its upper bound."""
    return mp.simulate(n_individuals=8, n_points=15, common_grid=True, seed=0).data


def fit(data, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = mp.Magma(mean_process_prior=None, **options).fit(data)
    return model, [str(w.message) for w in caught if issubclass(w.category, mp.ConvergenceWarning)]


def test_restart_on_bound_reaches_a_better_optimum(bound_data):
    single, single_warnings = fit(bound_data, restarts=0)
    assert any("mu0_lengthscale" in h and "upper" in h for h in single.hp_at_bounds_)
    assert not single.converged_ and single.idata_.attrs["em_starts"] == 1
    assert any("bounds" in m and "EM starts" not in m for m in single_warnings)

    restarted, restarted_warnings = fit(bound_data, restarts="on_bound")
    attrs = restarted.idata_.attrs
    assert attrs["em_starts"] == 3
    assert attrs["em_start_labels"] == "given start; lengthscales / 3; lengthscales x 3"
    assert attrs["em_best_start"] == int(np.argmax(attrs["em_start_objectives"]))
    assert restarted.hp_at_bounds_ == [] and restarted.converged_
    assert not restarted_warnings
    # The kept run's objective is the maximum-likelihood objective of its HP (no prior here), and the
    # dense reference ranks the two fits the same way, by more than 10 log-units.
    prior_mean = float(bound_data["Output"].mean())
    dense_single = dense_log_likelihood(bound_data, single.hyperparameters_, prior_mean)
    dense_restarted = dense_log_likelihood(bound_data, restarted.hyperparameters_, prior_mean)
    assert single.log_likelihood_ == pytest.approx(dense_single, abs=1e-5)
    assert restarted.log_likelihood_ == pytest.approx(dense_restarted, abs=1e-5)
    assert attrs["em_start_objectives"][attrs["em_best_start"]] == pytest.approx(dense_restarted, abs=1e-5)
    assert dense_restarted > dense_single + 10


def test_restarts_are_deterministic(bound_data):
    first, _ = fit(bound_data, restarts=2)
    second, _ = fit(bound_data, restarts=2)
    np.testing.assert_array_equal(first.idata_.attrs["em_start_objectives"], second.idata_.attrs["em_start_objectives"])
    np.testing.assert_array_equal(first.hyperparameters_.mean_process, second.hyperparameters_.mean_process)
    np.testing.assert_array_equal(first.hyperparameters_.individual, second.hyperparameters_.individual)


def test_no_bound_no_restart_same_numbers():
    data = mp.simulate(n_individuals=8, n_points=15, common_grid=True, seed=2).data
    default = mp.Magma(restarts="on_bound").fit(data)
    single = mp.Magma(restarts=0).fit(data)
    assert default.hp_at_bounds_ == [] and default.idata_.attrs["em_starts"] == 1
    assert default.log_likelihood_ == single.log_likelihood_
    np.testing.assert_array_equal(default.hyperparameters_.mean_process, single.hyperparameters_.mean_process)
    np.testing.assert_array_equal(default.hyperparameters_.individual, single.hyperparameters_.individual)
    np.testing.assert_array_equal(default.idata_["em_trace"]["log_likelihood"],
                                  single.idata_["em_trace"]["log_likelihood"])
    x = np.linspace(0, 10, 7)
    np.testing.assert_array_equal(default.hyperposterior(x)["mean"], single.hyperposterior(x)["mean"])


def test_user_start_on_a_bound_is_followed_by_the_data_driven_start(bound_data):
    model = mp.Magma(mean_process_prior=None, restarts=1)
    start = model.initial_hyperparameters(bound_data)
    start.mean_process["lengthscale"] = 50.0 * np.ptp(bound_data["Input"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.ConvergenceWarning)
        model.fit(bound_data, hyperparameters=start)
    assert model.idata_.attrs["em_start_labels"] == "given start; data-driven start"


def test_only_the_kept_run_warns_of_non_convergence(bound_data):
    _, messages = fit(bound_data, restarts=3, max_iter=1)
    assert sum("did not converge" in m for m in messages) == 1


def test_shifted_start_scales_by_kind_and_respects_bounds():
    data = mp.simulate(n_individuals=4, n_points=10, common_hp=False, seed=3).data
    model = mp.Magma(common_hp=False, max_iter=0, restarts=0).fit(data)
    problem, state = model.result_.problem, model.result_.point
    shifted = shifted_start(state, problem, model.mean_kernel, model.kernel, (3.0, 0.1, 0.5))
    np.testing.assert_allclose(shifted.mean_log_params - state.mean_log_params, np.log([0.1, 3.0]))
    np.testing.assert_allclose(shifted.log_params - state.log_params, np.tile(np.log([0.5, 3.0, 1.0]), (4, 1)))
    huge = shifted_start(state, problem, model.mean_kernel, model.kernel, (1e9, 1.0, 1.0))
    assert huge.mean_log_params[1] == problem.mean_bounds[1][1]
    np.testing.assert_array_equal(huge.log_params[:, 1], problem.bounds[1][1])


@pytest.mark.parametrize("bad", [-1, len(ALTERNATIVE_STARTS) + 1, True, 1.5, "always", None])
def test_bad_restarts_are_refused(bad):
    with pytest.raises(ValueError, match="restarts must be"):
        check_restarts(bad)
    with pytest.raises(ValueError, match="restarts must be"):
        mp.Magma(restarts=bad)


def test_restarts_setting_is_saved(tmp_path, bound_data):
    model = mp.Magma(restarts=2, max_iter=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.ConvergenceWarning)
        model.fit(bound_data)
    model.save(tmp_path / "fit.nc")
    loaded = mp.Magma.load(tmp_path / "fit.nc")
    assert loaded.get_params()["restarts"] == 2
    assert loaded.idata_.attrs["em_starts"] == 3


# ---------------------------------------------------------------- "scan" and "screen"
@pytest.fixture(scope="module")
def poor_optimum_data():
    """Data set 50 of the MAGMA paper's simulation (common grid, common HP): EM (default weak prior) from the
    data-driven start stops where the mean-process lengthscale is about 10 times too long."""
    from magma_pymc.datasets.paper import load_paper_simulations, paper_data_set

    return paper_data_set(load_paper_simulations("TT"), 50).training


def fit_ml(data, restarts):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.ConvergenceWarning)
        return mp.Magma(prior_mean=0.0, restarts=restarts).fit(data)


def dense_objective(data, model):
    """Dense log-likelihood plus the weak prior: independent N(log start, 2^2) on the mean-process log HP, centred
    on the data-driven start (magma_pymc.priors)."""
    centre = np.log(model.initial_hyperparameters(data).mean_process.to_numpy(dtype=float))
    log_hp = np.log(model.hyperparameters_.mean_process.to_numpy(dtype=float))
    return dense_log_likelihood(data, model.hyperparameters_, 0.0) + stats.norm(centre, 2.0).logpdf(log_hp).sum()


@pytest.mark.parametrize("policy", ["scan", "screen"])
def test_policy_escapes_a_poor_optimum(poor_optimum_data, policy):
    single, escaped = fit_ml(poor_optimum_data, 0), fit_ml(poor_optimum_data, policy)
    attrs = escaped.idata_.attrs
    objectives = attrs["em_start_objectives"]
    assert attrs["em_best_start"] == int(np.argmax(objectives)) != 0
    assert len(objectives) == attrs["em_starts"] == len(attrs["em_start_labels"].split("; "))
    # Independent check: the dense objective of the two fits' HP ranks them by more than 10 log-units, and the
    # kept run's recorded objective is the dense objective of the HP it returns.
    dense_single = dense_objective(poor_optimum_data, single)
    dense_escaped = dense_objective(poor_optimum_data, escaped)
    assert objectives[attrs["em_best_start"]] == pytest.approx(dense_escaped, abs=1e-5)
    assert dense_escaped > dense_single + 10
    assert (escaped.hyperparameters_.mean_process["lengthscale"]
            < single.hyperparameters_.mean_process["lengthscale"] / 3)
    assert escaped.converged_


def test_scan_records_the_resumed_run(poor_optimum_data):
    model = fit_ml(poor_optimum_data, "scan")
    attrs = model.idata_.attrs
    assert attrs["em_starts"] == 2 and attrs["em_best_start"] == 1
    first, resumed = attrs["em_start_labels"].split("; ")
    assert first == "given start" and resumed.startswith("given start's end, mean-process lengthscales x ")
    assert attrs["em_start_objectives"][1] > attrs["em_start_objectives"][0]
    # The resumed run starts where the scan found a higher objective than the first run's end.
    trace = model.idata_["em_trace"]["log_likelihood"].to_numpy()
    assert trace[0] > attrs["em_start_objectives"][0]
    assert len(trace) - 1 == attrs["em_start_iterations"][1] == model.n_iter_


def test_screen_continues_only_the_best_screened_start(poor_optimum_data):
    from magma_pymc.restarts import SCREEN_ITERATIONS

    model = fit_ml(poor_optimum_data, "screen")
    attrs = model.idata_.attrs
    labels = attrs["em_start_labels"].split("; ")
    assert labels == ["given start", *(label for label, *_ in ALTERNATIVE_STARTS)]
    iterations, objectives, best = attrs["em_start_iterations"], attrs["em_start_objectives"], attrs["em_best_start"]
    continued = iterations > SCREEN_ITERATIONS
    # No HP on a bound: one start continued, the one that screened best; every other stopped after the screen.
    assert model.hp_at_bounds_ == [] and np.flatnonzero(continued).tolist() == [best]
    np.testing.assert_array_equal(iterations[~continued], SCREEN_ITERATIONS)
    # The screened objectives are recorded as such: recomputing the screen of the continued start gives less
    # than (or, converged in the screen, the same as) its final objective, and more than every other screen.
    screen_of_best = model.idata_["em_trace"]["log_likelihood"].to_numpy()[SCREEN_ITERATIONS]
    assert screen_of_best <= objectives[best] + 1e-9
    assert np.all(objectives[~continued] <= screen_of_best)


@pytest.mark.parametrize("policy", ["scan", "screen"])
def test_policies_are_deterministic(poor_optimum_data, policy):
    first, second = fit_ml(poor_optimum_data, policy), fit_ml(poor_optimum_data, policy)
    for key in ("em_start_objectives", "em_start_iterations"):
        np.testing.assert_array_equal(first.idata_.attrs[key], second.idata_.attrs[key])
    np.testing.assert_array_equal(first.hyperparameters_.mean_process, second.hyperparameters_.mean_process)
    np.testing.assert_array_equal(first.hyperparameters_.individual, second.hyperparameters_.individual)


def test_scan_passed_costs_nothing_in_numbers():
    data = mp.simulate(n_individuals=8, n_points=15, common_grid=True, seed=2).data
    scanned, single = mp.Magma(restarts="scan").fit(data), mp.Magma(restarts=0).fit(data)
    assert scanned.idata_.attrs["em_starts"] == 1
    np.testing.assert_array_equal(scanned.hyperparameters_.mean_process, single.hyperparameters_.mean_process)
    np.testing.assert_array_equal(scanned.hyperparameters_.individual, single.hyperparameters_.individual)
    assert scanned.log_likelihood_ == single.log_likelihood_


@pytest.mark.parametrize("policy", ["scan", "screen"])
def test_policies_still_restart_on_a_bound(bound_data, policy):
    model, _ = fit(bound_data, restarts=policy)
    attrs = model.idata_.attrs
    assert model.hp_at_bounds_ == [] and attrs["em_starts"] >= 2
    assert attrs["em_best_start"] == int(np.argmax(attrs["em_start_objectives"]))
    prior_mean = float(bound_data["Output"].mean())
    assert model.log_likelihood_ == pytest.approx(
        dense_log_likelihood(bound_data, model.hyperparameters_, prior_mean), abs=1e-5)


def test_resume_em_continues_a_run_exactly(bound_data):
    from magma_pymc.em import run_em
    from magma_pymc.restarts import resume_em

    model = mp.Magma(max_iter=0, restarts=0).fit(bound_data)
    problem, state = model.result_.problem, model.result_.point
    whole = run_em(state, problem, max_iter=4, tol=1e-12, warn=False)
    resumed = resume_em(run_em(state, problem, max_iter=1, tol=1e-12, warn=False), problem, max_iter=3, tol=1e-12)
    for a, b in zip(whole, resumed, strict=True):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(whole.state.mean_log_params, resumed.state.mean_log_params)
    assert whole.converged == resumed.converged
