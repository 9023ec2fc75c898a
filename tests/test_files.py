"""Durable files (magma_pymc.files): atomic writes, closed reads, IDs, field checks."""

import os

import numpy as np
import pytest
import xarray as xr

from magma_pymc.files import ModelFileError, atomic_write, checked_array, decode_ids, encode_ids, read_datatree


def _tree(value):
    return xr.DataTree(xr.Dataset({"a": ("x", np.full(3, value))}))


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "m.nc"
    atomic_write(path, lambda p: _tree(1.0).to_netcdf(p, engine="h5netcdf"))
    atomic_write(path, lambda p: _tree(2.0).to_netcdf(p, engine="h5netcdf"))
    assert read_datatree(path)["a"].values.tolist() == [2.0] * 3
    assert os.listdir(tmp_path) == ["m.nc"]


@pytest.mark.parametrize(
    "error", [KeyboardInterrupt, UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogate"), OSError]
)
def test_interrupted_write_keeps_the_old_file(tmp_path, error):
    path = tmp_path / "m.nc"
    atomic_write(path, lambda p: _tree(1.0).to_netcdf(p, engine="h5netcdf"))

    def failing(temporary):
        with open(temporary, "wb") as partial:
            partial.write(b"half a file")
        raise error

    with pytest.raises(type(error) if isinstance(error, Exception) else error):
        atomic_write(path, failing)
    assert read_datatree(path)["a"].values.tolist() == [1.0] * 3
    assert os.listdir(tmp_path) == ["m.nc"]


def test_read_closes_the_file_so_it_can_be_written_again(tmp_path):
    path = tmp_path / "m.nc"
    atomic_write(path, lambda p: _tree(1.0).to_netcdf(p, engine="h5netcdf"))
    tree = read_datatree(path)
    tree.to_netcdf(path, engine="h5netcdf")  # in place: fails if the file were still open
    assert read_datatree(path)["a"].values.tolist() == [1.0] * 3


def test_unreadable_file_gives_one_clear_error(tmp_path):
    path = tmp_path / "junk.nc"
    path.write_bytes(b"not a netCDF file")
    with pytest.raises(ModelFileError, match=r"junk\.nc: not a valid magma_pymc model file: field '<file>'"):
        read_datatree(path)
    with pytest.raises(FileNotFoundError, match="no such model file"):
        read_datatree(tmp_path / "absent.nc")


def test_ids_keep_their_type_and_nothing_is_executed():
    ids = ["a", 1, 2.5, True, ("x", 1), np.int64(3)]
    encoded = encode_ids(ids)
    assert decode_ids(encoded, [str(i) for i in ids], "f") == ["a", 1, 2.5, True, ("x", 1), 3]
    assert encode_ids([object()]) == [None]  # not a literal: restored as its string
    with pytest.raises(ModelFileError, match=r"config\.ids.*not a literal ID"):
        decode_ids(["__import__('os').system('echo hacked')"], ["0"], "f")
    with pytest.raises(ModelFileError, match=r"does not match the data's ID 'b'"):
        decode_ids(["'a'"], ["b"], "f")
    with pytest.raises(ModelFileError, match=r"expected a list of 2 ID"):
        decode_ids(["'a'"], ["a", "b"], "f")


def test_checked_array_names_the_field():
    assert checked_array([1.0, 2.0], "f", "x", shape=(2,)).tolist() == [1.0, 2.0]
    with pytest.raises(ModelFileError, match=r"field 'x': expected shape \(3\)"):
        checked_array([1.0, 2.0], "f", "x", shape=(3,))
    with pytest.raises(ModelFileError, match=r"field 'x': 1 NaN/inf"):
        checked_array([1.0, np.nan], "f", "x")
    with pytest.raises(ModelFileError, match=r"field 'x': values outside \[0\.0, None\]"):
        checked_array([-1.0], "f", "x", low=0.0)
    with pytest.raises(ModelFileError, match=r"field 'x': not numeric"):
        checked_array(["a"], "f", "x")
