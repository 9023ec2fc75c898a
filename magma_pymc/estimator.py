"""``Magma``: configuration in ``__init__``, ``fit(data) -> self``, then predictions.

>>> import magma_pymc as mp
>>> sim = mp.simulate(n_individuals=20, n_points=30, seed=1)
>>> model = mp.Magma(common_hp=True).fit(sim.data)          # doctest: +SKIP
>>> pred = model.predict(new_observed, inputs)             # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import numbers
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import pymc as pm
import xarray as xr

from magma_pymc.compiled import DEFAULT_MODE, blas_limited, graphs_for
from magma_pymc.data import MagmaInputError, TrainingData, as_individual, as_inputs, as_training_data
from magma_pymc.em import JITTER_DEFAULT, EMState, Problem, run_em
from magma_pymc.kernels import Kernel, SquaredExponential
from magma_pymc.params import HyperParameters
from magma_pymc.priors import normal_log_prior
from magma_pymc.model import PRIOR_SD
from magma_pymc.predict import fit_new_individual, mean_process_at, predict_individual
from magma_pymc.results import gaussian_dataset, hp_dataset, latent_bounds, training_datatree
from magma_pymc.warnings import ConvergenceWarning, NumericalWarning
from magma_pymc.warnings import warn as _warn

__all__ = ["Magma"]

PriorMean = float | Callable[[np.ndarray], np.ndarray] | None


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
        How :meth:`predict` fits a new individual's HP when HP differ (theory page, *Prediction*):
        ``"map"`` (default) maximises its likelihood times a Gaussian prior on the log HP fitted to
        the training individuals' log HP (the population the new individual comes from);
        ``"ml"`` maximises the likelihood alone, as the MAGMA paper. With few observed points the
        likelihood alone often drives the noise towards zero and the intervals collapse (measured
        on held-out children of ``weight``: 95 % intervals covering 52 % of points with ``"ml"``,
        77 % with ``"map"``, and a lower MSE).
    mean_process_prior
        ``"weak"`` (default): EM maximises the likelihood times a weakly informative, boundary-avoiding
        prior on the mean-process log HP (:mod:`magma_pymc.priors`), so that a variance cannot
        collapse to 0 nor a lengthscale stop on its bound without cause; ``None``: maximum
        likelihood (as the MAGMA paper). ``fit(..., priors=...)`` replaces it by the given priors on all HP.

    Attributes
    ----------
    hyperparameters_ : HyperParameters
        Fitted HP on the natural scale (layout in :mod:`magma_pymc.params`).
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
        new_individual_hp: Literal["map", "ml"] = "map",
        mean_process_prior: Literal["weak"] | None = "weak",
    ) -> None:
        self.common_hp = common_hp
        self.mean_kernel = mean_kernel if mean_kernel is not None else SquaredExponential()
        self.kernel = kernel if kernel is not None else SquaredExponential()
        self.prior_mean = prior_mean
        self.max_iter = max_iter
        self.tol = tol
        self.compile_mode = compile_mode
        self.jitter = jitter
        if mean_step not in ("marginal", "expected"):
            raise ValueError(f"mean_step must be 'marginal' or 'expected', got {mean_step!r}")
        self.mean_step = mean_step
        _check_settings(common_hp, max_iter, tol, jitter)
        self.inducing = _check_inducing(inducing, self.mean_kernel.input_dim)
        if new_individual_hp not in ("map", "ml"):
            raise ValueError(f"new_individual_hp must be 'map' or 'ml', got {new_individual_hp!r}")
        self.new_individual_hp = new_individual_hp
        if mean_process_prior not in ("weak", None):
            raise ValueError(f"mean_process_prior must be 'weak' or None, got {mean_process_prior!r}")
        self.mean_process_prior = mean_process_prior
        if self.inducing is not None and mean_step != "marginal":
            raise ValueError(
                "inducing points need mean_step='marginal': in the projected model the data depend on the "
                "mean-process HP through the projection, which the textbook ('expected') M-step ignores"
            )

    # ------------------------------------------------------------------------------------ fit
    @blas_limited
    def fit(
        self,
        data: Any,
        *,
        method: Literal["em", "fixed", "nuts"] = "em",
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
            posterior (:mod:`magma_pymc.bayes`; ``hyperparameters`` then start the chains).
        hyperparameters
            Initial values for EM, or the fixed values. A :class:`HyperParameters` or a dict
            ``{"mean_process": {"variance": ..., "lengthscale": ...}, "individual": {"variance": ...,
            "lengthscale": ..., "noise": ...}}`` (``individual`` may also be a DataFrame indexed by
            ID, for different HP). Default for EM: :meth:`initial_hyperparameters`.
        **data_options
            Passed to :func:`magma_pymc.data.as_training_data` (``id_col``, ``input_cols``,
            ``output_col``, ``duplicates``). With ``method="nuts"`` also the sampler options of
            :data:`magma_pymc.bayes.NUTS_DEFAULTS` (``draws``, ``tune``, ``chains``, ``random_seed``,
            ``nuts_sampler``, ``target_accept``, ``priors``, ``thin``, ``progressbar``). With
            ``method="em"``, ``priors`` (a mapping as for NUTS; ``{}`` for the default priors) makes
            EM find the MAP under those priors, the mode of the posterior NUTS samples; ``em_trace``
            then also holds ``log_posterior`` (``log_likelihood`` plus the log prior).
        """
        # --- NUTS (magma_pymc.bayes): sampler options travel in **data_options ---
        from magma_pymc.bayes import NUTS_DEFAULTS

        nuts_options = {k: data_options.pop(k) for k in NUTS_DEFAULTS if k in data_options}
        map_priors = nuts_options.pop("priors", None) if method == "em" else None
        if nuts_options and method != "nuts":
            raise ValueError(f"sampler options {sorted(nuts_options)} need method='nuts'")
        # --- end NUTS ---
        start = time.perf_counter()
        if method not in ("em", "fixed", "nuts"):
            raise ValueError(f"method must be 'em', 'fixed' or 'nuts', got {method!r}")
        if method == "fixed" and hyperparameters is None:
            raise ValueError("method='fixed' needs hyperparameters=")
        train = as_training_data(data, input_dim=self.mean_kernel.input_dim, **data_options)
        self._check_kernels(train)
        self.data_ = train
        self._prior_mean_value = self._resolve_prior_mean(train)
        self._prior_mean_value(train.grid)  # checks a callable prior mean early, on the distinct inputs
        _warn_far_inputs(train.grid, _scales(train)[0], train.input_names, "training data")
        problem = self._problem(train)
        if hyperparameters is None:
            hp = self.initial_hyperparameters(train)
        else:
            hp = HyperParameters.coerce(hyperparameters, self.mean_kernel, self.kernel)
        mean_log, log_params = hp.to_log(self.mean_kernel, self.kernel, None if self.common_hp else train.ids)
        state = EMState(mean_log, log_params, self.jitter * problem.output_scale)
        # --- NUTS (magma_pymc.bayes) ---
        if method == "nuts":
            from magma_pymc.bayes import fit_nuts

            fit_nuts(self, problem, state, initial=hyperparameters is not None, **nuts_options)
            self.fit_seconds_ = time.perf_counter() - start
            return self
        # --- end NUTS ---
        if map_priors is not None:  # EM-MAP under the priors NUTS would use
            from magma_pymc.bayes import compile_log_priors

            problem = dataclasses.replace(problem, log_priors=compile_log_priors(self, map_priors))
        elif self.mean_process_prior == "weak" and method == "em":  # magma_pymc.priors
            centre = self.initial_hyperparameters(train).mean_process.to_numpy()
            problem = dataclasses.replace(problem, log_priors=(normal_log_prior(np.log(centre), PRIOR_SD), None))
        trace = run_em(state, problem, max_iter=self.max_iter if method == "em" else 0, tol=self.tol)
        self.hp_at_bounds_ = self._warn_hp_at_bounds(trace.state, problem, train) if method == "em" else []
        self._state, self._problem_ = trace.state, problem
        ids = None if self.common_hp else train.ids
        self.hyperparameters_ = HyperParameters.from_log(
            self.mean_kernel, self.kernel, trace.state.mean_log_params, trace.state.log_params, ids
        )
        self.log_likelihood_ = trace.estep.log_likelihood
        # An HP stopped on its box constraint is not a converged estimate, whatever the likelihood did.
        self.converged_ = trace.converged and not self.hp_at_bounds_
        self.n_iter_ = len(trace.log_likelihood) - 1
        self.idata_ = self._datatree(trace, method)
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def initial_hyperparameters(self, data: Any) -> HyperParameters:
        """Data-driven starting values of EM.

        Variances start at the variance of all outputs (the noise at a tenth of it), lengthscales
        at a tenth of the input range (the largest range over input dimensions), other
        parameters at 1; values given in a kernel's ``initial`` take precedence.
        """
        train = data if isinstance(data, TrainingData) else as_training_data(data)
        input_range, output_var = _scales(train)
        mean_log = self.mean_kernel.initial_log_params(input_range, output_var)
        log_params = np.append(self.kernel.initial_log_params(input_range, output_var), np.log(0.1 * output_var))
        if not self.common_hp:
            log_params = np.tile(log_params, (train.n_individuals, 1))
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
        self._check_fitted()
        from magma_pymc.bayes import hyperposterior_nuts, is_nuts  # --- NUTS: mixture over draws ---

        if is_nuts(self):
            return hyperposterior_nuts(self, inputs, prob=prob)
        x = self.mean_process_grid if inputs is None else as_inputs(inputs, input_dim=self.data_.input_dim)
        mean, cov = self._mean_process_at(x)
        return gaussian_dataset(x, self.data_.input_names, mean, cov, prob, full_cov=True)

    @blas_limited
    def predict(
        self,
        new_data: Any,
        inputs: Any,
        *,
        prob: float = 0.95,
        full_cov: bool = False,
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

        Returns
        -------
        xarray.Dataset
            On dim ``input``: ``mean``; predictive ``variance``, ``lower``, ``upper`` (for a new
            noisy observation, including :math:`\sigma_*^2`); ``latent_variance``,
            ``latent_lower``, ``latent_upper`` (for :math:`\mu_0 + f_*`, without noise). The new
            individual's HP are in ``attrs`` (``hp_source``: ``"common"``, ``"map"`` or ``"fitted"``
            (``new_individual_hp="ml"``) or, for Type II with different HP, ``"median"`` of the
            training individuals' HP).
        """
        self._check_fitted()
        from magma_pymc.bayes import is_nuts, predict_nuts  # --- NUTS: mixture over draws ---

        if is_nuts(self):
            return predict_nuts(self, new_data, inputs, prob=prob, full_cov=full_cov, **data_options)
        d = self.data_.input_dim
        individual = as_individual(new_data, input_dim=d, **data_options)
        pred_inputs = as_inputs(inputs, input_dim=d)
        joint_inputs = np.concatenate([individual.inputs, pred_inputs])
        _warn_far_inputs(joint_inputs, _scales(self.data_)[0], self.data_.input_names, "predict")
        joint_mean, joint_cov = self._mean_process_at(joint_inputs)
        n_obs = individual.n_points
        graphs, problem = self._problem_.graphs, self._problem_
        jitter = self._state.jitter
        hp = fit_new_individual(
            graphs,
            individual,
            joint_mean[:n_obs],
            joint_cov[:n_obs, :n_obs],
            self._state.log_params,
            problem.bounds[: len(self.kernel.names) + 1],
            jitter,
            empirical_prior=self.new_individual_hp == "map",
        )
        pred = predict_individual(graphs, individual, pred_inputs, joint_mean, joint_cov, hp, jitter)
        ds = gaussian_dataset(pred_inputs, self.data_.input_names, pred.mean, pred.predictive_cov, prob, full_cov)
        ds = latent_bounds(ds, pred, prob)
        ds.attrs.update(
            individual=str(individual.id),
            prediction_type="I" if n_obs else "II",
            hp_source=hp.source,
            **{f"hp_{name}": float(v) for name, v in zip((*self.kernel.names, "noise"), np.exp(hp.log_params), strict=True)},
        )
        return ds

    @property
    def mean_process_grid(self) -> np.ndarray:
        r"""``(N, d)`` inputs on which the fit represents :math:`\mu_0`: the union grid of the
        training inputs, or the inducing points when ``inducing`` is set."""
        self._check_fitted()
        return self._problem_.data_args[0]

    # --------------------------------------------------------------------------- save/load
    def save(self, path) -> None:
        """Save the fitted model to netCDF (see :mod:`magma_pymc.persistence`)."""
        from magma_pymc.persistence import save_model

        save_model(self, path)

    @classmethod
    def load(cls, path, **kwargs: Any) -> Magma:
        """Load a model saved with :meth:`save`; custom kernels or a callable prior mean must be
        passed again as keyword arguments (``mean_kernel=``, ``kernel=``, ``prior_mean=``)."""
        from magma_pymc.persistence import load_model

        return load_model(path, **kwargs)

    # ------------------------------------------------------------------------- PyMC model
    def build_model(
        self,
        data: Any | None = None,
        *,
        priors: Mapping[str, Any] | None = None,
        jitter: float = 1e-8,
        noncentred: bool = False,
    ) -> pm.Model:
        r"""The MAGMA model declared in PyMC (see :func:`magma_pymc.model.build_model`), for ``data``
        (default: the training data), with the default priors centred on the data-driven initial HP
        (or ``priors``). Visualise it with ``pm.model_to_graphviz(model.build_model())``; sample it
        (latent :math:`\mu_0` and :math:`f_i`, small data only) with ``fit(..., method="nuts",
        marginalised=False)``."""
        from magma_pymc.model import build_model

        if data is None:
            self._check_fitted()
            train = self.data_
        else:
            train = as_training_data(data, input_dim=self.mean_kernel.input_dim)
        initial = self.initial_hyperparameters(train)
        centres = (
            np.log(initial.mean_process.to_numpy()),
            np.log(initial.individual.to_numpy()[0]),
        )
        return build_model(
            train, self.mean_kernel, self.kernel, self._resolve_prior_mean(train), common_hp=self.common_hp,
            centres=centres, priors=priors, jitter=jitter, noncentred=noncentred,
        )

    # -------------------------------------------------------------------------- internals
    def _check_fitted(self) -> None:
        if not hasattr(self, "hyperparameters_"):
            raise RuntimeError("this Magma model is not fitted yet: call .fit(data) first")

    def _check_kernels(self, train: TrainingData) -> None:
        for role, kern in (("mean_kernel", self.mean_kernel), ("kernel", self.kernel)):
            if kern.input_dim != train.input_dim:
                raise ValueError(
                    f"{role} acts on {kern.input_dim}-dimensional inputs but the data have {train.input_dim} "
                    f"input column(s) {train.input_names}"
                )

    def _warn_hp_at_bounds(self, state: EMState, problem: Problem, train: TrainingData) -> list[str]:
        """:class:`ConvergenceWarning` naming every fitted HP that ended on its box constraint (a
        start far from any optimum, or HP the data do not identify); returns their descriptions."""
        names = (*self.kernel.names, "noise")
        blocks = [("", [f"mu0_{n}" for n in self.mean_kernel.names], state.mean_log_params, problem.mean_bounds)]
        rows = np.reshape(state.log_params, (-1, len(names)))
        bounds = np.reshape(problem.bounds, (len(rows), len(names), 2))
        for r, (row, row_bounds) in enumerate(zip(rows, bounds, strict=True)):
            blocks.append(("" if self.common_hp else f"individual {train.ids[r]!r} ", names, row, row_bounds))
        hits = [
            f"{who}{name} = {np.exp(value):.3g} ({'lower' if value - low < high - value else 'upper'})"
            for who, block_names, values, block_bounds in blocks
            for name, value, (low, high) in zip(block_names, values, block_bounds, strict=True)
            if min(value - low, high - value) < _AT_BOUND
        ]
        if hits:
            more = f" and {len(hits) - 5} more" if len(hits) > 5 else ""
            _warn(
                f"EM ended with hyper-parameter(s) on their bounds: {'; '.join(hits[:5])}{more}. The data may not "
                "identify them, or EM started far from an optimum: try other starting values "
                "(fit(..., hyperparameters=...)) or check the data's scale (bounds: Kernel.log_bounds)",
                ConvergenceWarning,
            )
        return hits

    def _resolve_prior_mean(self, train: TrainingData) -> Callable[[np.ndarray], np.ndarray]:
        m0 = self.prior_mean
        if m0 is None:
            value = float(np.concatenate([ind.outputs for ind in train.individuals]).mean())
            return _Constant(value)
        if callable(m0):
            return _CheckedPriorMean(m0)
        try:
            value = float(m0)
        except (TypeError, ValueError):
            raise MagmaInputError(f"prior_mean must be a number, a callable or None, got {m0!r}") from None
        if not np.isfinite(value):
            raise MagmaInputError(f"prior_mean must be finite, got {value!r}")
        return _Constant(value)

    def _problem(self, train: TrainingData) -> Problem:
        projected = self.inducing is not None
        graphs = graphs_for(
            self.mean_kernel,
            self.kernel,
            common_hp=self.common_hp,
            common_grid=train.common_grid,
            mode=self.compile_mode,
            projected=projected,
        )
        m0 = self._prior_mean_value
        if graphs.fast_path:
            residuals = np.stack([ind.outputs for ind in train.individuals]) - m0(train.grid)[None, :]
        else:
            flat_inputs = train.inputs.reshape(-1, train.input_dim)
            residuals = (train.outputs - m0(flat_inputs).reshape(train.mask.shape)) * train.mask
        input_range, output_var = _scales(train)
        ind_bounds = [*self.kernel.log_bounds(input_range, output_var), (np.log(1e-8 * output_var), np.log(1e4 * output_var))]
        return Problem(
            graphs=graphs,
            data_args=(self._inducing_points(train) if projected else train.grid, train.inputs, residuals, train.mask, train.index),
            mean_bounds=self.mean_kernel.log_bounds(input_range, output_var),
            bounds=ind_bounds * (1 if self.common_hp else train.n_individuals),
            output_scale=output_var,
            mean_step=self.mean_step,
        )

    def _inducing_points(self, train: TrainingData) -> np.ndarray:
        if isinstance(self.inducing, int):
            low, high = train.grid.min(axis=0), train.grid.max(axis=0)
            return np.linspace(low, high, self.inducing)
        return self.inducing

    def _mean_process_at(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hp_args = (self._state.mean_log_params, self._state.log_params)
        return mean_process_at(
            self._problem_.graphs, hp_args, self._problem_.data_args, self._state.jitter, inputs, self._prior_mean_value(inputs)
        )

    def _datatree(self, trace, method: str) -> xr.DataTree:
        # IDs as strings here: hp_dataset's np.asarray(ids, dtype=str) fails on tuple IDs
        ids = None if self.common_hp else np.array([str(i) for i in self.data_.ids])
        names = (self.mean_kernel.names, self.kernel.names)
        posterior = hp_dataset(
            *names, trace.state.mean_log_params[None, None], trace.state.log_params[None, None], ("chain", "draw"), ids
        )
        em_trace = hp_dataset(*names, trace.mean_log_params, trace.log_params, ("em_iteration",), ids)
        em_trace["log_likelihood"] = ("em_iteration", trace.log_likelihood)
        if self._problem_.log_priors is not None:  # MAP mode
            em_trace["log_posterior"] = ("em_iteration", trace.log_posterior)
        em_trace = em_trace.assign_coords(em_iteration=np.arange(len(trace.log_likelihood)))
        em_trace.attrs.update(converged=int(trace.converged), interrupted=int(trace.interrupted), tol=self.tol)
        estep_result = trace.estep
        grid = self._problem_.data_args[0]
        grid_m0 = self._prior_mean_value(grid)
        attrs = {
            "method": method,
            "common_hp": int(self.common_hp),
            "jitter": trace.state.jitter,
            "log_likelihood": estep_result.log_likelihood,
            "n_individuals": self.data_.n_individuals,
            "inducing_points": 0 if self.inducing is None else len(grid),
        }
        return training_datatree(
            self.data_, posterior, grid_m0 + estep_result.mean, estep_result.cov, attrs, {"em_trace": em_trace}, grid
        )


class _Constant:
    """A constant prior mean, kept as a value so that it can be saved."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        return np.full(np.shape(inputs)[0], self.value)

    def __repr__(self) -> str:
        return f"{self.value!r}"


class _CheckedPriorMean:
    """A callable prior mean whose values are checked: shape ``(n,)`` (a scalar is broadcast), finite."""

    def __init__(self, function: Callable[[np.ndarray], np.ndarray]) -> None:
        self.function = function

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        n = np.shape(inputs)[0]
        values = np.asarray(self.function(inputs), dtype=float)
        if values.ndim == 0:
            values = np.full(n, float(values))
        if values.shape != (n,):
            raise MagmaInputError(
                f"prior_mean returned shape {values.shape} for {n} input(s) of shape {np.shape(inputs)}; "
                f"it must return one value per input row, shape ({n},)"
            )
        bad = ~np.isfinite(values)
        if bad.any():
            raise MagmaInputError(
                f"prior_mean returned {int(bad.sum())} NaN/inf value(s), e.g. at input(s) "
                f"{np.asarray(inputs)[bad][:3].tolist()}"
            )
        return values

    def __repr__(self) -> str:
        return repr(self.function)


def _check_settings(common_hp: Any, max_iter: Any, tol: Any, jitter: Any) -> None:
    """Early, explicit errors for the estimator's settings (a zero or NaN jitter could loop forever)."""
    if common_hp not in (True, False):
        raise ValueError(f"common_hp must be True or False, got {common_hp!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative integer, got {max_iter!r}")
    for name, value in (("tol", tol), ("jitter", jitter)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_inducing(inducing: Any, input_dim: int) -> int | np.ndarray | None:
    """``None``, an int >= 2 (1-D inputs only) or a finite ``(G, d)`` array of distinct points."""
    if inducing is None:
        return None
    if isinstance(inducing, numbers.Integral) and not isinstance(inducing, bool):
        if inducing < 2:
            raise ValueError(f"inducing must be at least 2 points, got {inducing}")
        if input_dim != 1:
            raise ValueError(
                f"inducing={inducing}: evenly spaced points are chosen for 1-D inputs only; with {input_dim}-d "
                "inputs pass a (G, d) array of inducing points"
            )
        return int(inducing)
    points = np.asarray(inducing, dtype=float)
    if points.ndim == 1 and input_dim == 1:
        points = points[:, None]
    if points.ndim != 2 or points.shape[1] != input_dim or points.shape[0] < 2:
        raise ValueError(f"inducing points must be a (G, {input_dim}) array with G >= 2, got shape {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError("inducing points contain NaN or inf")
    if len(np.unique(points, axis=0)) != len(points):
        raise ValueError("inducing points contain duplicates (their prior covariance would be singular)")
    return points


#: Distance (log scale) from a box constraint under which a fitted HP counts as on the bound.
_AT_BOUND = 1e-4

#: Inputs farther from 0 than this many input ranges make kernel distances lose precision.
FAR_INPUTS = 1e4


def _warn_far_inputs(inputs: np.ndarray, span: float, names: tuple[str, ...], where: str) -> None:
    """Warn when inputs are far from 0 relative to the training input range (``span``).

    ``pm.gp.cov`` kernels compute squared distances as ``|x|^2 + |y|^2 - 2 x.y``, which cancels
    catastrophically then (measured: inputs ``t + 1e6`` with ``t`` in [0, 10] change the
    log-likelihood by 0.27 and predictions by 1e-2; ``t + 1e8`` makes the E-step fail).
    """
    size = np.max(np.abs(inputs), axis=0) if inputs.size else np.zeros(len(names))
    far = size > FAR_INPUTS * span
    if far.any():
        _warn(
            f"{where}: input(s) {[n for n, f in zip(names, far, strict=True) if f]} reach {float(np.max(size[far])):.3g}, more "
            f"than {FAR_INPUTS:g} times the training input range {span:.3g}: kernel distances lose precision "
            "(|x|^2 + |y|^2 - 2xy); shift the inputs towards 0 (e.g. subtract the first training input)",
            NumericalWarning,
        )


def _scales(train: TrainingData) -> tuple[float, float]:
    """Input range (largest over dimensions) and output variance: the units of HP defaults and bounds."""
    outputs = np.concatenate([ind.outputs for ind in train.individuals])
    with np.errstate(over="ignore", invalid="ignore"):  # finite data whose spread overflows float64
        span = float(np.max(np.ptp(train.grid, axis=0))) if train.n_inputs > 1 else 1.0
        variance = float(np.var(outputs)) if outputs.size > 1 else 1.0
    for field, value, names in (("inputs", span, train.input_names), ("outputs", variance, ("Output",))):
        if not np.isfinite(value):
            size = {ind.id: float(np.max(np.abs(getattr(ind, field)))) for ind in train.individuals}
            worst = max(size, key=size.get)
            raise MagmaInputError(
                f"individual {worst!r}: {field} {names} as large as {size[worst]:.3g} make the "
                f"{'range' if field == 'inputs' else 'variance'} of the {field} overflow float64; rescale them"
            )
    return (span if span > 0 else 1.0), (variance if variance > 0 else 1.0)
