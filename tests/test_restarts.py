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

    restarted, restarted_warnings = fit(bound_data)  # default restarts="on_bound"
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
    default = mp.Magma().fit(data)
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
