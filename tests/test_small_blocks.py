"""The compiled precisions of small blocks (magma_pymc.small_blocks) against SciPy's dense inverse."""

import numpy as np
import pytest
from scipy import linalg

from magma_pymc import ops
from magma_pymc.small_blocks import small_block_precisions


@pytest.mark.parametrize("n_blocks, size", [(1, 1), (7, 11), (3, 30), (2, ops.SMALL_BLOCK - 1)])
def test_precisions_match_dense_inverse(n_blocks, size):
    rng = np.random.default_rng(size)
    a = rng.normal(size=(n_blocks, size, size))
    psi = a @ a.transpose(0, 2, 1) + 0.1 * np.eye(size)
    precision, half_logdet = small_block_precisions(psi)
    for block, p, h in zip(psi, precision, half_logdet, strict=True):
        np.testing.assert_allclose(p, linalg.inv(block), rtol=1e-9, atol=1e-9 * np.abs(p).max())
        np.testing.assert_allclose(h, 0.5 * np.linalg.slogdet(block)[1], rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(p, p.T)


def test_only_the_lower_triangle_is_read():
    psi = np.array([[[4.0, 1e9], [2.0, 3.0]]])   # upper entry garbage, as numpy.linalg.cholesky allows
    lower = np.array([[4.0, 2.0], [2.0, 3.0]])
    np.testing.assert_allclose(small_block_precisions(psi)[0][0], np.linalg.inv(lower), rtol=1e-12)


@pytest.mark.parametrize("bad", [-1.0, np.nan])
def test_not_positive_definite_names_the_block(bad):
    psi = np.stack([np.eye(3), np.eye(3)])
    psi[1, 2, 2] = bad
    with pytest.raises(np.linalg.LinAlgError, match="block 1 not positive definite"):
        small_block_precisions(psi)


def test_block_precisions_dispatch_agrees_across_sizes():
    """ops.block_precisions routes blocks below SMALL_BLOCK to the kernel: same result as NumPy's path."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(4, 20, 20))
    psi = a @ a.transpose(0, 2, 1) + np.eye(20)
    chol = np.linalg.cholesky(psi)
    inverse = np.linalg.inv(chol)
    precision, half_logdet = ops.block_precisions(psi)
    np.testing.assert_allclose(precision, inverse.transpose(0, 2, 1) @ inverse, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(half_logdet, np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1), rtol=1e-12)
