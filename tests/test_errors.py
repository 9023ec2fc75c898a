"""Bad configuration and hyper-parameters: clear, early errors (data errors are in test_data.py)."""

import pandas as pd
import pytest

import magma_pymc as mp

TRAIN = pd.DataFrame({"ID": ["a"] * 3 + ["b"] * 3, "Input": [0.0, 1.0, 2.0] * 2, "Output": [1.0, 2.0, 1.5, 0.5, 1.0, 2.5]})
GOOD = {"mean_process": {"variance": 1.0, "lengthscale": 1.0}, "individual": {"variance": 1.0, "lengthscale": 1.0, "noise": 0.1}}


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
