"""``Magma``: configuration in ``__init__``, ``fit(data) -> self``, then predictions.

>>> import magma_pymc as mp
>>> sim = mp.simulate(n_individuals=20, n_points=30, seed=1)
>>> model = mp.Magma(common_hp=True).fit(sim.data)          # doctest: +SKIP
>>> pred = model.predict(new_observed, inputs)             # doctest: +SKIP
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import pymc as pm
import xarray as xr

from magma_pymc import predictive
from magma_pymc.compiled import DEFAULT_MODE, blas_limited
from magma_pymc.data import TrainingData, as_individual, as_inputs, as_training_data
from magma_pymc.em import EMState, Problem
from magma_pymc.em_fit import fit_em
from magma_pymc.exceptions import NotFittedError
from magma_pymc.fit_result import FitResult
from magma_pymc.guards import warn_if_costly
from magma_pymc.jitter import JITTER_DEFAULT, MODEL_JITTER
from magma_pymc.kernels import Kernel, SquaredExponential
from magma_pymc.model import ModelSpec
from magma_pymc.params import HyperParameters
from magma_pymc.problem import bucket_sizes, build_problem
from magma_pymc.restarts import check_restarts
from magma_pymc.sampler_options import split_fit_options
from magma_pymc.settings import (
    check_inducing,
    check_kernels,
    check_settings,
    initial_log_params,
    resolve_prior_mean,
    scales,
    warn_far_inputs,
)

#: Keywords of ``Magma.fit`` that go to :func:`magma_pymc.data.as_training_data`.
_DATA_OPTIONS = frozenset(p.name for p in inspect.signature(as_training_data).parameters.values()
                          if p.kind is p.KEYWORD_ONLY and p.name != "input_dim")

__all__ = ["Magma"]

PriorMean = float | Callable[[np.ndarray], np.ndarray] | None
#: The configuration of ``Magma.__init__`` (what :meth:`Magma.get_params` returns and a saved file records).
_PARAMS = ("common_hp", "mean_kernel", "kernel", "prior_mean", "max_iter", "tol", "compile_mode", "jitter",
           "mean_step", "inducing", "new_individual_hp", "mean_process_prior", "restarts")


class Magma:
    r"""MAGMA: multi-task GP regression with a common mean process (Leroy et al., 2022).

    .. math::

        y_i(t) = \mu_0(t) + f_i(t) + \varepsilon_i(t), \quad
        \mu_0 \sim GP(m_0, k_{\theta_0}),\ f_i \sim GP(0, c_{\theta_i}),\
        \varepsilon_i \sim \mathcal N(0, \sigma_i^2).

    Parameters
    ----------
    common_hp
        Share :math:`(\theta_i, \sigma_i^2)` across individuals (``True``) or give each its own.
    mean_kernel, kernel
        :class:`~magma_pymc.kernels.Kernel` of the mean process and of the individual processes
        (default: squared exponential for both). Any ``pm.gp.cov`` expression can be wrapped.
    prior_mean
        :math:`m_0`: a constant, a function of an ``(n, d)`` input array, or ``None`` for the mean
        of all training outputs (a constant).
    max_iter, tol
        EM stops when the relative change of the marginal log-likelihood is below ``tol``
        (default ``1e-3``, as MagmaClustR) or after ``max_iter`` iterations.
    compile_mode
        PyTensor compile mode of the model's graphs (see :mod:`magma_pymc.compiled`).
    jitter
        Initial jitter, relative to the output variance, added to covariance diagonals before
        factorisation; raised tenfold only when a factorisation fails (recorded in ``idata_``).
    mean_step
        How EM updates the mean-process HP :math:`\theta_0`. ``"expected"``: the textbook M-step,
        maximising :math:`\log\mathcal N(\hat m; m_0, K_{\theta_0}) - \tfrac12
        \mathrm{tr}(\hat K K_{\theta_0}^{-1})`. On a dense grid :math:`K_{\theta_0}` is numerically
        singular and this objective is so sharply peaked at the current :math:`\theta_0` that EM
        barely moves it. ``"marginal"`` (default, ECME): maximise the exact marginal likelihood
        over :math:`\theta_0` at the just-updated individual HP; it also never decreases the
        likelihood, and converges in far fewer iterations.
    inducing
        ``None`` (default): the exact model, :math:`\mu_0` on the union grid of all training inputs
        (:math:`O(N^3)` per evaluation). Otherwise represent :math:`\mu_0` on G inducing points
        :math:`g` and project it on the inputs, :math:`\mu_0(t) = K_0(t,g)K_0(g,g)^{-1}\mu_0(g)`
        (theory page, *Large union grids*), at :math:`O(G^3)`: an int G (1-D inputs: G evenly
        spaced points over the training input range) or an ``(G, d)`` array of points. For union
        grids of thousands of inputs; see ``docs/performance.md`` for its measured error.
    new_individual_hp
        How :meth:`predict` treats a new individual's HP when HP differ (theory page, *Prediction*;
        ``docs/calibration.md``). ``"calibrated"`` (default) and ``"integrated"`` integrate them over
        their posterior given the observed points and the population distribution of the training
        individuals' log HP (:mod:`magma_pymc.hp_integration`; the prediction is a Gaussian mixture, its
        intervals exact mixture quantiles; Type II: draws from the population distribution).
        ``"calibrated"`` raises the observed points' likelihood in that posterior to a weight (1, 0.5 or
        0.2) chosen once per fit by the training individuals' forecasts of their own last 40 % of points
        from their first 60 % (:mod:`magma_pymc.likelihood_weight`): where a curve's early points say less
        about its later behaviour than the model assumes, a tempered posterior keeps the intervals
        honest (different HP, Type I, real data over six splits: 95 % intervals covered 86-97 % with
        ``"integrated"``, 91-97 % with ``"calibrated"``). ``"integrated"`` is the posterior itself (weight 1);
        ``"map"`` plugs in its mode; ``"ml"`` plugs in the maximum-likelihood HP, as the MAGMA paper.
        Measured coverage of nominal 95 % intervals, paper's simulation with different HP (common grid,
        Type I): 91 % with ``"map"``, 95 % with ``"integrated"``.
    mean_process_prior
        ``"weak"`` (default): EM maximises the likelihood times a weakly informative, boundary-avoiding
        prior on the mean-process log HP (:mod:`magma_pymc.priors`), so that a variance cannot
        collapse to 0 nor a lengthscale stop on its bound without cause; ``None``: maximum
        likelihood (as the MAGMA paper). ``fit(..., priors=...)`` replaces it by the given priors on all HP.
    restarts
        EM from other deterministic starts, keeping the highest objective (:mod:`magma_pymc.restarts`): ``"scan"``
        (default) resumes EM from a better point found along the mean-process lengthscales, and restarts when a HP ends
        on its bound; ``"on_bound"`` only the latter; ``"screen"``; an int ``k`` (0 to 4). Recorded in ``idata_.attrs``.

    Attributes
    ----------
    result_ : FitResult
        The fit, whatever the method (:mod:`magma_pymc.fit_result`): HP draws, cluster weights,
        fitted state and results tree; the other attributes are views of it.
    hyperparameters_ : HyperParameters
        Fitted HP on the natural scale (layout in :mod:`magma_pymc.params`).
    converged_ : bool
        EM met its stopping rule and no HP ended on its box constraint (``hp_at_bounds_``).
    hp_at_bounds_ : list of str
        HP that EM left on a bound (each also named in a :class:`ConvergenceWarning`).
    idata_ : xarray.DataTree
        Results (layout in :mod:`magma_pymc.results`).
    data_ : TrainingData
        The validated training data.
    """

    def __init__(
        self,
        *,
        common_hp: bool = True,
        mean_kernel: Kernel | None = None,
        kernel: Kernel | None = None,
        prior_mean: PriorMean = None,
        max_iter: int = 25,
        tol: float = 1e-3,
        compile_mode: str = DEFAULT_MODE,
        jitter: float = JITTER_DEFAULT,
        mean_step: Literal["marginal", "expected"] = "marginal",
        inducing: int | np.ndarray | None = None,
        new_individual_hp: Literal["calibrated", "integrated", "map", "ml"] = "calibrated",
        mean_process_prior: Literal["weak"] | None = "weak",
        restarts: Literal["scan", "on_bound", "screen"] | int = "scan",
    ) -> None:
        self.common_hp = common_hp
        self.mean_kernel = mean_kernel if mean_kernel is not None else SquaredExponential()
        self.kernel = kernel if kernel is not None else SquaredExponential()
        self.prior_mean = prior_mean
        self.max_iter = max_iter
        self.tol = tol
        self.compile_mode = compile_mode
        self.jitter = jitter
        self.mean_step = mean_step
        self.new_individual_hp = new_individual_hp
        self.mean_process_prior = mean_process_prior
        check_restarts(restarts)
        self.restarts = restarts if isinstance(restarts, str) else int(restarts)  # a NumPy int would not save
        check_settings(common_hp, max_iter, tol, jitter, mean_step, new_individual_hp, inducing, mean_process_prior)
        self.inducing = check_inducing(inducing, self.mean_kernel.input_dim)

    # ------------------------------------------------------------------------------------ fit
    @blas_limited
    def fit(
        self,
        data: Any,
        *,
        method: Literal["em", "fixed", "nuts", "laplace", "advi", "fullrank_advi"] = "em",
        hyperparameters: HyperParameters | dict | None = None,
        **data_options: Any,
    ) -> Magma:
        """Learn the hyper-parameters and the hyper-posterior of :math:`\\mu_0`.

        Parameters
        ----------
        data
            Long DataFrame (columns ``ID``, input(s), ``Output``), dict ``{id: (inputs, outputs)}``
            or list of ``(inputs, outputs)``; see :func:`magma_pymc.data.as_training_data`.
        method
            ``"em"`` (default) or ``"fixed"``: keep ``hyperparameters`` as given and only compute
            the hyper-posterior (how to reproduce results at known HP), or ``"nuts"``: sample the HP
            posterior (:mod:`magma_pymc.sampling`; ``hyperparameters`` then start the chains), or a
            cheaper approximation of that posterior: ``"laplace"`` (Gaussian at the MAP), ``"advi"`` or
            ``"fullrank_advi"`` (:func:`magma_pymc.sampling.fit_approximation`).
        hyperparameters
            Initial values for EM, or the fixed values. A :class:`HyperParameters` or a dict
            ``{"mean_process": {"variance": ..., "lengthscale": ...}, "individual": {"variance": ...,
            "lengthscale": ..., "noise": ...}}`` (``individual`` may also be a DataFrame indexed by
            ID, for different HP). Default for EM: :meth:`initial_hyperparameters`.
        **data_options
            Passed to :func:`magma_pymc.data.as_training_data` (``id_col``, ``input_cols``,
            ``output_col``, ``duplicates``). With ``method="nuts"`` also every option of ``pm.sample``
            and of its NUTS step (``draws``, ``tune``, ``chains``, ``cores`` -- default
            ``min(chains, CPUs)`` --, ``random_seed``, ``nuts_sampler`` -- default ``"auto"``: nutpie where
            installed, else PyMC's --, ``target_accept``, ``init``,
            ``progressbar`` -- default on --, ``max_treedepth``, ...) and the library's own
            (:data:`magma_pymc.sampling.MAGMA_OPTIONS`: ``priors``, ``thin``, ``hierarchical``,
            ``likelihood``, ``marginalised``, ``compile_mode``); with an approximation, ``draws``,
            ``random_seed``, ``priors``, ``thin``, ``hierarchical``, ``likelihood``, ``n`` (ADVI
            iterations), ``progressbar``. An unknown keyword is a ``TypeError``. With
            ``method="em"``, ``priors`` (a mapping as for NUTS; ``{}`` for the default priors) makes
            EM find the MAP under those priors, the mode of the posterior NUTS samples; ``em_trace``
            then also holds ``log_posterior`` (``log_likelihood`` plus the log prior).
        """
        options = split_fit_options(method, data_options, _DATA_OPTIONS)
        start = time.perf_counter()
        if method == "fixed" and hyperparameters is None:
            raise ValueError("method='fixed' needs hyperparameters=")
        train = as_training_data(data, input_dim=self.mean_kernel.input_dim, **options.data)
        check_kernels(self.mean_kernel, self.kernel, train)
        prior_mean = resolve_prior_mean(self.prior_mean, train)
        prior_mean(train.grid)  # checks a callable prior mean early, on the distinct inputs
        warn_far_inputs(train.grid, scales(train)[0], train.input_names, "training data")
        problem = self._problem(train, prior_mean)
        warn_if_costly(len(problem.data_args.grid), bucket_sizes(problem), projected=self.inducing is not None)
        if hyperparameters is None:
            hp = self.initial_hyperparameters(train)
        else:
            hp = HyperParameters.coerce(hyperparameters, self.mean_kernel, self.kernel)
        mean_log, log_params = hp.to_log(self.mean_kernel, self.kernel, None if self.common_hp else train.ids)
        state = EMState(mean_log, log_params, self.jitter * problem.output_scale)
        if options.sampled:
            from magma_pymc.sampling import fit_approximation, fit_nuts

            fit_draws = fit_nuts if method == "nuts" else functools.partial(fit_approximation, method)
            result = fit_draws(self._spec(train), problem, state, train, prior_mean,
                               initial=hyperparameters is not None, model_compile_mode=self.compile_mode,
                               **options.sampler)
            self._set_result(result, converged=result.tree.attrs["diagnostics"] == "ok", n_iter=0)
        else:
            fitted = fit_em(self, train, problem, state, prior_mean, method=method, map_priors=options.map_priors)
            self.hp_at_bounds_ = fitted.hp_at_bounds
            self._set_result(fitted.result, converged=fitted.converged, n_iter=fitted.n_iter)
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def initial_hyperparameters(self, data: Any) -> HyperParameters:
        """Data-driven starting values of EM.

        Variances start at the variance of all outputs (the noise at a tenth of it), lengthscales
        at a tenth of the input range (the largest range over input dimensions), other
        parameters at 1; values given in a kernel's ``initial`` take precedence.
        """
        train = data if isinstance(data, TrainingData) else as_training_data(data)
        mean_log, log_params = initial_log_params(self.mean_kernel, self.kernel, train, self.common_hp)
        return HyperParameters.from_log(
            self.mean_kernel, self.kernel, mean_log, log_params, None if self.common_hp else train.ids
        )

    # ----------------------------------------------------------------------- predictions
    @blas_limited
    def hyperposterior(self, inputs: Any | None = None, *, prob: float = 0.95) -> xr.Dataset:
        r"""Posterior of the mean process :math:`\mu_0` at ``inputs`` (default: :attr:`mean_process_grid`).

        Returns an ``xarray.Dataset`` on dim ``input`` with ``mean``, ``variance``, ``lower`` and
        ``upper`` (central ``prob`` credible interval) and the full covariance ``cov``
        (dims ``input``, ``input_bis``).
        """
        x = self.mean_process_grid if inputs is None else as_inputs(inputs, input_dim=self.data_.input_dim)
        return predictive.hyperposterior(self.result_, x, prob=prob)

    @blas_limited
    def predict(
        self,
        new_data: Any,
        inputs: Any,
        *,
        prob: float = 0.95,
        full_cov: bool = False,
        components: bool = False,
        **data_options: Any,
    ) -> xr.Dataset:
        r"""Predict a new individual at ``inputs`` from its observed points ``new_data``.

        Parameters
        ----------
        new_data
            The new individual's observed points (Type I prediction): a long DataFrame with one
            ID (the ID column is optional) or an ``(inputs, outputs)`` pair. ``None`` for a Type
            II prediction (no observed point: the prediction relies on :math:`\mu_0` alone).
        inputs
            Where to predict; any order, duplicates allowed, may extend beyond the training range.
        prob
            Mass of the central credible intervals.
        full_cov
            Also return the full predictive covariance ``cov`` (dims ``input``, ``input_bis``).
        components
            Also return the Gaussian mixture the prediction is (dim ``component``):
            ``component_weight``, ``component_mean`` and ``component_variance`` (predictive, with
            noise), e.g. to score it (:mod:`magma_pymc.scoring`).

        Returns
        -------
        xarray.Dataset
            On dim ``input``: ``mean``; predictive ``variance``, ``lower``, ``upper`` (for a new
            noisy observation, including :math:`\sigma_*^2`); ``latent_variance``,
            ``latent_lower``, ``latent_upper`` (for :math:`\mu_0 + f_*`, without noise). The new
            individual's HP are in ``attrs`` (``hp_source``: ``"common"``, ``"integrated"``, ``"tempered"``
            (integrated at a likelihood weight below 1, ``hp_likelihood_weight``), ``"population"`` (Type
            II, integrated), ``"map"``, ``"fitted"`` (``new_individual_hp="ml"``) or ``"median"`` (Type II,
            plugged in)); ``hp_<name>``: the mode of their posterior (integrated), or the value plugged in.
        """
        d = self.result_.data.input_dim
        individual = as_individual(new_data, input_dim=d, **data_options)
        pred_inputs = as_inputs(inputs, input_dim=d)
        joint_inputs = np.concatenate([individual.inputs, pred_inputs])
        warn_far_inputs(joint_inputs, scales(self.data_)[0], self.data_.input_names, "predict")
        return predictive.predict(self.result_, individual, pred_inputs, prob=prob, full_cov=full_cov,
                                  new_individual_hp=self.new_individual_hp, components=components)

    @property
    def mean_process_grid(self) -> np.ndarray:
        r"""``(N, d)`` inputs on which the fit represents :math:`\mu_0`: the union grid of the
        training inputs, or the inducing points when ``inducing`` is set."""
        return self.result_.problem.data_args.grid

    # --------------------------------------------------------------------------- save/load
    def get_params(self) -> dict[str, Any]:
        """The configuration given to ``__init__`` (scikit-learn style)."""
        return {name: getattr(self, name) for name in _PARAMS}

    def save(self, path) -> None:
        """Save the fit (:attr:`result_`) and this configuration to netCDF (see :mod:`magma_pymc.persistence`)."""
        from magma_pymc.persistence import save_result, settings_record

        result = self.result_
        save_result(result, path, settings_record(self.get_params(), result.prior_mean, result.data.input_names))

    @classmethod
    def load(cls, path, *, mean_kernel: Kernel | None = None, kernel: Kernel | None = None,
             prior_mean: Any = None) -> Magma:
        """Load a model saved with :meth:`save`; it predicts exactly as the saved one. Custom kernels or a
        callable prior mean must be passed again as keyword arguments (``mean_kernel=``, ``kernel=``,
        ``prior_mean=``); they are checked against the saved model's kernels. A malformed or tampered
        file raises :class:`~magma_pymc.files.ModelFileError` (a ``ValueError``) naming the file and
        the field; a file of an incompatible layout names the versions."""
        from magma_pymc.persistence import read_result, restored_result, settings_from_record

        saved = read_result(path)
        model = cls(**settings_from_record(saved.config, mean_kernel=mean_kernel, kernel=kernel, prior_mean=prior_mean))
        result = restored_result(saved, model, path)
        model._set_result(result, converged=saved.converged, n_iter=saved.n_iter,
                          log_likelihood=float(saved.tree.attrs.get("log_likelihood", np.nan)))
        return model

    # ------------------------------------------------------------------------- PyMC model
    def build_model(
        self,
        data: Any | None = None,
        *,
        priors: Mapping[str, Any] | None = None,
        jitter: float = MODEL_JITTER,
        noncentred: bool = False,
    ) -> pm.Model:
        r"""The MAGMA model declared in PyMC (see :func:`magma_pymc.model.build_model`), for ``data``
        (default: the training data), with the default priors centred on the data-driven initial HP
        (or ``priors``). Visualise it with ``pm.model_to_graphviz(model.build_model())``; sample it
        (latent :math:`\mu_0` and :math:`f_i`, small data only) with ``fit(..., method="nuts",
        marginalised=False)``."""
        from magma_pymc.model import build_model

        train = self.data_ if data is None else as_training_data(data, input_dim=self.mean_kernel.input_dim)
        spec = self._spec(train)
        return build_model(
            train, self.mean_kernel, self.kernel, resolve_prior_mean(self.prior_mean, train), common_hp=self.common_hp,
            centres=spec.centres, priors=priors, jitter=jitter, noncentred=noncentred,
        )

    # ------------------------------------------------------------------- fitted attributes
    @property
    def result_(self) -> FitResult:
        """The fit (:class:`~magma_pymc.fit_result.FitResult`); raises before :meth:`fit`."""
        self._check_fitted()
        return self._result

    data_ = property(lambda self: self.result_.data, doc="The validated training data.")
    idata_ = property(lambda self: self.result_.tree, doc="Results tree (layout in :mod:`magma_pymc.results`).")
    # Read-only views of the fit, for code written before FitResult: point estimate, problem, m0.
    _state = property(lambda self: self.result_.point)
    _problem_ = property(lambda self: self.result_.problem)
    _prior_mean_value = property(lambda self: self.result_.prior_mean)

    def _set_result(self, result: FitResult, *, converged: bool, n_iter: int, log_likelihood: float | None = None) -> None:
        """Adopt ``result`` and the attributes derived from it (the one place fitted state is written)."""
        # Everything that can fail first, then the assignments: a fit that raises leaves the model as it was.
        ids = None if self.common_hp else result.data.ids
        hyperparameters = HyperParameters.from_log(
            self.mean_kernel, self.kernel, result.point.mean_log_params, result.point.log_params, ids
        )
        log_likelihood = float(result.tree.attrs["log_likelihood"]) if log_likelihood is None else float(log_likelihood)
        self._result, self.hyperparameters_, self.log_likelihood_ = result, hyperparameters, log_likelihood
        self.converged_, self.n_iter_ = converged, n_iter

    def _check_fitted(self) -> None:
        if not hasattr(self, "_result"):
            raise NotFittedError("this Magma model is not fitted yet: call .fit(data) first")

    def _spec(self, train: TrainingData) -> ModelSpec:
        """Kernels, HP sharing, IDs and the default prior centres (the data-driven initial HP)."""
        initial = self.initial_hyperparameters(train)
        centres = (np.log(initial.mean_process.to_numpy()), np.log(initial.individual.to_numpy()[0]))
        return ModelSpec(self.mean_kernel, self.kernel, self.common_hp, tuple(train.ids), centres)

    def _problem(self, train: TrainingData, m0: Callable[[np.ndarray], np.ndarray]) -> Problem:
        return build_problem(train, m0, self.mean_kernel, self.kernel, common_hp=self.common_hp,
                             compile_mode=self.compile_mode, inducing=self.inducing, mean_step=self.mean_step)
