"""Magma estimator: configuration, fit returns self, fitted attributes, the fixed-HP route, clear early errors
(data errors are in test_data.py, hyper-parameter errors in test_params.py)."""

import inspect

import numpy as np
import pandas as pd
import pytest
from conftest import COMMON, HP0, fixed_model, make_long

import magma_pymc as mp
from magma_pymc.exceptions import NotFittedError

TRAIN = pd.DataFrame(
    {"ID": ["a"] * 3 + ["b"] * 3, "Input": [0.0, 1.0, 2.0] * 2, "Output": [1.0, 2.0, 1.5, 0.5, 1.0, 2.5]}
)
GOOD = {
    "mean_process": {"variance": 1.0, "lengthscale": 1.0},
    "individual": {"variance": 1.0, "lengthscale": 1.0, "noise": 0.1},
}
FITTED = (
    "result_",
    "hyperparameters_",
    "converged_",
    "n_iter_",
    "log_likelihood_",
    "idata_",
    "data_",
    "fit_seconds_",
    "hp_at_bounds_",
)


def test_get_params_names_every_init_argument_and_round_trips():
    settings = {
        "common_hp": False,
        "mean_kernel": mp.Matern52(),
        "kernel": mp.SquaredExponential(lengthscale=2.0),
        "prior_mean": 1.5,
        "max_iter": 7,
        "tol": 1e-4,
        "compile_mode": "FAST_COMPILE",
        "jitter": 1e-8,
        "mean_step": "marginal",
        "inducing": 5,
        "new_individual_hp": "ml",
        "mean_process_prior": None,
        "restarts": 2,
    }
    model = mp.Magma(**settings)
    assert set(model.get_params()) == set(inspect.signature(mp.Magma).parameters)
    assert model.get_params() == settings
    assert mp.Magma(**model.get_params()).get_params() == settings


def test_fixed_fit_returns_self_keeps_the_hp_and_matches_the_dense_likelihood(small_problem):
    model, reference = fixed_model(small_problem, common_hp=True)
    assert model.n_iter_ == 0 and model.hp_at_bounds_ == [] and model.fit_seconds_ > 0
    hp = model.hyperparameters_
    np.testing.assert_allclose(hp.mean_process.to_numpy(), HP0, rtol=1e-14)
    np.testing.assert_allclose(hp.individual.loc["common"].to_numpy(), COMMON, rtol=1e-14)
    np.testing.assert_allclose(model.log_likelihood_, reference.log_likelihood(), rtol=1e-9)
    assert model.idata_.attrs["method"] == "fixed"
    assert model.data_.n_individuals == len(small_problem)
    np.testing.assert_array_equal(
        model.mean_process_grid[:, 0], np.unique(np.concatenate([t for t, _ in small_problem]))
    )
    refit = mp.Magma(prior_mean=0.7)
    assert refit.fit(make_long(small_problem), method="fixed", hyperparameters=model.hyperparameters_) is refit
    assert refit.log_likelihood_ == pytest.approx(model.log_likelihood_, rel=1e-12)


def test_em_fit_returns_self_with_every_fitted_attribute():
    sim = mp.simulate(n_individuals=4, n_points=8, seed=3, scheme="smooth")
    model = mp.Magma(max_iter=3, tol=1e-12)
    with pytest.warns(mp.ConvergenceWarning, match="did not converge in 3 iterations"):
        assert model.fit(sim.data) is model
    for name in FITTED:
        assert hasattr(model, name), name
    assert model.n_iter_ == 3 and model.converged_ is False
    ll = model.idata_["em_trace"]["log_likelihood"].values
    assert len(ll) == 4 and model.log_likelihood_ == ll[-1]


def test_initial_hyperparameters_are_the_documented_data_scales():
    """Variances at the variance of all outputs, noise at a tenth of it, lengthscales at a tenth of the input range."""
    variance, span = np.var(TRAIN["Output"]), np.ptp(TRAIN["Input"])
    hp = mp.Magma().initial_hyperparameters(TRAIN)
    np.testing.assert_allclose(hp.mean_process.to_numpy(), [variance, 0.1 * span], rtol=1e-14)
    np.testing.assert_allclose(
        hp.individual.loc["common"].to_numpy(), [variance, 0.1 * span, 0.1 * variance], rtol=1e-14
    )
    different = mp.Magma(common_hp=False).initial_hyperparameters(TRAIN)
    assert list(different.individual.index) == ["a", "b"]
    np.testing.assert_allclose(
        different.individual.to_numpy(), [[variance, 0.1 * span, 0.1 * variance]] * 2, rtol=1e-14
    )


def test_unfitted_model_raises_not_fitted_error_and_has_no_fitted_attributes():
    model = mp.Magma()
    for name in ("result_", "idata_", "data_", "mean_process_grid"):  # views of the fit
        with pytest.raises(NotFittedError, match=r"not fitted yet: call \.fit\(data\) first"):
            getattr(model, name)
    for name in (*FITTED, "mean_process_grid"):  # NotFittedError is an AttributeError: hasattr is False
        assert not hasattr(model, name), name
    assert issubclass(NotFittedError, RuntimeError)


def test_kernel_dimension_must_match_data():
    two_d = pd.DataFrame({"ID": ["a", "a"], "x1": [0.0, 1.0], "x2": [0.0, 1.0], "Output": [1.0, 2.0]})
    with pytest.raises(mp.MagmaInputError, match="dimension"):
        mp.Magma().fit(two_d)


def test_bad_method_and_options():
    with pytest.raises(ValueError, match="method must be"):
        mp.Magma().fit(TRAIN, method="sgd")
    with pytest.raises(ValueError, match="needs hyperparameters"):
        mp.Magma().fit(TRAIN, method="fixed")
    with pytest.raises(ValueError, match="mean_step must be"):
        mp.Magma(mean_step="both")


def test_accessors_before_fit():
    with pytest.raises(RuntimeError, match=r"call \.fit\(data\) first"):
        mp.Magma().hyperposterior([1.0])
    with pytest.raises(RuntimeError, match=r"call \.fit\(data\) first"):
        mp.Magma().build_model()


def test_predict_before_fit_is_a_clear_error():
    with pytest.raises(RuntimeError, match="not fitted yet"):
        mp.Magma().predict(None, [1.0, 2.0])
