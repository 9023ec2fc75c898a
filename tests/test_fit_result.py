"""FitResult (magma_pymc.fit_result) and the one prediction path over its components (magma_pymc.predictive)."""

import dataclasses

import numpy as np
import pytest

import magma_pymc as mp
from magma_pymc import predictive
from magma_pymc.data import as_individual


@pytest.fixture(scope="module")
def fitted():
    sim = mp.simulate(n_individuals=5, n_points=8, seed=2, n_new=1)
    model = mp.Magma(max_iter=3).fit(sim.data)
    observed, _ = mp.split_observed(sim.new, 5)
    return sim, model, observed


def test_em_fit_is_one_draw_one_cluster(fitted):
    _, model, _ = fitted
    result = model.result_
    assert result.method == "em" and result.n_draws == 1
    np.testing.assert_array_equal(result.cluster_weights, [1.0])
    np.testing.assert_array_equal(result.mean_log_draws[0], result.point.mean_log_params)
    assert [w for w, _ in result.components()] == [1.0]
    assert model.idata_ is result.tree and model.data_ is result.data


def test_record_is_immutable_and_checked(fitted):
    result = fitted[1].result_
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.method = "nuts"
    with pytest.raises(ValueError, match="read-only"):
        result.mean_log_draws[0, 0] = 0.0
    with pytest.raises(ValueError, match="sum to 1"):
        dataclasses.replace(result, cluster_weights=np.array([0.5, 0.2]))
    with pytest.raises(ValueError, match="as many"):
        dataclasses.replace(result, log_param_draws=np.repeat(result.log_param_draws, 2, axis=0))


def test_components_are_draws_times_clusters(fitted):
    result = fitted[1].result_
    draws = np.repeat(result.mean_log_draws, 3, axis=0), np.repeat(result.log_param_draws, 3, axis=0)
    mixed = dataclasses.replace(result, mean_log_draws=draws[0], log_param_draws=draws[1],
                                cluster_weights=np.array([0.25, 0.75]))
    weights = [w for w, _ in mixed.components()]
    np.testing.assert_allclose(weights, [0.25 / 3, 0.75 / 3] * 3, rtol=1e-15)


def test_two_draw_prediction_is_the_mixture_of_fixed_fits(fitted):
    """Reference: two fixed-HP fits predicted separately, combined by the law of total variance."""
    sim, model, observed = fitted
    result = model.result_
    shifted = result.log_param_draws + np.array([0.3, -0.2, 0.1])
    two = dataclasses.replace(result, mean_log_draws=np.repeat(result.mean_log_draws, 2, axis=0),
                              log_param_draws=np.concatenate([result.log_param_draws, shifted]))
    new = observed[observed["ID"] == observed["ID"].iloc[0]]
    t_pred = np.linspace(0.0, 10.0, 6)
    pred = predictive.predict(two, as_individual(new, input_dim=1), t_pred[:, None])
    means, variances = [], []
    for log_params in two.log_param_draws:
        hp = {"mean_process": dict(zip(("variance", "lengthscale"), np.exp(result.mean_log_draws[0]), strict=True)),
              "individual": dict(zip(("variance", "lengthscale", "noise"), np.exp(log_params), strict=True))}
        fixed = mp.Magma(jitter=result.jitter / result.problem.output_scale).fit(
            sim.data, method="fixed", hyperparameters=hp)
        one = fixed.predict(new, t_pred)
        means.append(one["mean"].values), variances.append(one["variance"].values)
    means, variances = np.array(means), np.array(variances)
    np.testing.assert_allclose(pred["mean"].values, means.mean(0), rtol=1e-8)
    np.testing.assert_allclose(pred["variance"].values, variances.mean(0) + means.var(0), rtol=1e-8)
    assert pred.attrs["n_draws"] == 2
