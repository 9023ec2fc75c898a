"""The weak prior on the mean-process HP: its density, and what it does at a boundary estimate."""

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import magma_pymc as mp
from magma_pymc.priors import normal_log_prior


def test_normal_log_prior_matches_scipy():
    centre = np.array([0.3, -1.2])
    value, grad = normal_log_prior(centre, 2.0)(np.array([1.0, 0.5]))
    assert value == pytest.approx(stats.norm.logpdf([1.0, 0.5], centre, 2.0).sum(), rel=1e-12)
    np.testing.assert_allclose(grad, -(np.array([1.0, 0.5]) - centre) / 4.0)
    with pytest.raises(ValueError, match="standard deviation"):
        normal_log_prior(centre, 0.0)


def flat_mean_data(seed=0, n_individuals=20):
    """Curves sharing nothing but a constant: maximum likelihood sends the mean-process variance to 0."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n_individuals):
        t = np.sort(rng.uniform(0, 10, 25))
        cov = 4.0 * np.exp(-0.5 * (t[:, None] - t[None, :]) ** 2 / 2.0**2) + 0.3 * np.eye(25)
        outputs = 5.0 + np.linalg.cholesky(cov) @ rng.standard_normal(25)
        frames.append(pd.DataFrame({"ID": f"i{i:02d}", "Input": t, "Output": outputs}))
    return pd.concat(frames, ignore_index=True)


def test_boundary_estimate_is_flagged_and_the_weak_prior_avoids_it():
    data = flat_mean_data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ml = mp.Magma(mean_process_prior=None, restarts=0).fit(data)  # one start: restarts may leave the bound
    assert ml.hp_at_bounds_ and not ml.converged_
    assert any(issubclass(w.category, mp.ConvergenceWarning) and "bounds" in str(w.message) for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("error", mp.MagmaWarning)
        weak = mp.Magma().fit(data)
    assert weak.converged_ and weak.hp_at_bounds_ == []
    band = weak.hyperposterior(np.linspace(0, 10, 21))
    assert float(np.sqrt(band["variance"]).min()) > 0.05  # a visible band
    # The prior costs little likelihood: well under one nat per individual.
    assert ml.log_likelihood_ - weak.log_likelihood_ < 0.5 * 20
