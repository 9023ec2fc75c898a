"""The diagonal prediction path (magma_pymc.predict_diag) against the full-covariance graphs."""

import warnings

import numpy as np
import pytest

import magma_pymc as mp
from magma_pymc.predict_diag import EStepFactors, mean_process_parts, predictive_diagonal


@pytest.fixture(scope="module")
def sim():
    return mp.simulate(n_individuals=6, n_points=10, seed=3, n_new=1)


@pytest.mark.parametrize("settings", [{}, {"common_hp": False}, {"inducing": 7}],
                         ids=["commonHP", "differentHP", "inducing"])
def test_diagonal_path_equals_the_full_covariance_path(sim, settings):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.MagmaWarning)
        model = mp.Magma(max_iter=2, **settings).fit(sim.data)
    graphs, state, problem = model._problem_.graphs, model._state, model._problem_
    obs, y = np.array([[0.5], [2.0], [3.3]]), np.array([0.1, 0.4, -0.2])
    pred = np.linspace(-1, 11, 13)[:, None]
    for observed, outputs in ((obs, y), (np.empty((0, 1)), np.empty(0))):  # Type I and Type II
        joint = np.concatenate([observed, pred])
        n_obs = len(observed)
        mean, cov = (np.asarray(v) for v in graphs.mean_process_at(
            state.mean_log_params, state.log_params, *problem.data_args, state.jitter, joint))
        factors = EStepFactors(*(np.asarray(v) for v in graphs.estep_factors(
            state.mean_log_params, state.log_params, *problem.data_args, state.jitter)))
        parts = mean_process_parts(graphs.mean_kernel, graphs.mode, state.mean_log_params, problem.data_args[0],
                                   factors, observed, pred, state.jitter, chunk=5)  # 3 chunks
        scale = np.abs(cov).max()
        np.testing.assert_allclose(parts.mean_obs, mean[:n_obs], atol=1e-10 * scale)
        np.testing.assert_allclose(parts.cov_obs, cov[:n_obs, :n_obs], atol=1e-10 * scale)
        np.testing.assert_allclose(parts.mean_pred, mean[n_obs:], atol=1e-10 * scale)
        np.testing.assert_allclose(parts.cov_cross, cov[:n_obs, n_obs:], atol=1e-10 * scale)
        np.testing.assert_allclose(parts.var_pred, np.diag(cov)[n_obs:], atol=1e-10 * scale)
        hp = state.log_params if state.log_params.ndim == 1 else state.log_params[0]
        full = [np.asarray(v) for v in graphs.predictive(hp, observed, outputs, pred, mean, cov, state.jitter)]
        got = predictive_diagonal(graphs.individual_kernel, graphs.mode, hp, observed, outputs, pred, parts.mean_obs,
                                  parts, state.jitter, chunk=4)
        np.testing.assert_allclose(got[0], full[0], atol=1e-9)
        np.testing.assert_allclose(got[1], np.diag(full[1]), atol=1e-9)
        np.testing.assert_allclose(got[2], np.diag(full[2]), atol=1e-9)
