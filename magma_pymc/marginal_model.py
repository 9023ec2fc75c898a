r"""The PyMC model NUTS, Laplace and ADVI sample: log HP, priors, and the exact marginal likelihood.

Free variables: ``log_mu0_hp`` (dims ``mean_hp``) and ``log_hp`` (dims ``hp``, or ``individual, hp``
with different HP), with independent :math:`\mathcal N(c, 2^2)` priors around data-scaled centres
:math:`c` by default, user factories (``priors``), or, with different HP, the population layer of
:mod:`magma_pymc.hierarchical` (``hierarchical=True``). Deterministics hold every HP on its natural
scale under the names of the results (``mu0_variance``, ..., ``noise``). The likelihood,
:math:`\mu_0` integrated out, is ``pm.Potential("marginal_likelihood")``: on the exact union grid
the Op of :mod:`magma_pymc.likelihood` (closed-form gradient), on the common-grid/common-HP fast
path and on inducing points the E-step graphs of :mod:`magma_pymc.hyperposterior`; NaN (a failed
factorisation) becomes :math:`-\infty`, which the sampler counts as a divergence.

The training arrays enter as ``pm.Data`` with named dims (``constant_data`` of the result):
``grid`` (``grid_point, input_dim``), ``inputs`` (``individual, slot, input_dim``), ``residuals``,
``mask``, ``index`` (``individual, slot``; on the fast path ``residuals`` is ``individual, grid_point``).

:func:`organise_posterior` then gives the sampler's result one scale: the posterior keeps the
natural-scale HP (and, with a population layer, its median :math:`e^{m}` and geometric spread
:math:`e^{\tau}`), and the log-scale free variables move to an ``unconstrained_posterior`` group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import xarray as xr

from magma_pymc.compiled import ModelGraphs, build_estep_for
from magma_pymc.hierarchical import POPULATION_MEAN, POPULATION_OFFSET, POPULATION_SCALE, hierarchical_prior
from magma_pymc.hyperposterior import TrainingTensors
from magma_pymc.likelihood import build_marginal_log_likelihood
from magma_pymc.model import LOG_HP, MEAN_LOG_HP, LogPriorFactory, ModelSpec, hp_coords, log_hp_variables

__all__ = ["POPULATION_MEDIAN", "POPULATION_SPREAD", "LIKELIHOODS", "sampling_model", "organise_posterior"]

#: Natural-scale summaries of a population layer in the posterior: median and geometric sd of each HP.
POPULATION_MEDIAN = "population_median"
POPULATION_SPREAD = "population_spread"
#: ``likelihood=`` choices: the Op with the closed-form gradient, or automatic differentiation of the E-step.
LIKELIHOODS = ("closed_form", "autodiff")


def sampling_model(
    spec: ModelSpec,
    structure: ModelGraphs,
    data_args: Sequence[np.ndarray],
    *,
    jitter: float,
    priors: Mapping[str, LogPriorFactory] | None = None,
    hierarchical: bool = False,
    likelihood: str = "closed_form",
) -> pm.Model:
    """The model of the module docstring.

    ``structure`` gives the model's structure (fast path, projected); ``data_args`` is
    ``(grid, inputs, residuals, mask, index)`` as the compiled graphs take them
    (:class:`~magma_pymc.em.TrainingArrays`); ``priors`` ``{"mean_hp": f, "hp": g}`` factories
    ``(name, dims) -> variable`` of log HP (:func:`magma_pymc.model.log_hp_variables`);
    ``hierarchical`` declares the population layer on the individual log HP (different HP only;
    an explicit ``priors["hp"]`` takes precedence).
    """
    if hierarchical and spec.common_hp:
        raise ValueError("hierarchical=True needs different HP (Magma(common_hp=False)): with common HP "
                         "all individuals share one set of HP and there is no population to learn")
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    grid, inputs, residuals, mask, index = (np.asarray(a) for a in data_args)
    coords = {**hp_coords(spec), "grid_point": np.arange(grid.shape[0]), "input_dim": np.arange(grid.shape[1]),
              "slot": np.arange(inputs.shape[1])}
    priors = dict(priors or {})
    if hierarchical:
        priors.setdefault("hp", hierarchical_prior(spec.centres[1]))
    with pm.Model(coords=coords) as model:
        data = TrainingTensors(
            pm.Data("grid", grid, dims=("grid_point", "input_dim")),
            pm.Data("inputs", inputs, dims=("individual", "slot", "input_dim")),
            pm.Data("residuals", residuals, dims=("individual", "grid_point" if structure.fast_path else "slot")),
            pm.Data("mask", mask, dims=("individual", "slot")),
            pm.Data("index", index, dims=("individual", "slot")),
            pm.Data("jitter", np.asarray(jitter, dtype=float)),
        )
        mean_log, log_hp = log_hp_variables(spec, priors)
        if likelihood == "closed_form" and not (structure.fast_path or structure.projected):
            loglik = build_marginal_log_likelihood(spec.mean_kernel, spec.kernel, mean_log, log_hp, data)
        else:  # common grid and HP (one factorisation of Psi), inducing points, or autodiff asked for
            loglik = build_estep_for(structure, spec.mean_kernel, spec.kernel, mean_log, log_hp, data).log_likelihood
        pm.Potential("marginal_likelihood", pt.switch(pt.isnan(loglik), -np.inf, loglik))
    return model


def organise_posterior(tree: xr.DataTree) -> xr.DataTree:
    """One scale in ``posterior`` (module docstring); log-scale variables to ``unconstrained_posterior``.

    Idempotent; a tree without those variables is returned unchanged.
    """
    posterior = tree["posterior"].to_dataset()
    log_scale = [v for v in (MEAN_LOG_HP, LOG_HP, POPULATION_MEAN, POPULATION_SCALE, POPULATION_OFFSET)
                 if v in posterior]
    if not log_scale:
        return tree
    unconstrained = posterior[log_scale]
    natural = posterior.drop_vars(log_scale)
    if POPULATION_MEAN in posterior:
        natural[POPULATION_MEDIAN] = np.exp(posterior[POPULATION_MEAN])
        natural[POPULATION_SPREAD] = np.exp(posterior[POPULATION_SCALE])
    used = {d for v in natural.data_vars for d in natural[v].dims}
    natural = natural.drop_vars([c for c in natural.coords if not set(natural[c].dims) <= used])
    natural.attrs.update(posterior.attrs)
    tree = tree.copy()
    tree["posterior"] = xr.DataTree(natural)
    tree["unconstrained_posterior"] = xr.DataTree(unconstrained)
    return tree
