"""A fit that raises leaves the model exactly as it was; user callables receive copies (magma_pymc.estimator)."""

import warnings

import numpy as np
import pytest

import magma_pymc as mp


def quiet(callable_, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.MagmaWarning)
        return callable_(*args, **kwargs)


@pytest.fixture(scope="module")
def sims():
    return [mp.simulate(n_individuals=4, n_points=6, seed=seed, n_new=1) for seed in (1, 2)]


def _snapshot(model, observed):
    pred = model.predict(observed, np.linspace(0, 10, 5))
    return (model.result_, model.hyperparameters_.individual.copy(), model.log_likelihood_, model.n_iter_,
            pred["mean"].values.copy(), pred["variance"].values.copy())


def _assert_unchanged(model, observed, before):
    after = _snapshot(model, observed)
    assert after[0] is before[0]
    assert after[1].equals(before[1])
    assert after[2] == before[2] and after[3] == before[3]
    np.testing.assert_array_equal(after[4], before[4])
    np.testing.assert_array_equal(after[5], before[5])


@pytest.mark.parametrize("where", ["em", "prior_mean", "data"])
def test_failed_refit_leaves_the_model_as_it_was(sims, monkeypatch, where):
    first, second = sims
    failing = {"now": False}

    def prior_mean(x):
        if failing["now"]:  # fails during the refit, after the new data were read
            raise RuntimeError("prior mean failed")
        return np.zeros(len(x))

    model = quiet(mp.Magma(max_iter=2, prior_mean=prior_mean).fit, first.data)
    observed = mp.split_observed(first.new, 3)[0]
    before = _snapshot(model, observed)
    failing["now"] = where == "prior_mean"
    if where == "em":
        def failing_run_em(*args, **kwargs):
            raise np.linalg.LinAlgError("E-step failed")
        monkeypatch.setattr("magma_pymc.restarts.run_em", failing_run_em)
        with pytest.raises(np.linalg.LinAlgError):
            model.fit(second.data)
    elif where == "prior_mean":
        with pytest.raises(RuntimeError, match="prior mean failed"):
            model.fit(second.data)
    else:
        with pytest.raises(mp.MagmaInputError):
            model.fit({"a": ([0.0, 1.0], [1.0, np.nan])})
    monkeypatch.undo()
    failing["now"] = False
    _assert_unchanged(model, observed, before)


def test_failed_first_fit_leaves_the_model_unfitted(sims, monkeypatch):
    def failing_run_em(*args, **kwargs):
        raise KeyboardInterrupt  # even an interrupt outside EM's own loop

    monkeypatch.setattr("magma_pymc.restarts.run_em", failing_run_em)
    model = mp.Magma(max_iter=1)
    with pytest.raises(KeyboardInterrupt):
        model.fit(sims[0].data)
    with pytest.raises(RuntimeError, match="not fitted"):
        _ = model.result_
    assert not hasattr(model, "hyperparameters_")


def test_prior_mean_receives_a_copy(sims):
    sim = sims[0]

    def mutating(x):
        x += 100.0  # in place: must not reach the model's data
        return np.zeros(len(x))

    model = quiet(mp.Magma(max_iter=1, prior_mean=mutating).fit, sim.data)
    reference = quiet(mp.Magma(max_iter=1, prior_mean=0.0).fit, sim.data)
    np.testing.assert_array_equal(model.data_.grid, reference.data_.grid)
    assert model.log_likelihood_ == pytest.approx(reference.log_likelihood_, rel=1e-12)
