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

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import xarray as xr

from magma_pymc.hierarchical import POPULATION_MEAN, POPULATION_OFFSET, POPULATION_SCALE, hierarchical_prior
from magma_pymc.hyperposterior import TrainingTensors, build_estep, build_estep_common, build_estep_projected
from magma_pymc.kernels import Kernel
from magma_pymc.likelihood import build_marginal_log_likelihood

__all__ = ["MEAN_LOG_HP", "LOG_HP", "PRIOR_SD", "POPULATION_MEDIAN", "POPULATION_SPREAD", "LIKELIHOODS",
           "sampling_model", "organise_posterior"]

MEAN_LOG_HP = "log_mu0_hp"
LOG_HP = "log_hp"
#: Standard deviation of the default normal priors on log hyper-parameters.
PRIOR_SD = 2.0
MEAN_PREFIX = "mu0_"
NOISE = "noise"
#: Natural-scale summaries of a population layer in the posterior: median and geometric sd of each HP.
POPULATION_MEDIAN = "population_median"
POPULATION_SPREAD = "population_spread"
#: ``likelihood=`` choices: the Op with the closed-form gradient, or automatic differentiation of the E-step.
LIKELIHOODS = ("closed_form", "autodiff")

LogPriorFactory = Callable[[str, tuple[str, ...]], pm.Distribution]


def sampling_model(
    mean_kernel: Kernel,
    kernel: Kernel,
    data_args: Sequence[np.ndarray],
    *,
    ids: Sequence,
    common_hp: bool,
    fast_path: bool,
    projected: bool,
    centres: tuple[np.ndarray, np.ndarray],
    jitter: float,
    priors: Mapping[str, LogPriorFactory] | None = None,
    hierarchical: bool = False,
    likelihood: str = "closed_form",
) -> pm.Model:
    """The model of the module docstring.

    ``data_args`` is ``(grid, inputs, residuals, mask, index)`` as the compiled graphs take them
    (:class:`~magma_pymc.hyperposterior.TrainingTensors`); ``centres`` the ``(mean, individual)``
    centres of the default priors; ``priors`` ``{"mean_hp": f, "hp": g}`` factories
    ``(name, dims) -> variable`` of log HP; ``hierarchical`` declares the population layer on the
    individual log HP (different HP only; an explicit ``priors["hp"]`` takes precedence).
    """
    if hierarchical and common_hp:
        raise ValueError("hierarchical=True needs different HP (Magma(common_hp=False)): with common HP "
                         "all individuals share one set of HP and there is no population to learn")
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    grid, inputs, residuals, mask, index = (np.asarray(a) for a in data_args)
    coords = {
        "mean_hp": list(mean_kernel.names), "hp": [*kernel.names, NOISE], "individual": [str(i) for i in ids],
        "grid_point": np.arange(grid.shape[0]), "input_dim": np.arange(grid.shape[1]),
        "slot": np.arange(inputs.shape[1]),
    }
    mean_centre, centre = (np.asarray(c, dtype=float) for c in centres)
    hp_dims = ("hp",) if common_hp else ("individual", "hp")
    priors = dict(priors or {})
    if hierarchical:
        priors.setdefault("hp", hierarchical_prior(centre))
    with pm.Model(coords=coords) as model:
        data = TrainingTensors(
            pm.Data("grid", grid, dims=("grid_point", "input_dim")),
            pm.Data("inputs", inputs, dims=("individual", "slot", "input_dim")),
            pm.Data("residuals", residuals, dims=("individual", "grid_point" if fast_path else "slot")),
            pm.Data("mask", mask, dims=("individual", "slot")),
            pm.Data("index", index, dims=("individual", "slot")),
            pm.Data("jitter", np.asarray(jitter, dtype=float)),
        )
        default_mean = lambda name, dims: pm.Normal(name, mu=mean_centre, sigma=PRIOR_SD, dims=dims)  # noqa: E731
        default = lambda name, dims: pm.Normal(name, mu=centre, sigma=PRIOR_SD, dims=dims)  # noqa: E731
        mean_log = priors.get("mean_hp", default_mean)(MEAN_LOG_HP, ("mean_hp",))
        log_hp = priors.get("hp", default)(LOG_HP, hp_dims)
        for k, name in enumerate(mean_kernel.names):
            pm.Deterministic(MEAN_PREFIX + name, pt.exp(mean_log[k]))
        for k, name in enumerate((*kernel.names, NOISE)):
            pm.Deterministic(name, pt.exp(log_hp[..., k]), dims=None if common_hp else "individual")
        if fast_path:  # common grid and HP: residuals (M, N) on the grid, one factorisation of Psi
            loglik = build_estep_common(mean_kernel, kernel, mean_log, log_hp, data.grid, data.residuals,
                                        data.jitter).log_likelihood
        elif projected:  # mu0 on inducing points (`grid`)
            loglik = build_estep_projected(mean_kernel, kernel, mean_log, log_hp, data).log_likelihood
        elif likelihood == "closed_form":
            loglik = build_marginal_log_likelihood(mean_kernel, kernel, mean_log, log_hp, data)
        else:
            loglik = build_estep(mean_kernel, kernel, mean_log, log_hp, data).log_likelihood
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
