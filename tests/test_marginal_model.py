"""The model the samplers see (magma_pymc.marginal_model): both likelihood graphs agree, named data
dims, and one scale in the organised posterior."""

import numpy as np
import pytest
import xarray as xr
from conftest import make_long
from reference import JointGP

from magma_pymc.compiled import DEFAULT_MODE, graphs_for
from magma_pymc.data import as_training_data
from magma_pymc.hierarchical import POPULATION_MEAN, POPULATION_OFFSET, POPULATION_SCALE
from magma_pymc.kernels import SquaredExponential
from magma_pymc.marginal_model import POPULATION_MEDIAN, POPULATION_SPREAD, organise_posterior, sampling_model
from magma_pymc.model import ModelSpec

DIFFERENT = [(1.0, 0.8, 0.25), (2.0, 1.5, 0.1), (0.5, 0.5, 0.3), (1.5, 1.0, 0.2)]


def model_for(individuals, common_hp=False, **options):
    train = as_training_data(make_long(individuals))
    residuals = (train.outputs - 0.4) * train.mask
    kernel = SquaredExponential()
    args = (train.grid, train.inputs, residuals, train.mask, train.index)
    spec = ModelSpec(kernel, kernel, common_hp, tuple(train.ids), (np.zeros(2), np.zeros(3)))
    structure = graphs_for(kernel, kernel, common_hp=common_hp, common_grid=False)
    return sampling_model(spec, structure, args, **{"jitter": 1e-10, **options})


@pytest.mark.parametrize("hierarchical", [False, True])
def test_closed_form_and_autodiff_models_agree_with_the_dense_density(small_problem, hierarchical):
    point = None
    results = {}
    for likelihood in ("closed_form", "autodiff"):
        model = model_for(small_problem, hierarchical=hierarchical, likelihood=likelihood)
        point = point or {k: v + 0.1 for k, v in model.initial_point().items()}
        if not hierarchical:
            point["log_hp"] = np.log(DIFFERENT)
        fn = model.compile_fn([model.logp(vars=[model["marginal_likelihood"]]), model.logp(), model.dlogp()],
                              point_fn=True, mode=DEFAULT_MODE)
        results[likelihood] = fn(point)
    if not hierarchical:
        reference = JointGP(small_problem, tuple(np.exp(point["log_mu0_hp"])), DIFFERENT, m0=0.4)
        np.testing.assert_allclose(results["closed_form"][0], reference.log_likelihood(), rtol=1e-9)
    for a, b in zip(results["closed_form"], results["autodiff"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-8)
    assert model.named_vars_to_dims["inputs"] == ("individual", "slot", "input_dim")
    assert model.named_vars_to_dims["grid"] == ("grid_point", "input_dim")


def test_hierarchical_needs_different_hp(small_problem):
    with pytest.raises(ValueError, match="different HP"):
        model_for(small_problem, hierarchical=True, common_hp=True)


def test_organised_posterior_holds_one_scale():
    rng = np.random.default_rng(0)
    sizes = {"chain": 2, "draw": 5, "individual": 3, "hp": 2, "mean_hp": 2}
    post = xr.Dataset(
        {"log_mu0_hp": (("chain", "draw", "mean_hp"), rng.normal(size=(2, 5, 2))),
         "mu0_variance": (("chain", "draw"), rng.uniform(size=(2, 5))),
         POPULATION_MEAN: (("chain", "draw", "hp"), rng.normal(size=(2, 5, 2))),
         POPULATION_SCALE: (("chain", "draw", "hp"), rng.uniform(size=(2, 5, 2))),
         POPULATION_OFFSET: (("chain", "draw", "individual", "hp"), rng.normal(size=(2, 5, 3, 2))),
         "log_hp": (("chain", "draw", "individual", "hp"), rng.normal(size=(2, 5, 3, 2))),
         "noise": (("chain", "draw", "individual"), rng.uniform(size=(2, 5, 3)))},
        coords={k: np.arange(v) for k, v in sizes.items()},
    )
    tree = organise_posterior(xr.DataTree.from_dict({"posterior": post}))
    natural = tree["posterior"].to_dataset()
    assert set(natural.data_vars) == {"mu0_variance", "noise", POPULATION_MEDIAN, POPULATION_SPREAD}
    assert "mean_hp" not in natural.dims
    np.testing.assert_allclose(natural[POPULATION_MEDIAN].values, np.exp(post[POPULATION_MEAN].values))
    assert set(tree["unconstrained_posterior"].data_vars) == {"log_mu0_hp", "log_hp", POPULATION_MEAN,
                                                              POPULATION_SCALE, POPULATION_OFFSET}
    again = organise_posterior(tree)
    assert set(again["posterior"].data_vars) == set(natural.data_vars)
