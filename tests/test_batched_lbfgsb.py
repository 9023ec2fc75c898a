"""Lockstep L-BFGS-B (one SciPy L-BFGS-B per row) against SciPy's own L-BFGS-B run row by row."""

import warnings

import numpy as np
import pytest
from scipy.optimize import minimize

from magma_pymc import batched_lbfgsb
from magma_pymc.batched_lbfgsb import lockstep_available, minimize_separable
from magma_pymc.mstep import minimize_log_params

N_ROWS = 12
BOUNDS = [(-2.0, 2.0), (-1.0, 1.5)]  # the upper bound 1.5 < a^2 is active for rows with a > 1.22


def rosenbrock_rows():
    """Rows f_i(x) = (a_i - x0)^2 + b_i (x1 - x0^2)^2, minimum (a_i, a_i^2) when inside the box."""
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.5, 1.6, N_ROWS), rng.uniform(5.0, 20.0, N_ROWS)

    def value_and_grad(x, rows):
        aa, bb = a[rows], b[rows]
        r = x[:, 1] - x[:, 0] ** 2
        values = (aa - x[:, 0]) ** 2 + bb * r**2
        grads = np.stack([-2 * (aa - x[:, 0]) - 4 * bb * x[:, 0] * r, 2 * bb * r], axis=1)
        return values, grads

    return value_and_grad, rng.normal(size=(N_ROWS, 2))


def scipy_row_by_row(value_and_grad, start, **options):
    results = []
    for i in range(start.shape[0]):
        def one(x, i=i):
            values, grads = value_and_grad(x[None], np.array([i]))
            return values[0], grads[0]

        results.append(minimize(one, start[i], jac=True, method="L-BFGS-B", bounds=BOUNDS, options=options))
    return results


def test_this_scipy_supports_the_lockstep_driver():
    """SciPy's private L-BFGS-B routine behaves as the driver expects (else EM falls back, slower)."""
    assert lockstep_available()


def test_lockstep_equals_scipy_row_by_row():
    value_and_grad, start = rosenbrock_rows()
    calls = []

    def counted(x, rows):
        calls.append(rows.size)
        return value_and_grad(x, rows)

    result = minimize_separable(counted, start, BOUNDS * N_ROWS)
    reference = scipy_row_by_row(value_and_grad, start, maxiter=200, ftol=1e-8, gtol=1e-6)
    np.testing.assert_array_equal(result.x, np.stack([r.x for r in reference]))  # the same iterates
    assert result.success and all(r.success for r in reference)
    assert result.row_evaluations == sum(r.nfev for r in reference) == sum(calls)
    assert result.nfev == len(calls) == max(r.nfev for r in reference)  # one batched call per round
    assert calls[0] == N_ROWS and calls[-1] < N_ROWS  # converged rows drop out of the batch
    assert np.any(result.x[:, 1] == 1.5)  # the active-bound case is exercised


def test_a_rejected_row_backs_off_without_disturbing_the_others():
    """Non-finite values (a failed Cholesky at a trial point) are rejected for that row only, as
    minimize_log_params does for one problem."""
    value_and_grad, start = rosenbrock_rows()
    start[0] = (-1.0, 0.0)  # defined at the start, the minimum (a_0 >= 0.5) inside the hole

    def with_hole(x, rows):
        values, grads = value_and_grad(x, rows)
        hole = (rows == 0) & (x[:, 0] > 0.3)  # row 0 undefined beyond x0 = 0.3
        return np.where(hole, np.nan, values), grads

    result = minimize_separable(with_hole, start, BOUNDS * N_ROWS)
    reference = [minimize_log_params(lambda x, i=i: tuple(v[0] for v in with_hole(x[None], np.array([i]))),
                                     start[i], BOUNDS) for i in range(N_ROWS)]
    np.testing.assert_array_equal(result.x, np.stack([r.x for r in reference]))
    assert result.x[0, 0] <= 0.3


def test_falls_back_to_one_joint_run_when_the_routine_is_unusable(monkeypatch):
    """Without a usable routine: one L-BFGS-B over all rows, with a warning; same optimum on
    separable quadratics 1/2 (x - c_i)' A_i (x - c_i) whose minima lie inside the box."""
    rng = np.random.default_rng(2)
    half = rng.normal(size=(N_ROWS, 2, 2))
    hessians = half @ half.mT + 0.5 * np.eye(2)
    centres = rng.uniform(-0.8, 0.8, size=(N_ROWS, 2))

    def value_and_grad(x, rows):
        d = x - centres[rows]
        grads = np.einsum("bij,bj->bi", hessians[rows], d)
        return 0.5 * np.einsum("bi,bi->b", d, grads), grads

    start = np.zeros((N_ROWS, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lockstep = minimize_separable(value_and_grad, start, BOUNDS * N_ROWS)
    monkeypatch.setattr(batched_lbfgsb, "lockstep_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="one L-BFGS-B over all individuals"):
        joint = minimize_separable(value_and_grad, start, BOUNDS * N_ROWS)
    np.testing.assert_allclose(lockstep.x, centres, atol=1e-5)
    np.testing.assert_allclose(joint.x, centres, atol=1e-4)
