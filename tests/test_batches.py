"""Size buckets (magma_pymc.batches) and the E-step on buckets (magma_pymc.estep_buckets), against the
padded E-step and M-step objectives of magma_pymc.compiled on the same ragged data."""

import numpy as np
import pytest

import magma_pymc as mp
from magma_pymc.batches import padded_batches, padded_cost, size_buckets
from magma_pymc.compiled import graphs_for
from magma_pymc.data import as_training_data
from magma_pymc.estep_buckets import (
    bucketed_estep,
    bucketed_precision,
    common_individual_objective,
    residual_batches,
    separable_individual_objectives,
)


def test_buckets_bound_the_padded_work_and_partition_the_individuals():
    rng = np.random.default_rng(0)
    sizes = np.concatenate([[2000], rng.integers(1, 80, 300), [3] * 10])
    buckets = size_buckets(sizes, slack=0.0)
    rows = np.sort(np.concatenate(buckets))
    assert np.array_equal(rows, np.arange(len(sizes)))  # every individual once
    for bucket in buckets:
        padded = len(bucket) * sizes[bucket].max() ** 3
        assert padded <= 1.25 * (sizes[bucket].astype(float) ** 3).sum() + 1e-9
    work, _ = padded_cost(sizes, buckets)
    assert work <= 1.25 * (sizes.astype(float) ** 3).sum()
    one_batch, _ = padded_cost(sizes)
    assert one_batch > 100 * work  # the single padded batch: 311 x 2000^3


def test_equal_sizes_form_one_bucket():
    assert [b.tolist() for b in size_buckets(np.full(7, 12))] == [list(range(7))]


def test_one_long_individual_and_ten_short_ones_are_split():
    buckets = size_buckets(np.array([2000] + [3] * 10))
    assert [len(b) for b in buckets] == [1, 10]


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="non-empty 1-D"):
        size_buckets(np.array([]))


@pytest.fixture(scope="module")
def ragged():
    rng = np.random.default_rng(1)
    grid = np.linspace(0, 10, 60)
    sizes = [40, 3, 3, 5, 20, 3, 2]
    data = {f"i{k}": (np.sort(rng.choice(grid, n, replace=False)), rng.normal(size=n)) for k, n in enumerate(sizes)}
    train = as_training_data(data)
    residuals = (train.outputs - 0.1) * train.mask
    batches = residual_batches(padded_batches(train, size_buckets(train.n_points, slack=0.0)), residuals)
    assert len(batches) == 4  # [40], [20], [5], [3, 3, 3, 2]
    return train, residuals, batches


@pytest.mark.parametrize("common_hp", [True, False], ids=["commonHP", "differentHP"])
def test_bucketed_estep_equals_the_padded_estep(ragged, common_hp):
    train, residuals, batches = ragged
    graphs = graphs_for(mp.SquaredExponential(), mp.SquaredExponential(), common_hp=common_hp, common_grid=False)
    rng = np.random.default_rng(2)
    mean_hp = np.log([1.0, 2.0])
    hp = np.log([1.0, 1.5, 0.1]) if common_hp else np.log(rng.uniform(0.5, 2.0, (train.n_individuals, 3)))
    padded = graphs.estep(mean_hp, hp, train.grid, train.inputs, residuals, train.mask, train.index, 1e-8)
    mean, cov, factor, log_likelihood, blocks = bucketed_estep(graphs, mean_hp, hp, train.grid, batches, 1e-8)
    np.testing.assert_allclose(mean, padded[0], atol=1e-12)
    np.testing.assert_allclose(cov, padded[1], atol=1e-12)
    np.testing.assert_allclose(factor.T @ factor, cov, atol=1e-12)
    assert log_likelihood == pytest.approx(float(padded[3]), rel=1e-12)
    for batch, (deviations, cov_blocks) in zip(batches, blocks, strict=True):
        n = batch.mask.shape[1]
        np.testing.assert_allclose(deviations, np.asarray(padded[4])[batch.rows, :n], atol=1e-12)
        np.testing.assert_allclose(cov_blocks, np.asarray(padded[5])[batch.rows][:, :n, :n], atol=1e-12)
    # M-step objectives: the same values and gradients as on the one padded batch
    if common_hp:
        value, grad = graphs.individual_step(hp, train.inputs, padded[4], padded[5], train.mask, 1e-8)
        got_value, got_grad = common_individual_objective(graphs, batches, blocks, 1e-8)(hp)
    else:
        rows = np.array([0, 2, 3, 6])
        value, grad = graphs.individual_steps(hp[rows], train.inputs[rows], np.asarray(padded[4])[rows],
                                              np.asarray(padded[5])[rows], train.mask[rows], 1e-8)
        got_value, got_grad = separable_individual_objectives(graphs, batches, blocks, 1e-8)(hp[rows], rows)
    np.testing.assert_allclose(got_value, value, rtol=1e-12)
    np.testing.assert_allclose(got_grad, grad, rtol=1e-10, atol=1e-12)
    summary = graphs.data_precision(hp, train.grid, train.inputs, residuals, train.mask, train.index, 1e-8)
    for got, want in zip(bucketed_precision(graphs, hp, train.grid, batches, 1e-8), summary, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
