"""Save/load round trip, version check, and reproducibility of fits."""

import json

import numpy as np
import pandas as pd
import pymc as pm
import pytest
import xarray as xr

import magma_pymc as mp


@pytest.fixture(scope="module")
def fitted():
    sim = mp.simulate(n_individuals=6, n_points=10, seed=5, n_new=1, common_hp=False, scheme="smooth")
    observed, target = mp.split_observed(sim.new, 6)
    model = mp.Magma(common_hp=False, max_iter=4).fit(sim.data)
    return model, observed, target


def test_save_load_predicts_identically(fitted, tmp_path):
    model, observed, target = fitted
    path = tmp_path / "model.nc"
    model.save(path)
    loaded = mp.Magma.load(path)
    inputs = np.linspace(-1, 11, 13)
    a, b = model.predict(observed, inputs, full_cov=True), loaded.predict(observed, inputs, full_cov=True)
    xr.testing.assert_allclose(a, b, rtol=0, atol=1e-10)
    pd.testing.assert_frame_equal(
        model.hyperparameters_.individual.reset_index(drop=True), loaded.hyperparameters_.individual.reset_index(drop=True)
    )
    assert loaded.log_likelihood_ == pytest.approx(model.log_likelihood_)
    assert loaded.n_iter_ == model.n_iter_
    assert set(loaded.idata_.children) >= {"posterior", "em_trace", "hyperposterior", "observed_data"}
    assert loaded.idata_.attrs["magma_pymc_version"] == mp.__version__


def test_load_refuses_incompatible_layout(fitted, tmp_path):
    model, _, _ = fitted
    path = tmp_path / "model.nc"
    model.save(path)
    tree = xr.open_datatree(path, engine="h5netcdf").load()
    tree.attrs["format_version"] = "0.3"
    tree.attrs["magma_pymc_version"] = "0.0.1"
    other = tmp_path / "old.nc"
    tree.to_netcdf(other, engine="h5netcdf")
    with pytest.raises(ValueError, match=r"layout version '0.3' \(written by magma_pymc 0.0.1\) is not compatible"):
        mp.Magma.load(other)


def test_custom_kernel_must_be_passed_again(tmp_path):
    def matern_kernel(variance, lengthscale):
        return variance * pm.gp.cov.Matern32(1, ls=lengthscale)

    kernel = mp.Kernel(matern_kernel)
    sim = mp.simulate(n_individuals=4, n_points=8, seed=1, scheme="smooth")
    model = mp.Magma(kernel=kernel, max_iter=2).fit(sim.data)
    model.save(tmp_path / "m.nc")
    with pytest.raises(ValueError, match="custom kernel with parameters"):
        mp.Magma.load(tmp_path / "m.nc")
    loaded = mp.Magma.load(tmp_path / "m.nc", kernel=kernel)
    np.testing.assert_allclose(loaded.hyperposterior([2.0])["mean"], model.hyperposterior([2.0])["mean"])
    config = json.loads(loaded.idata_.attrs["config"])
    assert config["kernel"]["names"] == ["variance", "lengthscale"]


def test_same_data_same_result(fitted):
    model, _, _ = fitted
    again = mp.Magma(common_hp=False, max_iter=4).fit(model.data_)
    np.testing.assert_array_equal(again._state.log_params, model._state.log_params)
    assert again.log_likelihood_ == model.log_likelihood_
