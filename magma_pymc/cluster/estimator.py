"""``MagmaClust``: clusters of individuals, each following its own mean process (Leroy et al., JMLR 2023).

>>> import magma_pymc as mp
>>> sim = mp.cluster.simulate_clustered(n_clusters=3, seed=1)
>>> model = mp.MagmaClust(n_clusters=3).fit(sim.data)                    # doctest: +SKIP
>>> model.responsibilities_                                              # doctest: +SKIP
"""

from __future__ import annotations

import numbers
import time
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr

from magma_pymc.cluster.init import (
    canonical_order,
    initial_log_params,
    initial_responsibilities,
)
from magma_pymc.cluster.mixture import mixture_interval, mixture_moments
from magma_pymc.cluster.predict import cluster_means_at, predict_clusters
from magma_pymc.cluster.results import cluster_datatree
from magma_pymc.cluster.vem import ClusterProblem, VEMState, estep, run_vem
from magma_pymc.compiled import DEFAULT_MODE, blas_limited
from magma_pymc.data import (
    MagmaInputError,
    TrainingData,
    as_individual,
    as_inputs,
    as_training_data,
)
from magma_pymc.estimator import Magma
from magma_pymc.exceptions import ConvergenceWarning, NotFittedError
from magma_pymc.exceptions import warn as _warn
from magma_pymc.guards import warn_if_costly
from magma_pymc.jitter import JITTER_DEFAULT
from magma_pymc.kernels import Kernel
from magma_pymc.params import HyperParameters
from magma_pymc.problem import bucket_sizes, build_problem
from magma_pymc.results import input_coords
from magma_pymc.settings import _AT_BOUND, check_kernels, resolve_prior_mean, scales

__all__ = ["MagmaClust", "check_n_clusters"]


def check_n_clusters(n_clusters: Any, n_individuals: int | None = None) -> int:
    """A positive integer, at most the number of individuals (when known); a clear error otherwise."""
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, numbers.Integral) or n_clusters < 1:
        raise ValueError(f"n_clusters must be a positive integer (at least 1), got {n_clusters!r}")
    if n_individuals is not None and n_clusters > n_individuals:
        raise ValueError(f"n_clusters={n_clusters} exceeds the number of individuals ({n_individuals})")
    return int(n_clusters)


class MagmaClust:
    r"""MagmaClust: a mixture of K mean processes, individual processes and noise as in MAGMA.

    .. math::

        Z_i \sim \mathcal M(1, \pi),\quad \mu_k \sim GP(m, k_{\gamma_k}),\quad
        y_i \mid Z_{ik} = 1 = \mu_k(t_i) + f_i(t_i) + \varepsilon_i,

    fitted by variational EM (:mod:`magma_pymc.cluster.vem`). With ``n_clusters=1`` it is MAGMA
    (:class:`magma_pymc.Magma`, same initialisation, optimisers and results).

    Parameters
    ----------
    n_clusters
        Number K of clusters (a positive integer, at most the number of individuals).
    common_hp
        One set of individual HP for all individuals, or one per individual.
    shared_mean_hp
        One set of mean-process HP for all clusters, or one per cluster (default).
    mean_kernel, kernel, prior_mean, max_iter, tol, compile_mode, jitter, mean_step, new_individual_hp, inducing
        As :class:`magma_pymc.Magma`; the prior mean :math:`m` is common to all clusters. With ``inducing``
        every cluster's mean process lives on the same inducing points (:mod:`magma_pymc.cluster.inducing`).
    n_init
        VEM runs from different k-means initialisations; the highest bound wins.
    random_state
        Seed of the k-means initialisations.

    Attributes
    ----------
    responsibilities_ : pandas.DataFrame
        :math:`\tau_{ik}`, one row per individual, one column per cluster.
    labels_ : pandas.Series
        Most probable cluster of each individual.
    weights_ : numpy.ndarray
        Cluster weights :math:`\pi_k`.
    elbo_, vbic_ : float
        Final evidence lower bound and :math:`\mathrm{V\text{-}BIC} = \mathcal L - \tfrac{n_{params}}2 \log\sum_i N_i`.
    idata_ : xarray.DataTree
        Results (:mod:`magma_pymc.cluster.results`).
    """

    def __init__(
        self,
        n_clusters: int = 2,
        *,
        common_hp: bool = True,
        shared_mean_hp: bool = False,
        mean_kernel: Kernel | None = None,
        kernel: Kernel | None = None,
        prior_mean: Any = None,
        max_iter: int = 25,
        tol: float = 1e-3,
        compile_mode: str = DEFAULT_MODE,
        jitter: float = JITTER_DEFAULT,
        mean_step: Literal["marginal", "expected"] = "marginal",
        new_individual_hp: Literal["map", "ml"] = "map",
        inducing: int | np.ndarray | None = None,
        n_init: int = 1,
        random_state: int | None = None,
    ) -> None:
        self.n_clusters = check_n_clusters(n_clusters)
        if shared_mean_hp not in (True, False):
            raise ValueError(f"shared_mean_hp must be True or False, got {shared_mean_hp!r}")
        self.shared_mean_hp = shared_mean_hp
        if isinstance(n_init, bool) or not isinstance(n_init, numbers.Integral) or n_init < 1:
            raise ValueError(f"n_init must be a positive integer, got {n_init!r}")
        self.n_init, self.random_state = int(n_init), random_state
        # MAGMA's configuration, validated by Magma itself (and the source of initial HP and bounds).
        self._magma = Magma(
            common_hp=common_hp, mean_kernel=mean_kernel, kernel=kernel, prior_mean=prior_mean, max_iter=max_iter,
            tol=tol, compile_mode=compile_mode, jitter=jitter, mean_step=mean_step, new_individual_hp=new_individual_hp,
            inducing=inducing,
        )

    def __getattr__(self, name: str) -> Any:
        # Configuration shared with Magma (common_hp, kernel, mean_kernel, max_iter, tol, ...).
        if name in {"common_hp", "mean_kernel", "kernel", "prior_mean", "max_iter", "tol", "compile_mode", "jitter",
                    "mean_step", "new_individual_hp", "inducing"}:
            return getattr(self.__dict__["_magma"], name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ------------------------------------------------------------------------------------ fit
    @blas_limited
    def fit(self, data: Any, *, method: Literal["vem", "nuts"] = "vem", responsibilities: Any = None,
            hyperparameters: Any = None, **data_options: Any) -> MagmaClust:
        """Fit by variational EM from k-means initialisations (``n_init`` runs) or given responsibilities.

        Given ``responsibilities``: an ``(M, K)`` array, rows summing to 1. ``hyperparameters`` (as for
        :meth:`magma_pymc.Magma.fit`; the mean-process values start every cluster) replace the data-driven initial
        values; with ``max_iter=0`` they are kept, with the given responsibilities. ``data`` and ``data_options`` as
        :meth:`magma_pymc.Magma.fit`. ``method="nuts"``: then NUTS from the VEM fit, ``pm.sample`` options passed
        through (:mod:`magma_pymc.cluster.sampling`, small data only); predictions stay VEM's.
        """
        if method != "vem":
            from magma_pymc.cluster.sampling import fit_nuts

            return fit_nuts(self, data, method, responsibilities=responsibilities, hyperparameters=hyperparameters,
                            **data_options)
        start = time.perf_counter()
        train = as_training_data(data, input_dim=self.mean_kernel.input_dim, **data_options)
        check_n_clusters(self.n_clusters, train.n_individuals)
        problem, initial = self._setup(train, hyperparameters)
        input_range = scales(train)[0]
        rng = np.random.default_rng(self.random_state)
        starts = [self._check_responsibilities(responsibilities, train)] if responsibilities is not None else [
            np.ones((train.n_individuals, 1)) if self.n_clusters == 1
            else initial_responsibilities(train, self.n_clusters, rng) for _ in range(self.n_init)
        ]
        best = None
        for tau in starts:
            sizes = tau.sum(axis=0)
            with np.errstate(divide="ignore"):
                state = initial._replace(
                    mean_log_params=np.tile(initial.mean_log_params, (tau.shape[1], 1)),
                    log_weights=np.log(sizes / sizes.sum()), tau=tau,
                )
            if hyperparameters is None and tau.shape[1] > 1:  # K = 1: MAGMA's own starting values
                mean_log, log_params = initial_log_params(
                    self.mean_kernel, self.kernel, tau, problem.residuals, problem.mask, input_range,
                    problem.output_scale, self.common_hp,
                )
                state = state._replace(mean_log_params=mean_log, log_params=log_params)
            trace = run_vem(state, problem, max_iter=self.max_iter, tol=self.tol)
            if best is None or trace.elbo[-1] > best.elbo[-1]:
                best = trace
        self._finish(train, problem, best)
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def _setup(self, train: TrainingData, hyperparameters: Any = None) -> tuple[ClusterProblem, VEMState]:
        magma = self._magma
        check_kernels(self.mean_kernel, self.kernel, train)
        self._prior_mean_value = resolve_prior_mean(self.prior_mean, train)
        base = build_problem(train, self._prior_mean_value, self.mean_kernel, self.kernel, common_hp=self.common_hp,
                             compile_mode=self.compile_mode, inducing=self.inducing, mean_step=self.mean_step)
        if self.inducing is not None:  # MAGMA's guard: inducing points too many to be cheap
            warn_if_costly(len(base.data_args.grid), bucket_sizes(base), projected=True)
        grid, inputs, residuals, mask, index = base.data_args
        problem = ClusterProblem(
            base.graphs, grid, inputs, residuals, mask, index, base.mean_bounds, base.bounds, base.output_scale,
            shared_mean_hp=self.shared_mean_hp, mean_step=self.mean_step,
        )
        if problem.graphs.fast_path:  # MAGMA's fast path keeps (M, N) residuals: pad them as the general layout
            problem = _padded(problem, train)
        if hyperparameters is None:
            hp = magma.initial_hyperparameters(train)
        else:
            hp = HyperParameters.coerce(hyperparameters, self.mean_kernel, self.kernel)
        mean_log, log_params = hp.to_log(self.mean_kernel, self.kernel, None if self.common_hp else train.ids)
        return problem, VEMState(mean_log, log_params, np.zeros(1), np.ones((train.n_individuals, 1)),
                                 self.jitter * base.output_scale)

    def _check_responsibilities(self, value: Any, train: TrainingData) -> np.ndarray:
        tau = np.asarray(value, dtype=float)
        shape = (train.n_individuals, self.n_clusters)
        if tau.shape != shape:
            raise MagmaInputError(f"responsibilities must have shape {shape} (individuals x clusters), got {tau.shape}")
        if not np.all(np.isfinite(tau)) or np.any(tau < 0) or not np.allclose(tau.sum(axis=1), 1.0):
            raise MagmaInputError("responsibilities must be finite, non-negative, and sum to 1 over clusters")
        return tau

    def _finish(self, train: TrainingData, problem: ClusterProblem, trace) -> None:
        state = trace.state
        order = canonical_order(self._prior_mean_value(problem.grid)[None] + trace.estep.posterior.mean)
        state = state._replace(mean_log_params=state.mean_log_params[order], log_weights=state.log_weights[order],
                               tau=state.tau[:, order])
        current, state = estep(state, problem)
        self._finish_loaded(train, problem, state, current, trace)
        self.idata_ = cluster_datatree(self)
        if self.max_iter > 0:
            self._warn_hp_at_bounds(state, problem)

    def _warn_hp_at_bounds(self, state: VEMState, problem: ClusterProblem) -> None:
        """:class:`ConvergenceWarning` naming fitted HP on their box constraints (as MAGMA's fit)."""
        hits = [
            f"cluster {k} mu_{name} = {np.exp(value):.3g}"
            for k, row in enumerate(state.mean_log_params)
            for name, value, (low, high) in zip(self.mean_kernel.names, row, problem.mean_bounds, strict=True)
            if min(value - low, high - value) < _AT_BOUND
        ]
        rows = np.reshape(state.log_params, (-1, self.kernel.n_params + 1))
        bounds = np.reshape(problem.bounds, (len(rows), self.kernel.n_params + 1, 2))
        hits += [
            f"{'' if self.common_hp else f'individual {self.data_.ids[r]!r} '}{name} = {np.exp(value):.3g}"
            for r, (row, row_bounds) in enumerate(zip(rows, bounds, strict=True))
            for name, value, (low, high) in zip((*self.kernel.names, "noise"), row, row_bounds, strict=True)
            if min(value - low, high - value) < _AT_BOUND
        ]
        if hits:
            more = f" and {len(hits) - 5} more" if len(hits) > 5 else ""
            _warn(f"variational EM ended with hyper-parameter(s) on their bounds: {'; '.join(hits[:5])}{more}. The "
                  "data may not identify them (e.g. a flat mean process), or VEM started far from an optimum: try "
                  "n_init > 1 or other starting values", ConvergenceWarning)

    def _finish_loaded(self, train: TrainingData, problem: ClusterProblem, state: VEMState, current, trace) -> None:
        """Fitted attributes from a final state and its E-step (also used by :meth:`load`)."""
        self.data_, self._problem_, self._state, self._estep, self._trace = train, problem, state, current, trace
        n_clusters = state.tau.shape[1]
        columns = pd.Index(range(n_clusters), name="cluster")
        index = pd.Index(list(train.ids), name="individual", tupleize_cols=False)
        self.n_clusters_ = n_clusters
        self.responsibilities_ = pd.DataFrame(state.tau, index=index, columns=columns)
        self.labels_ = pd.Series(np.argmax(state.tau, axis=1), index=index, name="cluster")
        self.weights_ = np.exp(state.log_weights)
        self.elbo_ = current.elbo
        self.n_params_ = self._n_params(n_clusters, train)
        self.vbic_ = self.elbo_ - 0.5 * self.n_params_ * np.log(train.mask.sum())
        self.converged_, self.n_iter_ = trace.converged, len(trace.elbo) - 1

    def _n_params(self, n_clusters: int, train: TrainingData) -> int:
        mean = self.mean_kernel.n_params * (1 if self.shared_mean_hp else n_clusters)
        individual = (self.kernel.n_params + 1) * (1 if self.common_hp else train.n_individuals)
        return (n_clusters - 1) + mean + individual

    # ----------------------------------------------------------------------- predictions
    def _check_fitted(self) -> None:
        if "_state" not in self.__dict__:
            raise NotFittedError("this MagmaClust model is not fitted yet: call .fit(data) first")

    @property
    def mean_process_grid(self) -> np.ndarray:
        """``(N, d)`` inputs on which the fit represents the mean processes.

        The training union grid, or the inducing points when ``inducing`` is set.
        """
        self._check_fitted()
        return self._problem_.grid

    @blas_limited
    def hyperposterior(self, inputs: Any | None = None, *, prob: float = 0.95) -> xr.Dataset:
        r""":math:`q(\mu_k)` at ``inputs`` (default: the training grid).

        ``mean``, ``variance``, ``lower``, ``upper`` on dims ``(cluster, input)``, ``cov`` on ``(cluster, input,
        input_bis)``, ``weight``.
        """
        self._check_fitted()
        x = self.mean_process_grid if inputs is None else as_inputs(inputs, input_dim=self.data_.input_dim)
        means, covs = cluster_means_at(self._problem_, self._state, self._estep, x, self._prior_mean_value(x))
        variances = np.diagonal(covs, axis1=1, axis2=2).copy()
        lower, upper = zip(*(mixture_interval(np.ones(1), m[None], v[None], prob)
                             for m, v in zip(means, variances, strict=True)), strict=True)
        coords = input_coords(x, self.data_.input_names)
        clusters = np.arange(len(means))
        return xr.Dataset(
            {"mean": (("cluster", "input"), means), "variance": (("cluster", "input"), variances),
             "lower": (("cluster", "input"), np.array(lower)), "upper": (("cluster", "input"), np.array(upper)),
             "cov": (("cluster", "input", "input_bis"), covs), "weight": ("cluster", np.exp(self._state.log_weights))},
            coords={**coords, "input_bis": coords["input"], "cluster": clusters}, attrs={"prob": prob},
        )

    @blas_limited
    def predict(self, new_data: Any, inputs: Any, *, prob: float = 0.95, full_cov: bool = False,
                **data_options: Any) -> xr.Dataset:
        r"""Mixture prediction of a new individual at ``inputs`` from its observed points ``new_data``.

        ``None``: Type II; as :meth:`magma_pymc.Magma.predict`.

        Returns ``mean``, ``variance``, ``lower``, ``upper`` (exact quantiles of the predictive
        mixture, noise included), ``latent_variance``, ``latent_lower``, ``latent_upper`` (without
        noise), each cluster's ``cluster_mean``, ``cluster_variance`` (dims ``cluster, input``) and
        ``cluster_probability`` :math:`\tau_{*k}`; with ``full_cov`` the mixture covariance ``cov``.
        """
        self._check_fitted()
        d = self.data_.input_dim
        individual = as_individual(new_data, input_dim=d, **data_options)
        pred_inputs = as_inputs(inputs, input_dim=d)
        result = predict_clusters(self._problem_, self._state, self._estep, individual, pred_inputs,
                                  self._prior_mean_value, empirical_prior=self.new_individual_hp == "map")
        weights = result.probabilities
        means = np.stack([c.mean for c in result.components])
        variances = np.stack([np.diag(c.predictive_cov) for c in result.components])
        latent = np.stack([np.diag(c.latent_cov) for c in result.components])
        mean, variance = mixture_moments(weights, means, variances)
        _, latent_variance = mixture_moments(weights, means, latent)
        lower, upper = mixture_interval(weights, means, variances, prob)
        latent_lower, latent_upper = mixture_interval(weights, means, latent, prob)
        coords = input_coords(pred_inputs, self.data_.input_names)
        ds = xr.Dataset(
            {"mean": ("input", mean), "variance": ("input", variance), "lower": ("input", lower),
             "upper": ("input", upper), "latent_variance": ("input", latent_variance),
             "latent_lower": ("input", latent_lower), "latent_upper": ("input", latent_upper),
             "cluster_mean": (("cluster", "input"), means), "cluster_variance": (("cluster", "input"), variances),
             "cluster_probability": ("cluster", weights)},
            coords={**coords, "cluster": np.arange(len(weights))},
        )
        if full_cov:
            spread = means - mean[None]
            cov = sum(w * (c.predictive_cov + np.outer(s, s)) for w, c, s in zip(weights, result.components, spread,
                                                                                 strict=True))
            ds["cov"] = (("input", "input_bis"), cov)
            ds = ds.assign_coords(input_bis=coords["input"])
        names = (*self.kernel.names, "noise")
        ds.attrs.update(prob=prob, individual=str(individual.id), prediction_type="I" if individual.n_points else "II",
                        hp_source=result.hp_source,
                        **{f"hp_{n}": float(v) for n, v in zip(names, np.exp(result.log_params), strict=True)})
        return ds

    def build_model(self, data: Any | None = None, *, jitter: float = 1e-8):
        """The model declared in PyMC (:func:`magma_pymc.cluster.model.build_cluster_model`) for ``data``.

        By default the training data; priors centred on the data-driven initial HP.
        """
        from magma_pymc.cluster.model import build_cluster_model

        if data is None:
            self._check_fitted()
            train = self.data_
        else:
            train = as_training_data(data, input_dim=self.mean_kernel.input_dim)
        magma = self._magma
        mean_log, log_params = magma.initial_hyperparameters(train).to_log(self.mean_kernel, self.kernel, None)
        return build_cluster_model(train, self.n_clusters, self.mean_kernel, self.kernel,
                                   resolve_prior_mean(self.prior_mean, train), centres=(mean_log, log_params),
                                   common_hp=self.common_hp, shared_mean_hp=self.shared_mean_hp, jitter=jitter)

    # --------------------------------------------------------------------------- save/load
    def save(self, path) -> None:
        """Save to netCDF (:func:`magma_pymc.cluster.results.save_cluster_model`)."""
        from magma_pymc.cluster.results import save_cluster_model

        self._check_fitted()
        save_cluster_model(self, path)

    @classmethod
    def load(cls, path, **kwargs: Any) -> MagmaClust:
        """Load a model saved with :meth:`save` (custom kernels or a callable prior mean passed again)."""
        from magma_pymc.cluster.results import load_cluster_model

        return load_cluster_model(path, **kwargs)


def _padded(problem: ClusterProblem, train: TrainingData) -> ClusterProblem:
    import dataclasses

    residuals = np.zeros(train.mask.shape)
    residuals[:, : problem.residuals.shape[1]] = problem.residuals
    return dataclasses.replace(problem, residuals=residuals * train.mask)
