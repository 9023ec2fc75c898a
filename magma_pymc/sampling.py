r"""Full-Bayesian MAGMA: NUTS over the hyper-parameters, :math:`\mu_0` integrated out.

See the theory page, *Marginal likelihood*.

Target. With :math:`\Theta = (\theta_0, \theta_i, \sigma_i^2)` on the log scale,

.. math::

    \log p(\log\Theta \mid y) = \log p(y \mid \Theta) + \log p(\log\Theta) + \text{const},

where :math:`\log p(y \mid \Theta)` is the exact marginal likelihood of theory page, *Marginal likelihood*
(:math:`\mu_0` integrated out analytically; on the exact union grid the Op of
:mod:`magma_pymc.likelihood` with its closed-form gradient), added to the PyMC model as
``pm.Potential("marginal_likelihood", ...)`` (:func:`magma_pymc.marginal_model.sampling_model`), and the
priors are those of :func:`magma_pymc.model.log_hp_variables`: by default independent
:math:`\mathcal N(c, 2^2)` on every log HP, centred on the data-driven
:meth:`~magma_pymc.Magma.initial_hyperparameters`; with different HP, by default, the population
layer of :mod:`magma_pymc.hierarchical` on the individuals' log HP.

Options. Every ``pm.sample`` and NUTS-step option passes through
(:mod:`magma_pymc.sampler_options`: chains in parallel, progress bar on by default). The result's
``posterior`` holds the natural-scale HP; the log-scale variables the sampler moved are in
``unconstrained_posterior`` (:func:`magma_pymc.marginal_model.organise_posterior`).
:func:`fit_approximation` gives the same record from a Laplace approximation or ADVI
(:mod:`magma_pymc.approximations`).

Rao-Blackwellisation. The draws :math:`\Theta^{(s)}` become the components of the
:class:`~magma_pymc.fit_result.FitResult`; the hyper-posterior of :math:`\mu_0` and predictions are
their Gaussian mixture (:mod:`magma_pymc.predictive`, :mod:`magma_pymc.mixture`).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pymc as pm
import xarray as xr

from magma_pymc.approximations import APPROXIMATIONS, advi_posterior, laplace_posterior
from magma_pymc.compiled import sampling_mode
from magma_pymc.data import TrainingData
from magma_pymc.diagnostics import check_diagnostics
from magma_pymc.em import EMState, Problem, estep, run_em
from magma_pymc.fit_result import FitResult, flat_log_draws, log_draws
from magma_pymc.hierarchical import POPULATION_MEAN, POPULATION_OFFSET, POPULATION_SCALE, hierarchical_prior
from magma_pymc.jitter import SAMPLING_JITTER
from magma_pymc.map_priors import compile_log_priors
from magma_pymc.marginal_model import organise_posterior, sampling_model
from magma_pymc.mixture import GaussianMixture
from magma_pymc.model import LOG_HP, MEAN_LOG_HP, LogPriorFactory, ModelSpec, build_model
from magma_pymc.params import NOISE
from magma_pymc.results import hyperposterior_dataset, observed_dataset
from magma_pymc.sampler_options import (
    SAMPLE_DEFAULTS,
    accepted_options,
    resolve_nuts_sampler,
    sample_options,
    with_mass_matrix_default,
)
from magma_pymc.threads import limited_blas
from magma_pymc.validation import check_count

__all__ = ["NUTS_DEFAULTS", "MAGMA_OPTIONS", "SAMPLING_JITTER", "is_sampler_option", "build_marginal_model",
           "fit_nuts", "fit_approximation"]

#: Options of ``Magma.fit(method="nuts")`` that are the library's own (the others go to ``pm.sample``).
#: ``hierarchical=None``: the population layer with different HP (unless ``priors["hp"]`` is given).
MAGMA_OPTIONS: dict[str, Any] = dict(priors=None, thin=1, marginalised=True, compile_mode=None, hierarchical=None,
                                     likelihood="closed_form")
#: Keyword arguments of ``Magma.fit(..., method="nuts")`` with a default set by the library; every
#: other ``pm.sample`` / NUTS option is accepted too (:func:`magma_pymc.sampler_options.accepted_options`).
#: ``nuts_sampler="auto"``: nutpie where installed, else PyMC's
#: (:func:`~magma_pymc.sampler_options.resolve_nuts_sampler`).
NUTS_DEFAULTS: dict[str, Any] = {**SAMPLE_DEFAULTS, "nuts_sampler": "auto", **MAGMA_OPTIONS}
#: Options of the approximations (``method="laplace"``, ``"advi"``, ``"fullrank_advi"``).
APPROXIMATION_OPTIONS = frozenset({"draws", "random_seed", "priors", "thin", "hierarchical", "likelihood", "n",
                                   "progressbar", "compile_mode"})


def is_sampler_option(name: str, method: str = "nuts") -> bool:
    """Whether ``Magma.fit(method=method)`` takes ``name`` as an inference option (not a data option)."""
    if method in APPROXIMATIONS:
        return name in APPROXIMATION_OPTIONS
    return name in MAGMA_OPTIONS or name in accepted_options()


def _use_population(spec: ModelSpec, priors, hierarchical: bool | None) -> bool:
    if hierarchical is None:
        return not spec.common_hp and "hp" not in (priors or {})
    return bool(hierarchical)


def build_marginal_model(
    spec: ModelSpec, problem: Problem, jitter: float, priors: Mapping[str, LogPriorFactory] | None = None, *,
    hierarchical: bool | None = False, likelihood: str = "closed_form",
) -> pm.Model:
    r"""PyMC model of the log HP with :math:`\mu_0` marginalised.

    See the module docstring and :func:`magma_pymc.marginal_model.sampling_model`.

    Free variables ``log_mu0_hp`` (dims ``mean_hp``) and ``log_hp`` (dims ``hp``, or
    ``(individual, hp)`` for different HP; with the population layer, a Deterministic of
    ``population_mean``, ``population_scale`` and ``population_offset``); Deterministics of the
    natural-scale HP named as in :func:`magma_pymc.results.hp_dataset` (``mu0_variance``, ..., ``noise``);
    the likelihood is ``pm.Potential("marginal_likelihood")``, :math:`-\infty` where a Cholesky
    factorisation fails. The training arrays enter as ``pm.Data`` with named dims.
    ``priors`` as in :func:`magma_pymc.model.build_model`; ``hierarchical=None`` chooses the
    population layer for different HP.
    """
    return sampling_model(spec, problem.graphs, problem.data_args, jitter=jitter, priors=priors,
                          hierarchical=_use_population(spec, priors, hierarchical), likelihood=likelihood)


def _initial_values(state: EMState, population: bool) -> dict[str, np.ndarray]:
    """``initvals`` from a state: the log HP, or with a population layer its mean, scale and offsets."""
    if not population:
        return {MEAN_LOG_HP: state.mean_log_params, LOG_HP: state.log_params}
    mean = state.log_params.mean(axis=0)
    scale = np.maximum(state.log_params.std(axis=0), 0.05)
    return {MEAN_LOG_HP: state.mean_log_params, POPULATION_MEAN: mean, POPULATION_SCALE: scale,
            POPULATION_OFFSET: (state.log_params - mean) / scale}


def fit_nuts(
    spec: ModelSpec, problem: Problem, state: EMState, data: TrainingData,
    prior_mean: Callable[[np.ndarray], np.ndarray], *, initial: bool = False, model_compile_mode: str = "CVM",
    priors: Mapping[str, LogPriorFactory] | None = None, thin: int = 1, marginalised: bool = True,
    compile_mode: str | None = None, hierarchical: bool | None = None, likelihood: str = "closed_form",
    **sample_kwargs: Any,
) -> FitResult:
    r"""Sample the HP posterior with NUTS; the :class:`FitResult` of the (thinned) draws.

    ``state`` holds the starting HP (used as ``initvals`` when ``initial``; otherwise PyMC starts
    around the prior centres) and the jitter; ``thin`` keeps every ``thin``-th draw for the
    hyper-posterior of :math:`\mu_0` and for predictions (the full chains stay in the tree).
    ``sample_kwargs`` are ``pm.sample``'s and the NUTS step's options
    (:func:`magma_pymc.sampler_options.sample_options`: ``draws``, ``tune``, ``chains``, ``cores``,
    ``random_seed``, ``nuts_sampler``, ``target_accept``, ``init``, ``progressbar``, ...).
    ``hierarchical`` (default: with different HP) samples under the population layer of
    :mod:`magma_pymc.hierarchical`; ``likelihood`` ``"closed_form"`` (default) or ``"autodiff"``
    (:func:`magma_pymc.marginal_model.sampling_model`).
    The record's tree holds ``posterior`` (natural-scale HP), ``unconstrained_posterior`` (the
    log-scale variables sampled), ``sample_stats``, ``constant_data`` (named dims) from
    ``pm.sample``, plus ``hyperposterior`` -- per-draw ``mu0_mean_draws`` (chain, draw, input) and
    the mixture ``mu0_mean``/``mu0_cov`` -- and ``observed_data``; its point estimate is the
    posterior **median** of each HP (of its logarithm, over all draws); ``attrs["diagnostics"]``
    lists the problems :func:`magma_pymc.diagnostics.check_diagnostics` found (``"ok"``: none),
    ``attrs["divergences"]`` their number.

    ``marginalised=False`` samples the literal model instead (:func:`magma_pymc.model.build_model`,
    non-centred: :math:`\mu_0` and every :math:`f_i` latent), same priors and jitter: the same HP
    posterior at a far higher cost, as a cross-check on small data. ``compile_mode`` is the
    PyTensor mode of PyMC's sampler's log-density (default: ``model_compile_mode``, or ``"CVM"``
    if that runs Python implementations, :func:`magma_pymc.compiled.sampling_mode`); nutpie
    (``nuts_sampler="auto"`` where installed, or ``"nutpie"``) compiles it with Numba, one BLAS
    thread per chain.
    """
    thin = check_count(thin, "thin")
    options = sample_options({"nuts_sampler": "auto", **sample_kwargs})
    options["nuts_sampler"] = resolve_nuts_sampler(options["nuts_sampler"])
    _, state = estep(state, problem)  # grows the jitter if the starting HP need it
    jitter = max(state.jitter, SAMPLING_JITTER * problem.output_scale)
    population = _use_population(spec, priors, hierarchical)
    if marginalised:
        pm_model = build_marginal_model(spec, problem, jitter, priors, hierarchical=population, likelihood=likelihood)
    else:
        model_priors = {"hp": hierarchical_prior(spec.centres[1]), **(priors or {})} if population else priors
        pm_model = build_model(data, spec.mean_kernel, spec.kernel, prior_mean, common_hp=spec.common_hp,
                               centres=spec.centres, priors=model_priors, jitter=jitter, noncentred=True)
    if initial:
        options.setdefault("initvals", _initial_values(state, population))
    if options["nuts_sampler"] == "pymc":
        options.setdefault("compile_kwargs", {"mode": compile_mode or sampling_mode(model_compile_mode)})
    options = with_mass_matrix_default(options, population)
    # nutpie runs its chains as threads of this process: one BLAS thread each (more would oversubscribe the
    # cores; measured on a busy 2-core machine, 15 ms per gradient instead of 1.6 ms).
    blas_threads = 1 if options["nuts_sampler"] == "nutpie" else None
    with pm_model, warnings.catch_warnings(), limited_blas(blas_threads):
        warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS", category=UserWarning)
        tree = pm.sample(compute_convergence_checks=False, **options)
    tree = organise_posterior(tree)
    diagnostics = check_diagnostics(tree)
    tree.attrs.update(nuts_sampler=options["nuts_sampler"], marginalised=int(marginalised),
                      hierarchical=int(population), likelihood=likelihood,
                      divergences=int(tree["sample_stats"]["diverging"].sum()))
    return _draws_result("nuts", tree, problem, data, prior_mean, spec, jitter, thin, diagnostics)


def _em_start(spec: ModelSpec, problem: Problem, state: EMState, priors, population: bool) -> EMState:
    """EM's optimum from ``state``: the MAP under ``priors`` (independent priors), else the MLE."""
    if not population:
        problem = dataclasses.replace(problem, log_priors=compile_log_priors(spec, priors))
    return run_em(state, problem, max_iter=100, tol=1e-6).state


def _draws_result(method: str, tree: xr.DataTree, problem: Problem, data: TrainingData, prior_mean, spec: ModelSpec,
                  jitter: float, thin: int, diagnostics: list[str]) -> FitResult:
    """The :class:`FitResult` of posterior draws (NUTS or an approximation), its tree completed."""
    mean_log, log_params = log_draws(tree, 1)
    point = EMState(np.median(mean_log, axis=(0, 1)), np.median(log_params, axis=(0, 1)), jitter)
    mean_log, log_params = mean_log[:, ::thin], log_params[:, ::thin]
    log_likelihood = estep(point, problem)[0].log_likelihood
    tree.update({"hyperposterior": xr.DataTree(_hyperposterior_group(problem, data, prior_mean, tree, mean_log,
                                                                     log_params, thin, jitter)),
                 "observed_data": xr.DataTree(observed_dataset(data))})
    tree.attrs.update(method=method, common_hp=int(spec.common_hp), jitter=jitter, thin=int(thin),
                      log_likelihood=log_likelihood, n_individuals=data.n_individuals,
                      diagnostics="; ".join(diagnostics) or "ok")
    return FitResult(method, *flat_log_draws(tree, thin), np.ones(1), point, problem, data, prior_mean,
                     (*spec.kernel.names, NOISE), tree)


def fit_approximation(
    method: str, spec: ModelSpec, problem: Problem, state: EMState, data: TrainingData,
    prior_mean: Callable[[np.ndarray], np.ndarray], *, initial: bool = False, model_compile_mode: str = "CVM",
    draws: int = 1000, random_seed: Any = None, priors: Mapping[str, LogPriorFactory] | None = None, thin: int = 1,
    hierarchical: bool | None = None, likelihood: str = "closed_form", n: int = 20000, progressbar: bool = False,
    compile_mode: str | None = None,
) -> FitResult:
    """A Laplace approximation at the MAP or ADVI of the posterior NUTS samples, as a :class:`FitResult`.

    ``method="laplace"``, ``"advi"`` or ``"fullrank_advi"`` (``n`` iterations; :mod:`magma_pymc.approximations`);
    ``draws`` draws (one chain) with the same tree groups as :func:`fit_nuts` except ``sample_stats``. The Laplace MAP
    search starts from ``state`` if ``initial``, else from EM's optimum (the MAP under independent priors, the maximum
    likelihood under a population layer, which EM cannot optimise): the posterior can have several modes, and the prior
    centre may sit in the basin of a worse one.
    """
    if method not in APPROXIMATIONS:
        raise ValueError(f"method must be one of {APPROXIMATIONS}, got {method!r}")
    if thin < 1 or int(thin) != thin:
        raise ValueError(f"thin must be a positive integer, got {thin!r}")
    _, state = estep(state, problem)
    jitter = max(state.jitter, SAMPLING_JITTER * problem.output_scale)
    population = _use_population(spec, priors, hierarchical)
    pm_model = build_marginal_model(spec, problem, jitter, priors, hierarchical=population, likelihood=likelihood)
    mode = compile_mode or sampling_mode(model_compile_mode)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS", category=UserWarning)
        if method == "laplace":
            if not initial:  # GP posteriors are often multimodal: start the MAP search from EM's optimum
                state = _em_start(spec, problem, state, priors, population)
            start = _initial_values(state, population)
            posterior = laplace_posterior(pm_model, draws=draws, random_seed=random_seed, start=start, mode=mode)
        else:
            posterior = advi_posterior(pm_model, method=method, draws=draws, n=n, random_seed=random_seed,
                                       progressbar=progressbar)
    tree = organise_posterior(xr.DataTree.from_dict({"posterior": posterior}))
    tree.attrs.update(hierarchical=int(population), likelihood=likelihood,
                      **{f"{method}_{k}": v for k, v in posterior.attrs.items()})
    return _draws_result(method, tree, problem, data, prior_mean, spec, jitter, thin, [])


def _hyperposterior_group(
    problem: Problem, data: TrainingData, prior_mean, tree: xr.DataTree, mean_log: np.ndarray,
    log_params: np.ndarray, thin: int, jitter: float,
) -> xr.Dataset:
    r"""Per-draw E-step means of :math:`\mu_0` on the grid and their mixture mean/covariance."""
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
