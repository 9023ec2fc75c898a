"""E-step, marginal likelihood and mu0 at new inputs against the dense joint-GP reference."""

import numpy as np
import pandas as pd
import pytest
from conftest import (
    COMMON,
    DIFFERENT,
    common_grid_problem,
    fixed_model,
    make_long,
)
from reference import JointGP, central_differences, se

import magma_pymc as mp
from magma_pymc.hyperposterior import TrainingTensors, build_estep

SETTINGS = pytest.mark.parametrize(
    "common_grid,common_hp",
    [(False, True), (False, False), (True, True), (True, False)],
    ids=["uncommon-commonHP", "uncommon-differentHP", "common-commonHP", "common-differentHP"],
)


@SETTINGS
def test_estep_and_log_likelihood_match_dense_joint_gp(small_problem, common_grid, common_hp):
    individuals = common_grid_problem() if common_grid else small_problem
    model, reference = fixed_model(individuals, common_hp)
    assert model.data_.common_grid == common_grid
    grid = model.data_.grid[:, 0]
    ref_mean, ref_cov = reference.mean_process(grid)
    post = model.hyperposterior()
    np.testing.assert_allclose(post["mean"].values, ref_mean, atol=1e-7)
    np.testing.assert_allclose(post["cov"].values, ref_cov, atol=1e-7)
    np.testing.assert_allclose(model.log_likelihood_, reference.log_likelihood(), rtol=1e-9)
    np.testing.assert_allclose(model.idata_["hyperposterior"]["mu0_mean"].values, ref_mean, atol=1e-7)


def test_mean_process_at_new_inputs_grid_formula_vs_dense(small_problem):
    model, reference = fixed_model(small_problem, common_hp=False)
    s = np.array([-1.0, 0.3, 2.55, 7.1, 12.0])
    post = model.hyperposterior(s)
    ref_mean, ref_cov = reference.mean_process(s)
    np.testing.assert_allclose(post["mean"].values, ref_mean, atol=1e-7)
    np.testing.assert_allclose(post["cov"].values, ref_cov, atol=1e-7)


def test_mean_process_at_new_inputs_equals_estep_recomputed_on_union(small_problem):
    """Theory, prediction: the grid formula and MagmaClustR's recomputation on t U s agree."""
    model, _ = fixed_model(small_problem, common_hp=True)
    s = np.array([0.3, 2.55, 7.1])
    post = model.hyperposterior(s)
    # Recompute the E-step on the union grid t U s: add s to the grid, remap the index maps.
    data = model.data_
    union = np.unique(np.concatenate([data.grid[:, 0], s]))[:, None]
    position = {float(v): k for k, v in enumerate(union[:, 0])}
    index = np.where(data.mask > 0, np.vectorize(lambda k: position[float(data.grid[min(k, data.n_inputs - 1), 0])])(data.index), len(union))
    import pytensor

    tensors = TrainingTensors.symbolic()
    mean_hp, hp = pytensor.tensor.vector(), pytensor.tensor.vector()
    estep = build_estep(model.mean_kernel, model.kernel, mean_hp, hp, tensors)
    f = pytensor.function([mean_hp, hp, *tensors], [estep.mean, estep.cov])
    state = model._state
    residuals = model._problem_.data_args[2]
    mean, cov = f(state.mean_log_params, state.log_params, union, data.inputs, residuals, data.mask, index, state.jitter)
    at_s = [position[v] for v in s]
    np.testing.assert_allclose(post["mean"].values, 0.7 + mean[at_s], atol=1e-7)
    np.testing.assert_allclose(post["cov"].values, cov[np.ix_(at_s, at_s)], atol=1e-7)


def test_fast_path_equals_general_path():
    individuals = common_grid_problem(n_individuals=5)
    model, _ = fixed_model(individuals, common_hp=True)
    assert model._problem_.graphs.fast_path
    # Same data with one input nudged off the grid of the others takes the general path.
    general, _ = fixed_model(individuals[:4] + [(individuals[4][0] + 1e-9 * (np.arange(9) == 3), individuals[4][1])], True)
    assert not general._problem_.graphs.fast_path
    np.testing.assert_allclose(model.hyperposterior(np.array([1.0, 5.0]))["mean"], general.hyperposterior(np.array([1.0, 5.0]))["mean"], atol=1e-6)


def test_ill_conditioned_grid_whitened_form_is_exact_where_naive_inverse_fails():
    """The paper's setting: 201 inputs on [0, 10], lengthscale e^2; cond(K0) > 1e16."""
    rng = np.random.default_rng(0)
    grid = np.linspace(0, 10, 201)
    hp0 = (np.exp(2.0), np.exp(2.0))
    individuals = []
    for _ in range(20):
        t = np.sort(rng.choice(grid, 30, replace=False))
        individuals.append((t, 5 + 0.5 * t + rng.normal(0, 1, t.size)))
    hps = [(1.0, 1.0, 0.1)] * 20
    ids = [f"i{k}" for k in range(20)]
    model = mp.Magma(prior_mean=0.0).fit(
        make_long(individuals, ids),
        method="fixed",
        hyperparameters={"mean_process": dict(variance=hp0[0], lengthscale=hp0[1]),
                         "individual": dict(variance=1.0, lengthscale=1.0, noise=0.1)},
    )
    t = model.data_.grid[:, 0]
    k0 = se(t, t, *hp0)
    assert np.linalg.cond(k0) > 1e16
    ref_mean, ref_cov = JointGP(individuals, hp0, hps).mean_process(t)
    post = model.hyperposterior()
    np.testing.assert_allclose(post["mean"].values, ref_mean, atol=1e-5)
    np.testing.assert_allclose(post["cov"].values, ref_cov, atol=1e-5)
    np.testing.assert_allclose(model.log_likelihood_, JointGP(individuals, hp0, hps).log_likelihood(), rtol=1e-8)

    # The textbook form with K0^{-1} on the same problem.
    data = model.data_
    precision = np.linalg.inv(k0)
    rhs = np.zeros(t.size)
    for i, ind in enumerate(data.individuals):
        idx = data.index[i, : ind.n_points]
        psi = se(ind.inputs[:, 0], ind.inputs[:, 0], 1.0, 1.0) + 0.1 * np.eye(ind.n_points)
        precision[np.ix_(idx, idx)] += np.linalg.inv(psi)
        rhs[idx] += np.linalg.solve(psi, ind.outputs)
    naive_mean = np.linalg.solve(precision, rhs)
    assert np.max(np.abs(naive_mean - ref_mean)) > 1e-2


def test_magmaclustr_fixture_hyperposterior_and_prediction(fixture_dir):
    """Reproduce MagmaClustR 1.2.1 outputs at fixed HP through the public API."""
    train = pd.read_csv(fixture_dir / "train.csv")
    new = pd.read_csv(fixture_dir / "new.csv")
    expected_mu0 = pd.read_csv(fixture_dir / "hyperposterior.csv")
    expected_pred = pd.read_csv(fixture_dir / "prediction.csv")
    hp = {"mean_process": {"variance": 3.0, "lengthscale": 2.0},
          "individual": {"variance": 1.0, "lengthscale": 0.8, "noise": 0.25}}
    model = mp.Magma(common_hp=True, prior_mean=0.0).fit(train, method="fixed", hyperparameters=hp)
    mu0 = model.hyperposterior(expected_mu0["Input"].to_numpy())
    np.testing.assert_allclose(mu0["mean"].values, expected_mu0["Mean"], atol=2e-5)
    np.testing.assert_allclose(mu0["variance"].values, expected_mu0["Var"], atol=2e-5)
    pred = model.predict(new, expected_pred["Input"].to_numpy())
    np.testing.assert_allclose(pred["mean"].values, expected_pred["Mean"], atol=2e-5)
    np.testing.assert_allclose(pred["variance"].values, expected_pred["Var"], atol=2e-5)


@pytest.mark.parametrize(
    "common_grid,common_hp", [(False, True), (False, False), (True, True)],
    ids=["uncommon-commonHP", "uncommon-differentHP", "fast-path"],
)
def test_information_form_mean_step_matches_dense_likelihood_and_finite_differences(
    small_problem, common_grid, common_hp
):
    """The ECME mean-process objective from the data's information form (S, b) is -log p(y) of the
    dense joint GP at any theta0, with the individual HP fixed; its gradient matches central differences."""
    if common_grid:
        small_problem = common_grid_problem()
    else:  # padding (different N_i) and inputs shared by several individuals both occur here
        t_all = np.concatenate([t for t, _ in small_problem])
        assert len(np.unique(t_all)) < len(t_all)
    model, _ = fixed_model(small_problem, common_hp)
    graphs, args, state = model._problem_.graphs, model._problem_.data_args, model._state
    assert graphs.precision_mean_step and graphs.fast_path == common_grid
    summary = graphs.data_precision(state.log_params, *args, state.jitter)
    pseudo = graphs.pseudo_observations(*summary)
    hps = [COMMON] * len(small_problem) if common_hp else DIFFERENT[: len(small_problem)]
    for hp0 in [(3.0, 2.0), (0.5, 0.7), (10.0, 6.0)]:
        log_hp0 = np.log(hp0)
        value, grad = graphs.mean_process_precision_step(log_hp0, args[0], *summary, state.jitter)
        reference = JointGP(small_problem, hp0, hps, m0=0.7)
        np.testing.assert_allclose(-value, reference.log_likelihood(), rtol=1e-9)
        fd = central_differences(
            lambda x: graphs.mean_process_precision_step(x, args[0], *summary, state.jitter)[0], log_hp0
        )
        np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6)
        # The pseudo-observation form (the default wherever S is positive definite): same value and gradient.
        pseudo_value, pseudo_grad = graphs.mean_process_pseudo_step(log_hp0, args[0], *pseudo, state.jitter)
        np.testing.assert_allclose(-pseudo_value, reference.log_likelihood(), rtol=1e-9)
        np.testing.assert_allclose(pseudo_grad, fd, rtol=1e-5, atol=1e-6)


def test_mean_step_falls_back_to_information_form_when_data_precision_is_singular(small_problem, monkeypatch):
    """A singular S (every pseudo-observation output NaN) sends the ECME mean step to the information
    form, which reaches the same theta0 as the pseudo-observation form on the same data."""
    from magma_pymc.em import em_step, estep

    model, _ = fixed_model(small_problem, common_hp=False)
    problem, state = model._problem_, model._state
    graphs = problem.graphs
    singular = graphs.pseudo_observations(np.zeros((3, 3)), np.zeros(3), 0.0, 0.0, 1.0)
    assert all(np.isnan(np.asarray(output)).all() for output in singular)
    start = state._replace(mean_log_params=np.log([1.0, 1.0]))
    current, start = estep(start, problem)
    pseudo_result = em_step(start, problem, current)
    calls = []

    def singular_pseudo(*summary):
        calls.append(1)
        n = np.shape(summary[0])[0]
        return np.full((n, n), np.nan), np.full(n, np.nan), np.nan

    monkeypatch.setitem(graphs.__dict__, "pseudo_observations", singular_pseudo)
    information_result = em_step(start, problem, current)
    assert calls
    np.testing.assert_allclose(information_result.mean_log_params, pseudo_result.mean_log_params, atol=1e-4)
    np.testing.assert_allclose(information_result.log_params, pseudo_result.log_params)
