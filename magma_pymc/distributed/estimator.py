"""``DistributedMagma``: a :class:`~magma_pymc.Magma` fitted on a Dask cluster, without gathering the data.

>>> from dask.distributed import Client
>>> import magma_pymc as mp
>>> from magma_pymc.distributed import DistributedMagma
>>> client = Client("tcp://scheduler:8786")                                  # doctest: +SKIP
>>> model = DistributedMagma(common_hp=True, inducing=100).fit(ddf, client=client)  # doctest: +SKIP
>>> model.predict(new_points, inputs)      # as an in-process fit               # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import xarray as xr

import magma_pymc.predictive as predictive
from magma_pymc.data import MagmaInputError
from magma_pymc.distributed import partition as tasks
from magma_pymc.distributed.em import PartitionedProblem, run_distributed_em
from magma_pymc.distributed.frames import check_whole_individuals, validated_partitions
from magma_pymc.distributed.graphs import WORKER_LOCK, Structure, structure_token
from magma_pymc.distributed.population import distributed_population
from magma_pymc.distributed.predictor import Predictor
from magma_pymc.distributed.summary import PartitionedData, SummaryArrays
from magma_pymc.em import EMState
from magma_pymc.estimator import Magma
from magma_pymc.kernels import Kernel
from magma_pymc.params import NOISE, HyperParameters
from magma_pymc.population import POPULATION_METHODS
from magma_pymc.results import hp_dataset, input_coords
from magma_pymc.settings import Constant, resolve_prior_mean, warn_far_inputs, warn_hp_at_bounds

__all__ = ["DistributedMagma"]


class DistributedMagma(Magma):
    r"""MAGMA fitted by EM over partitions of the individuals on a Dask cluster.

    Configuration as :class:`~magma_pymc.Magma` (``common_hp``, kernels, ``prior_mean``,
    ``inducing``, ...); :meth:`fit` takes a long ``dask.dataframe`` (each partition holding whole
    individuals) or a pandas frame, and a ``dask.distributed.Client``. The fit runs the iterations of
    :func:`magma_pymc.em.run_em` (:mod:`magma_pymc.distributed.em`) and gives the same
    hyper-parameters, hyper-posterior and predictions as ``Magma.fit`` on the same data, up to the
    rounding of sums taken in another order. The individuals' data stay on the workers; the client
    keeps the hyper-parameters and the hyper-posterior of :math:`\mu_0` on the grid, which is all
    that prediction needs.

    Besides :class:`~magma_pymc.Magma`'s ``hyperparameters_``, ``idata_`` (without the
    ``observed_data`` group), ``log_likelihood_``, ``converged_``, ``n_iter_`` and ``fit_seconds_``:

    Attributes
    ----------
    ids_ : np.ndarray
        Individual IDs, in the order of the partitions.
    communication_ : magma_pymc.distributed.em.Communication
        Bytes sent to and received from the partitions, per EM iteration.
    iteration_seconds_ : list of float
        Wall time of each EM iteration.
    """

    def __init__(self, *args: Any, mean_process_prior: None = None, **kwargs: Any) -> None:
        # The distributed EM maximises the likelihood: the in-process default weak prior on the
        # mean-process HP (magma_pymc.priors) is not summed over partitions, so it is off here.
        if mean_process_prior is not None:
            raise ValueError("DistributedMagma fits by maximum likelihood: mean_process_prior must be None, got "
                             f"{mean_process_prior!r}")
        super().__init__(*args, mean_process_prior=None, **kwargs)

    def fit(  # type: ignore[override]
        self,
        data: Any,
        *,
        client: Any,
        method: Literal["em", "fixed"] = "em",
        hyperparameters: HyperParameters | dict | None = None,
        n_partitions: int | None = None,
        callback: Callable[[int, EMState, float], None] | None = None,
        **data_options: Any,
    ) -> DistributedMagma:
        """Fit on the cluster of ``client`` (a ``dask.distributed.Client``, local or remote).

        ``data``: a long ``dask.dataframe`` (used as partitioned) or a pandas DataFrame (split into
        ``n_partitions`` partitions of whole individuals, default two per worker thread).
        ``method``, ``hyperparameters`` and ``data_options`` as in :meth:`magma_pymc.Magma.fit`
        (``method="nuts"`` and MAP priors are in-process only). ``callback(iteration, state,
        log_likelihood)`` is called after each EM iteration.
        """
        start = time.perf_counter()
        if method not in ("em", "fixed"):
            raise ValueError(f"a distributed fit runs method 'em' or 'fixed', got {method!r}")
        if method == "fixed" and hyperparameters is None:
            raise ValueError("method='fixed' needs hyperparameters=")
        projected = self.inducing is not None
        trains = validated_partitions(client, data, n_partitions, self.mean_kernel.input_dim, data_options)
        summaries = client.gather([client.submit(tasks.summarise, t, not projected) for t in trains])
        kept = [k for k, s in enumerate(summaries) if s is not None]
        trains, summaries = [trains[k] for k in kept], [summaries[k] for k in kept]
        if not summaries:
            raise MagmaInputError("empty data: no individuals")
        check_whole_individuals(summaries)
        ids = np.concatenate([s.ids for s in summaries])
        names = summaries[0].input_names
        low = np.min([s.input_min for s in summaries], axis=0)
        high = np.max([s.input_max for s in summaries], axis=0)
        n_obs = sum(s.n_obs for s in summaries)
        output_mean = sum(s.output_sum for s in summaries) / n_obs
        square = sum(client.gather([client.submit(tasks.output_square_deviation, t, output_mean) for t in trains]))
        span = float(np.max(high - low))
        variance = square / n_obs if n_obs > 1 else 1.0
        span, variance = (span if span > 0 else 1.0), (variance if variance > 0 else 1.0)

        if projected:
            grid = np.linspace(low, high, self.inducing) if isinstance(self.inducing, int) else self.inducing
        else:
            grid = np.unique(np.concatenate([s.grid for s in summaries]), axis=0)  # sorted rows, as in process
        prior_mean = Constant(output_mean) if self.prior_mean is None else resolve_prior_mean(self.prior_mean, None)
        prior_mean(grid)  # a callable prior mean is checked early
        warn_far_inputs(np.vstack([low, high]), span, names, "training data")

        grid_future = client.submit(tasks.identity, grid)
        partitions = [client.submit(tasks.prepare, t, grid_future, prior_mean, projected) for t in trains]
        config = (self.mean_kernel, self.kernel, self.common_hp, projected, self.compile_mode)
        structure = Structure(*config, token=structure_token(*config))
        row_bounds = [*self.kernel.log_bounds(span, variance), (np.log(1e-8 * variance), np.log(1e4 * variance))]
        problem = PartitionedProblem(
            client, partitions, np.cumsum([0, *(len(s.ids) for s in summaries)]), structure, grid,
            self.mean_kernel.log_bounds(span, variance), row_bounds, variance, len(ids), self.mean_step,
        )
        state = EMState(*self._start(hyperparameters, span, variance, ids), self.jitter * variance)
        trace, last = run_distributed_em(
            state, problem, max_iter=self.max_iter if method == "em" else 0, tol=self.tol, callback=callback
        )
        if method == "em":
            warn_hp_at_bounds(trace.state, problem, self.mean_kernel.names, (*self.kernel.names, NOISE),
                              None if self.common_hp else ids)

        self.ids_ = ids
        self.communication_ = problem.communication
        self.iteration_seconds_ = problem.seconds
        self._predictor = Predictor(
            structure, method, trace.state, SummaryArrays(grid, last.alpha, last.chol_b),
            (problem.mean_bounds, row_bounds), PartitionedData(ids, names, span, variance), prior_mean,
            self.new_individual_hp, self._population(method, trace.state, problem, last),
        )
        tree = self._distributed_tree(trace, method, prior_mean(grid) + last.result.mean, last.result.cov, names)
        with WORKER_LOCK:  # builds the record with this process's graphs (shared with in-process workers)
            result = self._predictor.result(tree)
        self._set_result(result, converged=trace.converged, n_iter=len(trace.log_likelihood) - 1,
                         log_likelihood=trace.estep.log_likelihood)
        self.fit_seconds_ = time.perf_counter() - start
        return self

    @staticmethod
    def _population(method: str, state: EMState, problem: PartitionedProblem, last) -> tuple | None:
        """Different HP fitted by EM: the population distribution of the individual HP without their estimation error.

        The in-process fit's estimate (:data:`magma_pymc.predictive.POPULATION_ESTIMATE`) on the same inputs
        (:func:`magma_pymc.distributed.population.distributed_population`); ``None`` otherwise.
        """
        log_params = np.asarray(state.log_params)
        estimate = predictive.POPULATION_ESTIMATE
        if (method != "em" or log_params.ndim == 1 or len(log_params) <= log_params.shape[1]
                or estimate not in POPULATION_METHODS):
            return None
        prior = distributed_population(problem, last, state, method=estimate)
        return prior.mean, prior.cov

    def _start(self, hyperparameters, span: float, variance: float, ids: np.ndarray) -> tuple:
        """Initial log HP, as :meth:`magma_pymc.Magma.initial_hyperparameters` (data-driven) or given."""
        if hyperparameters is not None:
            hp = HyperParameters.coerce(hyperparameters, self.mean_kernel, self.kernel)
            return hp.to_log(self.mean_kernel, self.kernel, None if self.common_hp else ids)
        mean_log = self.mean_kernel.initial_log_params(span, variance)
        log_params = np.append(self.kernel.initial_log_params(span, variance), np.log(0.1 * variance))
        return mean_log, (log_params if self.common_hp else np.tile(log_params, (len(ids), 1)))

    def _distributed_tree(self, trace, method: str, mean: np.ndarray, cov: np.ndarray, names) -> xr.DataTree:
        """The groups of :mod:`magma_pymc.results` but ``observed_data`` (the data stay on the workers)."""
        ids = None if self.common_hp else np.array([str(i) for i in self.ids_])
        hp_names = (self.mean_kernel.names, self.kernel.names)
        posterior = hp_dataset(
            *hp_names, trace.state.mean_log_params[None, None], trace.state.log_params[None, None], ("chain", "draw"),
            ids,
        )
        em_trace = hp_dataset(*hp_names, trace.mean_log_params, trace.log_params, ("em_iteration",), ids)
        em_trace["log_likelihood"] = ("em_iteration", trace.log_likelihood)
        em_trace = em_trace.assign_coords(em_iteration=np.arange(len(trace.log_likelihood)))
        em_trace.attrs.update(converged=int(trace.converged), interrupted=int(trace.interrupted), tol=self.tol)
        grid = self._predictor.grid
        coords = input_coords(grid, names)
        hyperposterior = xr.Dataset(
            {"mu0_mean": ("input", mean), "mu0_cov": (("input", "input_bis"), cov)},
            coords={**coords, "input_bis": coords["input"]},
        )
        tree = xr.DataTree.from_dict({"posterior": posterior, "hyperposterior": hyperposterior, "em_trace": em_trace})
        tree.attrs.update(
            method=method, common_hp=int(self.common_hp), jitter=trace.state.jitter,
            log_likelihood=trace.estep.log_likelihood, n_individuals=len(self.ids_),
            inducing_points=0 if self.inducing is None else len(grid), distributed=1,
        )
        return tree

    # ----------------------------------------------------------------------- predictions
    def hyperposterior(self, inputs: Any | None = None, *, prob: float = 0.95) -> xr.Dataset:
        """As :meth:`magma_pymc.Magma.hyperposterior` (same numbers), from the fitted hyper-posterior on the grid."""
        with WORKER_LOCK:
            return super().hyperposterior(inputs, prob=prob)

    def predict(self, new_data: Any, inputs: Any, *, prob: float = 0.95, full_cov: bool = False,
                **data_options: Any) -> xr.Dataset:
        """As :meth:`magma_pymc.Magma.predict` (same arguments, same result).

        For many new individuals at once, on the cluster, see :func:`magma_pymc.distributed.predict_partitions`.
        """
        with WORKER_LOCK:
            return self.predictor.predict(new_data, inputs, prob=prob, full_cov=full_cov, result=self.result_,
                                          **data_options)

    @property
    def predictor(self) -> Predictor:
        """The fitted model's prediction state (small, picklable: what workers receive to predict)."""
        self._check_fitted()
        return self._predictor

    def save(self, path) -> None:
        r"""Save the fit without its training data, which stay on the workers.

        The file holds what :meth:`magma_pymc.Magma.save` writes but the ``observed_data``: HP, EM trace and the
        hyper-posterior of :math:`\mu_0` on the grid (:mod:`magma_pymc.distributed.persistence`); :meth:`load`
        gives a model that predicts as this one.
        """
        from magma_pymc.distributed.persistence import save_distributed

        save_distributed(path, self.predictor, self.result_.tree, self.get_params())

    @classmethod
    def load(cls, path, *, mean_kernel: Kernel | None = None, kernel: Kernel | None = None,
             prior_mean: Any = None) -> DistributedMagma:
        """Load a fit saved with :meth:`save` (arguments as :meth:`magma_pymc.Magma.load`).

        It predicts exactly as the saved model, on the client or on the workers
        (:func:`~magma_pymc.distributed.predict_partitions`).
        """
        from magma_pymc.distributed.persistence import read_distributed, read_file
        from magma_pymc.persistence import settings_from_record

        tree, config = read_file(path)
        model = cls(**settings_from_record(config, mean_kernel=mean_kernel, kernel=kernel, prior_mean=prior_mean))
        predictor, tree = read_distributed(path, tree, config, model)
        with WORKER_LOCK:  # builds the record with this process's graphs (shared with in-process workers)
            result = predictor.result(tree)
        trace = tree["em_trace"] if "em_trace" in tree.children else None
        model._set_result(result, converged=bool(trace is not None and trace.attrs.get("converged", 0)),
                          n_iter=0 if trace is None else trace.sizes["em_iteration"] - 1,
                          log_likelihood=float(tree.attrs.get("log_likelihood", np.nan)))
        model._predictor, model.ids_ = predictor, predictor.data.ids
        return model
