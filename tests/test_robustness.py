"""Robustness: a catalogue of bad inputs (clear, early errors), numerical stress, properties, reproducibility.

Bad inputs already covered elsewhere (``test_data.py``, ``test_estimator.py``, ``test_kernels.py``,
``test_params.py``, ``test_predict.py``) are not repeated: missing columns, non-numeric columns, NaN/inf, duplicated
inputs, too few points, empty data, mismatched lengths, mixed/missing IDs, wrong input dimension,
non-positive HP, accessors before fit. Every error case below asserts the exception type *and*
that the message names the culprit (individual, column, argument).
"""

import re
import signal
import warnings
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import magma_pymc as mp
import magma_pymc.em as em
from magma_pymc import MagmaInputError

GOOD_HP = {"mean_process": {"variance": 1.0, "lengthscale": 2.0}, "individual": {"variance": 1.0, "lengthscale": 1.5, "noise": 0.1}}
TWO = {"a": ([0.0, 1.0, 2.0], [1.0, 2.0, 1.5]), "b": ([0.5, 1.5], [0.5, 1.0])}


def quiet(callable_, *args, **kwargs):
    """Call with magma_pymc's convergence/numerical warnings silenced (max_iter is kept small on purpose)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.MagmaWarning)
        return callable_(*args, **kwargs)


def fit(data, *, common_hp=True, max_iter=3, **options):
    return quiet(mp.Magma(common_hp=common_hp, max_iter=max_iter).fit, data, **options)


def frame(**columns):
    return pd.DataFrame(columns)


@pytest.fixture(scope="module")
def small():
    """A small simulated problem, a new individual split in observed/target, and a fitted common-HP model."""
    sim = mp.simulate(n_individuals=5, n_points=8, seed=4, n_new=1, scheme="smooth")
    observed, target = mp.split_observed(sim.new, 5)
    return sim, observed, target, fit(sim.data)


def assert_finite_prediction(pred):
    for name in ("mean", "variance", "latent_variance", "lower", "upper"):
        assert np.all(np.isfinite(pred[name].values)), name
    assert np.all(pred["variance"].values > 0)


# =============================================================================== bad inputs
# (name, data, fit options, exception, pattern naming the culprit)
BAD_TRAINING = [
    ("individual with no points", {"a": ([0.0, 1.0], [1.0, 2.0]), "b": ([], [])}, {},
     MagmaInputError, r"individual 'b': 0 distinct input"),
    ("datetime input column", frame(ID=["a", "a"], Input=pd.to_datetime(["2020-01-01", "2020-02-01"]), Output=[1.0, 2.0]), {},
     MagmaInputError, r"individual\(s\) \['a'\]: non-numeric values in input column 'Input'.*Timestamp"),
    ("numbers as strings", frame(ID=["a", "a", "b"], Input=[0.0, 1.0, 2.0], Output=["1.0", "2", "3"]), {},
     MagmaInputError, r"individual\(s\) \['a', 'b'\]: non-numeric values in output column 'Output'"),
    ("complex outputs", {"a": ([1.0, 2.0], np.array([1 + 1j, 2.0]))}, {},
     MagmaInputError, r"individual 'a': non-numeric values in outputs.*1\+1j"),
    ("None in object input column", frame(ID=["a", "a", "b"], Input=np.array([0.0, None, 1.0], dtype=object), Output=[1.0, 2.0, 3.0]), {},
     MagmaInputError, r"individual 'a': 1 NaN/inf value\(s\) in input 'Input' at row\(s\) \[1\]"),
    ("pd.NA in nullable output", frame(ID=["a", "b", "b"], Input=[0.0, 0.0, 1.0], Output=pd.array([1, 2, None], dtype="Int64")), {},
     MagmaInputError, r"individual 'b': 1 NaN/inf value\(s\) in output 'Output' at input\(s\) \[1\.0\]"),
    ("None output in a pair", {"a": ([1.0, 2.0], [None, 2.0])}, {},
     MagmaInputError, r"individual 'a': 1 NaN/inf value\(s\) in output 'Output' at input\(s\) \[1\.0\]"),
    ("3-D input array", {"a": (np.ones((2, 2, 1)), [1.0, 2.0])}, {},
     MagmaInputError, r"individual 'a': inputs must have shape \(n,\) or \(n, d\), got \(2, 2, 1\)"),
    ("2-column outputs", {"a": ([1.0, 2.0], np.ones((2, 2)))}, {},
     MagmaInputError, r"individual 'a': outputs must have shape \(n,\), got \(2, 2\)"),
    ("ragged inputs", {"a": ([1.0, 2.0], [1.0, 2.0]), "b": ([[1.0], [2.0, 3.0]], [1.0, 2.0])}, {},
     MagmaInputError, r"individual 'b': inputs are not a rectangular array"),
    ("2-D inputs (pairs) for a 1-D model", {"a": ([0.0, 1.0], [1.0, 2.0]), "b": (np.ones((2, 2)), [1.0, 2.0])}, {},
     MagmaInputError, r"individual 'b': inputs have 2 dimension\(s\), expected 1"),
    ("duplicated column names", pd.DataFrame([["a", 0.0, 1.0, 2.0]], columns=["ID", "Input", "Input", "Output"]), {},
     MagmaInputError, r"duplicated column name\(s\) \['Input'\]"),
    ("duplicated inputs through fit", frame(ID=["a", "a", "b", "b"], Input=[0.0, 1.0, 2.0, 2.0], Output=[1.0, 2.0, 3.0, 4.0]), {},
     MagmaInputError, r"individual 'b': duplicated input\(s\) \[2\.0\] in 'Input'.*duplicates='mean'"),
    ("outputs whose variance overflows", {"a": ([0.0, 1.0], [1.0, 2.0]), "b": ([0.0, 1.0], [-1e200, 1e200])}, {},
     MagmaInputError, r"individual 'b': outputs \('Output',\) as large as 1e\+200.*overflow"),
    ("inputs whose range overflows", {"a": ([-1.7e308, 0.0], [1.0, 2.0]), "b": ([0.0, 1.7e308], [1.0, 2.0])}, {},
     MagmaInputError, r"individual '[ab]': inputs \('Input',\) as large as 1\.7e\+308.*overflow"),
    ("misspelt data option", TWO, {"input_col": "Input"},
     TypeError, r"unexpected keyword argument\(s\) 'input_col'"),
]


@pytest.mark.parametrize("name,data,options,exc,pattern", BAD_TRAINING, ids=[c[0] for c in BAD_TRAINING])
def test_bad_training_data_gives_a_clear_error(name, data, options, exc, pattern):
    with pytest.raises(exc, match=pattern):
        mp.Magma(max_iter=1).fit(data, **options)


BAD_SETTINGS = [
    ("negative jitter", dict(jitter=-1.0), r"jitter must be a finite number >= 0, got -1\.0"),
    ("NaN jitter", dict(jitter=np.nan), r"jitter must be a finite number >= 0, got nan"),
    ("fractional max_iter", dict(max_iter=2.5), r"max_iter must be a non-negative integer, got 2\.5"),
    ("negative max_iter", dict(max_iter=-1), r"max_iter must be a non-negative integer, got -1"),
    ("negative tol", dict(tol=-1e-3), r"tol must be a finite number >= 0"),
    ("string tol", dict(tol="small"), r"tol must be a finite number >= 0, got 'small'"),
    ("non-boolean common_hp", dict(common_hp="yes"), r"common_hp must be True or False, got 'yes'"),
]


@pytest.mark.parametrize("name,kwargs,pattern", BAD_SETTINGS, ids=[c[0] for c in BAD_SETTINGS])
def test_bad_settings_fail_at_construction(name, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        mp.Magma(**kwargs)


BAD_PRIOR_MEANS = [
    ("NaN constant", np.nan, r"prior_mean must be finite, got nan"),
    ("string", "abc", r"prior_mean must be a number, a callable or None, got 'abc'"),
    ("callable, wrong shape", lambda x: np.zeros(3), r"prior_mean returned shape \(3,\) for 5 input\(s\).*shape \(5,\)"),
    ("callable, NaN values", lambda x: np.where(x[:, 0] > 1.0, np.nan, 0.0), r"prior_mean returned 2 NaN/inf value\(s\).*\[\[1\.5\], \[2\.0\]\]"),
]


@pytest.mark.parametrize("name,prior_mean,pattern", BAD_PRIOR_MEANS, ids=[c[0] for c in BAD_PRIOR_MEANS])
def test_bad_prior_mean_gives_a_clear_error(name, prior_mean, pattern):
    # Used to surface as "the E-step failed even with jitter ..." (NaN) or a reshape error.
    with pytest.raises(MagmaInputError, match=pattern):
        mp.Magma(prior_mean=prior_mean, max_iter=1).fit(TWO)


def test_scalar_returning_prior_mean_is_broadcast():
    model = mp.Magma(prior_mean=lambda x: 1.5).fit(TWO, method="fixed", hyperparameters=GOOD_HP)
    np.testing.assert_allclose(model.hyperposterior([100.0])["mean"].values, [1.5], atol=1e-12)


def test_bad_kernels_give_a_clear_error():
    with pytest.raises(ValueError, match=r"initial value of hyper-parameter 'variance' must be positive and finite, got 0\.0"):
        mp.Matern52(variance=0.0)
    with pytest.raises(ValueError, match=r"initial value of hyper-parameter 'lengthscale' must be positive and finite, got nan"):
        mp.SquaredExponential(lengthscale=np.nan)
    with pytest.raises(ValueError, match=r"kernel acts on 2-dimensional inputs but the data have 1 input column\(s\) \('Input',\)"):
        mp.Magma(kernel=mp.SquaredExponential(input_dim=2)).fit(TWO)


def test_bad_prediction_inputs_give_a_clear_error(small):
    _, observed, target, model = small
    t = target["Input"].to_numpy()
    cases = [
        (lambda: model.predict(None, np.ones((3, 2))), r"'inputs': inputs have 2 dimension\(s\), expected 1"),
        (lambda: model.predict(None, [1.0, np.inf]), r"'inputs': 1 input row\(s\) with NaN/inf at position\(s\) \[1\]"),
        (lambda: model.predict(None, ["a", 1.0]), r"'inputs'.*non-numeric values in inputs.*'a'"),
        (lambda: model.hyperposterior([[1.0, 2.0]]), r"'inputs': inputs have 2 dimension\(s\), expected 1"),
        (lambda: model.predict((np.ones((3, 2)), [1.0, 2.0, 3.0]), t), r"individual 'new': inputs have 2 dimension\(s\), expected 1"),
        (lambda: model.predict(observed.assign(ID=["x", "y"] * 2 + ["x"]), t), r"one individual.*'ID' holds 2 IDs: \['x', 'y'\]"),
        (lambda: model.predict(observed.drop(columns="Output"), t), r"missing column\(s\) 'Output' \(Output\)"),
        (lambda: model.predict(observed.assign(ID="z", Input=1.0), t), r"individual 'z': duplicated input\(s\) \[1\.0\]"),
        (lambda: model.predict(observed.assign(ID="z", Output=np.nan), t), r"individual 'z': 5 NaN/inf value\(s\) in output 'Output'"),
        (lambda: model.predict({"x": ([1.0], [1.0])}, t), r"individual 'new': unsupported data type dict"),
        (lambda: model.predict(("a", [1.0]), t), r"individual 'new': non-numeric values in inputs"),
    ]
    for call, pattern in cases:
        with pytest.raises(MagmaInputError, match=pattern):
            call()
    with pytest.raises(ValueError, match=r"prob must be a number strictly between 0 and 1, got 1\.5"):
        model.predict(None, t, prob=1.5)
    with pytest.raises(RuntimeError, match="not fitted yet"):
        mp.Magma().predict(observed, t)


# ---------------------------------------------------------------------------- valid edge cases


EDGE_CASES = {
    "an individual with one point": {"a": ([0.0, 1.0, 2.0], [1.0, 2.0, 1.5]), "b": ([1.5], [2.0])},
    "constant outputs": {"a": ([0.0, 1.0, 2.0], [3.0, 3.0, 3.0]), "b": ([0.5, 1.5], [3.0, 3.0])},
    "integer and boolean columns": frame(ID=[1, 1, 2, 2], Input=[0, 1, 0, 2], Output=[True, False, True, True]),
    "tuple IDs": {("x", 1): ([0.0, 1.0], [1.0, 2.0]), ("x", 2): ([0.5, 1.0], [0.0, 1.0])},  # differentHP used to crash
    # common grids (the fast path):
    "a single individual": {"a": ([0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 1.5, 0.5])},
    "a single individual with one point": {"a": ([1.0], [1.0])},
    "every individual at the same single input": {"a": ([1.0], [0.0]), "b": ([1.0], [2.0]), "c": ([1.0], [1.0])},
}


@pytest.mark.parametrize("common_hp", [True, False], ids=["commonHP", "differentHP"])
@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_valid_edge_cases_fit_and_predict_finite(name, common_hp):
    model = fit(EDGE_CASES[name], common_hp=common_hp, max_iter=2)
    ll = model.idata_["em_trace"]["log_likelihood"].values
    assert np.all(np.isfinite(ll)) and np.all(np.isfinite(model.hyperparameters_.individual.to_numpy()))
    assert_finite_prediction(quiet(model.predict, ([0.5, 2.0], [1.0, 1.0]), [0.0, 1.0, 5.0]))
    if not common_hp and model.data_.n_individuals == 1:  # the stated fallback: nothing to integrate over
        with pytest.warns(mp.MagmaWarning, match="one training individual: no population distribution"):
            assert_finite_prediction(model.predict(None, [0.0, 1.0, 5.0]))
    else:
        assert_finite_prediction(model.predict(None, [0.0, 1.0, 5.0]))


def test_prediction_far_outside_the_training_range_reverts_to_the_prior(small):
    sim, observed, _, model = small
    far = np.array([-1e3, 2e3, 5e4])  # training inputs in [0, 10]
    with warnings.catch_warnings():
        warnings.simplefilter("error", mp.NumericalWarning)
        pred = model.predict(observed, far)
    assert_finite_prediction(pred)
    hp = model.hyperparameters_
    m0 = float(sim.data["Output"].mean())  # the default constant prior mean
    np.testing.assert_allclose(pred["mean"].values, m0, rtol=1e-9)
    prior_var = hp.mean_process["variance"] + hp.individual["variance"].iloc[0] + hp.individual["noise"].iloc[0]
    np.testing.assert_allclose(pred["variance"].values, prior_var, rtol=1e-6)
    assert model.predict(observed, []).sizes["input"] == 0
    # Farther, kernel distances |x|^2 + |y|^2 - 2xy lose precision (at 1e8 a variance came out 2.88
    # instead of 3.10): allowed, with a warning.
    with pytest.warns(mp.NumericalWarning, match=r"predict: input\(s\) \['Input'\] reach 1e\+08.*shift the inputs"):
        model.predict(observed, [1e8])


@pytest.mark.parametrize("offset", [1e3, 1e6])
def test_inputs_far_from_zero(small, offset):
    """Stationary kernels are translation invariant, but pm.gp.cov's squared distances are not:
    inputs t + 1e6 (t in [0, 10]) changed the log-likelihood by 0.27; t + 1e8 made the E-step fail."""
    sim, observed, target, _ = small
    base = mp.Magma(prior_mean=3.0).fit(sim.data, method="fixed", hyperparameters=scaled_hp(1.0))
    shifted = sim.data.assign(Input=sim.data["Input"] + offset)
    if offset > 1e5:  # 1e4 training input ranges
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = mp.Magma(prior_mean=3.0).fit(shifted, method="fixed", hyperparameters=scaled_hp(1.0))
        messages = [str(w.message) for w in caught if issubclass(w.category, mp.NumericalWarning)]
        pattern = r"training data: input\(s\) \['Input'\] reach 1(\.\d+)?e\+06.*shift the inputs"
        assert any(re.match(pattern, m) for m in messages), messages
        assert any(m.startswith("Cholesky failed; jitter raised") for m in messages)  # the precision loss, seen
        assert np.isfinite(model.log_likelihood_)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error", mp.NumericalWarning)
        model = mp.Magma(prior_mean=3.0).fit(shifted, method="fixed", hyperparameters=scaled_hp(1.0))
        pred = model.predict(observed.assign(Input=observed["Input"] + offset), target["Input"] + offset)
    assert model.log_likelihood_ == pytest.approx(base.log_likelihood_, rel=1e-8)
    np.testing.assert_allclose(pred["mean"].values, base.predict(observed, target["Input"])["mean"].values, rtol=1e-7)


def test_duplicates_mean_through_fit_and_predict():
    data = frame(ID=["a", "a", "a", "b", "b"], Input=[0.0, 1.0, 1.0, 0.0, 2.0], Output=[1.0, 2.0, 4.0, 0.0, 1.0])
    with pytest.warns(UserWarning, match=r"merged 1 .*'a': 1"):
        model = mp.Magma().fit(data, method="fixed", hyperparameters=GOOD_HP, duplicates="mean")
    assert list(model.data_.individuals[0].outputs) == [1.0, 3.0]
    with pytest.warns(UserWarning, match=r"'new': 1"):
        pred = model.predict(([1.0, 1.0], [0.0, 2.0]), [1.0], duplicates="mean")
    assert_finite_prediction(pred)


# ========================================================================= numerical stress


@pytest.mark.parametrize("common_hp", [True, False], ids=["commonHP", "differentHP"])
@pytest.mark.parametrize("lengthscale", [1e-6, 1e6])
def test_extreme_initial_lengthscales(small, lengthscale, common_hp):
    sim, observed, target, _ = small
    start = {"mean_process": {"variance": 1.0, "lengthscale": lengthscale},
             "individual": {"variance": 1.0, "lengthscale": lengthscale, "noise": 0.1}}
    model = fit(sim.data, common_hp=common_hp, hyperparameters=start)
    ll = model.idata_["em_trace"]["log_likelihood"].values
    assert np.all(np.isfinite(ll)) and ll[-1] > ll[0]
    assert np.all(np.diff(ll) >= -1e-8 * np.abs(ll[:-1]))
    assert np.all(np.isfinite(model.hyperparameters_.individual.to_numpy()))
    assert_finite_prediction(quiet(model.predict, observed, target["Input"]))


def test_hp_ending_on_a_bound_is_reported(small):
    """From lengthscales 1e-6 (below the lower bound, clipped to it) the expected log-likelihood of
    the individuals is flat in their lengthscale (every input independent of the others), so EM
    leaves it there: the fit warns and names it; from the default start it ends inside the bounds,
    without the warning."""
    sim = small[0]
    start = {"mean_process": {"variance": 1.0, "lengthscale": 1e-6},
             "individual": {"variance": 1.0, "lengthscale": 1e-6, "noise": 0.1}}
    with pytest.warns(mp.ConvergenceWarning, match=r"on their bounds: lengthscale = \S+ \(lower\)"):
        model = mp.Magma(max_iter=3, restarts=0).fit(sim.data, hyperparameters=start)
    lower = np.log(1e-3 * np.ptp(model.data_.grid))
    assert np.log(model.hyperparameters_.individual["lengthscale"].iloc[0]) == pytest.approx(lower, abs=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", mp.ConvergenceWarning)
        mp.Magma().fit(sim.data)


def near_duplicates(n_individuals=5, gap=1e-9):
    """Individuals on the same 8 inputs, each shifted by ``gap`` from the previous one."""
    x = np.linspace(0.0, 10.0, 8)
    return {k: (x + k * gap, np.sin(x) + 0.1 * k) for k in range(n_individuals)}


@pytest.mark.parametrize("common_hp", [True, False], ids=["commonHP", "differentHP"])
def test_near_duplicate_inputs_across_individuals(common_hp):
    data = near_duplicates()
    model = fit(data, common_hp=common_hp)
    assert model.data_.n_inputs == 40 and not model.data_.common_grid
    ll = model.idata_["em_trace"]["log_likelihood"].values
    assert np.all(np.isfinite(ll)) and np.all(np.diff(ll) >= -1e-8 * np.abs(ll[:-1]))
    assert np.all(np.isfinite(model.hyperposterior()["mean"].values))
    assert_finite_prediction(quiet(model.predict, (np.array([1.0, 1.0 + 1e-9]), [0.8, 0.8]), [1.0, 1.0 + 5e-10]))


def scaled(data, c):
    return data.assign(Output=data["Output"] * c)


def scaled_hp(c):
    return {"mean_process": {"variance": 2.0 * c**2, "lengthscale": 2.0},
            "individual": {"variance": 1.0 * c**2, "lengthscale": 1.5, "noise": 0.1 * c**2}}


@pytest.mark.parametrize(
    "c",
    [
        1e-6,  # noise ~1e-13: the padded-diagonal switch in individual_covariances keeps its digits
        1e-3,
        1e3,
        1e6,
    ],
)
def test_fixed_hp_results_scale_exactly_with_the_outputs(small, c):
    sim, observed, target, _ = small
    t = target["Input"].to_numpy()
    base = mp.Magma(prior_mean=3.0).fit(sim.data, method="fixed", hyperparameters=scaled_hp(1.0))
    model = mp.Magma(prior_mean=3.0 * c).fit(scaled(sim.data, c), method="fixed", hyperparameters=scaled_hp(c))
    h0, h = base.hyperposterior(), model.hyperposterior()
    p0, p = base.predict(observed, t), model.predict(scaled(observed, c), t)
    np.testing.assert_allclose(h["mean"].values, c * h0["mean"].values, rtol=1e-6)
    np.testing.assert_allclose(h["variance"].values, c**2 * h0["variance"].values, rtol=1e-6)
    np.testing.assert_allclose(p["mean"].values, c * p0["mean"].values, rtol=1e-6)
    np.testing.assert_allclose(p["variance"].values, c**2 * p0["variance"].values, rtol=1e-6)
    n_obs = len(sim.data)  # log p(c y) = log p(y) - n log c
    assert model.log_likelihood_ == pytest.approx(base.log_likelihood_ - n_obs * np.log(c), rel=1e-8, abs=1e-6)
    assert model.idata_.attrs["jitter"] == pytest.approx(c**2 * base.idata_.attrs["jitter"], rel=1e-12)


@pytest.mark.parametrize("c", [1e-6, 1e6])
def test_em_hyperparameters_and_predictions_scale_with_the_outputs(small, c):
    sim, observed, target, _ = small
    t = target["Input"].to_numpy()
    base, model = fit(sim.data, max_iter=4), fit(scaled(sim.data, c), max_iter=4)
    hp0, hp = base.hyperparameters_, model.hyperparameters_
    scale = {"variance": c**2, "noise": c**2, "lengthscale": 1.0}
    for name in ("variance", "lengthscale"):
        assert hp.mean_process[name] == pytest.approx(scale[name] * hp0.mean_process[name], rel=1e-2), name
    for name in ("variance", "lengthscale", "noise"):
        assert hp.individual[name].iloc[0] == pytest.approx(scale[name] * hp0.individual[name].iloc[0], rel=1e-2), name
    p0, p = base.predict(observed, t), model.predict(scaled(observed, c), t)
    np.testing.assert_allclose(p["mean"].values, c * p0["mean"].values, rtol=1e-4)
    np.testing.assert_allclose(p["variance"].values, c**2 * p0["variance"].values, rtol=1e-2)


def test_jitter_grows_when_needed_and_is_recorded():
    # Inputs 1e-9 apart, noise 1e-12 and a mean-process variance 1e6 times the output variance:
    # chol(K0 + j I) fails at the default relative jitter 1e-10.
    hp = {"mean_process": {"variance": 1e6, "lengthscale": 2.0}, "individual": {"variance": 1.0, "lengthscale": 2.0, "noise": 1e-12}}
    model = mp.Magma()
    with pytest.warns(mp.NumericalWarning, match=r"Cholesky failed; jitter raised from .* to .*recorded"):
        model.fit(near_duplicates(), method="fixed", hyperparameters=hp)
    start = model.jitter * model._problem_.output_scale
    recorded = model.idata_.attrs["jitter"]
    assert recorded == model._state.jitter and recorded >= 10 * start
    assert np.all(np.isfinite(model.hyperposterior()["mean"].values))
    assert_finite_prediction(model.predict(None, [1.0, 5.0]))
    with warnings.catch_warnings(record=True) as caught:  # EM from there: still recorded, never decreases
        warnings.simplefilter("always")
        em_model = mp.Magma(max_iter=2).fit(near_duplicates(), hyperparameters=hp)
    assert any(issubclass(w.category, mp.NumericalWarning) for w in caught)
    assert em_model.idata_.attrs["jitter"] >= recorded


@contextmanager
def time_limit(seconds):
    def handler(signum, frame):
        raise TimeoutError(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_zero_jitter_grows_instead_of_looping_forever():
    hp = {"mean_process": {"variance": 1e6, "lengthscale": 2.0}, "individual": {"variance": 1.0, "lengthscale": 2.0, "noise": 1e-12}}
    model = mp.Magma(jitter=0.0)
    with time_limit(60), pytest.warns(mp.NumericalWarning, match="jitter raised from 0 to"):
        model.fit(near_duplicates(), method="fixed", hyperparameters=hp)
    assert model.idata_.attrs["jitter"] > 0


# ==================================================================== property-based tests


@st.composite
def datasets(draw):
    n_individuals = draw(st.integers(2, 5))
    data = {}
    for k in range(n_individuals):
        inputs = draw(st.lists(st.floats(0.0, 10.0), min_size=2, max_size=8, unique_by=lambda v: v + 0.0))
        outputs = draw(st.lists(st.floats(-100.0, 100.0), min_size=len(inputs), max_size=len(inputs)))
        data[f"id{k}"] = (np.array(inputs) + 0.0, np.array(outputs))
    return data


@settings(max_examples=10, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=datasets(), common_hp=st.booleans())
# Found by hypothesis (300 random examples): with both M-steps run from one E-step, the ECME
# mean-process step at the *old* individual HP decreased log p(y) by 0.0105 at iteration 3.
@example(data={"id0": (np.array([3.5, 6.0, 0.0, 2.0625, 0.0625, 1.0, 2.0, 4.5]),
                       np.array([-97.0, 66.0, 0.0, 0.0, -60.0, 0.0, 0.0, 0.0])),
               "id1": (np.array([0.0, 1.0, 7.0, 0.5]), np.zeros(4))}, common_hp=True)
def test_em_on_random_valid_data(data, common_hp):
    model = fit(data, common_hp=common_hp, max_iter=3)
    ll = model.idata_["em_trace"]["log_likelihood"].values
    assert len(ll) >= 2 and np.all(np.isfinite(ll))
    assert np.all(np.diff(ll) >= -1e-8 * np.abs(ll[:-1])), np.diff(ll)
    assert np.all(np.isfinite(model.hyperparameters_.individual.to_numpy()))
    inputs = np.linspace(-1.0, 11.0, 7)
    first = next(iter(data.values()))
    for pred in (model.predict(None, inputs), quiet(model.predict, first, inputs)):
        assert_finite_prediction(pred)
        assert np.all(pred["latent_variance"].values > 0)


# ========================================================== reproducibility and interruption


@pytest.mark.parametrize("common_hp", [True, False], ids=["commonHP", "differentHP"])
def test_same_data_and_settings_give_identical_results(small, common_hp):
    sim, observed, target, _ = small
    runs = []
    for _ in range(2):
        model = fit(sim.data.copy(), common_hp=common_hp, max_iter=4)
        runs.append((model, quiet(model.predict, observed, target["Input"])))
    (a, pa), (b, pb) = runs
    np.testing.assert_array_equal(a.hyperparameters_.mean_process.to_numpy(), b.hyperparameters_.mean_process.to_numpy())
    np.testing.assert_array_equal(a.hyperparameters_.individual.to_numpy(), b.hyperparameters_.individual.to_numpy())
    np.testing.assert_array_equal(a.idata_["em_trace"]["log_likelihood"].values, b.idata_["em_trace"]["log_likelihood"].values)
    for name in ("mean", "variance"):
        np.testing.assert_array_equal(pa[name].values, pb[name].values)


def test_keyboard_interrupt_keeps_the_last_completed_iteration(small, monkeypatch):
    sim = small[0]
    reference = fit(sim.data, max_iter=1)
    calls = []
    original = em.em_step

    def interrupted_on_second_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(em, "em_step", interrupted_on_second_call)
    with pytest.warns(mp.ConvergenceWarning, match=r"EM interrupted; keeping the last completed iteration \(1\)"):
        model = mp.Magma(max_iter=10).fit(sim.data)
    assert len(calls) == 2
    assert model.n_iter_ == 1 and not model.converged_
    assert model.idata_["em_trace"].attrs["interrupted"] == 1
    assert model.idata_["em_trace"].sizes["em_iteration"] == 2
    np.testing.assert_array_equal(model.hyperparameters_.individual.to_numpy(), reference.hyperparameters_.individual.to_numpy())
    assert model.log_likelihood_ == reference.log_likelihood_
    assert np.all(np.isfinite(model.predict(None, [1.0, 2.0])["mean"].values))


# ====================================================================== adversarial use (more)
@pytest.mark.parametrize("prob", ["0.9", 1.0, 0.0, np.nan, True], ids=["string", "one", "zero", "nan", "bool"])
def test_bad_prob_in_predict_and_hyperposterior(small, prob):
    _, observed, _, model = small
    with pytest.raises(ValueError, match=r"prob must be a number strictly between 0 and 1, got"):
        model.predict(observed, [1.0, 2.0], prob=prob)
    with pytest.raises(ValueError, match=r"prob must be a number strictly between 0 and 1, got"):
        model.predict(observed, [1.0, 2.0], prob=prob, full_cov=True)
    with pytest.raises(ValueError, match=r"prob must be a number strictly between 0 and 1, got"):
        model.hyperposterior([1.0], prob=prob)


BAD_NUTS_OPTIONS = [
    ("zero draws", {"draws": 0}, r"draws must be an integer >= 1, got 0"),
    ("zero chains", {"chains": 0}, r"chains must be an integer >= 1, got 0"),
    ("fractional draws", {"draws": 2.5}, r"draws must be an integer >= 1, got 2\.5"),
    ("negative tune", {"tune": -1}, r"tune must be an integer >= 0, got -1"),
    ("zero thin", {"thin": 0}, r"thin must be an integer >= 1, got 0"),
    ("target_accept of 1.5", {"target_accept": 1.5}, r"target_accept must be a number strictly between 0 and 1"),
]


@pytest.mark.parametrize("name,options,pattern", BAD_NUTS_OPTIONS, ids=[c[0] for c in BAD_NUTS_OPTIONS])
def test_bad_sampler_options_fail_before_sampling(small, name, options, pattern):
    sim = small[0]
    with pytest.raises(ValueError, match=pattern):
        mp.Magma().fit(sim.data, method="nuts", **options)


def test_a_kernel_returning_nan_is_named_as_the_cause():
    import pymc as pm
    import pytensor.tensor as pt

    def broken(variance, lengthscale):  # sqrt of a negative number: NaN covariances
        return pt.sqrt(-variance) * pm.gp.cov.ExpQuad(1, ls=lengthscale)

    with pytest.raises(np.linalg.LinAlgError, match=r"the kernel returns NaN/inf covariances at hyper-parameters"):
        quiet(mp.Magma(kernel=mp.Kernel(broken), max_iter=1).fit, TWO)


def test_true_and_1_as_ids_are_not_merged_through_fit():
    data = frame(ID=[True, True, 1, 1], Input=[0.0, 1.0, 0.0, 1.0], Output=[1.0, 2.0, 3.0, 4.0])
    with pytest.raises(MagmaInputError, match=r"mix types \['bool', 'number'\]"):
        mp.Magma(max_iter=1).fit(data)
