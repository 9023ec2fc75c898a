r"""Full-Bayesian MAGMA: NUTS over the hyper-parameters, :math:`\mu_0` integrated out (theory page, *Marginal likelihood*).

Target. With :math:`\Theta = (\theta_0, \theta_i, \sigma_i^2)` on the log scale,

.. math::

    \log p(\log\Theta \mid y) = \log p(y \mid \Theta) + \log p(\log\Theta) + \text{const},

where :math:`\log p(y \mid \Theta)` is the exact marginal likelihood of theory page, *Marginal likelihood*
(:math:`\mu_0` integrated out analytically, the E-step graph :func:`magma_pymc.compiled.build_estep_for`),
added to the PyMC model as ``pm.Potential("marginal_likelihood", ...)``, and the priors are those of
:func:`magma_pymc.model.log_hp_variables`: by default independent :math:`\mathcal N(c, 2^2)` on
every log HP, centred on the data-driven :meth:`~magma_pymc.Magma.initial_hyperparameters`.

Rao-Blackwellisation. The draws :math:`\Theta^{(s)}` become the components of the
:class:`~magma_pymc.fit_result.FitResult`; the hyper-posterior of :math:`\mu_0` and predictions are
their Gaussian mixture (:mod:`magma_pymc.predictive`, :mod:`magma_pymc.mixture`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import xarray as xr

from magma_pymc.compiled import build_estep_for, sampling_mode
from magma_pymc.data import TrainingData
from magma_pymc.diagnostics import check_diagnostics
from magma_pymc.em import EMState, Problem, estep
from magma_pymc.fit_result import FitResult, flat_log_draws, log_draws
from magma_pymc.hyperposterior import TrainingTensors
from magma_pymc.jitter import SAMPLING_JITTER
from magma_pymc.mixture import GaussianMixture
from magma_pymc.model import (
    LOG_HP,
    MEAN_LOG_HP,
    LogPriorFactory,
    ModelSpec,
    build_model,
    hp_coords,
    log_hp_variables,
)
from magma_pymc.params import NOISE
from magma_pymc.results import hyperposterior_dataset, observed_dataset
from magma_pymc.validation import check_count

__all__ = ["NUTS_DEFAULTS", "SAMPLING_JITTER", "build_marginal_model", "fit_nuts"]

#: Keyword arguments of ``Magma.fit(..., method="nuts")`` and their defaults.
NUTS_DEFAULTS: dict[str, Any] = dict(draws=1000, tune=1000, chains=4, random_seed=None, nuts_sampler="pymc",
                                     target_accept=0.9, priors=None, thin=1, progressbar=False,
                                     marginalised=True, compile_mode=None)


def build_marginal_model(
    spec: ModelSpec, problem: Problem, jitter: float, priors: Mapping[str, LogPriorFactory] | None = None
) -> pm.Model:
    r"""PyMC model of the log HP with :math:`\mu_0` marginalised (module docstring).

    Free variables ``log_mu0_hp`` (dims ``mean_hp``) and ``log_hp`` (dims ``hp``, or
    ``(individual, hp)`` for different HP); Deterministics of the natural-scale HP named as in
    :func:`magma_pymc.results.hp_dataset` (``mu0_variance``, ..., ``noise``); the likelihood is
    ``pm.Potential("marginal_likelihood")``, :math:`-\infty` where a Cholesky factorisation fails.
    The training arrays enter as ``pm.Data`` so that the compiled graph is reused across data sets.
    ``priors`` as in :func:`magma_pymc.model.build_model`.
    """
    args = problem.data_args
    with pm.Model(coords=hp_coords(spec)) as pm_model:
        data = TrainingTensors(
            pm.Data("grid", args.grid), pm.Data("inputs", args.inputs), pm.Data("residuals", args.residuals),
            pm.Data("mask", args.mask), pm.Data("index", args.index), pm.Data("jitter", np.asarray(jitter)),
        )
        mean_log, log_hp = log_hp_variables(spec, priors)
        step = build_estep_for(problem.graphs, spec.mean_kernel, spec.kernel, mean_log, log_hp, data)
        loglik = step.log_likelihood
        pm.Potential("marginal_likelihood", pt.switch(pt.isnan(loglik), -np.inf, loglik))
    return pm_model


def fit_nuts(
    spec: ModelSpec, problem: Problem, state: EMState, data: TrainingData,
    prior_mean: Callable[[np.ndarray], np.ndarray], *, initial: bool = False, model_compile_mode: str = "CVM",
    draws: int = 1000, tune: int = 1000, chains: int = 4, random_seed: Any = None, nuts_sampler: str = "pymc",
    target_accept: float = 0.9, priors: Mapping[str, LogPriorFactory] | None = None, thin: int = 1,
    progressbar: bool = False, marginalised: bool = True, compile_mode: str | None = None,
) -> FitResult:
    r"""Sample the HP posterior with NUTS; the :class:`FitResult` of the (thinned) draws.

    ``state`` holds the starting HP (used as ``initvals`` when ``initial``; otherwise PyMC starts
    around the prior centres) and the jitter; ``thin`` keeps every ``thin``-th draw for the
    hyper-posterior of :math:`\mu_0` and for predictions (the full chains stay in ``posterior``).
    The record's tree holds ``posterior``, ``sample_stats``, ``constant_data`` from ``pm.sample``,
    plus ``hyperposterior`` -- per-draw ``mu0_mean_draws`` (chain, draw, input) and the mixture
    ``mu0_mean``/``mu0_cov`` -- and ``observed_data``; its point estimate is the posterior
    **median** of each HP (of its logarithm, over all draws); ``attrs["diagnostics"]`` lists the
    problems :func:`magma_pymc.diagnostics.check_diagnostics` found (``"ok"``: none).

    ``marginalised=False`` samples the literal model instead (:func:`magma_pymc.model.build_model`,
    non-centred: :math:`\mu_0` and every :math:`f_i` latent), same priors and jitter: the same HP
    posterior at a far higher cost, as a cross-check on small data. ``compile_mode`` is the
    PyTensor mode of the sampler's log-density (default: ``model_compile_mode``, or ``"CVM"``
    if that runs Python implementations, :func:`magma_pymc.compiled.sampling_mode`; ``"NUMBA"``
    evaluates small graphs about 7x faster than ``"CVM"`` after a compile of tens of seconds).
    """
    # Before anything runs: draws=0 or chains=0 would end in a division by zero after sampling.
    thin, draws, chains = check_count(thin, "thin"), check_count(draws, "draws"), check_count(chains, "chains")
    tune = check_count(tune, "tune", minimum=0)
    if not isinstance(target_accept, float | int) or isinstance(target_accept, bool) or not 0 < target_accept < 1:
        raise ValueError(f"target_accept must be a number strictly between 0 and 1, got {target_accept!r}")
    _, state = estep(state, problem)  # grows the jitter if the starting HP need it
    jitter = max(state.jitter, SAMPLING_JITTER * problem.output_scale)
    if marginalised:
        pm_model = build_marginal_model(spec, problem, jitter, priors)
    else:
        pm_model = build_model(data, spec.mean_kernel, spec.kernel, prior_mean, common_hp=spec.common_hp,
                               centres=spec.centres, priors=priors, jitter=jitter, noncentred=True)
    options = dict(initvals={MEAN_LOG_HP: state.mean_log_params, LOG_HP: state.log_params}) if initial else {}
    if nuts_sampler == "pymc":
        options["compile_kwargs"] = {"mode": compile_mode or sampling_mode(model_compile_mode)}
    with pm_model, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS", category=UserWarning)
        tree = pm.sample(draws=draws, tune=tune, chains=chains, random_seed=random_seed, nuts_sampler=nuts_sampler,
                         target_accept=target_accept, progressbar=progressbar, compute_convergence_checks=False,
                         **options)
    diagnostics = check_diagnostics(tree)
    mean_log, log_params = log_draws(tree, 1)
    point = EMState(np.median(mean_log, axis=(0, 1)), np.median(log_params, axis=(0, 1)), jitter)
    mean_log, log_params = mean_log[:, ::thin], log_params[:, ::thin]
    log_likelihood = estep(point, problem)[0].log_likelihood
    tree.update({"hyperposterior": xr.DataTree(_hyperposterior_group(problem, data, prior_mean, tree, mean_log,
                                                                     log_params, thin, jitter)),
                 "observed_data": xr.DataTree(observed_dataset(data))})
    tree.attrs.update(method="nuts", common_hp=int(spec.common_hp), jitter=jitter, thin=int(thin),
                      log_likelihood=log_likelihood, n_individuals=data.n_individuals,
                      nuts_sampler=nuts_sampler, marginalised=int(marginalised),
                      diagnostics="; ".join(diagnostics) or "ok")
    return FitResult("nuts", *flat_log_draws(tree, thin), np.ones(1), point, problem, data, prior_mean,
                     (*spec.kernel.names, NOISE), tree)


def _hyperposterior_group(
    problem: Problem, data: TrainingData, prior_mean, tree: xr.DataTree, mean_log: np.ndarray,
    log_params: np.ndarray, thin: int, jitter: float,
) -> xr.Dataset:
    """Per-draw E-step means of :math:`\\mu_0` on the grid and their mixture mean/covariance."""
    grid = problem.data_args.grid  # the union grid, or the inducing points
    chains, draws = mean_log.shape[:2]
    mixture = GaussianMixture()
    for c in range(chains):
        for d in range(draws):
            outputs = problem.graphs.estep(mean_log[c, d], log_params[c, d], *problem.data_args, jitter)
            mixture.add(outputs[0], outputs[1])
    means = np.array(mixture.means).reshape(chains, draws, -1)
    mix_mean, mix_cov = mixture.moments()
    m0 = prior_mean(grid)
    ds = hyperposterior_dataset(grid, data.input_names, m0 + mix_mean, mix_cov)
    ds["mu0_mean_draws"] = (("chain", "draw", "input"), m0 + means)
    return ds.assign_coords(chain=tree["posterior"]["chain"].values, draw=tree["posterior"]["draw"].values[::thin])
