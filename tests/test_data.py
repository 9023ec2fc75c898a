"""Tests for magma_pymc.data: validation, union grid, index maps and padding."""

import re
import warnings

import numpy as np
import pandas as pd
import pytest

from magma_pymc.data import (
    Individual,
    MagmaInputError,
    TrainingData,
    as_individual,
    as_inputs,
    as_training_data,
)


def make_long(seed: int = 0, m: int = 4, d: int = 1, common: bool = False) -> pd.DataFrame:
    """Random long DataFrame in MagmaClustR format, rows shuffled (inputs not sorted)."""
    rng = np.random.default_rng(seed)
    pool = np.round(np.linspace(0.0, 10.0, 21), 2)
    frames = []
    for i in range(m):
        n = len(pool) if common else int(rng.integers(3, 10))
        names = [f"Input{j + 1}" for j in range(d)] if d > 1 else ["Input"]
        cols = {name: pool if common else rng.choice(pool, n, replace=False) for name in names}
        frames.append(pd.DataFrame({"ID": f"id{i}", **cols, "Output": rng.normal(size=n)}))
    df = pd.concat(frames, ignore_index=True)
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def sort_long(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(list(df.columns[:-1])).reset_index(drop=True)


# --------------------------------------------------------------------------- structure


def test_round_trip_long_dataframe():
    df = make_long(seed=1)
    td = as_training_data(df)
    pd.testing.assert_frame_equal(sort_long(td.to_long()), sort_long(df))
    assert list(td.ids) == list(pd.unique(df["ID"]))  # order of first appearance


def test_index_maps_and_padding():
    td = as_training_data(make_long(seed=2, m=5))
    assert td.grid.shape == (td.n_inputs, 1)
    assert np.all(np.diff(td.grid[:, 0]) > 0)  # sorted, unique
    assert td.index.dtype == np.int64 and td.index.shape == td.mask.shape == td.outputs.shape
    assert td.inputs.shape == (td.n_individuals, td.n_max, 1)
    assert td.n_max == td.n_points.max()
    for i, ind in enumerate(td.individuals):
        n = ind.n_points
        np.testing.assert_array_equal(td.grid[td.index[i, :n]], ind.inputs)
        np.testing.assert_array_equal(td.inputs[i, :n], ind.inputs)
        np.testing.assert_array_equal(td.outputs[i, :n], ind.outputs)
        assert np.all(td.mask[i, :n] == 1.0)
        assert np.all(td.index[i, n:] == td.n_inputs)
        assert np.all(td.mask[i, n:] == 0.0) and np.all(td.outputs[i, n:] == 0.0)
        assert np.all(td.inputs[i, n:] == ind.inputs[-1])
    assert td.mask.sum() == len(td.to_long())


def test_order_maps_back_to_user_rows():
    df = make_long(seed=3)
    td = as_training_data(df)
    for ind in td.individuals:
        rows = df[df["ID"] == ind.id]
        np.testing.assert_array_equal(rows["Input"].to_numpy()[ind.order], ind.inputs[:, 0])
        np.testing.assert_array_equal(rows["Output"].to_numpy()[ind.order], ind.outputs)


def test_common_grid_detection():
    assert as_training_data(make_long(seed=4, common=True)).common_grid
    assert not as_training_data(make_long(seed=4, common=False)).common_grid
    df = pd.DataFrame({"ID": ["a"] * 3 + ["b"] * 3, "Input": [1.0, 2, 3, 3, 2, 1], "Output": np.arange(6.0)})
    assert as_training_data(df).common_grid  # same set, different order
    assert not as_training_data(df.iloc[:5]).common_grid


def test_dict_and_list_forms_match_dataframe():
    df = pd.DataFrame({"ID": [0, 0, 1, 1, 1], "Input": [2.0, 1, 0, 1, 3], "Output": [1.0, 2, 3, 4, 5]})
    pairs = [([2.0, 1.0], [1.0, 2.0]), (np.array([0.0, 1, 3]), np.array([3.0, 4, 5]))]
    ref = as_training_data(df)
    for data in (dict(enumerate(pairs)), pairs, tuple(pairs)):
        td = as_training_data(data)
        assert list(td.ids) == list(ref.ids) == [0, 1] and td.input_names == ref.input_names == ("Input",)
        for field in ("grid", "index", "mask", "inputs", "outputs", "n_points"):
            np.testing.assert_array_equal(getattr(td, field), getattr(ref, field))
        assert td.common_grid == ref.common_grid


def test_two_dimensional_inputs_lexicographic_grid():
    df = pd.DataFrame({"ID": ["a", "a", "a", "b", "b"], "Input": [1.0, 0.0, 1.0, 0.0, 2.0],
                       "Covariate": [5.0, 9.0, -1.0, 9.0, 0.0], "Output": np.arange(5.0)})
    td = as_training_data(df)
    assert td.input_dim == 2 and td.input_names == ("Input", "Covariate")
    np.testing.assert_array_equal(td.grid, [[0.0, 9.0], [1.0, -1.0], [1.0, 5.0], [2.0, 0.0]])
    np.testing.assert_array_equal(td.index, [[0, 1, 2], [0, 3, 4]])
    np.testing.assert_array_equal(td.individuals[0].outputs, [1.0, 2.0, 0.0])
    pd.testing.assert_frame_equal(sort_long(td.to_long()), sort_long(df))
    pairs = {"a": (df[["Input", "Covariate"]].to_numpy()[:3], [0.0, 1, 2]),
             "b": (df[["Input", "Covariate"]].to_numpy()[3:], [3.0, 4])}
    np.testing.assert_array_equal(as_training_data(pairs).grid, td.grid)
    random2d = as_training_data(make_long(seed=5, d=2))
    assert np.all(np.diff(np.lexsort(random2d.grid.T[::-1])) == 1)  # already lexicographic


def test_input_cols_selection_and_numeric_conversions():
    df = make_long(seed=6).assign(Extra=0.5)
    td = as_training_data(df, input_cols="Input")
    assert td.input_dim == 1 and td.input_names == ("Input",)
    assert as_training_data(df, input_cols=["Input", "Extra"]).input_dim == 2
    df2 = pd.DataFrame({"ID": ["a", "a"], "Input": pd.array([1, 2], dtype="Int64"),
                        "Output": np.array([1.0, 2.0], dtype=object)})
    td2 = as_training_data(df2)
    assert td2.grid.dtype == np.float64 and td2.outputs.dtype == np.float64


def test_signed_zero_is_one_grid_point():
    td = as_training_data({"a": ([-0.0, 1.0], [1.0, 2.0]), "b": ([0.0, 1.0], [3.0, 4.0])})
    assert td.n_inputs == 2 and td.common_grid


def test_training_data_passthrough_and_from_individuals():
    td = as_training_data(make_long(seed=7))
    assert as_training_data(td) is td
    with pytest.raises(MagmaInputError, match="training data: inputs have 1 dimension"):
        as_training_data(td, input_dim=2)
    again = TrainingData.from_individuals(td.individuals, td.input_names)
    np.testing.assert_array_equal(again.index, td.index)
    with pytest.raises(MagmaInputError, match=rf"'{td.ids[0]}'.*unique ID"):
        TrainingData.from_individuals(td.individuals + td.individuals[:1])


# --------------------------------------------------------------------------- duplicates


def test_duplicates_error_names_individual_and_value():
    df = pd.DataFrame({"ID": ["a", "a", "b", "b", "b"], "Input": [1.0, 2, 3, 4.5, 4.5],
                       "Output": np.arange(5.0)})
    with pytest.raises(MagmaInputError, match=r"individual 'b'.*duplicated input.*4\.5.*'Input'"):
        as_training_data(df)


def test_duplicates_mean_merges_with_warning():
    df = pd.DataFrame({"ID": ["a", "a", "a", "b", "b", "b"], "Input": [2.0, 1.0, 2.0, 1.0, 1.0, 1.0],
                       "Output": [1.0, 5.0, 4.0, 1.0, 2.0, 6.0]})
    with pytest.warns(UserWarning, match=r"merged 3 .*'a': 1.*'b': 2"):
        td = as_training_data(df, duplicates="mean")
    a, b = td.individuals
    np.testing.assert_array_equal(a.inputs[:, 0], [1.0, 2.0])
    np.testing.assert_allclose(a.outputs, [5.0, 2.5])
    np.testing.assert_array_equal(a.order, [1, 0])  # first of the merged rows
    np.testing.assert_allclose(b.outputs, [3.0])
    with pytest.warns(UserWarning, match="'new': 1"):
        ind = as_individual(([0.0, 0.0, 1.0], [1.0, 3.0, 5.0]), duplicates="mean")
    np.testing.assert_allclose(ind.outputs, [2.0, 5.0])


def test_no_warning_without_duplicates():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        as_training_data(make_long(seed=8), duplicates="mean")


def test_invalid_duplicates_option():
    with pytest.raises(MagmaInputError, match="duplicates"):
        as_training_data(make_long(seed=8), duplicates="drop")


# --------------------------------------------------------------------------- validation errors


@pytest.mark.parametrize("drop, missing", [("Output", "'Output'"), ("ID", "'ID'")])
def test_missing_columns(drop, missing):
    df = make_long(seed=9)
    with pytest.raises(MagmaInputError, match=rf"missing column.*{missing}.*available.*'Input'"):
        as_training_data(df.drop(columns=drop))


def test_missing_input_column_given_explicitly():
    with pytest.raises(MagmaInputError, match=r"missing column.*'Time' \(input\)"):
        as_training_data(make_long(seed=9), input_cols=["Time"])
    with pytest.raises(MagmaInputError, match=r"missing column\(s\) input\(s\).*'ID', 'Output'"):
        as_training_data(make_long(seed=9).drop(columns="Input"))


def test_non_numeric_input_names_column_and_individual():
    df = make_long(seed=10)
    df["Input"] = df["Input"].astype(object)
    df.loc[df.index[df["ID"] == "id2"][0], "Input"] = "oops"
    with pytest.raises(MagmaInputError, match=r"individual\(s\) \['id2'\].*input column 'Input'.*'oops'"):
        as_training_data(df)


def test_non_numeric_output():
    df = make_long(seed=10)
    df["Output"] = df["Output"].astype(object)
    df.loc[df.index[df["ID"] == "id1"][0], "Output"] = "n/a"
    with pytest.raises(MagmaInputError, match=r"\['id1'\].*output column 'Output'"):
        as_training_data(df)


def test_non_numeric_extra_column_is_not_dropped():
    df = make_long(seed=11).assign(Group="x")
    with pytest.raises(MagmaInputError, match=r"'id0'.*input column 'Group'.*input_cols"):
        as_training_data(df)


def test_nan_input():
    df = make_long(seed=12)
    row = df.index[df["ID"] == "id3"][1]
    df.loc[row, "Input"] = np.nan
    pattern = rf"individual 'id3': 1 NaN/inf.*input 'Input'.*row\(s\) \[{row}\]"
    with pytest.raises(MagmaInputError, match=pattern):
        as_training_data(df)


def test_inf_output_names_the_inputs():
    df = pd.DataFrame({"ID": ["a", "a", "b"], "Input": [1.0, 2.5, 1.0], "Output": [0.0, np.inf, 1.0]})
    with pytest.raises(MagmaInputError, match=r"individual 'a': 1 NaN/inf.*output 'Output'.*\[2\.5\]"):
        as_training_data(df)


def test_nan_in_array_inputs():
    with pytest.raises(MagmaInputError, match=r"individual 'z': 2 NaN/inf.*'Input'"):
        as_training_data({"z": ([np.nan, 1.0, np.inf], [1.0, 2.0, 3.0])})


def test_too_few_points():
    df = pd.DataFrame({"ID": ["a"] * 3 + ["b"] * 2, "Input": [1.0, 2, 3, 1, 2], "Output": np.arange(5.0)})
    assert as_training_data(df, min_points=2).n_individuals == 2
    with pytest.raises(MagmaInputError, match=r"individual 'b': 2 distinct.*min_points=3"):
        as_training_data(df, min_points=3)


@pytest.mark.parametrize("data", [pd.DataFrame({"ID": [], "Input": [], "Output": []}), {}, []])
def test_empty_data(data):
    with pytest.raises(MagmaInputError, match="empty data"):
        as_training_data(data)


def test_mismatched_lengths():
    with pytest.raises(MagmaInputError, match=r"individual 'b': 3 inputs but 2 outputs"):
        as_training_data({"a": ([1.0], [1.0]), "b": ([1.0, 2.0, 3.0], [1.0, 2.0])})
    with pytest.raises(MagmaInputError, match=r"individual 1: 2 inputs but 1 outputs"):
        as_training_data([([1.0], [1.0]), ([1.0, 2.0], [1.0])])


def test_mixed_id_types():
    df = pd.DataFrame({"ID": [1, 1, "1", "1"], "Input": [1.0, 2, 1, 2], "Output": [1.0, 2, 3, 4]})
    with pytest.raises(MagmaInputError, match=r"ID column 'ID' mix types.*1.*'1'"):
        as_training_data(df)
    with pytest.raises(MagmaInputError, match="individual IDs mix types"):
        as_training_data({1: ([1.0], [1.0]), "1": ([1.0], [2.0])})


def test_missing_id_values():
    df = pd.DataFrame({"ID": ["a", None, "b"], "Input": [1.0, 2, 3], "Output": [1.0, 2, 3]})
    with pytest.raises(MagmaInputError, match=r"ID column 'ID' has 1 missing value.*\[1\]"):
        as_training_data(df)


def test_wrong_input_dim():
    with pytest.raises(MagmaInputError, match=r"individual 'id0': inputs have 1 dimension.*expected 2"):
        as_training_data(make_long(seed=14), input_dim=2)
    with pytest.raises(MagmaInputError, match=r"individual 'b': inputs have 2 dimension.*expected 1"):
        as_training_data({"a": ([1.0, 2.0], [1.0, 2.0]), "b": (np.ones((2, 2)), [1.0, 2.0])})


def test_bad_pair_and_type():
    with pytest.raises(MagmaInputError, match=r"individual 'a': expected an \(inputs, outputs\) pair"):
        as_training_data({"a": [1.0, 2.0, 3.0]})
    with pytest.raises(MagmaInputError, match="unsupported data type"):
        as_training_data(np.ones((3, 3)))


# --------------------------------------------------------------------------- as_individual / as_inputs


def test_as_individual_from_dataframe():
    df = pd.DataFrame({"ID": ["x"] * 3, "Input": [3.0, 1.0, 2.0], "Output": [30.0, 10.0, 20.0]})
    ind = as_individual(df)
    assert isinstance(ind, Individual) and ind.id == "x" and ind.n_points == 3
    np.testing.assert_array_equal(ind.inputs[:, 0], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(ind.outputs, [10.0, 20.0, 30.0])
    np.testing.assert_array_equal(ind.order, [1, 2, 0])
    anon = as_individual(df.drop(columns="ID"), name="newbie")
    assert anon.id == "newbie" and anon.inputs.shape == (3, 1)
    with pytest.raises(MagmaInputError, match=r"one individual.*'ID' holds 2 IDs.*'x'.*'y'"):
        as_individual(pd.concat([df, df.assign(ID="y")]))


def test_as_individual_from_tuple_and_none():
    ind = as_individual((np.array([[1.0, 0.0], [0.0, 5.0]]), [1.0, 2.0]), input_dim=2, name=7)
    assert ind.id == 7 and ind.inputs.shape == (2, 2)
    np.testing.assert_array_equal(ind.inputs, [[0.0, 5.0], [1.0, 0.0]])
    for empty in (None, (), ([], [])):
        e = as_individual(empty, input_dim=2)
        assert e.n_points == 0 and e.inputs.shape == (0, 2) and e.outputs.shape == (0,) and e.id == "new"
    assert as_individual(pd.DataFrame({"Input": [], "Output": []})).inputs.shape == (0, 1)
    with pytest.raises(MagmaInputError, match=r"individual 'new': input_dim is required"):
        as_individual(None)
    with pytest.raises(MagmaInputError, match=r"individual 'q'.*expected 1"):
        as_individual((np.ones((2, 3)), [1.0, 2.0]), input_dim=1, name="q")
    with pytest.raises(MagmaInputError, match=r"individual 'q'.*NaN/inf.*output"):
        as_individual(([1.0, 2.0], [1.0, np.nan]), name="q")


def test_as_inputs():
    x = as_inputs([3.0, 1.0, 3.0], input_dim=1)
    assert x.shape == (3, 1) and x.dtype == np.float64
    np.testing.assert_array_equal(x[:, 0], [3.0, 1.0, 3.0])  # not sorted, duplicates kept
    assert as_inputs(np.ones((4, 2), dtype=int), input_dim=2).shape == (4, 2)
    assert as_inputs(2.5, input_dim=1).shape == (1, 1)
    with pytest.raises(MagmaInputError, match=re.escape("'t_new': 1 input row(s) with NaN/inf")):
        as_inputs([1.0, np.nan], input_dim=1, name="t_new")
    with pytest.raises(MagmaInputError, match="ambiguous with input_dim=2"):
        as_inputs([1.0, 2.0], input_dim=2)
    with pytest.raises(MagmaInputError, match="expected 3"):
        as_inputs(np.ones((2, 2)), input_dim=3)
    with pytest.raises(MagmaInputError, match="non-numeric"):
        as_inputs(["a", 1.0], input_dim=1)
