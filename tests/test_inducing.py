"""Mean process on inducing points (``Magma(inducing=...)``): exactness, dense reference, EM, errors."""

import numpy as np
import pytest
from conftest import COMMON, DIFFERENT, HP0, hp_dict, make_long
from reference import ProjectedJointGP

import magma_pymc as mp

M0 = 0.7


def fixed_fit(individuals, common_hp, inducing):
    ids = [f"i{k}" for k in range(len(individuals))]
    hps = COMMON if common_hp else DIFFERENT[: len(individuals)]
    return mp.Magma(common_hp=common_hp, prior_mean=M0, inducing=inducing).fit(
        make_long(individuals, ids), method="fixed", hyperparameters=hp_dict(hps, ids)
    )


@pytest.mark.parametrize("common_hp", [True, False], ids=["commonHP", "differentHP"])
def test_inducing_points_on_the_union_grid_give_the_exact_model(small_problem, common_hp):
    """K0(t, g) K0(g, g)^{-1} selects rows when g = t: the projected fit is the exact one."""
    exact = fixed_fit(small_problem, common_hp, None)
    projected = fixed_fit(small_problem, common_hp, exact.data_.grid)
    assert projected._problem_.graphs.projected
    np.testing.assert_allclose(projected.log_likelihood_, exact.log_likelihood_, rtol=1e-9)
    s = np.array([-1.0, 0.3, 2.55, 7.1, 12.0])
    for field in ("mean", "cov"):
        np.testing.assert_allclose(projected.hyperposterior(s)[field], exact.hyperposterior(s)[field], atol=1e-6)
    new = (np.array([1.0, 4.0]), np.array([1.2, 2.5]))
    a, b = projected.predict(new, s), exact.predict(new, s)
    np.testing.assert_allclose(a["mean"], b["mean"], atol=1e-6)
    np.testing.assert_allclose(a["variance"], b["variance"], atol=1e-6)


@pytest.mark.parametrize("common_hp", [True, False], ids=["commonHP", "differentHP"])
def test_projected_model_matches_dense_reference(small_problem, common_hp):
    g = np.array([0.0, 2.0, 4.5, 6.0, 8.0, 10.0])   # fewer points than the 17 distinct inputs
    model = fixed_fit(small_problem, common_hp, g)
    hps = [COMMON] * len(small_problem) if common_hp else DIFFERENT[: len(small_problem)]
    reference = ProjectedJointGP(small_problem, HP0, hps, g, m0=M0)
    np.testing.assert_allclose(model.log_likelihood_, reference.log_likelihood(), rtol=1e-8)
    s = np.array([-1.0, 0.3, 2.55, 7.1, 12.0])
    post = model.hyperposterior(s)
    ref_mean, ref_cov = reference.mean_process(s)
    np.testing.assert_allclose(post["mean"], ref_mean, atol=1e-6)
    np.testing.assert_allclose(post["cov"], ref_cov, atol=1e-6)
    # mu0 is represented (and stored) on the inducing points
    np.testing.assert_array_equal(model.mean_process_grid[:, 0], g)
    np.testing.assert_allclose(model.idata_["hyperposterior"]["mu0_mean"], reference.mean_process(g)[0], atol=1e-6)
    assert model.idata_.attrs["inducing_points"] == len(g)


def test_projected_em_is_monotone_and_close_to_exact():
    """EM on the projected model never decreases its likelihood; with 40 inducing points on a
    201-point union grid the predictions match the exact fit's to a fraction of the noise."""
    sim = mp.simulate(n_individuals=12, n_points=20, common_grid=False, common_hp=True, seed=4, scheme="smooth")
    train = sim.data[sim.data["ID"] != sim.data["ID"].iloc[-1]]
    new = sim.data[sim.data["ID"] == sim.data["ID"].iloc[-1]]
    observed, target = new.iloc[:12], new.iloc[12:]
    exact = mp.Magma().fit(train)
    projected = mp.Magma(inducing=40).fit(train)
    lls = projected.idata_["em_trace"]["log_likelihood"].values
    assert np.all(np.diff(lls) > -1e-6 * np.abs(lls[:-1]))
    inputs = target["Input"].to_numpy()
    a, b = projected.predict(observed, inputs), exact.predict(observed, inputs)
    noise_sd = np.sqrt(exact.hyperparameters_.individual["noise"].iloc[0])
    assert np.max(np.abs(a["mean"] - b["mean"])) < 0.1 * noise_sd
    np.testing.assert_allclose(a["variance"], b["variance"], rtol=0.05)


def test_nuts_target_of_a_projected_fit_is_the_projected_likelihood(small_problem):
    """The Potential sampled by method="nuts" is the projected model's dense log-density."""
    from magma_pymc.bayes import build_marginal_model

    g = np.array([0.0, 2.0, 4.5, 6.0, 8.0, 10.0])
    model = fixed_fit(small_problem, False, g)
    pm_model = build_marginal_model(model._spec(model.data_), model._problem_, 1e-10)
    fn = pm_model.compile_fn(pm_model.logp(vars=[pm_model["marginal_likelihood"]]), point_fn=True,
                             mode=model.compile_mode)
    value = fn({"log_mu0_hp": np.log(HP0), "log_hp": np.log(DIFFERENT[: len(small_problem)])})
    reference = ProjectedJointGP(small_problem, HP0, DIFFERENT[: len(small_problem)], g, m0=M0)
    np.testing.assert_allclose(value, reference.log_likelihood(), rtol=1e-8)


def test_projected_fit_saves_and_loads(tmp_path, small_problem):
    model = fixed_fit(small_problem, True, 7)
    model.save(tmp_path / "m.nc")
    loaded = mp.Magma.load(tmp_path / "m.nc")
    assert loaded.inducing == 7
    s = np.array([0.5, 3.3, 9.0])
    np.testing.assert_allclose(loaded.predict(None, s)["mean"], model.predict(None, s)["mean"], rtol=1e-12)


#: Bad ``inducing`` settings and the message each must raise (MagmaClust checks them as Magma does).
BAD_INDUCING = [
    (dict(inducing=1), "at least 2"),
    (dict(inducing=True), "must be a"),
    (dict(inducing=[1.0, np.nan, 3.0]), "NaN"),
    (dict(inducing=[1.0, 2.0, 2.0]), "duplicates"),
    (dict(inducing=np.zeros((4, 2))), r"\(G, 1\)"),
    (dict(inducing=10, mean_kernel=mp.kernels.SquaredExponential(input_dim=2),
          kernel=mp.kernels.SquaredExponential(input_dim=2)), "1-D inputs only"),
    (dict(inducing=10, mean_step="expected"), "mean_step='marginal'"),
]


@pytest.mark.parametrize("kwargs,message", BAD_INDUCING)
def test_bad_inducing_settings_fail_early(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mp.Magma(**kwargs)
