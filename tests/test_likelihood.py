"""The marginal-likelihood Op (magma_pymc.likelihood): value against the dense joint GP, gradients
against finite differences of the dense density and of the Op itself, and against the autodiff graph."""

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from reference import JointGP, central_differences

from magma_pymc.compiled import DEFAULT_MODE
from magma_pymc.hyperposterior import TrainingTensors, build_estep
from magma_pymc.kernels import SquaredExponential
from magma_pymc.likelihood import build_marginal_log_likelihood, flop_count, marginal_log_likelihood

HP0 = (3.0, 2.0)
DIFFERENT = [(1.0, 0.8, 0.25), (2.0, 1.5, 0.1), (0.5, 0.5, 0.3), (1.5, 1.0, 0.2)]
M0 = 0.4


def padded(individuals, m0=M0):
    """(grid, inputs, residuals, mask, index) as TrainingTensors expects, built here by hand."""
    grid = np.unique(np.concatenate([t for t, _ in individuals]))
    n_max = max(len(t) for t, _ in individuals)
    m = len(individuals)
    inputs, residuals = np.zeros((m, n_max, 1)), np.zeros((m, n_max))
    mask, index = np.zeros((m, n_max)), np.full((m, n_max), len(grid), dtype=np.int64)
    for i, (t, y) in enumerate(individuals):
        n = len(t)
        inputs[i, :n, 0], residuals[i, :n], mask[i, :n] = t, y - m0, 1.0
        index[i, :n] = np.searchsorted(grid, t)
    return grid[:, None], inputs, residuals, mask, index


@pytest.fixture(scope="module")
def graphs():
    """Compiled value + gradient w.r.t. (log theta0, log theta_i) for the Op and for build_estep."""
    kernel = SquaredExponential()
    data = TrainingTensors.symbolic()
    mean_log, log_hp = pt.vector("mean_log"), pt.matrix("log_hp")
    compiled = {}
    for name, value in (
        ("op", build_marginal_log_likelihood(kernel, kernel, mean_log, log_hp, data)),
        ("autodiff", build_estep(kernel, kernel, mean_log, log_hp, data).log_likelihood),
    ):
        grads = pytensor.grad(value, [mean_log, log_hp])
        compiled[name] = pytensor.function([mean_log, log_hp, *data], [value, *grads], mode=DEFAULT_MODE)
    return compiled


def problems(small_problem):
    rng = np.random.default_rng(3)
    t = np.linspace(0.0, 10.0, 7)
    common_grid = [(t, np.sin(t) + 0.3 * k + rng.normal(0, 0.2, 7)) for k in range(4)]
    return {"uncommon": small_problem, "common_grid": common_grid}


@pytest.mark.parametrize("setting", ["uncommon", "common_grid"])
def test_value_and_gradient_match_dense_joint_gp(graphs, small_problem, setting):
    """The value log p(y) = log N(y; m0, K) of the dense joint GP (tests/reference.py); its gradient w.r.t. every
    log HP matches central differences of that dense density, and the autodiff graph's gradient."""
    individuals = problems(small_problem)[setting]
    args = padded(individuals)
    log0, log_hp = np.log(HP0), np.log(DIFFERENT)

    def dense(x):
        hp = np.exp(x)
        return JointGP(individuals, tuple(hp[:2]), [tuple(r) for r in hp[2:].reshape(4, 3)], m0=M0).log_likelihood()

    x = np.concatenate([log0, log_hp.ravel()])
    value, g0, g = graphs["op"](log0, log_hp, *args, 1e-10)
    np.testing.assert_allclose(value, dense(x), rtol=1e-9)
    reference = central_differences(dense, x, eps=1e-5)
    np.testing.assert_allclose(np.concatenate([g0, g.ravel()]), reference, rtol=1e-5, atol=1e-6)
    auto_value, auto_g0, auto_g = graphs["autodiff"](log0, log_hp, *args, 1e-10)
    np.testing.assert_allclose(value, auto_value, rtol=1e-10)
    np.testing.assert_allclose(g0, auto_g0, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(g, auto_g, rtol=1e-7, atol=1e-9)


def test_op_gradients_are_directional_derivatives(small_problem):
    """The derivatives dK and dpsi of the NumPy kernel against central differences along random symmetric directions
    (the factorisations read one triangle, so entrywise differences are not the symmetric gradient)."""
    from reference import se

    grid, inputs, residuals, mask, index = padded(small_problem)
    prior = se(grid, grid, *HP0) + 1e-2 * np.eye(len(grid))  # jitter: PD under the probes
    psi = np.stack([
        (se(inputs[i], inputs[i], *DIFFERENT[i][:2]) + DIFFERENT[i][2] * np.eye(inputs.shape[1]))
        * np.outer(mask[i], mask[i]) + np.diag(1.0 - mask[i])
        for i in range(4)
    ])
    value, d_prior, d_psi = marginal_log_likelihood(prior, psi, residuals, index)
    rng = np.random.default_rng(0)
    for _ in range(3):
        e_prior = rng.normal(size=prior.shape)
        e_prior = 0.05 * (e_prior + e_prior.T)
        e_psi = rng.normal(size=psi.shape)
        e_psi = 0.05 * (e_psi + e_psi.mT) * mask[:, :, None] * mask[:, None, :]
        along = lambda h: marginal_log_likelihood(prior + h * e_prior, psi + h * e_psi, residuals, index)[0]  # noqa: E731, B023
        numeric = central_differences(lambda h: along(h[0]), np.zeros(1), eps=1e-5)[0]  # noqa: B023
        analytic = (d_prior * e_prior).sum() + (d_psi * e_psi).sum()
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6)


def test_not_positive_definite_gives_nan(graphs, small_problem):
    """A covariance that is not positive definite (here: a negative jitter) gives NaN, not an error."""
    outputs = graphs["op"](np.log(HP0), np.log(DIFFERENT), *padded(small_problem), -10.0)
    assert all(np.all(np.isnan(o)) for o in outputs)


def test_flop_count():
    assert flop_count(10, [2, 3]) == 7000 + 6 * 8 + 6 * 27
