r"""Precisions of many small positive definite blocks, compiled: :math:`\Psi_i^{-1}` and :math:`\tfrac12\log|\Psi_i|`.

The individual blocks of MAGMA are small (:math:`N_i` of 10 to 100) and many. NumPy's batched
``linalg.inv`` solves :math:`L_i X = I` by LU with pivoting, block after block, at a cost dominated
by its per-matrix set-up: 0.5 ms for 100 blocks of 11 or 20 blocks of 30 (one thread), more than
the rest of a marginal-likelihood gradient on a common grid (``benchmarks/bench_gradient.py``).
This kernel, compiled with Numba (a dependency of PyTensor), runs for each block

.. math::

    L_i = \mathrm{chol}(\Psi_i), \qquad X_i = L_i^{-1}, \qquad \Psi_i^{-1} = X_i^\top X_i,
    \qquad \tfrac12 \log|\Psi_i| = \sum_k \log (L_i)_{kk},

the textbook Cholesky-Banachiewicz factorisation, forward substitution for the inverse of the
factor and the symmetric product (about :math:`n^3/2` multiply-adds per block; the same
algorithms as LAPACK's unblocked ``potrf2``/``trti2``, stable without pivoting for positive
definite blocks), with no allocation or Python call per block. It reads the lower triangle of
each block only, like ``numpy.linalg.cholesky``.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["small_block_precisions"]


@numba.njit(cache=True, nogil=True)
def _precisions(psi, precision, half_logdet):  # pragma: no cover - compiled
    """Fill ``precision`` and ``half_logdet``.

    Returns the index of the first block that is not positive definite, or -1.
    """
    n_blocks, n = psi.shape[0], psi.shape[1]
    factor = np.zeros((n, n))
    inverse_t = np.zeros((n, n))   # X' (upper triangle): rows of X' are contiguous columns of X
    for m in range(n_blocks):
        block = psi[m]
        logdet = 0.0
        for j in range(n):
            pivot = block[j, j]
            for k in range(j):
                pivot -= factor[j, k] * factor[j, k]
            if not pivot > 0.0:  # also catches NaN
                return m
            diagonal = np.sqrt(pivot)
            factor[j, j] = diagonal
            logdet += np.log(diagonal)
            for i in range(j + 1, n):
                entry = block[i, j]
                for k in range(j):
                    entry -= factor[i, k] * factor[j, k]
                factor[i, j] = entry / diagonal
        half_logdet[m] = logdet
        for j in range(n):  # column j of X = L^{-1}: L X[:, j] = e_j, X[i, j] = 0 for i < j
            inverse_t[j, j] = 1.0 / factor[j, j]
            for i in range(j + 1, n):
                entry = 0.0
                for k in range(j, i):
                    entry -= factor[i, k] * inverse_t[j, k]
                inverse_t[j, i] = entry / factor[i, i]
        for a in range(n):  # (X'X)[a, b] = sum_{i >= max(a, b)} X[i, a] X[i, b]
            for b in range(a + 1):
                entry = 0.0
                for i in range(a, n):
                    entry += inverse_t[a, i] * inverse_t[b, i]
                precision[m, a, b] = entry
                precision[m, b, a] = entry
    return -1


def small_block_precisions(psi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""``(Psi_i^{-1}, 1/2 log|Psi_i|)`` for ``psi`` of shape ``(M, n, n)`` (module docstring).

    Raises ``numpy.linalg.LinAlgError`` naming the first block that is not positive definite.
    """
    psi = np.ascontiguousarray(psi, dtype=np.float64)
    precision = np.empty(psi.shape)
    half_logdet = np.empty(psi.shape[0])
    failed = _precisions(psi, precision, half_logdet)
    if failed >= 0:
        raise np.linalg.LinAlgError(f"block {failed} not positive definite")
    return precision, half_logdet
