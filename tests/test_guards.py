"""Guards before costly or ill-posed fits (magma_pymc.guards): the cost estimate and its warning,
inducing points against the data."""

import warnings

import numpy as np
import pytest

import magma_pymc as mp
from magma_pymc.guards import (
    BYTES_PER_SQUARE,
    SECONDS_PER_CUBE,
    WARN_SECONDS,
    check_inducing_points,
    iteration_cost,
    warn_if_costly,
)


def test_cost_model_is_cubic_in_the_grid_and_the_blocks():
    seconds, size = iteration_cost(1000, [(10, 30)])
    assert seconds == pytest.approx(SECONDS_PER_CUBE * (1000**3 + 10 * 30**3))
    assert size == pytest.approx(BYTES_PER_SQUARE * (1000**2 + 10 * 30**2))


def test_a_large_exact_grid_warns_with_the_way_out():
    n = int(np.ceil((WARN_SECONDS / SECONDS_PER_CUBE) ** (1 / 3))) + 1
    with pytest.warns(mp.PerformanceWarning, match=rf"exact union grid of {n} distinct inputs.*Magma\(inducing=G\)"):
        warn_if_costly(n, [(n // 20, 20)], projected=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_costly(n // 2, [(n // 40, 20)], projected=False)  # 8x cheaper: silent


def test_fit_warns_before_an_exact_iteration_of_minutes(monkeypatch):
    """The warning comes from fit itself, before EM runs (the threshold lowered to fit a test's budget)."""
    monkeypatch.setattr("magma_pymc.guards.WARN_SECONDS", 1e-6)
    sim = mp.simulate(n_individuals=3, n_points=5, seed=0, common_grid=False)
    with pytest.warns(mp.PerformanceWarning, match=r"inducing=G"), warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.ConvergenceWarning)
        mp.Magma(max_iter=1).fit(sim.data)


def test_more_inducing_points_than_distinct_inputs_are_refused():
    grid = np.linspace(0, 1, 39)[:, None]
    with pytest.raises(ValueError,
                       match=r"inducing=5000 but the training data have only 39 distinct input\(s\): the exact model"):
        check_inducing_points(5000, grid)
    with pytest.raises(ValueError, match=r"40 inducing points but the training data have only 39"):
        check_inducing_points(np.linspace(0, 1, 40)[:, None], grid)
    rng = np.random.default_rng(0)
    data = {f"i{k}": (np.sort(rng.choice(np.linspace(0, 10, 39), 6, replace=False)), rng.normal(size=6))
            for k in range(8)}
    n_inputs = len(np.unique(np.concatenate([t for t, _ in data.values()])))
    with pytest.raises(ValueError, match=rf"inducing=5000 but the training data have only {n_inputs} distinct"):
        mp.Magma(inducing=5000).fit(data)


def test_inducing_points_away_from_the_data_warn():
    grid = np.linspace(0, 10, 30)[:, None]
    with pytest.warns(mp.MagmaWarning,
                      match=r"30 of the 30 distinct training inputs lie outside the inducing points' range"):
        check_inducing_points(np.linspace(100, 200, 5)[:, None], grid)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_inducing_points(np.linspace(0, 10, 5)[:, None], grid)  # covering the data: silent
