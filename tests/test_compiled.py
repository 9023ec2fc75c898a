"""Compiled functions of a model structure (magma_pymc.compiled): caching, and the E-step factors, marginal
likelihood and mean process at new inputs against dense NumPy formulas of MAGMA."""

import numpy as np
import pytest
from conftest import COMMON, DIFFERENT, HP0, common_grid_problem, fixed_model
from reference import se
from scipy import linalg, stats

import magma_pymc as mp
from magma_pymc.compiled import graphs_for
from magma_pymc.data import as_training_data

M0 = 0.7
JITTER = 1e-9
SETTINGS = pytest.mark.parametrize(
    "common_grid,common_hp",
    [(False, True), (False, False), (True, True), (True, False)],
    ids=["uncommon-commonHP", "uncommon-differentHP", "common-commonHP", "common-differentHP"],
)


def test_graphs_are_cached_per_structure():
    se_a, se_b = mp.SquaredExponential(), mp.SquaredExponential(lengthscale=2.0)  # equal kernels, distinct objects
    first = graphs_for(se_a, se_a, common_hp=True, common_grid=False, mode="NUMPY")
    assert graphs_for(se_b, se_b, common_hp=True, common_grid=False, mode="NUMPY") is first
    others = [
        graphs_for(se_a, se_a, common_hp=False, common_grid=False, mode="NUMPY"),
        graphs_for(se_a, se_a, common_hp=True, common_grid=True, mode="NUMPY"),
        graphs_for(se_a, se_a, common_hp=True, common_grid=False, mode="FAST_COMPILE"),
        graphs_for(se_a, se_a, common_hp=True, common_grid=False, mode="NUMPY", projected=True),
        graphs_for(mp.Matern52(), se_a, common_hp=True, common_grid=False, mode="NUMPY"),
    ]
    assert all(g is not first for g in others)
    assert len({id(g) for g in others}) == len(others)
    assert first.fast_path is False and others[1].fast_path is True and others[3].fast_path is False
    # A compiled function is built once per structure: a second lookup of the structure returns it.
    factors = first.estep_factors
    assert graphs_for(se_b, se_a, common_hp=True, common_grid=False, mode="NUMPY").estep_factors is factors


class Dense:
    """MAGMA's formulas written out densely for a small problem (no factorisation shared with the library)."""

    def __init__(self, individuals, hps):
        self.t = [np.asarray(t, float) for t, _ in individuals]
        self.y = [np.asarray(y, float) for _, y in individuals]
        self.grid = np.unique(np.concatenate(self.t))
        self.hps = hps
        self.k0 = se(self.grid, self.grid, *HP0) + JITTER * np.eye(len(self.grid))
        self.psi = [se(t, t, *hp[:2]) + (hp[2] + JITTER) * np.eye(len(t)) for t, hp in zip(self.t, hps, strict=True)]
        self.where = [np.searchsorted(self.grid, t) for t in self.t]

    def data_precision(self):
        """sum_i P_i' Psi_i^{-1} P_i and sum_i P_i' Psi_i^{-1} (y_i - m0), P_i selecting t_i on the grid."""
        n = len(self.grid)
        precision, shift = np.zeros((n, n)), np.zeros(n)
        for idx, psi, y in zip(self.where, self.psi, self.y, strict=True):
            precision[np.ix_(idx, idx)] += np.linalg.solve(psi, np.eye(len(idx)))
            shift[idx] += np.linalg.solve(psi, y - M0)
        return precision, shift

    def hyperposterior(self):
        """Khat = (K0^{-1} + sum_i P_i' Psi_i^{-1} P_i)^{-1}, mhat - m0 = Khat sum_i P_i' Psi_i^{-1} (y_i - m0),
        evaluated in the equal covariance form (Woodbury) that needs no K0^{-1}:
        Khat = K0 - K0 P' S^{-1} P K0, mhat - m0 = K0 P' S^{-1} (y - m0), S = P K0 P' + blockdiag(Psi_i)."""
        idx = np.concatenate(self.where)
        loading = self.k0[:, idx]  # K0 P'
        stacked = self.k0[np.ix_(idx, idx)] + linalg.block_diag(*self.psi)
        y = np.concatenate(self.y) - M0
        return loading @ np.linalg.solve(stacked, y), self.k0 - loading @ np.linalg.solve(stacked, loading.T)

    def mean_process(self, s):
        """mu0(s) - m0 | y: the Gaussian conditional given the stacked observations."""
        idx = np.concatenate(self.where)
        cross = se(s, self.grid[idx], *HP0)
        stacked = self.k0[np.ix_(idx, idx)] + linalg.block_diag(*self.psi)
        y = np.concatenate(self.y) - M0
        # The library returns the covariance with its jitter on the diagonal, as every factorised covariance.
        prior = se(s, s, *HP0) + JITTER * np.eye(len(s))
        return cross @ np.linalg.solve(stacked, y), prior - cross @ np.linalg.solve(stacked, cross.T)

    def log_likelihood(self):
        """Log N(y; m0, P K0 P' + blockdiag(Psi_i)) of the stacked observations (jitter on both, as the library)."""
        idx = np.concatenate(self.where)
        cov = self.k0[np.ix_(idx, idx)] + linalg.block_diag(*self.psi)
        return stats.multivariate_normal(np.full(len(idx), M0), cov).logpdf(np.concatenate(self.y))


def problem_args(individuals, common_hp):
    """(graphs, hp arguments, training arrays) as the library's problem builds them, written out here."""
    data = as_training_data(dict(enumerate(individuals)))
    graphs = graphs_for(
        mp.SquaredExponential(), mp.SquaredExponential(), common_hp=common_hp, common_grid=data.common_grid
    )
    residuals = data.outputs - M0 if graphs.fast_path else (data.outputs - M0) * data.mask
    hps = [COMMON] * len(individuals) if common_hp else DIFFERENT[: len(individuals)]
    log_params = np.log(COMMON) if common_hp else np.log(hps)
    args = (data.grid, data.inputs, residuals, data.mask, data.index, JITTER)
    return graphs, (np.log(HP0), log_params), args, Dense(individuals, hps)


@SETTINGS
def test_estep_factors_and_likelihood_match_the_dense_formulas(small_problem, common_grid, common_hp):
    individuals = common_grid_problem() if common_grid else small_problem
    graphs, hp, args, dense = problem_args(individuals, common_hp)
    assert graphs.fast_path == (common_grid and common_hp)
    chol_prior, chol_b, alpha = graphs.estep_factors(*hp, *args)
    np.testing.assert_allclose(chol_prior, np.tril(chol_prior), atol=0)
    np.testing.assert_allclose(chol_prior @ chol_prior.T, dense.k0, rtol=1e-12, atol=1e-12)
    # B = I + L0' (sum_i P_i' Psi_i^{-1} P_i) L0, and mhat - m0 = L0 alpha.
    precision, _ = dense.data_precision()
    np.testing.assert_allclose(
        chol_b @ chol_b.T, np.eye(len(dense.grid)) + chol_prior.T @ precision @ chol_prior, rtol=1e-10, atol=1e-10
    )
    mean, khat = dense.hyperposterior()
    np.testing.assert_allclose(chol_prior @ alpha, mean, rtol=0, atol=1e-10)
    out_mean, out_cov, cov_factor, log_likelihood, _, _ = graphs.estep(*hp, *args)
    np.testing.assert_allclose(out_mean, mean, rtol=0, atol=1e-10)
    np.testing.assert_allclose(out_cov, khat, rtol=0, atol=1e-10)
    np.testing.assert_allclose(cov_factor.T @ cov_factor, khat, rtol=0, atol=1e-10)
    np.testing.assert_allclose(log_likelihood, dense.log_likelihood(), rtol=1e-12)
    value, grad_mean, grad = graphs.log_likelihood(*hp, *args)
    np.testing.assert_allclose(value, dense.log_likelihood(), rtol=1e-12)
    assert grad_mean.shape == hp[0].shape and grad.shape == hp[1].shape


def test_log_likelihood_gradient_against_finite_differences_of_the_dense_density(small_problem):
    """Different HP, uncommon grid: the compiled gradient w.r.t. both HP blocks against central
    differences of the dense multivariate-normal density (not of the compiled value)."""
    graphs, (mean_log, log_params), args, _ = problem_args(small_problem, common_hp=False)
    _, grad_mean, grad = graphs.log_likelihood(mean_log, log_params, *args)

    def dense_value(mean_log, log_params):
        dense = Dense(small_problem, [tuple(np.exp(row)) for row in log_params])
        dense.k0 = se(dense.grid, dense.grid, *np.exp(mean_log)) + JITTER * np.eye(len(dense.grid))
        return dense.log_likelihood()

    eps = 1e-6
    for k in range(2):
        step = eps * np.eye(2)[k]
        fd = (dense_value(mean_log + step, log_params) - dense_value(mean_log - step, log_params)) / (2 * eps)
        np.testing.assert_allclose(grad_mean[k], fd, rtol=1e-5, atol=1e-6)
    for k in np.ndindex(log_params.shape):
        step = np.zeros_like(log_params)
        step[k] = eps
        fd = (dense_value(mean_log, log_params + step) - dense_value(mean_log, log_params - step)) / (2 * eps)
        np.testing.assert_allclose(grad[k], fd, rtol=1e-5, atol=1e-6)


@SETTINGS
def test_mean_process_at_new_inputs_matches_the_dense_conditional(small_problem, common_grid, common_hp):
    """mu0(s) - m0 | y from the grid formula K0(s,t) K0^{-1} (mhat - m0), K0(s,s) - K0(s,t) K0^{-1} (K0 - Khat)
    K0^{-1} K0(t,s) (theory page, *Prediction*) equals the Gaussian conditional given the stacked data."""
    individuals = common_grid_problem() if common_grid else small_problem
    graphs, hp, args, dense = problem_args(individuals, common_hp)
    s = np.array([-1.0, 0.3, 2.55, 7.1, 12.0])
    mean, cov = graphs.mean_process_at(*hp, *args, s[:, None])
    expected_mean, expected_cov = dense.mean_process(s)
    np.testing.assert_allclose(mean, expected_mean, rtol=0, atol=1e-10)
    np.testing.assert_allclose(cov, expected_cov, rtol=0, atol=1e-10)


@SETTINGS
def test_log_likelihood_gradient_matches_finite_differences(small_problem, common_grid, common_hp):
    individuals = common_grid_problem() if common_grid else small_problem
    model, _ = fixed_model(individuals, common_hp)
    f = model._problem_.graphs.log_likelihood
    args = model._problem_.data_args
    state = model._state
    _, g0, g = f(state.mean_log_params, state.log_params, *args, state.jitter)
    eps = 1e-6
    for which, base, grad in ((0, state.mean_log_params, g0), (1, state.log_params, g)):
        for k in np.ndindex(base.shape):
            up, down = base.copy(), base.copy()
            up[k] += eps
            down[k] -= eps
            pair = (
                [(up, state.log_params), (down, state.log_params)]
                if which == 0
                else [(state.mean_log_params, up), (state.mean_log_params, down)]
            )
            fd = (f(*pair[0], *args, state.jitter)[0] - f(*pair[1], *args, state.jitter)[0]) / (2 * eps)
            np.testing.assert_allclose(grad[k], fd, rtol=1e-5, atol=1e-6)
