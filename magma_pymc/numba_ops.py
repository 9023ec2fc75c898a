r"""The exact marginal log-likelihood and its gradient compiled with Numba, for compiled samplers.

:class:`magma_pymc.likelihood.MarginalLogLikelihood` computes its outputs in ``perform`` with
NumPy/SciPy. A sampler that compiles the whole log-density with PyTensor's Numba backend (nutpie's
``backend="numba"``, ``pytensor.function(mode="NUMBA")``) would otherwise call that ``perform``
through Numba's object mode, i.e. back into Python at every gradient. :func:`marginal_log_likelihood`
here computes the same three outputs in nopython mode with the same algorithm (module docstring
of :mod:`magma_pymc.likelihood`): the individual blocks' precisions with the compiled kernel of
:mod:`magma_pymc.small_blocks`, then on the grid LAPACK's ``potrf`` (twice) and ``trtri``, BLAS's
``trmm`` (four times) and ``syrk`` (twice), called through SciPy's Cython bindings; the Op
registers it as its Numba implementation.

The LAPACK/BLAS entry points are resolved at run time and kept in a module-level pointer
(PyTensor's ``_call_cached_ptr``), so that the compiled code can be cached on disk by Numba
(a function holding a raw ``ctypes`` pointer could not be).
"""

from __future__ import annotations

import numba
import numpy as np
from numba.core import types
from numba.core.extending import get_cython_function_address
from pytensor.link.numba.cache import _call_cached_ptr

from magma_pymc.small_blocks import _precisions

__all__ = ["marginal_log_likelihood"]

_INT = types.CPointer(types.int32)
_FLOAT = types.CPointer(types.float64)
_POTRF = types.FunctionType(types.void(_INT, _INT, _FLOAT, _INT, _INT))
_TRTRI = types.FunctionType(types.void(_INT, _INT, _INT, _FLOAT, _INT, _INT))
_TRMM = types.FunctionType(types.void(_INT, _INT, _INT, _INT, _INT, _INT, _FLOAT, _FLOAT, _INT, _FLOAT, _INT))
_SYRK = types.FunctionType(types.void(_INT, _INT, _INT, _INT, _FLOAT, _FLOAT, _INT, _FLOAT, _FLOAT, _INT))


@numba.njit(cache=True)
def _potrf_pointer():  # pragma: no cover - compiled
    with numba.objmode(ptr=types.intp):
        ptr = get_cython_function_address("scipy.linalg.cython_lapack", "dpotrf")
    return ptr


@numba.njit(cache=True)
def _trtri_pointer():  # pragma: no cover - compiled
    with numba.objmode(ptr=types.intp):
        ptr = get_cython_function_address("scipy.linalg.cython_lapack", "dtrtri")
    return ptr


@numba.njit(cache=True)
def _trmm_pointer():  # pragma: no cover - compiled
    with numba.objmode(ptr=types.intp):
        ptr = get_cython_function_address("scipy.linalg.cython_blas", "dtrmm")
    return ptr


@numba.njit(cache=True)
def _syrk_pointer():  # pragma: no cover - compiled
    with numba.objmode(ptr=types.intp):
        ptr = get_cython_function_address("scipy.linalg.cython_blas", "dsyrk")
    return ptr


@numba.njit(cache=True)
def _flag(letter):  # pragma: no cover - compiled
    """A one-character Fortran argument (read as its first byte: little-endian int32)."""
    return np.array([ord(letter)], dtype=np.int32)


@numba.njit(cache=True)
def _int(value):  # pragma: no cover - compiled
    return np.array([value], dtype=np.int32)


@numba.njit(cache=True)
def _square(n):  # pragma: no cover - compiled
    """An uninitialised (n, n) Fortran-ordered array (what the Fortran routines address)."""
    return np.empty((n, n)).T


@numba.njit(cache=True)
def _lower_cholesky(matrix):  # pragma: no cover - compiled
    """``potrf`` in place on the lower triangle of an F-ordered array; zeroes the upper; False if not PD."""
    n = matrix.shape[0]
    info = _int(0)
    potrf = _call_cached_ptr(_potrf_pointer, _POTRF, "magma_pymc.dpotrf")
    potrf(_flag("L").ctypes, _int(n).ctypes, matrix.ctypes, _int(n).ctypes, info.ctypes)
    for j in range(1, n):
        for i in range(j):
            matrix[i, j] = 0.0
    return info[0] == 0


@numba.njit(cache=True)
def _lower_inverse(matrix):  # pragma: no cover - compiled
    """``trtri`` in place: the inverse of the lower triangular F-ordered ``matrix``; False if singular."""
    n = matrix.shape[0]
    info = _int(0)
    trtri = _call_cached_ptr(_trtri_pointer, _TRTRI, "magma_pymc.dtrtri")
    trtri(_flag("L").ctypes, _flag("N").ctypes, _int(n).ctypes, matrix.ctypes, _int(n).ctypes, info.ctypes)
    return info[0] == 0


@numba.njit(cache=True)
def _lower_product(lower, other, side, transpose):  # pragma: no cover - compiled
    """``trmm`` in place on F-ordered ``other``: ``op(lower) other`` (side "L") or ``other op(lower)`` ("R")."""
    n = lower.shape[0]
    alpha = np.ones(1)
    trmm = _call_cached_ptr(_trmm_pointer, _TRMM, "magma_pymc.dtrmm")
    trmm(_flag(side).ctypes, _flag("L").ctypes, _flag(transpose).ctypes, _flag("N").ctypes, _int(n).ctypes,
         _int(n).ctypes, alpha.ctypes, lower.ctypes, _int(n).ctypes, other.ctypes, _int(n).ctypes)


@numba.njit(cache=True)
def _gram(matrix):  # pragma: no cover - compiled
    """``matrix' matrix`` (``syrk``, one triangle), symmetrised, for an F-ordered square ``matrix``."""
    n = matrix.shape[0]
    result = _square(n)
    alpha, beta = np.ones(1), np.zeros(1)
    syrk = _call_cached_ptr(_syrk_pointer, _SYRK, "magma_pymc.dsyrk")
    syrk(_flag("L").ctypes, _flag("T").ctypes, _int(n).ctypes, _int(n).ctypes, alpha.ctypes, matrix.ctypes,
         _int(n).ctypes, beta.ctypes, result.ctypes, _int(n).ctypes)
    for j in range(1, n):
        for i in range(j):
            result[i, j] = result[j, i]
    return result


@numba.njit(cache=True)
def _failed(n_grid, psi_shape):  # pragma: no cover - compiled
    return (np.array(np.nan), np.full((n_grid, n_grid), np.nan),
            np.full((psi_shape[0], psi_shape[1], psi_shape[2]), np.nan))


@numba.njit(cache=True)
def marginal_log_likelihood(prior_cov, psi, residuals, index):  # pragma: no cover - compiled
    r"""``(logp, dlogp/dK, dlogp/dpsi)`` as :func:`magma_pymc.likelihood.marginal_log_likelihood`.

    ``logp`` is a 0-d array (without :math:`-\tfrac n2 \log 2\pi`); every output is NaN where a
    factorisation fails, as the Op's ``perform``. Inputs as the Op's: ``psi`` padded with identity
    blocks, ``index`` with the grid size.
    """
    n_grid = prior_cov.shape[0]
    n_blocks, n = psi.shape[0], psi.shape[1]
    precision = np.empty((n_blocks, n, n))
    half_logdet = np.empty(n_blocks)
    if _precisions(np.ascontiguousarray(psi), precision, half_logdet) >= 0:
        return _failed(n_grid, psi.shape)
    # Scatter Psi_i^{-1} and Psi_i^{-1} r_i onto the grid (padded slots, index n_grid, dropped).
    data_precision = np.zeros((n_grid, n_grid)).T
    shift = np.zeros(n_grid)
    quad_residuals = 0.0
    for m in range(n_blocks):
        for a in range(n):
            entry = 0.0
            for c in range(n):
                entry += precision[m, a, c] * residuals[m, c]
            quad_residuals += residuals[m, a] * entry
            row = index[m, a]
            if row < n_grid:
                shift[row] += entry
                for c in range(n):
                    if index[m, c] < n_grid:
                        data_precision[row, index[m, c]] += precision[m, a, c]

    chol = _square(n_grid)
    chol[:, :] = prior_cov
    if not _lower_cholesky(chol):                                            # L
        return _failed(n_grid, psi.shape)
    loaded = _square(n_grid)
    loaded[:, :] = data_precision
    _lower_product(chol, loaded, "L", "T")                                   # T = L' S
    inverse_b = _square(n_grid)
    inverse_b[:, :] = loaded
    _lower_product(chol, inverse_b, "R", "N")                                # T L
    for k in range(n_grid):
        inverse_b[k, k] += 1.0
    if not _lower_cholesky(inverse_b):                                       # L_B
        return _failed(n_grid, psi.shape)
    logdet_b = 0.0
    for k in range(n_grid):
        logdet_b += np.log(inverse_b[k, k])
    if not _lower_inverse(inverse_b):                                        # X = L_B^{-1}
        return _failed(n_grid, psi.shape)
    factor = _square(n_grid)
    factor[:, :] = chol.T
    _lower_product(inverse_b, factor, "L", "N")                              # V = X L'
    reduced = _square(n_grid)
    reduced[:, :] = loaded
    _lower_product(inverse_b, reduced, "L", "N")                             # Y = X T
    whitened = np.dot(factor, shift)                                         # u = V b
    centred_mean = np.dot(factor.T, whitened)                                # mhat - m0 = V' u
    value = -0.5 * (quad_residuals - np.dot(whitened, whitened)) - half_logdet.sum() - logdet_b
    v = shift - np.dot(data_precision, centred_mean)
    gram_reduced = _gram(reduced)                                            # S Khat S = Y'Y
    d_prior = np.empty((n_grid, n_grid))
    for i in range(n_grid):
        for j in range(n_grid):
            d_prior[i, j] = 0.5 * (v[i] * v[j] - data_precision[i, j] + gram_reduced[i, j])

    # G_i = e_i e_i' + Khat_i on the observed slots (zero on padded ones); dpsi_i = (P G P - P) / 2.
    posterior_cov = _gram(factor)                                            # Khat = V'V
    d_psi = np.empty((n_blocks, n, n))
    deviations = np.empty(n)
    scatter = np.empty((n, n))
    for m in range(n_blocks):
        for a in range(n):
            row = index[m, a]
            deviations[a] = residuals[m, a] - (centred_mean[row] if row < n_grid else 0.0)
        for a in range(n):
            row = index[m, a]
            for c in range(n):
                col = index[m, c]
                cov = posterior_cov[row, col] if row < n_grid and col < n_grid else 0.0
                scatter[a, c] = deviations[a] * deviations[c] + cov
        block = precision[m]
        sandwich = np.dot(np.dot(block, scatter), block)
        for a in range(n):
            for c in range(n):
                d_psi[m, a, c] = 0.5 * (sandwich[a, c] - block[a, c])
    return np.array(value), d_prior, d_psi
