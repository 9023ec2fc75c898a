"""The NUMPY compile mode (magma_pymc.modes): the same numbers as the C backend and PyTensor's Python mode."""

import warnings

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.compile.mode import Mode

import magma_pymc as mp


@pytest.mark.parametrize("common_hp", [True, False], ids=["commonHP", "differentHP"])
def test_compile_modes_give_the_same_fit(common_hp):
    """The default NUMPY mode (NumPy implementations after the full graph rewrites, nothing compiled)
    fits the same EM path as the C backend and as PyTensor's FAST_COMPILE, and predicts the same."""
    sim = mp.simulate(6, 12, common_grid=False, common_hp=common_hp, seed=5, n_new=1, scheme="smooth")
    observed, _ = mp.split_observed(sim.new, 8)
    grid = np.linspace(0.0, 10.0, 7)
    fits = {}
    for mode in ("NUMPY", "CVM", "FAST_COMPILE"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = mp.Magma(common_hp=common_hp, compile_mode=mode).fit(sim.data)
        fits[mode] = (model.log_likelihood_, model.n_iter_, model.predict(observed, grid)["mean"].values)
    ll, iters, mean = fits["NUMPY"]
    for other in ("CVM", "FAST_COMPILE"):
        ll_o, iters_o, mean_o = fits[other]
        np.testing.assert_allclose(ll, ll_o, rtol=1e-8)
        assert iters == iters_o
        np.testing.assert_allclose(mean, mean_o, rtol=1e-6, atol=1e-8)


def test_numpy_mode_rewrites_clip_only_where_equivalent():
    """The NUMPY mode replaces clip(x, lo, hi) (no NumPy ufunc in PyTensor) by max/min only for
    constant lo <= hi, where both agree; other modes keep clip."""
    x, lo = pt.vector("x"), pt.scalar("lo")
    values = np.array([-2.0, 0.5, 3.0])
    for hi in (np.inf, 1.0):
        fn = pytensor.function([x], pt.clip(x, 0.0, hi), mode="NUMPY")
        ops = {
            type(node.op.scalar_op).__name__ for node in fn.maker.fgraph.apply_nodes if hasattr(node.op, "scalar_op")
        }
        assert "Clip" not in ops
        np.testing.assert_array_equal(fn(values), np.clip(values, 0.0, hi))
    # A symbolic bound could exceed hi: clip is kept, with PyTensor's semantics.
    fn = pytensor.function([x, lo], pt.clip(x, lo, 1.0), mode="NUMPY")
    assert any(type(getattr(n.op, "scalar_op", None)).__name__ == "Clip" for n in fn.maker.fgraph.apply_nodes)
    fast_run = pytensor.function([x], pt.clip(x, 0.0, np.inf), mode=Mode(linker="py", optimizer="fast_run"))
    assert any(type(getattr(n.op, "scalar_op", None)).__name__ == "Clip" for n in fast_run.maker.fgraph.apply_nodes)


def test_numpy_mode_evaluates_fused_elementwise_ops_like_the_unfused_graph():
    """Fused elementwise chains run as NumpyFusedElemwise (whole-array NumPy calls) and give the
    unfused Python graph's values: broadcasting, variadic add/mul, switch, casts, constants, an op
    without a NumPy ufunc (clip with a symbolic bound), several outputs, gradients."""
    from magma_pymc.modes import NumpyFusedElemwise

    x, y, a = pt.matrix("x"), pt.vector("y"), pt.scalar("a")
    outputs = [
        pt.exp(-0.5 * pt.maximum((x - y) ** 2 / a, 0.0)) * a * y + pt.switch(x > 0, x, 2 * y),
        pt.cast(x > y, "float64") * 3 + pt.exp(pt.clip(x, a, 1.0)) * 2,
        pt.log1p(pt.abs(x)) + pt.sqrt(pt.abs(y)) - a,
        (pt.exp(y) * a + 1.0) * pt.ones_like(x),  # an output narrower than the inputs' broadcast
    ]
    outputs += pytensor.grad(outputs[0].sum() + outputs[2].sum(), [x, y, a])
    fused = pytensor.function([x, y, a], outputs, mode="NUMPY")
    plain = pytensor.function([x, y, a], outputs, mode=Mode(linker="py", optimizer="fast_compile"))
    fused_nodes = [node for node in fused.maker.fgraph.apply_nodes if isinstance(node.op, NumpyFusedElemwise)]
    assert len(fused_nodes) >= 2 and any(len(node.outputs) > 1 for node in fused_nodes)
    rng = np.random.default_rng(0)
    args = rng.normal(size=(4, 3)), rng.normal(size=3), np.array(0.3)
    for got, expected in zip(fused(*args), plain(*args), strict=True):
        assert np.shape(got) == np.shape(expected)
        np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-15)
    # An output that is an input passed through (identity) is a copy, never the input itself.
    from pytensor.scalar.basic import Composite, float64, identity

    s, t = float64("s"), float64("t")
    passthrough = pytensor.function(
        [y, a], NumpyFusedElemwise(Composite([s, t], [identity(s), s * t + 1.0]))(y, a), mode="FAST_COMPILE"
    )
    same, computed = passthrough(args[1], args[2])
    np.testing.assert_array_equal(same, args[1])
    np.testing.assert_allclose(computed, args[1] * 0.3 + 1.0)
    assert not np.shares_memory(same, args[1])


def test_numpy_mode_runs_magmas_step_graphs_like_the_python_mode():
    """The individual M-step and the new individual's objective (value and gradient) of MAGMA's
    compiled structures: the NUMPY mode runs fused nodes as NumpyFusedElemwise and matches
    PyTensor's FAST_COMPILE mode on the same inputs."""
    from magma_pymc.compiled import graphs_for
    from magma_pymc.modes import NumpyFusedElemwise

    kernel = mp.SquaredExponential()
    rng = np.random.default_rng(4)
    n_batch, n_max = 3, 5
    inputs = np.sort(rng.uniform(0, 10, (n_batch, n_max, 1)), axis=1)
    mask = np.ones((n_batch, n_max))
    mask[1, 3:] = 0.0
    deviations = rng.normal(size=(n_batch, n_max)) * mask
    a = rng.normal(size=(n_batch, n_max, n_max))
    blocks = 0.1 * a @ a.transpose(0, 2, 1)
    log_params = np.log([[1.0, 0.8, 0.25], [2.0, 1.5, 0.1], [0.5, 0.5, 0.3]])
    t_obs, y_obs = inputs[0], deviations[0] + 1.0
    mean, cov = np.full(n_max, 1.0), blocks[0]
    values = {}
    for mode in ("NUMPY", "FAST_COMPILE"):
        graphs = graphs_for(kernel, kernel, common_hp=False, common_grid=False, mode=mode)
        steps, new = graphs.individual_steps, graphs.new_individual_step
        values[mode] = (
            *steps(log_params, inputs, deviations, blocks, mask, 1e-10),
            *new(log_params[1], t_obs, y_obs, mean, cov, 1e-10),
        )
        if mode == "NUMPY":
            nodes = [*steps.maker.fgraph.apply_nodes, *new.maker.fgraph.apply_nodes]
            assert any(isinstance(node.op, NumpyFusedElemwise) for node in nodes)
    for got, expected in zip(values["NUMPY"], values["FAST_COMPILE"], strict=True):
        assert np.all(np.isfinite(expected))
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)
