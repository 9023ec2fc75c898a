"""Kernels: batched evaluation equals the PyMC kernel per individual; validation of the spec."""

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import pytest

import magma_pymc as mp
from magma_pymc.kernels import Kernel


def periodic_plus_se(variance, lengthscale, period):
    return variance * pm.gp.cov.Periodic(1, period=period, ls=lengthscale) + pm.gp.cov.ExpQuad(1, ls=lengthscale)


def ratquad_times_matern(variance, lengthscale, alpha):
    return variance * pm.gp.cov.RatQuad(1, alpha=alpha, ls=lengthscale) * pm.gp.cov.Matern52(1, ls=2 * lengthscale)


KERNELS = {
    "se": mp.SquaredExponential(),
    "matern52": mp.Matern52(),
    "periodic+se": Kernel(periodic_plus_se, kinds={"period": "lengthscale"}),
    "ratquad*matern": Kernel(ratquad_times_matern),
}


@pytest.mark.parametrize("name", list(KERNELS))
@pytest.mark.parametrize("batched_params", [True, False], ids=["per-individual-hp", "shared-hp"])
def test_batched_covariance_equals_pymc_kernel_per_individual(name, batched_params):
    kernel = KERNELS[name]
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 10, (3, 5, 1))
    log_params = rng.normal(0, 0.3, (3, kernel.n_params)) if batched_params else rng.normal(0, 0.3, kernel.n_params)
    X = pt.tensor3()
    P = pt.matrix() if batched_params else pt.vector()
    batched = pytensor.function([X, P], kernel.batched(X, P))(x, log_params)
    assert batched.shape == (3, 5, 5)
    for b in range(3):
        params = log_params[b] if batched_params else log_params
        values = dict(zip(kernel.names, np.exp(params)))
        single = kernel.factory(**values)(x[b]).eval()
        np.testing.assert_allclose(batched[b], single, rtol=1e-12)


@pytest.mark.parametrize("name", list(KERNELS))
def test_numpy_mode_kernel_and_gradient_equal_unfused_python_graph(name):
    """The default NUMPY mode (fused elementwise chains run as whole-array NumPy calls) gives each
    kernel's batched covariance and its gradient w.r.t. the log HP as the unfused Python graph does."""
    from pytensor.compile.mode import Mode

    kernel = KERNELS[name]
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 10, (3, 5, 1))
    log_params = rng.normal(0, 0.3, (3, kernel.n_params))
    weights = rng.normal(size=(3, 5, 5))
    X, P = pt.tensor3(), pt.matrix()
    cov = kernel.batched(X, P)
    outputs = [cov, pytensor.grad((cov * weights).sum(), P)]
    fused = pytensor.function([X, P], outputs, mode="NUMPY")
    plain = pytensor.function([X, P], outputs, mode=Mode(linker="py", optimizer="fast_compile"))
    for got, expected in zip(fused(x, log_params), plain(x, log_params), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-13)


def test_kernel_names_kinds_and_bounds():
    kernel = KERNELS["periodic+se"]
    assert kernel.names == ("variance", "lengthscale", "period")
    assert kernel.kinds == {"variance": "variance", "lengthscale": "lengthscale", "period": "lengthscale"}
    assert KERNELS["ratquad*matern"].kinds["alpha"] == "other"
    start = np.exp(kernel.initial_log_params(input_range=10.0, output_variance=4.0))
    np.testing.assert_allclose(start, [4.0, 1.0, 1.0])
    (lo_v, hi_v), (lo_l, hi_l), _ = kernel.log_bounds(10.0, 4.0)
    assert np.exp(lo_v) == pytest.approx(4e-8) and np.exp(hi_l) == pytest.approx(1e3)


def test_kernel_spec_errors():
    with pytest.raises(ValueError, match="unknown hyper-parameter 'ls'"):
        Kernel(periodic_plus_se, initial={"ls": 1.0})
    with pytest.raises(ValueError, match="must be positive"):
        mp.SquaredExponential(lengthscale=-1.0)
    with pytest.raises(ValueError, match="at least one hyper-parameter"):
        Kernel(lambda: pm.gp.cov.ExpQuad(1, ls=1.0))


def test_equal_kernels_share_compiled_graphs():
    assert mp.SquaredExponential() == mp.SquaredExponential(lengthscale=2.0)
    assert hash(mp.SquaredExponential()) == hash(mp.SquaredExponential())
    assert mp.SquaredExponential() != mp.Matern52()
    assert mp.SquaredExponential(input_dim=2) != mp.SquaredExponential()


# --------------------------------------------------------------------------- factory structure
_BAD_FACTORIES = [
    ("returns an array", lambda variance: np.eye(2), 1, TypeError, r"must return a pm\.gp\.cov\.Covariance.*got ndarray"),
    ("returns a tensor", lambda variance: variance * pt.eye(2), 1, TypeError, r"must return a pm\.gp\.cov\.Covariance.*got TensorVariable"),
    ("1-d covariance on 2-d inputs", lambda variance, lengthscale: variance * pm.gp.cov.ExpQuad(1, ls=lengthscale), 2,
     ValueError, r"input_dim=1 and active_dims=\[0\] but the Kernel acts on 2-dimensional inputs"),
    ("active dimension beyond the inputs", lambda variance, lengthscale: variance * pm.gp.cov.ExpQuad(2, ls=lengthscale, active_dims=[1]), 1,
     ValueError, r"input_dim=2 and active_dims=\[1\] but the Kernel acts on 1-dimensional inputs"),
    ("factory raising", lambda variance: 1 / 0, 1, ValueError, r"failed on symbolic hyper-parameters \['variance'\]: ZeroDivisionError"),
]


@pytest.mark.parametrize("name,factory,input_dim,exc,pattern", _BAD_FACTORIES, ids=[c[0] for c in _BAD_FACTORIES])
def test_bad_kernel_factories_are_refused_at_construction(name, factory, input_dim, exc, pattern):
    with pytest.raises(exc, match=pattern):
        Kernel(factory, input_dim=input_dim)


def test_active_dims_within_the_inputs_are_accepted():
    kernel = Kernel(lambda variance, lengthscale: variance * pm.gp.cov.ExpQuad(2, ls=lengthscale, active_dims=[1]),
                    input_dim=2)
    assert kernel.names == ("variance", "lengthscale")
