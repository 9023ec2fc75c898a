"""HyperParameters: construction from dicts and tables, validation naming the field, log-array round trips."""

import numpy as np
import pandas as pd
import pymc as pm
import pytest

import magma_pymc as mp
from magma_pymc.params import COMMON_ROW, NOISE, HyperParameters

SE, MATERN = mp.SquaredExponential(), mp.Matern52()
TRAIN = pd.DataFrame(
    {"ID": ["a"] * 3 + ["b"] * 3, "Input": [0.0, 1.0, 2.0] * 2, "Output": [1.0, 2.0, 1.5, 0.5, 1.0, 2.5]}
)
GOOD = {
    "mean_process": {"variance": 1.0, "lengthscale": 1.0},
    "individual": {"variance": 1.0, "lengthscale": 1.0, "noise": 0.1},
}
GOOD_HP = {
    "mean_process": {"variance": 1.0, "lengthscale": 2.0},
    "individual": {"variance": 1.0, "lengthscale": 1.5, "noise": 0.1},
}
TWO = {"a": ([0.0, 1.0, 2.0], [1.0, 2.0, 1.5]), "b": ([0.5, 1.5], [0.5, 1.0])}
TABLE = pd.DataFrame(
    {"variance": [1.0, 2.0, 0.5], "lengthscale": [0.8, 1.5, 0.5], "noise": [0.25, 0.1, 0.3]}, index=["x", "y", "z"]
)


def test_coerce_a_dict_of_scalars_is_the_common_row():
    hp = HyperParameters.coerce(GOOD_HP, SE, SE)
    assert hp.common_hp
    assert list(hp.individual.index) == [COMMON_ROW]
    assert list(hp.individual.columns) == ["variance", "lengthscale", NOISE]
    assert hp.mean_process.to_dict() == {"variance": 1.0, "lengthscale": 2.0}
    assert hp.individual.loc[COMMON_ROW].to_dict() == {"variance": 1.0, "lengthscale": 1.5, "noise": 0.1}
    assert HyperParameters.coerce(hp, SE, SE) is hp


def test_to_log_orders_by_the_kernels_names_whatever_the_given_order():
    shuffled = {
        "mean_process": {"lengthscale": 2.0, "variance": 3.0},
        "individual": {"noise": 0.1, "lengthscale": 1.5, "variance": 0.7},
    }
    mean, individual = HyperParameters.coerce(shuffled, SE, SE).to_log(SE, SE, None)
    np.testing.assert_array_equal(mean, np.log([3.0, 2.0]))
    np.testing.assert_array_equal(individual, np.log([0.7, 1.5, 0.1]))
    # A common row broadcast to every individual when IDs are given.
    _, tiled = HyperParameters.coerce(shuffled, SE, SE).to_log(SE, SE, ["p", "q"])
    np.testing.assert_array_equal(tiled, np.log([[0.7, 1.5, 0.1]] * 2))


def test_different_hp_table_follows_the_requested_ids():
    hp = HyperParameters.coerce({"mean_process": GOOD["mean_process"], "individual": TABLE}, SE, SE)
    assert not hp.common_hp
    _, rows = hp.to_log(SE, SE, ["z", "x"])
    np.testing.assert_array_equal(rows, np.log(TABLE.loc[["z", "x"]].to_numpy()))
    with pytest.raises(ValueError, match="common-HP model given hyper-parameters with one row per individual"):
        hp.to_log(SE, SE, None)
    with pytest.raises(ValueError, match=r"no hyper-parameters given for individuals \['w'\]"):
        hp.to_log(SE, SE, ["x", "w"])


@pytest.mark.parametrize("ids", [None, ["a", ("b", 1), 3]], ids=["common", "different"])
def test_from_log_and_to_log_are_inverse(ids):
    rng = np.random.default_rng(0)
    mean_log = rng.normal(size=2)
    log_params = rng.normal(size=3) if ids is None else rng.normal(size=(3, 3))
    hp = HyperParameters.from_log(SE, SE, mean_log, log_params, ids)
    assert list(hp.individual.index) == ([COMMON_ROW] if ids is None else ids)  # a tuple ID stays one label
    np.testing.assert_allclose(hp.individual.to_numpy(), np.exp(np.atleast_2d(log_params)), rtol=1e-15)
    back_mean, back = hp.to_log(SE, SE, ids)
    np.testing.assert_allclose(back_mean, mean_log, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(back, log_params, rtol=1e-14, atol=1e-15)
    assert HyperParameters.coerce(hp, SE, SE) is hp  # what from_log builds passes validation


def test_kernels_with_other_parameter_names():
    """Matern 5/2 for the mean process, a periodic individual kernel: the names come from the kernels."""
    periodic = mp.Kernel(
        lambda variance, lengthscale, period: variance * pm.gp.cov.Periodic(1, period=period, ls=lengthscale)
    )
    hp = HyperParameters.from_log(MATERN, periodic, np.log([2.0, 3.0]), np.log([1.0, 0.5, 4.0, 0.2]), None)
    assert list(hp.individual.columns) == ["variance", "lengthscale", "period", NOISE]
    with pytest.raises(
        ValueError,
        match=r"individual 'common' hyper-parameters: expected \['variance', 'lengthscale', "
        r"'noise'\], missing \[\], unexpected \['period'\]",
    ):
        HyperParameters.coerce(hp, MATERN, SE)


@pytest.mark.parametrize(
    "value,pattern",
    [
        (
            {"mean_process": GOOD["mean_process"]},
            r"exactly the keys 'mean_process' and 'individual'; got \['mean_process'\]",
        ),
        (
            {**GOOD, "extra": {}},
            r"exactly the keys 'mean_process' and 'individual'; got \['extra', 'individual', 'mean_process'\]",
        ),
        (
            {"mean_process": 3.0, "individual": GOOD["individual"]},
            r"mean_process hyper-parameters must be a mapping of numbers",
        ),
        (
            {"mean_process": GOOD["mean_process"], "individual": {"variance": 1.0, "lengthscale": 1.0}},
            r"individual 'common' hyper-parameters: expected \['variance', 'lengthscale', 'noise'\], "
            r"missing \['noise'\]",
        ),
        (
            {"mean_process": GOOD["mean_process"], "individual": TABLE.assign(noise=[0.25, -0.1, 0.3])},
            r"individual 'y' hyper-parameter 'noise' must be positive and finite, got -0\.1",
        ),
    ],
    ids=["missing key", "extra key", "scalar group", "missing noise", "negative in one row"],
)
def test_coerce_errors_name_the_group_row_and_field(value, pattern):
    with pytest.raises(ValueError, match=pattern):
        HyperParameters.coerce(value, SE, SE)


@pytest.mark.parametrize(
    "where,name,value",
    [("mean_process", "variance", -1.0), ("individual", "noise", 0.0), ("individual", "lengthscale", np.nan)],
)
def test_non_positive_hyperparameters_are_rejected(where, name, value):
    hp = {k: dict(v) for k, v in GOOD.items()}
    hp[where][name] = value
    with pytest.raises(ValueError, match=f"{where}.*'{name}' must be positive and finite"):
        mp.Magma().fit(TRAIN, method="fixed", hyperparameters=hp)


def test_missing_or_unknown_hyperparameter_names():
    hp = {"mean_process": {"variance": 1.0}, "individual": GOOD["individual"]}
    with pytest.raises(ValueError, match=r"missing \['lengthscale'\]"):
        mp.Magma().fit(TRAIN, method="fixed", hyperparameters=hp)


def test_different_hp_table_must_cover_every_individual():
    table = pd.DataFrame({"variance": [1.0], "lengthscale": [1.0], "noise": [0.1]}, index=["a"])
    with pytest.raises(ValueError, match=r"no hyper-parameters given for individuals \['b'\]"):
        mp.Magma(common_hp=False).fit(
            TRAIN, method="fixed", hyperparameters={"mean_process": GOOD["mean_process"], "individual": table}
        )


BAD_HYPERPARAMETERS = [
    (
        "string mean-process value",
        {"mean_process": {"variance": "a", "lengthscale": 1.0}, "individual": GOOD_HP["individual"]},
        ValueError,
        r"mean_process hyper-parameters must be a mapping of numbers.*'a'",
    ),
    (
        "string individual value",
        {"mean_process": GOOD_HP["mean_process"], "individual": {**GOOD_HP["individual"], "noise": "low"}},
        ValueError,
        r"individual hyper-parameters must be a mapping of numbers.*'low'",
    ),
    (
        "infinite variance",
        {"mean_process": {"variance": np.inf, "lengthscale": 1.0}, "individual": GOOD_HP["individual"]},
        ValueError,
        r"mean_process hyper-parameter 'variance' must be positive and finite, got inf",
    ),
    (
        "per-individual table for a common-HP model",
        {"mean_process": GOOD_HP["mean_process"], "individual": pd.DataFrame(GOOD_HP["individual"], index=["a", "b"])},
        ValueError,
        r"common-HP model given hyper-parameters with one row per individual",
    ),
    ("a list", [1.0, 2.0], TypeError, r"must be a HyperParameters or a dict, got list"),
]


@pytest.mark.parametrize("name,hp,exc,pattern", BAD_HYPERPARAMETERS, ids=[c[0] for c in BAD_HYPERPARAMETERS])
def test_bad_hyperparameters_give_a_clear_error(name, hp, exc, pattern):
    with pytest.raises(exc, match=pattern):
        mp.Magma().fit(TWO, method="fixed", hyperparameters=hp)


def test_hyperparameters_layout():
    sim = mp.simulate(n_individuals=5, n_points=10, seed=2, common_hp=False, scheme="smooth")
    model = mp.Magma(common_hp=False, max_iter=2).fit(sim.data)
    hp = model.hyperparameters_
    assert list(hp.mean_process.index) == ["variance", "lengthscale"]
    assert list(hp.individual.columns) == ["variance", "lengthscale", "noise"]
    assert list(hp.individual.index) == list(sim.data["ID"].unique())
    common = mp.Magma(common_hp=True, max_iter=2).fit(sim.data).hyperparameters_
    assert list(common.individual.index) == ["common"]
