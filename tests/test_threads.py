"""Concurrent fits and predictions in threads give exactly the sequential results (magma_pymc.threads).

Compiled functions are shared by every model of a structure; each thread calls its own copy. BLAS is
limited to one thread around the pool, in the main thread: OpenBLAS ignores a thread limit set from
another thread once the main thread has set one, and a 2-thread BLAS rounds differently (about 1e-13
relative), which is a property of the BLAS, not a race (see docs/user_guide.md, *Threads and processes*).
"""

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import magma_pymc as mp

N_TASKS = 100
INPUTS = np.linspace(0.0, 10.0, 7)


@pytest.fixture(scope="module")
def problems():
    sims = [mp.simulate(n_individuals=4, n_points=6, seed=seed, n_new=1) for seed in range(6)]
    return [(sim.data, mp.split_observed(sim.new, 3)[0]) for sim in sims]


def _fit_and_predict(problems, k):
    data, observed = problems[k % len(problems)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.MagmaWarning)
        model = mp.Magma(max_iter=3, common_hp=bool(k % 2)).fit(data)
    pred = model.predict(observed, INPUTS)
    return model.log_likelihood_, pred["mean"].values, pred["variance"].values, pred["lower"].values


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.slow
def test_concurrent_fits_and_predictions_equal_the_sequential_ones(problems):
    keys = 2 * len(problems)  # every data set with common and different HP
    reference = [_fit_and_predict(problems, k) for k in range(keys)]
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda k: _fit_and_predict(problems, k), range(N_TASKS)))
    mismatches = [k for k, got in enumerate(results) if not _same(got, reference[k % keys])]
    assert mismatches == []


@pytest.mark.slow
def test_concurrent_predictions_on_one_model_equal_the_sequential_ones(problems):
    data, observed = problems[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.MagmaWarning)
        model = mp.Magma(max_iter=3, common_hp=False).fit(data)
    new_points = [observed.iloc[: 1 + k] for k in range(3)]

    def predict(k):
        pred = model.predict(new_points[k % 3], INPUTS + 0.1 * (k % 2), full_cov=bool(k % 2))
        return pred["mean"].values, pred["variance"].values

    reference = [predict(k) for k in range(6)]
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(6) as pool:
        results = list(pool.map(predict, range(N_TASKS)))
    assert [k for k, got in enumerate(results) if not _same(got, reference[k % 6])] == []
