"""Durable model files through Magma.save/load: atomic saves, closed files, every field checked on load,
kernels compared, ID types kept (magma_pymc.persistence, magma_pymc.files)."""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import h5py
import numpy as np
import pytest
import xarray as xr

import magma_pymc as mp
from magma_pymc.files import ModelFileError


def quiet_fit(data, **settings):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.MagmaWarning)
        return mp.Magma(max_iter=2, **settings).fit(data)


@pytest.fixture(scope="module")
def fitted():
    sim = mp.simulate(n_individuals=4, n_points=6, seed=2, n_new=1)
    return quiet_fit(sim.data, common_hp=False), sim


@pytest.fixture
def saved(fitted, tmp_path):
    path = tmp_path / "model.nc"
    fitted[0].save(path)
    return path


def _tampered(path, tmp_path, edit):
    with xr.open_datatree(path, engine="h5netcdf") as tree:
        tree = tree.load().copy(deep=True)
    edit(tree)
    other = tmp_path / "tampered.nc"
    tree.to_netcdf(other, engine="h5netcdf")
    return other


def _config_edit(**changes):
    def edit(tree):
        config = json.loads(tree.attrs["config"])
        for key, value in changes.items():
            if value is KeyError:
                config.pop(key)
            else:
                config[key] = value
        tree.attrs["config"] = json.dumps(config)
    return edit


def _state_edit(name, value):
    def edit(tree):
        state = tree["fit_state"].to_dataset()
        state[name] = (state[name].dims, value(state[name].values))
        tree["fit_state"] = xr.DataTree(state)
    return edit


def _observed_edit(edit_dataset):
    def edit(tree):
        tree["observed_data"] = xr.DataTree(edit_dataset(tree["observed_data"].to_dataset()))
    return edit


TAMPERED = [
    ("NaN mean-process HP", _state_edit("mean_log_params", lambda v: v * np.nan), r"field 'fit_state\.mean_log_params': 2 NaN/inf"),
    ("absurd individual HP", _state_edit("log_params", lambda v: v + 1e6), r"field 'fit_state\.log_params': values outside"),
    ("infinite jitter", _state_edit("jitter", lambda v: np.inf), r"field 'fit_state\.jitter'"),
    ("negative jitter", _state_edit("jitter", lambda v: -1.0), r"field 'fit_state\.jitter': values outside"),
    ("cluster weights not summing to 1", _state_edit("cluster_weights", lambda v: v * 0.5), r"field 'fit_state\.cluster_weights'"),
    ("HP of another shape", lambda t: t.__setitem__("fit_state", xr.DataTree(t["fit_state"].to_dataset().isel(hp=slice(0, 2)))),
     r"field 'fit_state\.log_params': expected shape \(4, 3\)"),
    ("no fit state", lambda t: t.__delitem__("fit_state"), r"field 'fit_state': missing"),
    ("no observed data", lambda t: t.__delitem__("observed_data"), r"field 'observed_data': missing"),
    ("NaN output", _observed_edit(lambda d: d.assign(Output=d["Output"] * np.nan)), r"field 'observed_data'.*NaN"),
    ("missing input column", _observed_edit(lambda d: d.drop_vars("Input")), r"field 'observed_data'.*'Input'"),
    ("huge inducing", _config_edit(inducing=10**9), r"field 'config\.inducing'.*only 23 distinct input"),
    ("inducing of wrong type", _config_edit(inducing="many"), r"field 'config\.inducing'"),
    ("config not JSON", lambda t: t.attrs.__setitem__("config", "{not json"), r"field 'config': invalid JSON"),
    ("config not a dict", lambda t: t.attrs.__setitem__("config", "[1, 2]"), r"field 'config': expected a JSON object"),
    ("config missing a setting", _config_edit(common_hp=KeyError), r"field 'config\.common_hp': missing"),
    ("setting of wrong type", _config_edit(common_hp="yes"), r"field 'config\.common_hp': expected bool"),
    ("negative tol", _config_edit(tol=-1.0), r"field 'config\.tol'"),
    ("unknown mean step", _config_edit(mean_step="sideways"), r"field 'config\.mean_step'"),
    ("kernel record of wrong type", _config_edit(kernel="SE"), r"field 'config\.kernel'"),
    ("IDs not matching the data", _config_edit(ids=["'x'", "'y'", "'z'", "'w'"]), r"field 'config\.ids'.*does not match"),
    ("IDs that are code", _config_edit(ids=["__import__('os')"] * 4), r"field 'config\.ids'.*not a literal ID"),
    ("no version", lambda t: t.attrs.pop("format_version"), r"field 'format_version'"),
]


@pytest.mark.parametrize("name,edit,pattern", TAMPERED, ids=[c[0] for c in TAMPERED])
def test_tampered_file_gives_one_clear_error(saved, tmp_path, name, edit, pattern):
    other = _tampered(saved, tmp_path, edit)
    with pytest.raises(ModelFileError, match=r"tampered\.nc: not a valid magma_pymc model file: " + pattern):
        mp.Magma.load(other)


def test_junk_and_truncated_files_give_one_clear_error(saved, tmp_path):
    junk = tmp_path / "junk.nc"
    junk.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    truncated = tmp_path / "truncated.nc"
    truncated.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    other = tmp_path / "other.nc"
    xr.Dataset({"a": ("x", [1.0])}).to_netcdf(other, engine="h5netcdf")
    for path, field in ((junk, "<file>"), (truncated, "<file>"), (other, "format_version")):
        with pytest.raises(ModelFileError, match=rf"{path.name}: not a valid magma_pymc model file: field '{field}'"):
            mp.Magma.load(path)


def test_another_kernel_with_the_same_parameter_names_is_refused(tmp_path, fitted):
    path = tmp_path / "se.nc"
    fitted[0].save(path)
    with pytest.raises(ValueError, match=r"kernel given to load"):
        mp.Magma.load(path, kernel=mp.Matern52())
    with pytest.raises(ValueError, match=r"mean_kernel given to load"):
        mp.Magma.load(path, mean_kernel=mp.Matern52())
    mp.Magma.load(path, kernel=mp.SquaredExponential())  # the same kernel passes


@pytest.mark.parametrize("ids", [[3, 1, 2], [(0, "a"), (1, "b"), (2, "a")], [1.5, 2.5, -1.0], ["x", "y", "z"]],
                         ids=["int", "tuple", "float", "str"])
def test_ids_keep_their_type(tmp_path, ids):
    rng = np.random.default_rng(0)
    data = {ident: (np.sort(rng.uniform(0, 10, 5)), rng.normal(size=5)) for ident in ids}
    model = quiet_fit(data, common_hp=False)
    model.save(tmp_path / "m.nc")
    loaded = mp.Magma.load(tmp_path / "m.nc")
    assert list(loaded.data_.ids) == ids and [type(i) for i in loaded.data_.ids] == [type(i) for i in ids]
    assert list(loaded.hyperparameters_.individual.index) == list(model.hyperparameters_.individual.index)


def test_load_then_save_to_the_same_path(saved):
    loaded = mp.Magma.load(saved)
    loaded.save(saved)  # the file was closed after load
    mp.Magma.load(saved)


def test_failed_save_keeps_the_old_file(tmp_path, fitted, monkeypatch):
    path = tmp_path / "m.nc"
    fitted[0].save(path)
    before = path.read_bytes()

    def failing_write(self, *args, **kwargs):
        raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")  # as a lone surrogate did

    monkeypatch.setattr(xr.DataTree, "to_netcdf", failing_write)
    with pytest.raises(UnicodeEncodeError):
        fitted[0].save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.nc"]


def test_an_id_that_is_not_valid_unicode_is_refused_at_fit():
    rng = np.random.default_rng(1)
    with pytest.raises(mp.MagmaInputError, match=r"individual '\\ud800x': the ID is not valid Unicode"):
        mp.Magma(max_iter=1).fit({"ok": (np.arange(4.0), rng.normal(size=4)),
                                  "\ud800x": (np.arange(4.0), rng.normal(size=4))})


def _write_calls():
    """h5py entry points a save goes through (each a place where a write can fail)."""
    return [(h5py.Group, "create_dataset"), (h5py.Dataset, "__setitem__"), (h5py.AttributeManager, "__setitem__"),
            (h5py.AttributeManager, "create"), (h5py.Group, "create_group")]


def test_an_exception_at_every_write_point_keeps_the_old_file(tmp_path, fitted, monkeypatch):
    path = tmp_path / "m.nc"
    fitted[0].save(path)
    before = path.read_bytes()
    count = {"n": 0, "fail_at": None}
    originals = {(cls, name): getattr(cls, name) for cls, name in _write_calls()}

    def counting(cls, name):
        def call(*args, **kwargs):
            count["n"] += 1
            if count["n"] == count["fail_at"]:
                raise KeyboardInterrupt
            return originals[(cls, name)](*args, **kwargs)
        return call

    for cls, name in _write_calls():
        monkeypatch.setattr(cls, name, counting(cls, name))
    fitted[0].save(tmp_path / "count.nc")
    n_points = count["n"]
    os.unlink(tmp_path / "count.nc")
    assert n_points > 10
    for k in range(1, n_points + 1):
        count.update(n=0, fail_at=k)
        with pytest.raises(KeyboardInterrupt):
            fitted[0].save(path)
        assert path.read_bytes() == before, f"write point {k}"
    assert os.listdir(tmp_path) == ["m.nc"]
    monkeypatch.undo()
    mp.Magma.load(path)


@pytest.mark.slow
def test_a_killed_save_keeps_the_old_file(tmp_path, fitted):
    """A process killed (SIGKILL) at random moments while saving over a good file: the file is the old
    one or the new one, always loadable, in every trial."""
    path = tmp_path / "m.nc"
    fitted[0].save(path)
    script = textwrap.dedent(f"""
        import sys, warnings
        warnings.simplefilter("ignore")
        import magma_pymc as mp
        model = mp.Magma.load({str(path)!r})
        print("ready", flush=True)
        while True:
            model.save({str(path)!r})
    """)
    rng = np.random.default_rng(0)
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=os.getcwd())
        assert proc.stdout.readline().strip() == b"ready"
        try:
            proc.wait(timeout=rng.uniform(0.05, 1.0))
        except subprocess.TimeoutExpired:
            proc.kill()
        proc.wait()
        mp.Magma.load(path)
    leftovers = [name for name in os.listdir(tmp_path) if name != "m.nc"]
    assert all(name.startswith(".m.nc.") and name.endswith(".tmp") for name in leftovers)
