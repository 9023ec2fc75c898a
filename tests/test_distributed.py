"""Distributed EM on a real Dask LocalCluster: same fit and predictions as in process, faults, bad data."""

from __future__ import annotations

import contextlib
import os
import signal

import numpy as np
import pandas as pd
import pytest

import magma_pymc as mp
import magma_pymc.population as population
import magma_pymc.predictive as predictive
from magma_pymc.population import population_prior

distributed = pytest.importorskip("dask.distributed", reason="the optional extra magma-pymc[dask] is not installed")
dd = pytest.importorskip("dask.dataframe")

from magma_pymc.distributed import DistributedMagma, predict_partitions  # noqa: E402

#: Agreement required with the in-process fit (sums over individuals taken in another order).
RTOL = 1e-8
PRED_INPUTS = np.linspace(-1.0, 11.0, 9)
#: Agreement of the marginal-likelihood population (m, S) with the in-process estimate at the same HP. Both paths run
#: magma_pymc.population.population_estimate on inputs equal up to rounding: Laplace covariances from central
#: differences of gradients (7e-11 relative apart), which the random-effects L-BFGS-B (default tolerances) turns into
#: EM starts 1e-6 apart, and leave-one-out terms 1e-15 apart. The Monte Carlo EM is not a smooth function of them
#: (its stopping rules, the Newton step choices, then six rounds of proposals refitted to the previous round): a start
#: moved by 1e-12 relative moves its (m, S) by up to 4e-6 (7 individuals). Measured here: 1.4e-5 (m), 6.5e-5 (S);
#: another seed of the same estimate is 0.27 and 0.48 away.
POPULATION_RTOL = 1e-3
#: Agreement of the random-effects estimate: L-BFGS-B's default tolerances on inputs equal up to rounding (measured
#: 3e-7 (m) and 1.1e-6 (S) with 12 individuals, 1.3e-5 and 2.8e-5 with 8).
RANDOM_EFFECTS_RTOL = 2e-4
#: EM iterations of the compared fits (equal fits whatever the number; few keep the tests fast).
MAX_ITER = 3


@pytest.fixture(scope="module")
def client():
    """Two single-thread workers in this process (started here, closed after the module)."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
    ) as cluster, distributed.Client(cluster) as c:
        yield c


def _data(common_hp: bool, seed: int = 3) -> pd.DataFrame:
    return mp.simulate(n_individuals=12, n_points=8, seed=seed, common_hp=common_hp, scheme="smooth").data


def _assert_same_fit(reference: mp.Magma, fitted: DistributedMagma) -> None:
    np.testing.assert_allclose(
        fitted.hyperparameters_.mean_process.to_numpy(), reference.hyperparameters_.mean_process.to_numpy(), rtol=RTOL
    )
    ref_ind, ind = reference.hyperparameters_.individual, fitted.hyperparameters_.individual
    assert list(ind.index) == list(ref_ind.index)
    # atol: a noise variance driven to ~1e-6 (outputs of variance ~10) lies on a flat direction of the
    # likelihood, where the two code paths' rounding (batched NumPy vs the compiled small-block kernel)
    # moves it by ~1e-13 in absolute terms, 5e-8 relative.
    np.testing.assert_allclose(ind.to_numpy(), ref_ind.to_numpy(), rtol=RTOL, atol=1e-12)
    assert fitted.n_iter_ == reference.n_iter_
    np.testing.assert_allclose(fitted.log_likelihood_, reference.log_likelihood_, rtol=RTOL)
    np.testing.assert_allclose(
        fitted.idata_["em_trace"]["log_likelihood"].values, reference.idata_["em_trace"]["log_likelihood"].values,
        rtol=RTOL,
    )
    ref_mu0, mu0 = reference.hyperposterior(PRED_INPUTS), fitted.hyperposterior(PRED_INPUTS)
    np.testing.assert_allclose(mu0["mean"], ref_mu0["mean"], rtol=RTOL)
    np.testing.assert_allclose(mu0["cov"], ref_mu0["cov"], rtol=RTOL, atol=RTOL * float(ref_mu0["variance"].max()))


def _assert_same_prediction(reference: mp.Magma, fitted: DistributedMagma, observed, rtol: float = RTOL) -> None:
    ref, pred = reference.predict(observed, PRED_INPUTS), fitted.predict(observed, PRED_INPUTS)
    for name in ("mean", "variance", "latent_variance", "lower", "upper"):
        np.testing.assert_allclose(pred[name], ref[name], rtol=rtol, err_msg=name)
    assert pred.attrs.keys() == ref.attrs.keys()
    for key, value in ref.attrs.items():
        if isinstance(value, float):
            np.testing.assert_allclose(pred.attrs[key], value, rtol=rtol, err_msg=key)
        else:
            assert pred.attrs[key] == value, key


@pytest.fixture(scope="module")
def fits(client):
    """In-process and distributed fits of one data set per setting, shared by the tests (computed once)."""
    cache = {}

    def get(common_hp: bool, inducing: int | None = None):
        key = (common_hp, inducing)
        if key not in cache:
            data = _data(common_hp)
            reference = mp.Magma(common_hp=common_hp, inducing=inducing, max_iter=MAX_ITER,
                                 mean_process_prior=None).fit(data)
            if inducing is None:
                fitted = DistributedMagma(common_hp=common_hp, max_iter=MAX_ITER).fit(
                    data, client=client, n_partitions=3
                )
            else:  # a dask DataFrame partitioned by individual
                frame = dd.from_pandas(data.set_index("ID"), npartitions=3, sort=True).reset_index()
                fitted = DistributedMagma(common_hp=common_hp, inducing=inducing, max_iter=MAX_ITER).fit(
                    frame, client=client
                )
            cache[key] = data, reference, fitted
        return cache[key]

    return get


@pytest.mark.filterwarnings("ignore::magma_pymc.ConvergenceWarning")
@pytest.mark.parametrize("common_hp", [True, False], ids=["common-hp", "different-hp"])
def test_exact_fit_and_prediction_match_in_process(fits, common_hp):
    _, reference, fitted = fits(common_hp)
    _assert_same_fit(reference, fitted)
    new = _data(common_hp, seed=11)
    observed = new[new.ID.iloc[0] == new.ID].iloc[:4]
    if common_hp:
        _assert_same_prediction(reference, fitted, observed)
    else:
        # Both fits' population of the individual HP is the marginal-likelihood estimate, equal up to
        # POPULATION_RTOL (see there; measured 2.5e-5 (m), 1.2e-4 (S) between these two fits). Type II draws the
        # new individual's HP from it (measured 1.4e-4 relative on one interval bound); Type I integrates its
        # HP posterior under it (L-BFGS-B, ftol 1e-8, then importance draws; measured 5.8e-5).
        _assert_same_prediction(reference, fitted, None, rtol=POPULATION_RTOL)
        _assert_same_prediction(reference, fitted, observed, rtol=POPULATION_RTOL)
    assert fitted.communication_.round_trips[1] >= 3  # E-step, individual and mean-process M-steps


def _relative_gap(population: tuple, prior) -> tuple[float, float]:
    """Largest entry-wise gaps of ``(mean, cov)`` to ``prior``'s, relative to its largest entries."""
    mean, cov = population
    return (float(np.abs(mean - prior.mean).max() / np.abs(prior.mean).max()),
            float(np.abs(cov - prior.cov).max() / np.abs(prior.cov).max()))


@pytest.mark.filterwarnings("ignore::magma_pymc.ConvergenceWarning")
def test_population_is_the_in_process_marginal_estimate(fits):
    """Different HP: the distributed fit's population is the in-process marginal-likelihood estimate at its HP."""
    _, reference, fitted = fits(False)
    assert len(fitted.ids_) >= population.MIN_INDIVIDUALS
    problem, state = reference.result_.problem, fitted.predictor.state
    expected = population_prior(problem, state, method="marginal")
    assert max(_relative_gap(fitted.predictor.population, expected)) < POPULATION_RTOL
    # The tolerance separates this estimate from another of its Monte Carlo draws, and from random effects.
    for other in (population_prior(problem, state, seed=1), population_prior(problem, state, method="random_effects")):
        assert max(_relative_gap(fitted.predictor.population, other)) > 20 * POPULATION_RTOL


@pytest.mark.filterwarnings("ignore::magma_pymc.ConvergenceWarning")
def test_population_samples_the_in_process_subset_across_partitions(client, monkeypatch):
    """More individuals than the marginal estimate takes: the partitions send the in-process subset's terms."""
    import magma_pymc.distributed.population as distributed_population
    from magma_pymc.em import estep
    from magma_pymc.population_em import individual_terms

    monkeypatch.setattr(population, "MAX_INDIVIDUALS", 7)
    sent = []
    original = distributed_population.sampled_terms

    def recorded(problem, blocks, log_params, jitter, rows):
        sent.append((np.array(rows), problem.row_offsets, original(problem, blocks, log_params, jitter, rows)))
        return sent[-1][2]

    monkeypatch.setattr(distributed_population, "sampled_terms", recorded)
    data = _data(False)
    fitted = DistributedMagma(common_hp=False, max_iter=MAX_ITER).fit(data, client=client, n_partitions=4)
    (rows, offsets, terms), = sent
    np.testing.assert_array_equal(rows, population.sampled_rows(len(fitted.ids_)))
    assert len(rows) == 7 and len(np.unique(np.searchsorted(offsets, rows, side="right"))) >= 3  # across partitions
    problem = mp.Magma(common_hp=False, max_iter=0, mean_process_prior=None).fit(data).result_.problem
    state = fitted.predictor.state
    expected = individual_terms(problem, estep(state, problem), rows)
    for term, reference in zip(terms, expected, strict=True):
        np.testing.assert_array_equal(term.inputs, reference.inputs)
        np.testing.assert_allclose(term.residuals, reference.residuals, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(term.cov, reference.cov, rtol=1e-10, atol=1e-12)
    # the end result, at the tolerance of Monte Carlo EM on fewer individuals (measured 3e-3 (m), 1.3e-2 (S) apart)
    gaps = _relative_gap(fitted.predictor.population, population_prior(problem, state))
    assert max(gaps) < 50 * POPULATION_RTOL


@pytest.mark.filterwarnings("ignore::magma_pymc.ConvergenceWarning")
@pytest.mark.parametrize(("n_individuals", "estimate"), [(12, "random_effects"), (8, "marginal")],
                         ids=["asked", "below-the-floor"])
def test_population_is_random_effects_when_asked_or_below_the_floor(client, monkeypatch, n_individuals, estimate):
    monkeypatch.setattr(predictive, "POPULATION_ESTIMATE", estimate)
    assert (n_individuals < population.MIN_INDIVIDUALS) == (estimate == "marginal")
    data = mp.simulate(n_individuals=n_individuals, n_points=8, seed=3, common_hp=False, scheme="smooth").data
    fitted = DistributedMagma(common_hp=False, max_iter=MAX_ITER).fit(data, client=client, n_partitions=3)
    problem = mp.Magma(common_hp=False, max_iter=0, mean_process_prior=None).fit(data).result_.problem
    state = fitted.predictor.state
    expected = population_prior(problem, state, method="random_effects")
    assert max(_relative_gap(fitted.predictor.population, expected)) < RANDOM_EFFECTS_RTOL
    # far from the fitted HP taken as exact (what the estimation covariances remove)
    empirical = population.PopulationPrior.from_training(state.log_params)
    assert max(_relative_gap(fitted.predictor.population, empirical)) > 20 * RANDOM_EFFECTS_RTOL


def test_likelihood_points_cut_the_padding_and_skip_long_individuals():
    """The pieces a partition sends for the marginal estimate: real slots only; none beyond LAPLACE_POINTS points."""
    from magma_pymc.distributed import partition as tasks
    from magma_pymc.population_em import LAPLACE_POINTS

    rng = np.random.default_rng(0)
    slots = LAPLACE_POINTS + 2
    sizes = (5, LAPLACE_POINTS, LAPLACE_POINTS + 1)
    mask = np.arange(slots)[None] < np.array(sizes)[:, None]
    inputs = rng.normal(size=(3, slots, 1))
    blocks = tasks.EStepBlocks(rng.normal(size=(3, slots)), rng.normal(size=(3, slots, slots)))
    part = tasks.Partition(np.array(["a", "b", "c"], dtype=object), (None, inputs, None, mask, None))
    points = tasks.likelihood_points(part, blocks, np.array([2, 0, 1]))
    assert points[0] is None
    for point, row in zip(points[1:], (0, 1), strict=True):
        n = sizes[row]
        np.testing.assert_array_equal(point[0], inputs[row, :n])
        np.testing.assert_array_equal(point[1], blocks.deviations[row, :n])
        np.testing.assert_array_equal(point[2], blocks.cov_blocks[row, :n, :n])


@pytest.mark.filterwarnings("ignore::magma_pymc.ConvergenceWarning")
def test_projected_fit_from_dask_frame_matches_in_process(fits):
    """Inducing points, common HP, data given as a dask DataFrame partitioned by individual."""
    data, reference, fitted = fits(True, 6)
    _assert_same_fit(reference, fitted)
    _assert_same_prediction(reference, fitted, data[data.ID == "i03"].iloc[::2])
    # The partitions' E-step terms live on the G inducing points: G^2 + G + 3 numbers from each of
    # the 3 partitions (and nothing of the size of the data).
    assert fitted.communication_.received[0] == pytest.approx(3 * (6 * 6 + 6 + 3) * 8, rel=0.05)


@pytest.mark.filterwarnings("ignore::magma_pymc.ConvergenceWarning")
def test_predict_partitions_equals_one_by_one(client, fits):
    _, _, fitted = fits(True)
    new = _data(True, seed=5).groupby("ID").head(3)
    new = new[new.ID.isin(pd.unique(new.ID)[:4])]
    table = predict_partitions(fitted, new, PRED_INPUTS, client=client, n_partitions=3)
    lazy = predict_partitions(fitted, dd.from_pandas(new.set_index("ID"), npartitions=2).reset_index(), PRED_INPUTS)
    from_dask = lazy.compute()
    assert list(pd.unique(table.ID)) == list(pd.unique(new.ID))
    for ident, rows in table.groupby("ID", sort=False):
        one = fitted.predict(new[ident == new.ID], PRED_INPUTS)
        np.testing.assert_allclose(rows["Input"], PRED_INPUTS)
        for name in ("mean", "variance", "latent_lower", "upper"):
            np.testing.assert_allclose(rows[name], one[name], rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(from_dask[ident == from_dask.ID]["mean"], one["mean"], rtol=1e-12)


@pytest.mark.filterwarnings("ignore::magma_pymc.ConvergenceWarning")
@pytest.mark.parametrize(("common_hp", "inducing"), [(True, 6), (False, None)], ids=["inducing", "exact-different-hp"])
def test_saved_fit_loads_and_predicts_as_the_fit_and_in_process(client, fits, tmp_path, common_hp, inducing):
    """save/load of a distributed fit (no training data in the file): the loaded model has the fit's HP, trace and
    hyper-posterior and predicts as the saved one (exactly) and as the in-process fit."""
    data, reference, fitted = fits(common_hp, inducing)
    path = tmp_path / "distributed.nc"
    fitted.save(path)
    loaded = DistributedMagma.load(path)
    for block in ("mean_process", "individual"):
        np.testing.assert_array_equal(getattr(loaded.hyperparameters_, block), getattr(fitted.hyperparameters_, block))
    assert (loaded.n_iter_, loaded.converged_, loaded.log_likelihood_) == (
        fitted.n_iter_, fitted.converged_, fitted.log_likelihood_)
    assert list(loaded.ids_) == list(fitted.ids_)
    trace = "em_trace"
    np.testing.assert_array_equal(loaded.idata_[trace]["log_likelihood"], fitted.idata_[trace]["log_likelihood"])
    observed = data[data.ID.iloc[0] == data.ID].iloc[::2]
    saved_pred, loaded_pred = fitted.predict(observed, PRED_INPUTS), loaded.predict(observed, PRED_INPUTS)
    for name in ("mean", "variance", "latent_variance", "lower", "upper"):
        np.testing.assert_allclose(loaded_pred[name], saved_pred[name], rtol=1e-12, err_msg=name)
    np.testing.assert_allclose(loaded.hyperposterior(PRED_INPUTS)["cov"], fitted.hyperposterior(PRED_INPUTS)["cov"],
                               rtol=1e-12)
    # Different HP, Type I: the training population (see test_exact_fit_and_prediction_match_in_process).
    _assert_same_prediction(reference, loaded, observed, rtol=RTOL if common_hp else POPULATION_RTOL)
    table = predict_partitions(loaded, observed, PRED_INPUTS, client=client, n_partitions=1)
    np.testing.assert_allclose(table["mean"], loaded_pred["mean"], rtol=1e-12)
    with pytest.raises(mp.ModelFileError, match="observed_data"):
        mp.Magma.load(path)  # the in-process loader needs the training data


def test_bad_partition_raises_the_in_process_error(client):
    data = _data(True)
    data.loc[data.index[data.ID == "i07"][2], "Output"] = np.nan
    with pytest.raises(mp.MagmaInputError) as in_process:
        mp.Magma().fit(data)
    with pytest.raises(mp.MagmaInputError) as on_cluster:
        DistributedMagma().fit(data, client=client, n_partitions=3)
    assert str(on_cluster.value) == str(in_process.value)
    assert "'i07'" in str(on_cluster.value)


def test_individual_split_between_partitions_is_an_error(client):
    data = _data(True)
    frame = dd.from_pandas(data, npartitions=5, sort=False)  # row chunks: some individuals straddle two
    with pytest.raises(mp.MagmaInputError, match="appear in several partitions"):
        DistributedMagma().fit(frame, client=client)


@contextlib.contextmanager
def _two_worker_processes():
    """A client of a LocalCluster of two single-threaded worker processes (one can be killed)."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster, distributed.Client(cluster) as client:
        yield client


@pytest.mark.slow  # two worker processes start, compile the graphs, and one restarts after the kill
@pytest.mark.filterwarnings("ignore::magma_pymc.ConvergenceWarning")
def test_fit_survives_a_killed_worker():
    """A worker process killed (SIGKILL) after the first iteration: Dask recomputes its partitions
    from their lineage on the other worker, and the fit ends as an undisturbed one."""
    data = _data(True)
    options = dict(max_iter=MAX_ITER)
    with _two_worker_processes() as c:
        undisturbed = DistributedMagma(**options).fit(data, client=c, n_partitions=4)
        pids = c.run(os.getpid)
        killed = []

        def kill_one_worker(iteration, state, log_likelihood):
            if iteration == 1:
                address, pid = sorted(pids.items())[0]
                os.kill(pid, signal.SIGKILL)
                killed.append(address)

        fitted = DistributedMagma(**options).fit(data, client=c, n_partitions=4, callback=kill_one_worker)
        assert killed
    _assert_same_fit(undisturbed, fitted)


def test_projected_gradient_shares_equal_the_fused_step():
    """Partitions' sums, the client's loss and the partitions' gradient shares from their kept whitened loadings
    add up to the in-process fused step (value and gradient), whatever the split of the individuals."""
    from magma_pymc.data import as_training_data
    from magma_pymc.distributed import partition as tasks
    from magma_pymc.distributed.graphs import Structure, worker_graphs
    from magma_pymc.projected_step import projected_step_graphs

    data = _data(True)
    model = mp.Magma(common_hp=True, inducing=6)
    structure = Structure(model.mean_kernel, model.kernel, True, True, token="test-projected-shares")
    core, _ = worker_graphs(structure)
    step = projected_step_graphs(core)
    grid = np.linspace(-1.0, 11.0, 6)[:, None]
    hp, mean_hp, jitter = np.array([0.3, -0.2, -1.0]), np.array([0.4, 0.1]), 1e-8

    def prepared(frame):
        return tasks.prepare(as_training_data(frame), grid, lambda x: np.zeros(len(x)), True)

    whole = prepared(data)
    factors = tasks.projected_factors(whole, structure, hp, jitter)
    value, grad = step.step(mean_hp, grid, factors[0], factors[1], whole.arrays[3], *factors[2:], jitter)
    ids = pd.unique(data.ID)
    parts = [prepared(data[data.ID.isin(ids[rows])]) for rows in (slice(0, 5), slice(5, 6), slice(6, None))]
    part_factors = [tasks.projected_factors(part, structure, hp, jitter) for part in parts]
    kept = [tasks.projected_sums(part, structure, mean_hp, jitter, f)
            for part, f in zip(parts, part_factors, strict=True)]
    terms = [sum(k.terms[j] for k in kept) for j in range(5)]
    shared_value, gram_bar, shift_bar, grid_path = step.loss(mean_hp, grid, *terms, jitter)
    bars = (np.asarray(gram_bar), np.asarray(shift_bar))
    shares = [tasks.projected_vjp(part, structure, mean_hp, jitter, f, k, bars)
              for part, f, k in zip(parts, part_factors, kept, strict=True)]
    np.testing.assert_allclose(shared_value, value, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(grid_path) + sum(shares), grad, rtol=1e-10)
    # and the gradient is the loss's: central differences of the fused step's value
    step_size = 1e-5
    differences = [
        (step.step(mean_hp + step_size * e, grid, factors[0], factors[1], whole.arrays[3], *factors[2:], jitter)[0]
         - step.step(mean_hp - step_size * e, grid, factors[0], factors[1], whole.arrays[3], *factors[2:], jitter)[0])
        / (2 * step_size) for e in np.eye(len(mean_hp))
    ]
    np.testing.assert_allclose(np.asarray(grid_path) + sum(shares), differences, rtol=1e-6)


@pytest.mark.slow  # two worker processes start, compile the graphs, and one restarts after the kill
@pytest.mark.filterwarnings("ignore::magma_pymc.ConvergenceWarning")
def test_projected_fit_survives_a_worker_killed_between_sums_and_gradient(monkeypatch):
    """Inducing points: a worker killed while it holds an evaluation's kept whitened loadings (after the partitions'
    sums, before their gradient shares). Dask recomputes them from their lineage and the fit ends as an undisturbed
    one."""
    from magma_pymc.distributed import em

    data = _data(True)
    options = dict(max_iter=2, inducing=6)
    with _two_worker_processes() as c:
        undisturbed = DistributedMagma(**options).fit(data, client=c, n_partitions=4)
        pids = c.run(os.getpid)
        killed = []
        original = em.projected_step_graphs

        class KillingLoss:  # the client's loss runs between the two round trips of an evaluation
            def __init__(self, step):
                self.step = step

            def loss(self, *args):
                if not killed:
                    address, pid = sorted(pids.items())[0]
                    os.kill(pid, signal.SIGKILL)
                    killed.append(address)
                return self.step.loss(*args)

        monkeypatch.setattr(em, "projected_step_graphs", lambda core: KillingLoss(original(core)))
        fitted = DistributedMagma(**options).fit(data, client=c, n_partitions=4)
        assert killed
    _assert_same_fit(undisturbed, fitted)
