"""Individual M-step objective (batched Gaussian block loss) against dense NumPy and finite differences."""

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from conftest import common_grid_problem, fixed_model
from reference import central_differences, se

from magma_pymc.ops import (
    GaussianBlockLoss,
    gaussian_block_loss,
    gaussian_information_loss,
    gaussian_marginal_loss,
)


def dense_minus_q(deviations, blocks, psi, mask):
    """-sum_i Q_i written with numpy.linalg.inv/slogdet on the real (unpadded) part of each block."""
    total = 0.0
    for d, k, p, m in zip(deviations, blocks, psi, mask):
        keep = m > 0
        d, k, p = d[keep], k[np.ix_(keep, keep)], p[np.ix_(keep, keep)]
        inv = np.linalg.inv(p)
        total += 0.5 * (d @ inv @ d + np.trace(inv @ k) + np.linalg.slogdet(p)[1] + keep.sum() * np.log(2 * np.pi))
    return total


def test_block_loss_values_and_gradient_match_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 4, 4))
    psi_value = a @ a.transpose(0, 2, 1) + 0.5 * np.eye(4)
    b = rng.normal(size=(5, 4, 6))
    scatter_value = b @ b.transpose(0, 2, 1)
    psi, scatter = pt.tensor3("psi"), pt.tensor3("scatter")
    loss = gaussian_block_loss(psi, scatter)
    # A symmetric parameterisation, as in the model (Psi is built from a kernel).
    half = pt.tensor3("half")
    sym_loss = gaussian_block_loss(half @ half.mT + 0.5 * pt.eye(4), scatter).sum()
    f = pytensor.function([psi, scatter], loss)
    g = pytensor.function([half, scatter], [sym_loss, pytensor.grad(sym_loss, half)])
    expected = [0.5 * (np.trace(np.linalg.solve(p, s)) + np.linalg.slogdet(p)[1]) for p, s in zip(psi_value, scatter_value)]
    np.testing.assert_allclose(f(psi_value, scatter_value), expected, rtol=1e-12)
    _, grad = g(a, scatter_value)
    eps = 1e-6
    for idx in [(0, 0, 0), (2, 1, 3), (4, 3, 2)]:
        up, down = a.copy(), a.copy()
        up[idx] += eps
        down[idx] -= eps
        fd = (g(up, scatter_value)[0] - g(down, scatter_value)[0]) / (2 * eps)
        np.testing.assert_allclose(grad[idx], fd, rtol=1e-6)


def test_block_loss_is_nan_only_where_a_block_is_not_positive_definite():
    """A block that is not positive definite gives NaN for itself only (the others are computed)."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3, 3))
    good = a @ a.T + np.eye(3)
    psi = np.stack([good, -np.eye(3), 2.0 * good])
    scatter = np.stack([np.eye(3)] * 3)
    s, g = pt.tensor3("s"), pt.tensor3("g")
    values, dloss = pytensor.function([s, g], GaussianBlockLoss()(s, g))(psi, scatter)
    assert np.isnan(values[1]) and np.all(np.isnan(dloss[1]))
    for i in (0, 2):
        expected = 0.5 * (np.trace(np.linalg.solve(psi[i], scatter[i])) + np.linalg.slogdet(psi[i])[1])
        np.testing.assert_allclose(values[i], expected, rtol=1e-12)
        inv = np.linalg.inv(psi[i])
        np.testing.assert_allclose(dloss[i], 0.5 * (inv - inv @ scatter[i] @ inv), rtol=1e-10, atol=1e-12)


def test_information_loss_values_and_gradient_match_numpy():
    """Mean-process step's Op: 1/2 log|I + S K| - 1/2 b' K (I + S K)^{-1} b (dense NumPy) and its
    gradient through a symmetric parameterisation K = A A' + I (finite differences); NaN where K is
    not positive definite."""
    rng = np.random.default_rng(4)
    n = 6
    a_value = rng.normal(size=(n, n))
    c = rng.normal(size=(n, 3))
    precision_value = c @ c.T + 0.1 * np.eye(n)  # S: positive definite, as on a union grid
    shift_value = rng.normal(size=n)
    a, precision, shift = pt.matrix("a"), pt.matrix("precision"), pt.vector("shift")
    loss = gaussian_information_loss(a @ a.T + pt.eye(n), precision, shift)
    f = pytensor.function([a, precision, shift], [loss, pytensor.grad(loss, a)])

    def dense(a_value):
        k = a_value @ a_value.T + np.eye(n)
        system = np.eye(n) + precision_value @ k
        return 0.5 * np.linalg.slogdet(system)[1] - 0.5 * shift_value @ k @ np.linalg.solve(system, shift_value)

    value, grad = f(a_value, precision_value, shift_value)
    np.testing.assert_allclose(value, dense(a_value), rtol=1e-12)
    np.testing.assert_allclose(grad, central_differences(dense, a_value), rtol=1e-6, atol=1e-8)
    not_pd = pytensor.function([a, precision, shift], gaussian_information_loss(a, precision, shift))
    assert np.isnan(not_pd(-np.eye(n), precision_value, shift_value))


def test_marginal_loss_values_and_gradient_match_numpy():
    """Pseudo-observation Op: 1/2 log|A| + 1/2 z' A^{-1} z (dense NumPy), its gradient through
    A = B B' + I (finite differences), NaN where A is not positive definite."""
    rng = np.random.default_rng(5)
    n = 6
    b_value = rng.normal(size=(n, n))
    observations_value = rng.normal(size=n)
    b, observations = pt.matrix("b"), pt.vector("observations")
    loss = gaussian_marginal_loss(b @ b.T + pt.eye(n), observations)
    f = pytensor.function([b, observations], [loss, pytensor.grad(loss, b)])

    def dense(b_value):
        cov = b_value @ b_value.T + np.eye(n)
        return 0.5 * np.linalg.slogdet(cov)[1] + 0.5 * observations_value @ np.linalg.solve(cov, observations_value)

    value, grad = f(b_value, observations_value)
    np.testing.assert_allclose(value, dense(b_value), rtol=1e-12)
    np.testing.assert_allclose(grad, central_differences(dense, b_value), rtol=1e-6, atol=1e-8)
    not_pd = pytensor.function([b, observations], gaussian_marginal_loss(b, observations))
    assert np.isnan(not_pd(-np.eye(n), observations_value))


@pytest.mark.parametrize("common_hp", [True, False], ids=["commonHP", "differentHP"])
def test_individual_step_matches_dense_expected_loglik_and_finite_differences(small_problem, common_hp):
    model, _ = fixed_model(small_problem, common_hp)
    problem, state = model._problem_, model._state
    graphs = problem.graphs
    assert not graphs.fast_path  # uncommon grid: the batched, padded objective
    _, inputs, _, mask, _ = problem.data_args
    result = graphs.estep(state.mean_log_params, state.log_params, *problem.data_args, state.jitter)
    deviations, blocks = result[4], result[5]
    assert (mask == 0).any()  # padding occurs

    def objective(log_params):
        return graphs.individual_step(log_params, inputs, deviations, blocks, mask, state.jitter)

    value, grad = objective(state.log_params)
    # Psi_i from the dense reference kernels (SE + noise), independent of the library's graphs.
    log_params = np.broadcast_to(state.log_params, (mask.shape[0], 3))
    psi = np.stack([
        se(x[:, 0], x[:, 0], np.exp(lp[0]), np.exp(lp[1])) + (np.exp(lp[2]) + state.jitter) * np.eye(x.shape[0])
        for x, lp in zip(inputs, log_params)
    ])
    np.testing.assert_allclose(value, dense_minus_q(deviations, blocks, psi, mask), rtol=1e-10)
    fd = central_differences(lambda x: objective(x)[0], state.log_params)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6)


def test_individual_steps_give_each_individuals_own_loss_and_gradient(small_problem):
    """Different HP: the per-individual graph (one L-BFGS-B per individual) gives -Q_i of each
    individual (dense reference) and its gradient w.r.t. the individual's own HP, also on a subset
    of rows (the individuals still optimising)."""
    model, _ = fixed_model(small_problem, common_hp=False)
    problem, state = model._problem_, model._state
    graphs = problem.graphs
    _, inputs, _, mask, _ = problem.data_args
    result = graphs.estep(state.mean_log_params, state.log_params, *problem.data_args, state.jitter)
    deviations, blocks = result[4], result[5]
    rng = np.random.default_rng(3)
    log_params = state.log_params + rng.normal(scale=0.2, size=state.log_params.shape)  # distinct rows
    values, grads = graphs.individual_steps(log_params, inputs, deviations, blocks, mask, state.jitter)
    for i in range(len(inputs)):
        variance, lengthscale, noise = np.exp(log_params[i])
        x = inputs[i, :, 0]
        psi = se(x, x, variance, lengthscale) + (noise + state.jitter) * np.eye(x.size)
        expected = dense_minus_q(deviations[i : i + 1], blocks[i : i + 1], psi[None], mask[i : i + 1])
        np.testing.assert_allclose(values[i], expected, rtol=1e-10)

        def own(row, i=i):
            changed = log_params.copy()
            changed[i] = row
            return graphs.individual_steps(changed, inputs, deviations, blocks, mask, state.jitter)[0].sum()

        np.testing.assert_allclose(grads[i], central_differences(own, log_params[i]), rtol=1e-5, atol=1e-6)
    rows = np.array([2, 0])
    sub_values, sub_grads = graphs.individual_steps(
        log_params[rows], inputs[rows], deviations[rows], blocks[rows], mask[rows], state.jitter
    )
    np.testing.assert_allclose(sub_values, values[rows], rtol=1e-12)
    np.testing.assert_allclose(sub_grads, grads[rows], rtol=1e-12)


def test_fast_path_individual_step_matches_dense_expected_loglik_and_finite_differences():
    """Common grid and common HP: the M blocks collapse into one (mstep.individual_objective_common)."""
    model, _ = fixed_model(common_grid_problem(), common_hp=True)
    problem, state = model._problem_, model._state
    graphs = problem.graphs
    assert graphs.fast_path
    grid = problem.data_args[0]
    result = graphs.estep(state.mean_log_params, state.log_params, *problem.data_args, state.jitter)
    deviations, cov = result[4], result[5]  # (M, N) and the (N, N) hyper-posterior covariance
    n_individuals, n_grid = deviations.shape

    def objective(log_params):
        return graphs.individual_step(log_params, grid, deviations, cov, np.ones((1, 1)), state.jitter)

    value, grad = objective(state.log_params)
    variance, lengthscale, noise = np.exp(state.log_params)
    psi = se(grid[:, 0], grid[:, 0], variance, lengthscale) + (noise + state.jitter) * np.eye(n_grid)
    expected = dense_minus_q(
        deviations, np.broadcast_to(cov, (n_individuals, n_grid, n_grid)),
        np.broadcast_to(psi, (n_individuals, n_grid, n_grid)), np.ones((n_individuals, n_grid)),
    )
    np.testing.assert_allclose(value, expected, rtol=1e-10)
    fd = central_differences(lambda x: objective(x)[0], state.log_params)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6)


def test_large_blocks_use_lapack_inverse_with_the_same_values():
    """Blocks of LARGE_BLOCK points or more go through potrf/potri one by one: same loss and gradient
    as the batched NumPy path, and NaN only for the block that is not positive definite."""
    from magma_pymc import ops

    rng = np.random.default_rng(5)
    n = ops.LARGE_BLOCK + 2
    factors = rng.normal(size=(3, n, n))
    psi = factors @ factors.mT + n * np.eye(n)
    scatter = rng.normal(size=(3, n, n))
    scatter = scatter @ scatter.mT
    large = ops._block_loss(psi, scatter)  # n >= LARGE_BLOCK: the potrf/potri path
    chol = np.linalg.cholesky(psi)
    precision = np.linalg.inv(psi)
    loss = 0.5 * np.einsum("bij,bji->b", precision, scatter) + np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
    np.testing.assert_allclose(large[0], loss, rtol=1e-12)
    np.testing.assert_allclose(large[1], 0.5 * (precision - precision @ scatter @ precision), rtol=1e-9, atol=1e-14)
    psi[1] = -np.eye(n)
    out = [np.empty(0)], [np.empty(0)]
    ops.GaussianBlockLoss().perform(None, [psi, scatter], out)
    assert np.isnan(out[0][0][1]) and np.all(np.isfinite(out[0][0][[0, 2]]))
