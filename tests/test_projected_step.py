"""The projected model's mean-process step (:mod:`magma_pymc.projected_step`) against a dense reference."""

import numpy as np
import pytest
from conftest import COMMON, DIFFERENT, HP0, hp_dict, make_long
from reference import ProjectedJointGP

import magma_pymc as mp
from magma_pymc.projected_step import distinct_inputs, projected_step_graphs

M0 = 0.7
INDUCING = np.array([0.0, 2.0, 4.5, 6.0, 8.0, 10.0])


def _setup(individuals, common_hp):
    ids = [f"i{k}" for k in range(len(individuals))]
    hps = COMMON if common_hp else DIFFERENT[: len(individuals)]
    model = mp.Magma(common_hp=common_hp, prior_mean=M0, inducing=INDUCING).fit(
        make_long(individuals, ids), method="fixed", hyperparameters=hp_dict(hps, ids)
    )
    problem, point = model._problem_, model.result_.point
    step = projected_step_graphs(problem.graphs)
    factors = step.factors(point.log_params, *problem.data_args, point.jitter)
    return problem, point, step, factors, [hps] * len(individuals) if common_hp else hps


@pytest.mark.parametrize("common_hp", [True, False], ids=["commonHP", "differentHP"])
def test_step_matches_the_dense_projected_likelihood_and_its_finite_differences(small_problem, common_hp):
    """-log p(y) of the dense projected joint GP, and its central differences in the mean-process log HP."""
    problem, point, step, factors, hps = _setup(small_problem, common_hp)
    grid, inputs, _, mask, _ = problem.data_args
    distinct, positions = distinct_inputs(inputs, mask)

    def reference(mean_log):
        return -ProjectedJointGP(small_problem, tuple(np.exp(mean_log)), hps, INDUCING, m0=M0).log_likelihood()

    for mean_log in (np.log(HP0), np.log([0.7, 3.5])):
        value, grad = step.step(mean_log, grid, distinct, positions, mask, *factors, point.jitter)
        np.testing.assert_allclose(value, reference(mean_log), rtol=1e-8)
        h = 1e-5
        central = [(reference(mean_log + h * e) - reference(mean_log - h * e)) / (2 * h) for e in np.eye(2)]
        np.testing.assert_allclose(grad, central, rtol=1e-5, atol=1e-7)
        # The autodiff of the whole E-step, as the step was computed before its factors were kept.
        old_value, old_grad = problem.graphs.mean_process_marginal_step(
            mean_log, point.log_params, *problem.data_args, point.jitter
        )
        np.testing.assert_allclose(value, old_value, rtol=1e-12)
        np.testing.assert_allclose(grad, old_grad, rtol=1e-8, atol=1e-10)


def test_partitioned_sums_loss_and_vjp_give_the_step(small_problem):
    """Sums over two sets of individuals, the client's loss and grid path, then each set's share of the
    gradient: the fused step's value and gradient (as a cluster computes them)."""
    problem, point, step, factors, _ = _setup(small_problem, True)
    grid, inputs, residuals, mask, index = problem.data_args
    mean_log, jitter = np.log([2.0, 1.3]), point.jitter
    parts = []
    for rows in (slice(0, 2), slice(2, None)):
        part_factors = step.factors(point.log_params, grid, inputs[rows], residuals[rows], mask[rows], index[rows],
                                    jitter)
        parts.append((*distinct_inputs(inputs[rows], mask[rows]), mask[rows], part_factors))
    sums = [step.sums(mean_log, grid, d, p, m, *f, jitter) for d, p, m, f in parts]
    terms = [a + b for a, b in zip(*sums, strict=True)]
    value, gram_bar, shift_bar, grid_path = step.loss(mean_log, grid, *terms, jitter)
    grad = grid_path + sum(step.vjp(mean_log, grid, d, p, m, *f, jitter, gram_bar, shift_bar)[0]
                           for d, p, m, f in parts)
    distinct, positions = distinct_inputs(inputs, mask)
    fused_value, fused_grad = step.step(mean_log, grid, distinct, positions, mask, *factors, jitter)
    np.testing.assert_allclose(value, fused_value, rtol=1e-12)
    np.testing.assert_allclose(grad, fused_grad, rtol=1e-7)


def test_distinct_inputs_rebuild_every_observed_input():
    inputs = np.array([[[1.0], [2.0], [0.0]], [[2.0], [3.0], [5.0]]])
    mask = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    distinct, positions = distinct_inputs(inputs, mask)
    np.testing.assert_array_equal(distinct[:, 0], [1.0, 2.0, 3.0, 5.0])
    np.testing.assert_array_equal(distinct[positions][mask > 0], inputs[mask > 0])
    assert positions[0, 2] == 0
