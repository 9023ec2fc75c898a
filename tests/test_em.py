"""EM: monotone marginal likelihood in all four settings, stopping rule, results layout, recovery."""

import warnings

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.compile.mode import Mode

import magma_pymc as mp
from magma_pymc.baselines import SingleGP

SETTINGS = pytest.mark.parametrize(
    "common_grid,common_hp",
    [(False, True), (False, False), (True, True), (True, False)],
    ids=["uncommon-commonHP", "uncommon-differentHP", "common-commonHP", "common-differentHP"],
)


@SETTINGS
def test_em_log_likelihood_never_decreases(common_grid, common_hp):
    sim = mp.simulate(n_individuals=8, n_points=12, common_grid=common_grid, common_hp=common_hp, seed=11, scheme="smooth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.ConvergenceWarning)
        model = mp.Magma(common_hp=common_hp, max_iter=15, tol=1e-6).fit(sim.data)
    # EM's objective: the marginal log-likelihood plus the log prior of the default weak
    # mean-process prior (the likelihood alone may dip by ~1e-4 near a MAP optimum).
    objective = model.idata_["em_trace"]["log_posterior"].values
    ll = model.idata_["em_trace"]["log_likelihood"].values
    assert len(ll) >= 3
    # Each M-step starts from the current HP and L-BFGS-B only accepts descent steps, so the
    # objective can only decrease by rounding.
    assert np.all(np.diff(objective) >= -1e-8 * np.abs(objective[:-1])), np.diff(objective)
    assert ll[-1] > ll[0]
    assert model.idata_["posterior"]["mu0_variance"].dims == ("chain", "draw")
    noise = model.idata_["posterior"]["noise"]
    assert noise.dims == (("chain", "draw") if common_hp else ("chain", "draw", "individual"))
    assert model.log_likelihood_ == pytest.approx(ll[-1])


def test_em_stops_on_tolerance_and_warns_when_not_converged():
    sim = mp.simulate(n_individuals=5, n_points=10, seed=2, scheme="smooth")
    with pytest.warns(mp.ConvergenceWarning, match="did not converge in 1 iterations"):
        model = mp.Magma(max_iter=1).fit(sim.data)
    assert not model.converged_ and model.n_iter_ == 1
    tol = 1e-2
    model = mp.Magma(max_iter=100, tol=tol).fit(sim.data)
    ll = model.idata_["em_trace"]["log_likelihood"].values
    assert model.converged_
    assert abs(ll[-1] - ll[-2]) < tol * abs(ll[-2])
    assert np.all(np.abs(np.diff(ll)[:-1]) >= tol * np.abs(ll[:-2]))


def test_hyperparameters_layout():
    sim = mp.simulate(n_individuals=5, n_points=10, seed=2, common_hp=False, scheme="smooth")
    model = mp.Magma(common_hp=False, max_iter=2).fit(sim.data)
    hp = model.hyperparameters_
    assert list(hp.mean_process.index) == ["variance", "lengthscale"]
    assert list(hp.individual.columns) == ["variance", "lengthscale", "noise"]
    assert list(hp.individual.index) == list(sim.data["ID"].unique())
    common = mp.Magma(common_hp=True, max_iter=2).fit(sim.data).hyperparameters_
    assert list(common.individual.index) == ["common"]


def _protocol(seed, common_grid=False, common_hp=True):
    sim = mp.simulate(n_individuals=20, n_points=30, common_grid=common_grid, common_hp=common_hp, seed=seed, n_new=1, scheme="smooth")
    observed, target = mp.split_observed(sim.new, 20)
    return sim, observed, target


def test_recovery_beats_single_gp_on_simulated_data():
    """Paper protocol (M=20 x 30 points; new individual's first 20 observed, last 10 forecast), 4 seeds."""
    magma_mse, gp_mse, mu0_mse, prior_mse = [], [], [], []
    for seed in range(4):
        sim, observed, target = _protocol(seed)
        model = mp.Magma(common_hp=True).fit(sim.data)
        t_target = target["Input"].to_numpy()
        pred = model.predict(observed, t_target)
        magma_mse.append(np.mean((pred["mean"].values - target["Output"].to_numpy()) ** 2))
        single = SingleGP().fit(observed).predict(t_target)
        gp_mse.append(np.mean((single["mean"].values - target["Output"].to_numpy()) ** 2))
        mu0 = model.hyperposterior(sim.grid)["mean"].values
        mu0_mse.append(np.mean((mu0 - sim.mean_process) ** 2))
        prior_mse.append(np.mean((model._prior_mean_value(sim.grid[:, None]) - sim.mean_process) ** 2))
    print(f"forecast MSE magma {np.mean(magma_mse):.2f} single GP {np.mean(gp_mse):.2f}; mu0 MSE {np.mean(mu0_mse):.3f} (constant prior mean {np.mean(prior_mse):.2f})")
    assert np.mean(magma_mse) < 0.5 * np.mean(gp_mse)
    assert np.mean(mu0_mse) < 0.1 * np.mean(prior_mse)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("common_hp", "n_seeds", "lowest"), [(True, 25, 0.85), (False, 12, 0.70)], ids=["commonHP", "differentHP"]
)
def test_interval_coverage_over_seeds(common_hp, n_seeds, lowest):
    """95% predictive intervals cover held-out points at about the nominal rate over repeated simulations.

    With different HP the new individual's own HP are fitted to its 20 observed points, so its
    intervals under-cover when forecasting beyond them: the MAGMA paper reports CI95 = 89.1% in
    that setting and this implementation measured 78% (seeds 100-111); the bound guards against
    regressions, not a nominal rate.
    """
    covered, total = 0, 0
    for seed in range(n_seeds):
        sim, observed, target = _protocol(100 + seed, common_hp=common_hp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", mp.ConvergenceWarning)
            model = mp.Magma(common_hp=common_hp).fit(sim.data)
        pred = model.predict(observed, target["Input"].to_numpy())
        y = target["Output"].to_numpy()
        covered += int(np.sum((y >= pred["lower"].values) & (y <= pred["upper"].values)))
        total += y.size
    coverage = covered / total
    print(f"coverage {coverage:.3f} over {total} points")
    assert lowest <= coverage <= 0.99


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
        ops = {type(node.op.scalar_op).__name__ for node in fn.maker.fgraph.apply_nodes if hasattr(node.op, "scalar_op")}
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
