"""The Numba implementation of MarginalLogLikelihood (magma_pymc.numba_ops) against its NumPy perform."""

import warnings

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

from magma_pymc.likelihood import MarginalLogLikelihood, marginal_log_likelihood
from magma_pymc.numba_ops import marginal_log_likelihood as numba_marginal_log_likelihood


def _inputs(n_grid: int, n_blocks: int, n: int, seed: int, padded: int = 0):
    """Random SPD K (N, N) and blocks (M, n, n), residuals, index; the last block's last ``padded`` slots
    padded as TrainingTensors pads them (identity rows and columns, zero residual, index N)."""
    rng = np.random.default_rng(seed)
    grid = np.sort(rng.uniform(0.0, 10.0, n_grid))
    prior_cov = 2.0 * np.exp(-0.5 * (grid[:, None] - grid[None]) ** 2 / 1.5**2) + 1e-6 * np.eye(n_grid)
    index = np.stack([np.sort(rng.choice(n_grid, n, replace=False)) for _ in range(n_blocks)])
    psi = np.empty((n_blocks, n, n))
    for m in range(n_blocks):
        t = grid[index[m]]
        lengthscale, noise = rng.uniform(0.5, 2.0), rng.uniform(0.05, 0.5)
        psi[m] = np.exp(-0.5 * (t[:, None] - t[None]) ** 2 / lengthscale**2) + noise * np.eye(n)
    residuals = rng.normal(size=(n_blocks, n))
    if padded:
        psi[-1, -padded:, :] = 0.0
        psi[-1, :, -padded:] = 0.0
        psi[-1, -padded:, -padded:] = np.eye(padded)
        residuals[-1, -padded:] = 0.0
        index[-1, -padded:] = n_grid
    return prior_cov, psi, residuals, index.astype(np.int64)


def _relative_error(value, reference) -> float:
    value, reference = np.asarray(value), np.asarray(reference)
    return float(np.max(np.abs(value - reference)) / np.max(np.abs(reference)))


# The four shapes of benchmarks/bench_gradient.py, reduced in M: common grid (N = n = 30), uncommon grid
# (N ~ 190, n = 30), the weight data (N = 11, ragged blocks padded), and one with a padded block.
SHAPES = {"common": (30, 6, 30, 0), "uncommon": (190, 6, 30, 0), "weight": (11, 12, 8, 3), "padded": (60, 5, 20, 7)}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_numba_outputs_equal_perform(shape):
    n_grid, n_blocks, n, padded = SHAPES[shape]
    inputs = _inputs(n_grid, n_blocks, n, seed=len(shape), padded=padded)
    reference = marginal_log_likelihood(*inputs)
    compiled = numba_marginal_log_likelihood(*inputs)
    assert np.ndim(compiled[0]) == 0
    for value, expected in zip(compiled, reference, strict=True):
        assert _relative_error(value, expected) < 1e-10
    if padded:  # the padded slots' derivatives are exactly those of perform (zero coupling to the data)
        np.testing.assert_allclose(compiled[2][-1, -padded:, :-padded], 0.0, atol=1e-12)


@pytest.mark.parametrize("failing", ["grid", "block", "nan"])
def test_numba_outputs_are_nan_where_perform_fails(failing):
    prior_cov, psi, residuals, index = _inputs(20, 3, 6, seed=3)
    if failing == "grid":
        prior_cov = prior_cov - 10.0 * np.eye(20)
    elif failing == "block":
        psi[1, 2, 2] = -1.0
    else:
        psi[0, 0, 0] = np.nan
    outputs = numba_marginal_log_likelihood(prior_cov, psi, residuals, index)
    op = MarginalLogLikelihood()
    storage = [[None], [None], [None]]
    op.perform(None, [prior_cov, psi, residuals, index], storage)
    for value, expected in zip(outputs, storage, strict=True):
        assert np.all(np.isnan(value)) and np.all(np.isnan(expected[0]))
        assert np.shape(value) == np.shape(expected[0])


def test_op_compiles_in_numba_mode_without_object_mode():
    """The registration makes PyTensor's Numba backend (nutpie's) run the compiled code, not perform."""
    prior_cov, psi, residuals, index = _inputs(40, 4, 10, seed=5, padded=2)
    variables = pt.matrix("K"), pt.tensor3("psi"), pt.matrix("residuals"), pt.matrix("index", dtype="int64")
    value = MarginalLogLikelihood()(*variables)[0]
    grads = pytensor.grad(value, variables[:2])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Numba will use object mode")
        fn = pytensor.function(list(variables), [value, *grads], mode="NUMBA")
    outputs = fn(prior_cov, psi, residuals, index)
    for value, expected in zip(outputs, marginal_log_likelihood(prior_cov, psi, residuals, index), strict=True):
        assert _relative_error(value, expected) < 1e-10


def test_model_log_density_in_numba_mode_equals_the_default_mode(small_problem):
    """What nutpie compiles (the model's log-density and gradient in PyTensor's Numba mode, population
    layer and kernels' chain rule included) equals the default-mode compilation at random points."""
    import pandas as pd

    import magma_pymc as mp
    from magma_pymc.sampling import build_marginal_model

    ids = [f"i{k}" for k in range(len(small_problem))]
    frame = pd.DataFrame([(i, t, y) for i, (ts, ys) in zip(ids, small_problem, strict=True)
                          for t, y in zip(ts, ys, strict=True)], columns=["ID", "Input", "Output"])
    hp = {"mean_process": dict(variance=1.0, lengthscale=2.0),
          "individual": pd.DataFrame([(1.0, 0.8, 0.25)] * len(ids), index=ids, columns=["variance", "lengthscale",
                                                                                       "noise"])}
    model = mp.Magma(common_hp=False).fit(frame, method="fixed", hyperparameters=hp)
    pm_model = build_marginal_model(model._spec(model.data_), model._problem_, 1e-8, hierarchical=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Numba will use object mode")
        warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS", category=UserWarning)
        compiled = {mode: (pm_model.compile_logp(mode=mode), pm_model.compile_dlogp(mode=mode))
                    for mode in ("NUMBA", "CVM")}
    rng = np.random.default_rng(0)
    start = pm_model.initial_point()
    for _ in range(3):
        point = {name: value + rng.normal(0.0, 0.3, np.shape(value)) for name, value in start.items()}
        (logp, dlogp), (logp_ref, dlogp_ref) = ([f(point) for f in fns] for fns in compiled.values())
        assert abs(logp - logp_ref) < 1e-10 * abs(logp_ref)
        assert _relative_error(dlogp, dlogp_ref) < 1e-10
