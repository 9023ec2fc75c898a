r"""Many independent bound-constrained problems, one SciPy L-BFGS-B each, run in lockstep.

With different HP the individual M-step minimises :math:`-\sum_i Q_i(\theta_i)`, a sum of M
independent problems (theory page, *M-step*). One L-BFGS-B over all :math:`M(P+1)` log HP treats
them as one problem: a single line search and stopping rule for everybody, and ten curvature pairs
for M separate :math:`(P+1) \times (P+1)` Hessian blocks. It needs hundreds of evaluations of the
batched objective at M = 2000 (``benchmarks/``, ``docs/performance.md``).

:func:`minimize_separable` runs SciPy's own L-BFGS-B -- its reverse-communication routine
``setulb``, which returns to the caller whenever it needs the objective -- once per row, in
lockstep: each *round* evaluates the batched objective once, at the rows that asked for it. Every
row gets the algorithm, bounds handling and stopping rule of ``scipy.optimize.minimize(...,
method="L-BFGS-B")`` on its own objective, and the number of rounds is the largest number of
evaluations one row needs (tens), whatever M.

``setulb`` is private to SciPy (its signature changed in 1.15, when L-BFGS-B was ported from
Fortran to C). :func:`lockstep_available` checks it once per process on problems with known
solutions; where it fails, :func:`minimize_separable` falls back to one L-BFGS-B over all rows
(the same optimum, more evaluations) and says so with a warning.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy.linalg.lapack import HAS_ILP64
from scipy.optimize import OptimizeResult

from magma_pymc.mstep import REJECTED_VALUE, minimize_log_params

__all__ = ["minimize_separable", "lockstep_available"]

# Task codes of SciPy's C L-BFGS-B (scipy/optimize/_lbfgsb_py.py): the routine wants f and g at
# x (FG), has accepted a new iterate (NEW_X), or has stopped (any other code).
_FG, _NEW_X, _STOP = 3, 1, 5
_MAX_ITER_REACHED = 504
_MAX_CORRECTIONS = 10  # SciPy's default `maxcor`
_MAX_LINE_SEARCH = 20  # SciPy's default `maxls`
_INT = np.int64 if HAS_ILP64 else np.int32


class _RowSolver:
    """The state of one L-BFGS-B run (the arrays SciPy's ``_minimize_lbfgsb`` allocates)."""

    def __init__(self, x0: np.ndarray, lower: np.ndarray, upper: np.ndarray, factr: float, pgtol: float, max_iter: int):
        from scipy.optimize import _lbfgsb

        n, m = x0.size, _MAX_CORRECTIONS
        self._setulb = _lbfgsb.setulb
        self.x = np.clip(np.asarray(x0, dtype=np.float64), lower, upper).copy()
        # Bound type per variable: 0 none, 1 lower only, 2 both, 3 upper only (infinite bounds -> 0.0).
        has_lower, has_upper = np.isfinite(lower), np.isfinite(upper)
        self.nbd = np.where(has_lower & has_upper, 2, np.where(has_lower, 1, np.where(has_upper, 3, 0))).astype(_INT)
        self.lower, self.upper = np.where(has_lower, lower, 0.0), np.where(has_upper, upper, 0.0)
        self.f = 0.0
        self.g = np.zeros(n)
        self.wa = np.zeros(2 * m * n + 5 * n + 11 * m * m + 8 * m)
        self.iwa = np.zeros(3 * n, dtype=_INT)
        self.task = np.zeros(2, dtype=_INT)
        self.ln_task = np.zeros(2, dtype=_INT)
        self.lsave = np.zeros(4, dtype=_INT)
        self.isave = np.zeros(44, dtype=_INT)
        self.dsave = np.zeros(29)
        self.factr, self.pgtol, self.max_iter = factr, pgtol, max_iter
        self.n_iter = self.n_eval = 0

    def advance(self) -> bool:
        """Run the routine until it wants an evaluation (True) or has stopped (False)."""
        while True:
            self._setulb(
                _MAX_CORRECTIONS, self.x, self.lower, self.upper, self.nbd, self.f, self.g, self.factr, self.pgtol,
                self.wa, self.iwa, self.task, self.lsave, self.isave, self.dsave, _MAX_LINE_SEARCH, self.ln_task,
            )
            if self.task[0] == _FG:
                return True
            if self.task[0] != _NEW_X:
                return False
            self.n_iter += 1
            if self.n_iter >= self.max_iter:  # as SciPy: ask the routine to stop, then call it once more
                self.task[0], self.task[1] = _STOP, _MAX_ITER_REACHED

    def tell(self, value: float, grad: np.ndarray) -> None:
        self.n_eval += 1
        if np.isfinite(value) and np.all(np.isfinite(grad)):
            self.f, self.g = float(value), np.asarray(grad, dtype=np.float64).copy()
        else:  # a failed Cholesky at a trial point: reported as minimize_log_params does, the line search backs off
            self.f, self.g = REJECTED_VALUE, np.zeros_like(self.g)

    @property
    def converged(self) -> bool:
        return self.task[0] == 4  # CONVERGENCE


def _lockstep(
    value_and_grad: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    start: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    *,
    max_iter: int,
    tol: float,
    gtol: float,
) -> OptimizeResult:
    factr = tol / np.finfo(float).eps
    solvers = [_RowSolver(start[i], lower[i], upper[i], factr, gtol, max_iter) for i in range(start.shape[0])]
    waiting = [i for i, solver in enumerate(solvers) if solver.advance()]
    rounds = 0
    while waiting:
        rows = np.asarray(waiting)
        values, grads = value_and_grad(np.stack([solvers[i].x for i in waiting]), rows)
        rounds += 1
        for k, i in enumerate(waiting):
            solvers[i].tell(values[k], grads[k])
        waiting = [i for i in waiting if solvers[i].advance()]
    n_converged = sum(solver.converged for solver in solvers)
    return OptimizeResult(
        x=np.stack([solver.x for solver in solvers]),
        nfev=rounds,
        nit=max(solver.n_iter for solver in solvers),
        row_evaluations=sum(solver.n_eval for solver in solvers),
        success=n_converged == len(solvers),
        message=f"{n_converged} of {len(solvers)} rows converged",
    )


@functools.cache
def lockstep_available() -> bool:
    """Whether this SciPy's private L-BFGS-B routine works as :func:`minimize_separable` drives it.

    Checked once per process on two separable quadratics :math:`\\tfrac12 (x - c)^\\top A (x - c)`,
    one with its minimum inside the box and one with a lower bound active, against their exact
    solutions.
    """
    hessians = np.array([[[3.0, 1.0], [1.0, 2.0]], [[1.0, 0.0], [0.0, 5.0]]])
    centres = np.array([[1.0, -2.0], [-3.0, 0.5]])
    lower = np.array([[-10.0, -10.0], [-1.0, -10.0]])
    upper = np.full((2, 2), 10.0)
    expected = np.array([[1.0, -2.0], [-1.0, 0.5]])  # row 2: x0 held at its bound -1, x1 free (A diagonal)

    def quadratic(x, rows):
        d = x - centres[rows]
        grad = np.einsum("bij,bj->bi", hessians[rows], d)
        return 0.5 * np.einsum("bi,bi->b", d, grad), grad

    try:
        result = _lockstep(quadratic, np.zeros((2, 2)), lower, upper, max_iter=100, tol=1e-12, gtol=1e-10)
    except Exception:  # noqa: BLE001 -- any failure of the private API means "not available"
        return False
    return bool(result.success and np.allclose(result.x, expected, atol=1e-6))


def minimize_separable(
    value_and_grad: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    start: np.ndarray,
    bounds: Sequence[tuple[float, float]] | np.ndarray,
    *,
    max_iter: int = 200,
    tol: float = 1e-8,
    gtol: float = 1e-6,
) -> OptimizeResult:
    r"""Minimise :math:`\sum_i f_i(x_i)` over the rows :math:`x_i` of ``start`` (shape ``(M, P)``), row by row.

    Parameters
    ----------
    value_and_grad
        ``(x, rows) -> (values, grads)``: ``x`` is ``(B, P)``, the current points of the rows
        ``rows`` (indices into ``start``, ``B <= M``); returns :math:`f_{rows[b]}(x_b)` ``(B,)`` and
        its gradient ``(B, P)``. Each value must depend on its own row only.
    start
        ``(M, P)`` starting points (clipped into the bounds).
    bounds
        ``M * P`` pairs ``(low, high)`` in row-major order (as for one L-BFGS-B over ``start.ravel()``),
        or an ``(M, P, 2)`` array.
    max_iter, tol, gtol
        Per row, as ``scipy.optimize.minimize(..., method="L-BFGS-B", options={"maxiter", "ftol",
        "gtol"})``: row :math:`i` stops when :math:`(f_i^k - f_i^{k+1}) / \max(|f_i^k|, |f_i^{k+1}|, 1)
        \le` ``tol`` or its projected gradient is below ``gtol``.

    Returns
    -------
    OptimizeResult
        ``x`` ``(M, P)``; ``nfev`` the number of calls of ``value_and_grad`` (rounds);
        ``row_evaluations`` the rows evaluated in all; ``nit`` the most iterations of a row;
        ``success`` whether every row converged.
    """
    start = np.asarray(start, dtype=np.float64)
    limits = np.asarray(bounds, dtype=np.float64).reshape(*start.shape, 2)
    if lockstep_available():
        return _lockstep(value_and_grad, start, limits[..., 0], limits[..., 1], max_iter=max_iter, tol=tol, gtol=gtol)
    warnings.warn(
        "this SciPy's L-BFGS-B routine could not be driven row by row; the individual M-step runs one L-BFGS-B "
        "over all individuals instead (same optimum, more evaluations)",
        RuntimeWarning,
        stacklevel=2,
    )
    all_rows = np.arange(start.shape[0])

    def summed(x):
        values, grads = value_and_grad(x, all_rows)
        return np.sum(values), grads

    return minimize_log_params(summed, start, limits.reshape(-1, 2).tolist(), max_iter=max_iter, tol=tol)
