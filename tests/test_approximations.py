"""Laplace and ADVI (magma_pymc.approximations) against a conjugate model whose posterior is known."""

import numpy as np
import pymc as pm
import pytest

from magma_pymc.approximations import advi_posterior, laplace_posterior


@pytest.fixture(scope="module")
def conjugate():
    """y_j ~ N(mu, 2^2) with mu ~ N(0, 10^2): posterior N(m, v) in closed form; s ~ HalfNormal(1)
    (no data: its Laplace approximation is in log s) and a Deterministic."""
    y = np.random.default_rng(0).normal(1.0, 2.0, 40)
    precision = 1 / 100 + len(y) / 4
    with pm.Model(coords={"k": ["a"]}) as model:
        mu = pm.Normal("mu", 0.0, 10.0, dims="k")
        pm.HalfNormal("s", 1.0)
        pm.Deterministic("mu_squared", mu**2, dims="k")
        pm.Normal("y", mu[0], 2.0, observed=y)
    return model, (y.sum() / 4) / precision, 1 / precision


def test_laplace_is_exact_on_a_gaussian_posterior(conjugate):
    model, mean, variance = conjugate
    post = laplace_posterior(model, draws=4000, random_seed=1)
    assert set(post.data_vars) == {"mu", "s", "mu_squared"} and post["mu"].dims == ("chain", "draw", "k")
    draws = post["mu"].values.ravel()
    np.testing.assert_allclose(draws.mean(), mean, atol=4 * np.sqrt(variance / 4000))
    np.testing.assert_allclose(draws.var(), variance, rtol=0.1)
    np.testing.assert_allclose(post["mu_squared"].values.ravel(), draws**2)
    # log s at the MAP of the log-transformed density: d/dz [log HalfNormal(e^z) + z] = 0 -> s = 1.
    np.testing.assert_allclose(np.median(post["s"].values), 1.0, rtol=0.05)
    assert post.attrs["hessian_condition"] >= 1


# A flat density does not depend on x: PyTensor warns that the gradient's input is disconnected.
@pytest.mark.filterwarnings("ignore:grad method was asked to compute the gradient:UserWarning")
def test_laplace_refuses_a_non_positive_definite_hessian():
    with pm.Model() as model:
        pm.Flat("x")
    with pytest.raises(ValueError, match="not positive definite"):
        laplace_posterior(model, draws=10)


@pytest.mark.slow
def test_fullrank_advi_recovers_a_gaussian_posterior(conjugate):
    model, mean, variance = conjugate
    post = advi_posterior(model, method="fullrank_advi", draws=4000, n=20000, random_seed=2)
    draws = post["mu"].values.ravel()
    np.testing.assert_allclose(draws.mean(), mean, atol=0.1)
    np.testing.assert_allclose(draws.std(), np.sqrt(variance), rtol=0.2)
