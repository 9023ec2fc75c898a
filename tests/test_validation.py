"""Argument checks (magma_pymc.validation) and the data errors they give through as_training_data."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from magma_pymc import MagmaInputError
from magma_pymc.data import as_training_data
from magma_pymc.validation import check_count, check_prob


@pytest.mark.parametrize("prob", ["0.9", 0.0, 1.0, -0.5, 1.5, np.nan, True, None, [0.9]])
def test_bad_probabilities_are_refused(prob):
    with pytest.raises(ValueError, match=r"prob must be a number strictly between 0 and 1, got"):
        check_prob(prob)


def test_good_probabilities_pass():
    assert check_prob(0.9) == 0.9
    assert check_prob(np.float32(0.5)) == 0.5


@pytest.mark.parametrize("value", [0, -1, 2.5, "10", True, None])
def test_bad_counts_are_refused(value):
    with pytest.raises(ValueError, match=r"draws must be an integer >= 1, got"):
        check_count(value, "draws")


FRAME = pd.DataFrame({"ID": ["a", "a", "b"], "Input": [0.0, 1.0, 0.0], "Output": [1.0, 2.0, 3.0]})

BAD_DATA = [
    ("True and 1 as IDs", pd.DataFrame({"ID": [True, True, 1, 1], "Input": [0.0, 1.0, 0.0, 1.0], "Output": [1.0, 2, 3, 4]}), {},
     r"ID column 'ID' mix types \['bool', 'number'\] \(e\.g\. \[True, 1\]\)"),
    ("False and 0 as IDs", pd.DataFrame({"ID": [0, False], "Input": [0.0, 0.0], "Output": [1.0, 2.0]}), {},
     r"mix types \['bool', 'number'\]"),
    ("bool and int keys", [(np.zeros(1), np.zeros(1))] * 1, {}, None),  # list: IDs 0..n-1, valid
    ("output column as input", FRAME, {"input_cols": "Output"},
     r"input_cols includes 'Output', the output column"),
    ("ID column as input", FRAME, {"input_cols": ["Input", "ID"]}, r"input_cols includes 'ID', the ID column"),
    ("ID column as output", FRAME, {"output_col": "ID", "input_cols": "Input"}, r"id_col and output_col are the same column 'ID'"),
    ("xarray Dataset", xr.Dataset({"Output": ("obs", [1.0, 2.0])}), {},
     r"unsupported data type xarray\.Dataset: convert it to a long DataFrame, e\.g\. data\.to_dataframe\(\)\.reset_index\(\)"),
    ("xarray DataArray", xr.DataArray([1.0, 2.0]), {}, r"unsupported data type xarray\.DataArray"),
    ("numpy array", np.ones((3, 3)), {}, r"unsupported data type numpy\.ndarray of shape \(3, 3\): an array carries no individual IDs"),
    ("pandas Series", pd.Series([1.0, 2.0]), {}, r"unsupported data type Series"),
]


@pytest.mark.parametrize("name,data,options,pattern", BAD_DATA, ids=[c[0] for c in BAD_DATA])
def test_bad_data_containers_and_columns(name, data, options, pattern):
    if pattern is None:
        assert as_training_data(data, **options).n_individuals == 1
        return
    with pytest.raises(MagmaInputError, match=pattern):
        as_training_data(data, **options)
