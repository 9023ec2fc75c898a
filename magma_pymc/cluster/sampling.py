r"""Full-Bayesian MagmaClust: NUTS over the weights, the mean processes on the grid and every HP.

``MagmaClust.fit(data, method="nuts", **options)`` samples the model of
:func:`magma_pymc.cluster.model.build_cluster_model`, the labels summed out:

.. math::

    \log p(\pi, \gamma, \theta, \mu \mid y) = \sum_i \log\sum_k \pi_k\,\mathcal N\big(y_i; \mu_k(t_i), \Psi_i\big)
    + \sum_k \log\mathcal N\big(\mu_k; m, K_{\gamma_k} + jI\big) + \log p(\pi) + \log p(\log\gamma, \log\theta)
    + \text{const},

with :math:`\mu_k` latent on the union grid (``K x N`` values), sampled non-centred (:math:`\mu_k = m + L_k z_k`,
``noncentred=True`` of the model), :math:`\pi \sim \mathrm{Dirichlet}(\mathbf 1)` and :math:`\mathcal N(c, 2^2)`
priors on the log HP around VEM's partition-aware starting values (:func:`magma_pymc.cluster.init.initial_log_params`
at VEM's responsibilities; the mean-process centre averaged over clusters). Centred instead on MAGMA's
``initial_hyperparameters`` (individual variance = variance of all outputs, between-cluster spread included), the
prior favours a second mode where long-lengthscale individual processes absorb the cluster levels and the labels
mix: measured, one of two chains went there on the test data (max r_hat 1.5-1.8, 72-83 relabelled draws).

**Small data only.** The sampler moves ``K x N`` mean-process values plus the HP and weights, and every gradient
factorises the K prior covariances (``N x N``) and every :math:`\Psi_i`. Measured (``benchmarks/bench_cluster.py
nuts``, docs *Clustering*, 2 chains x (200 + 200)): K = 2, M = 8 x 6 points, N = 10 (28 sampled dims): 33 s CPU,
max r_hat 1.55; K = 3, M = 30 x 10, N = 10 (41 dims): 447 s CPU (3 ms a gradient, tree depth 7.5), max r_hat 1.14 --
both partitions recovered, neither chain pair converged at that length. Practical: a few clusters, tens of inputs
and individuals, thousands of draws; grids of hundreds of inputs are out of reach: use VEM there.
Predictions after a NUTS fit are VEM's (its :math:`q(\mu_k)`, HP and weights); the draws are for inference on the
weights, the mean processes, the HP and the labels.

1. **Start.** Variational EM first (cheap); every chain starts at its fit -- weights, log HP, and :math:`z_k` drawn
   from VEM's :math:`q(z_k)` (one draw per chain, so chains start apart but in the same labelling; log HP clipped to
   two prior sd around the prior centres) -- with
   ``init="adapt_diag"`` (no further jitter) unless ``init``/``initvals`` are given. The jitter is fixed at
   ``max(VEM's, SAMPLING_JITTER x output variance)``.
2. **Relabelling.** The posterior is invariant under permutations of the clusters, so a chain may switch labels.
   Each draw is mapped to VEM's cluster order by the permutation :math:`\sigma` minimising
   :math:`\sum_k \|\mu^{(s)}_{\sigma(k)} - \hat m_k\|^2` (``scipy.optimize.linear_sum_assignment``;
   :math:`\hat m_k` VEM's :math:`q(\mu_k)` mean); the number of relabelled draws is recorded
   (``idata_.attrs["relabelled_draws"]``, per draw ``sample_stats["relabelled"]``).
3. **Responsibilities.** Per draw :math:`p(Z_{ik} = 1 \mid y, \text{draw}) \propto \pi_k\,\mathcal N(y_i; \mu_k(t_i),
   \Psi_i)` (the model's ``component_log_likelihood``), averaged over draws: ``posterior_responsibilities_``
   (individuals x clusters), to compare with VEM's ``responsibilities_``.
4. **Diagnostics.** :math:`\hat R` and bulk ESS (ArviZ) over every sampled variable after relabelling, divergences;
   a :class:`~magma_pymc.exceptions.ConvergenceWarning` past :data:`~magma_pymc.diagnostics.MAX_RHAT` /
   :data:`~magma_pymc.diagnostics.MIN_ESS`; the figures in ``idata_.attrs``.

The log-density is compiled with Numba (``compile_kwargs={"mode": "NUMBA"}`` unless given): measured on K = 2,
N = 10, M = 8, one gradient costs 0.3 ms in Numba against 20-80 ms with the C backend (whose batched Cholesky and
triangular solves loop in Python), and Numba caches the compiled function on disk across data sets.
"""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pymc as pm
import xarray as xr
from scipy.linalg import solve_triangular
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp

from magma_pymc.cluster.init import initial_log_params
from magma_pymc.cluster.model import COMPONENT_LOG_LIKELIHOOD, PRIOR_SD, build_cluster_model
from magma_pymc.diagnostics import extreme, warn_on_problems
from magma_pymc.jitter import SAMPLING_JITTER
from magma_pymc.params import NOISE
from magma_pymc.results import input_coords
from magma_pymc.sampler_options import sample_options
from magma_pymc.settings import resolve_prior_mean, scales

if TYPE_CHECKING:
    from magma_pymc.cluster.estimator import MagmaClust

__all__ = ["PUBLIC", "SAMPLING_MODE", "fit_nuts", "relabel", "relabelling_permutations"]

PUBLIC = "MagmaClust.fit(method='nuts')"
#: PyTensor mode of the sampler's log-density (module docstring).
SAMPLING_MODE = "NUMBA"
#: Variables of the model with a ``cluster`` axis right after ``(chain, draw)``.
PER_CLUSTER = ("weights", "mu", "mu_white", "log_mu_hp")


def fit_nuts(model: MagmaClust, data: Any, method: str, *, responsibilities: Any = None, hyperparameters: Any = None,
             **options: Any) -> MagmaClust:
    """``model.fit(data, method="nuts", ...)``: VEM, then NUTS from its fit (module docstring).

    ``options``: the data options of :meth:`MagmaClust.fit` and every ``pm.sample`` / NUTS option
    (:func:`magma_pymc.sampler_options.sample_options`); an unknown one is a ``TypeError`` before any work.
    """
    from magma_pymc.estimator import _DATA_OPTIONS

    if method != "nuts":
        raise ValueError(f"method must be 'vem' or 'nuts', got {method!r}")
    sampler = sample_options({k: v for k, v in options.items() if k not in _DATA_OPTIONS}, public=PUBLIC)
    if model.inducing is not None:
        raise ValueError(f"{PUBLIC} samples the exact model on the union grid: inducing= is not supported")
    start = time.perf_counter()
    model.fit(data, responsibilities=responsibilities, hyperparameters=hyperparameters,
              **{k: v for k, v in options.items() if k in _DATA_OPTIONS})
    tree = sample_posterior(model, sampler)
    model.idata_ = tree
    table = tree["clusters"]["posterior_responsibilities"]
    model.posterior_responsibilities_ = pd.DataFrame(table.values, index=model.responsibilities_.index,
                                                     columns=model.responsibilities_.columns)
    model.fit_seconds_ = time.perf_counter() - start
    return model


def relabelling_permutations(mu: np.ndarray, reference: np.ndarray) -> np.ndarray:
    r"""Per draw, the permutation putting the draw's clusters in the reference order.

    ``mu`` is ``(..., K, N)`` (draws of the mean processes), ``reference`` ``(K, N)``. Returns ``(..., K)`` integer
    arrays ``p`` with ``mu[..., p, :]`` in the reference order: ``p`` minimises
    :math:`\sum_k \|\mu_{p_k} - \text{reference}_k\|^2` (the Hungarian algorithm, exact).
    """
    lead, (n_clusters, _) = mu.shape[:-2], reference.shape
    flat = mu.reshape(-1, *mu.shape[-2:])
    cost = ((reference[None, :, None, :] - flat[:, None, :, :]) ** 2).sum(axis=-1)      # (S, reference, draw)
    perms = np.array([linear_sum_assignment(c)[1] for c in cost], dtype=np.int64).reshape(-1, n_clusters)
    return perms.reshape(*lead, n_clusters)


def relabel(values: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """``values`` ``(C, D, K, ...)`` with the cluster axis of each draw reordered by ``perms`` ``(C, D, K)``."""
    index = perms.reshape(*perms.shape, *([1] * (values.ndim - 3)))
    return np.take_along_axis(values, np.broadcast_to(index, (*perms.shape, *values.shape[3:])), axis=2)


def _initial_values(model: MagmaClust, n_chains: int, rng: np.random.Generator,
                    centres: tuple[np.ndarray, np.ndarray]) -> list[dict[str, np.ndarray]]:
    r"""Per chain: VEM's weights and log HP, the whitened :math:`z_k` drawn from :math:`q(z_k) = N(\alpha_k, B_k^{-1})`.

    VEM's whitened form (:mod:`magma_pymc.cluster.linalg`): :math:`\hat m_k - m = L_k\alpha_k`, :math:`B_k = L_{B_k}
    L_{B_k}^\top`, so :math:`z_k = \alpha_k + L_{B_k}^{-\top} e`, :math:`e \sim \mathcal N(0, I)`.
    """
    state, posterior = model._state, model._estep.posterior
    mean_log = state.mean_log_params[0] if model.shared_mean_hp else state.mean_log_params
    # VEM maximises a bound without the priors and may leave a HP on its box bound (a noise of 1e-7), far in the
    # prior's tail, where the first adaptation steps are wild: start within two prior sd of the centres instead.
    mean_log = np.clip(mean_log, centres[0] - 2 * PRIOR_SD, centres[0] + 2 * PRIOR_SD)
    log_params = np.clip(state.log_params, centres[1] - 2 * PRIOR_SD, centres[1] + 2 * PRIOR_SD)
    starts = []
    for _ in range(n_chains):
        noise = rng.standard_normal(posterior.alpha.shape)[..., None]
        white = posterior.alpha + solve_triangular(posterior.chol_b, noise, lower=True, trans="T")[..., 0]
        starts.append({"weights": np.exp(state.log_weights), "log_mu_hp": mean_log, "log_hp": log_params,
                       "mu_white": white})
    return starts


def _prior_centres(model: MagmaClust) -> tuple[np.ndarray, np.ndarray]:
    """Partition-aware centres (:func:`magma_pymc.cluster.init.initial_log_params` at VEM's responsibilities).

    The mean-process centre averaged over clusters, so that the prior stays exchangeable in the clusters.
    """
    problem = model._problem_
    mean_log, log_params = initial_log_params(model.mean_kernel, model.kernel, model._state.tau, problem.residuals,
                                              problem.mask, scales(model.data_)[0], problem.output_scale, True)
    return mean_log.mean(axis=0), log_params


def _pymc_model(model: MagmaClust, jitter: float) -> pm.Model:
    train, centres = model.data_, _prior_centres(model)
    return build_cluster_model(train, model.n_clusters_, model.mean_kernel, model.kernel,
                               resolve_prior_mean(model.prior_mean, train), centres=centres,
                               common_hp=model.common_hp, shared_mean_hp=model.shared_mean_hp, noncentred=True,
                               jitter=jitter)


def sample_posterior(model: MagmaClust, options: dict[str, Any]) -> xr.DataTree:
    """NUTS from the fitted VEM ``model``; the results tree (:func:`nuts_datatree`). ``options`` for ``pm.sample``."""
    jitter = max(model._state.jitter, SAMPLING_JITTER * model._problem_.output_scale)
    pm_model = _pymc_model(model, jitter)
    rng = np.random.default_rng(options["random_seed"])
    options.setdefault("init", "adapt_diag")
    if "initvals" not in options:
        options["initvals"] = _initial_values(model, options["chains"], rng, _prior_centres(model))
    if options["nuts_sampler"] == "pymc":
        options.setdefault("compile_kwargs", {"mode": SAMPLING_MODE})
    start, cpu = time.perf_counter(), time.process_time()
    with pm_model, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS", category=UserWarning)
        sampled = pm.sample(compute_convergence_checks=False, **options)
    seconds = (time.perf_counter() - start, time.process_time() - cpu)
    return nuts_datatree(model, pm_model, sampled, jitter, seconds)


def _component_log_likelihoods(pm_model: pm.Model, draws: dict[str, np.ndarray]) -> np.ndarray:
    r"""``(C, D, K, M)`` :math:`\log\mathcal N(y_i; \mu_k(t_i), \Psi_i)` of every draw, by the model's own graph."""
    values = pm_model.replace_rvs_by_values([pm_model[COMPONENT_LOG_LIKELIHOOD]])
    names = [rv.name for rv in pm_model.free_RVs if rv.name != "weights"]
    inputs = [pm_model.rvs_to_values[pm_model[name]] for name in names]
    function = pm_model.compile_fn(values[0], inputs=inputs, point_fn=False, mode=SAMPLING_MODE,
                                   on_unused_input="ignore")
    chains, n_draws = draws["weights"].shape[:2]
    return np.array([function(*(draws[name][c, d] for name in names)) for c in range(chains)
                     for d in range(n_draws)]).reshape(chains, n_draws, draws["weights"].shape[2], -1)


def nuts_datatree(model: MagmaClust, pm_model: pm.Model, sampled: xr.DataTree, jitter: float,
                  seconds: tuple[float, float]) -> xr.DataTree:
    r"""Relabel the draws and assemble the results.

    Groups: ``posterior`` (natural scale: ``mu_<name>`` per cluster, individual HP, ``weights``, the mean processes
    ``mu`` on ``(cluster, input)``), ``unconstrained_posterior`` (``log_mu_hp``, ``log_hp``), ``sample_stats`` (plus
    ``relabelled``), ``constant_data``; VEM's ``vem_trace``, ``hyperposterior`` (:math:`q(\mu_k)`) and
    ``observed_data``; ``clusters`` with VEM's ``responsibilities``/``label`` and NUTS's
    ``posterior_responsibilities``/``posterior_label``.
    """
    post = sampled["posterior"].to_dataset()
    hp_dims = ("chain", "draw", *post["log_hp"].dims[2:])
    raw = {name: post[name].values for name in ("weights", "mu", "mu_white", "log_mu_hp", "log_hp")}
    reference = model._prior_mean_value(model._problem_.grid)[None] + model._estep.posterior.mean
    perms = relabelling_permutations(raw["mu"], reference)
    switched = np.any(perms != np.arange(perms.shape[-1]), axis=-1)                    # (C, D)
    for name in PER_CLUSTER:
        if name != "log_mu_hp" or not model.shared_mean_hp:
            raw[name] = relabel(raw[name], perms)
    log_lik = _component_log_likelihoods(pm_model, raw)                                # (C, D, K, M)
    log_joint = np.log(raw["weights"])[..., None] + log_lik
    draws_tau = np.exp(log_joint - logsumexp(log_joint, axis=2, keepdims=True))
    tau = draws_tau.mean(axis=(0, 1)).T                                                # (M, K)

    data, grid = model.data_, model._problem_.grid
    sample = {"chain": post["chain"].values, "draw": post["draw"].values}
    clusters = np.arange(raw["mu"].shape[2])
    ids = np.array([str(i) for i in data.ids])
    mean_dims = ("chain", "draw") if model.shared_mean_hp else ("chain", "draw", "cluster")
    natural = {f"mu_{name}": (mean_dims, np.exp(raw["log_mu_hp"][..., j]))
               for j, name in enumerate(model.mean_kernel.names)}
    natural.update({name: (hp_dims[:-1], np.exp(raw["log_hp"][..., j]))
                    for j, name in enumerate((*model.kernel.names, NOISE))})
    natural.update(weights=(("chain", "draw", "cluster"), raw["weights"]),
                   mu=(("chain", "draw", "cluster", "input"), raw["mu"]))
    coords = {**sample, "cluster": clusters, **input_coords(grid, data.input_names)}
    if not model.common_hp:
        coords["individual"] = ids
    posterior = xr.Dataset(natural, coords=coords)
    unconstrained = xr.Dataset(
        {"log_mu_hp": ((*mean_dims, "mean_hp"), raw["log_mu_hp"]), "log_hp": (hp_dims, raw["log_hp"]),
         "mu_white": (("chain", "draw", "cluster", "grid_point"), raw["mu_white"])},
        coords={**{k: v for k, v in coords.items() if k != "input"}, "mean_hp": list(model.mean_kernel.names),
                "hp": [*model.kernel.names, NOISE]})
    stats = sampled["sample_stats"].to_dataset().assign(relabelled=(("chain", "draw"), switched))
    vem = model.idata_
    cluster_group = vem["clusters"].to_dataset().assign(
        posterior_responsibilities=(("individual", "cluster"), tau),
        posterior_label=("individual", np.argmax(tau, axis=1)))
    tree = xr.DataTree.from_dict({
        "posterior": posterior, "unconstrained_posterior": unconstrained, "sample_stats": stats,
        "constant_data": sampled["constant_data"].to_dataset(), "clusters": cluster_group,
        "vem_trace": vem["vem_trace"].to_dataset(), "hyperposterior": vem["hyperposterior"].to_dataset(),
        "observed_data": vem["observed_data"].to_dataset()})
    (rhat, rhat_at), (ess, ess_at) = convergence(tree)
    n_div = int(stats["diverging"].sum())
    problems = warn_on_problems(n_div, rhat, ess, rhat_at=rhat_at, ess_at=ess_at)
    tree.attrs.update({**vem.attrs, "method": "nuts", "jitter": jitter, "divergences": n_div, "max_r_hat": rhat,
                       "min_ess_bulk": ess, "diagnostics": "; ".join(problems) or "ok",
                       "relabelled_draws": int(switched.sum()), "sampling_seconds": seconds[0],
                       "sampling_cpu_seconds": seconds[1], "n_draws": int(switched.size)})
    return tree


def convergence(tree: xr.DataTree) -> tuple[tuple[float, str], tuple[float, str]]:
    r"""Max :math:`\hat R` and min bulk ESS (ArviZ) over the sampled variables, each with where it is.

    The variables: log HP, weights, mean processes; locations as :func:`magma_pymc.diagnostics.extreme`.
    """
    import arviz as az  # arviz-stats is slow to import: only when sampling

    groups = {"unconstrained_posterior": ["log_mu_hp", "log_hp", "mu_white"], "posterior": ["weights", "mu"]}
    rhats = [extreme(az.rhat(tree, group=group, var_names=names), largest=True) for group, names in groups.items()]
    esses = [extreme(az.ess(tree, group=group, var_names=names, method="bulk"), largest=False)
             for group, names in groups.items()]
    # A group whose entries are all NaN does not hide the other group's worst entry.
    return (max(rhats, key=lambda pair: -np.inf if np.isnan(pair[0]) else pair[0]),
            min(esses, key=lambda pair: np.inf if np.isnan(pair[0]) else pair[0]))
