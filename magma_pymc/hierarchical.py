r"""A population layer on the individuals' log hyper-parameters (different HP), non-centred.

With different HP each individual has its own :math:`x_i = (\log\theta_i, \log\sigma_i^2)`. Declared
as draws from one population,

.. math::

    m_k \sim \mathcal N(c_k, s_m^2), \qquad \tau_k \sim \mathrm{HalfNormal}(s_\tau), \qquad
    x_{ik} = m_k + \tau_k z_{ik}, \quad z_{ik} \sim \mathcal N(0, 1) \quad (k = 1..P+1),

i.e. :math:`x_{ik} \sim \mathcal N(m_k, \tau_k^2)` written *non-centred*: the sampler moves
:math:`(m, \tau, z)`, independent a priori, instead of :math:`(m, \tau, x)`, whose prior has the
funnel :math:`p(x \mid \tau)` that narrows as :math:`\tau \to 0` (the step size adapted in the wide
part diverges in the narrow one). Where the data pin some :math:`x_i` down (many points per
individual) the centred form (``centred=True``) can mix better; both declare the same model.

Variables (:data:`POPULATION_MEAN`, :data:`POPULATION_SCALE`, :data:`POPULATION_OFFSET`): the
population mean :math:`m` and scale :math:`\tau` of the log HP (dims ``hp``), and the standardised
offsets :math:`z` (dims ``individual, hp``; non-centred only). The individuals' log HP are the
Deterministic (or, centred, the free variable) named by the caller. The same population
:math:`\mathcal N(m, \mathrm{diag}\,\tau^2)` is the natural prior of a *new* individual's log HP;
:func:`population_draws` returns its posterior draws from a fitted tree.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pymc as pm
import xarray as xr
from pytensor.tensor.variable import TensorVariable

__all__ = [
    "POPULATION_MEAN",
    "POPULATION_SCALE",
    "POPULATION_OFFSET",
    "POPULATION_SCALE_SD",
    "hierarchical_log_hp",
    "hierarchical_prior",
    "population_draws",
]

POPULATION_MEAN = "population_mean"
POPULATION_SCALE = "population_scale"
POPULATION_OFFSET = "population_offset"
#: Default scale of the HalfNormal prior on the population sd of each log HP: individuals' HP
#: within about a factor e^2 of one another are a priori plausible, identical ones too.
POPULATION_SCALE_SD = 1.0
#: Default sd of the normal prior on each population mean (as the independent default priors).
POPULATION_MEAN_SD = 2.0


def hierarchical_log_hp(
    name: str,
    centre: np.ndarray,
    dims: tuple[str, str] = ("individual", "hp"),
    *,
    mean_sd: float | np.ndarray = POPULATION_MEAN_SD,
    scale_sd: float | np.ndarray = POPULATION_SCALE_SD,
    centred: bool = False,
) -> TensorVariable:
    r"""Declare the population layer (module docstring) inside a ``pm.Model``; returns the (M, P+1) log HP.

    Parameters
    ----------
    name
        Name of the individuals' log-HP variable (a Deterministic when non-centred).
    centre
        ``(P + 1,)`` prior mean :math:`c` of the population mean :math:`m` (e.g. the data-scaled
        initial log HP).
    dims
        ``(individual dim, hp dim)`` names; both must be coordinates of the model.
    mean_sd, scale_sd
        :math:`s_m` and :math:`s_\tau`.
    centred
        Declare :math:`x_{ik} \sim \mathcal N(m_k, \tau_k^2)` directly instead of through :math:`z`.
    """
    individual_dim, hp_dim = dims
    mean = pm.Normal(POPULATION_MEAN, mu=np.asarray(centre, float), sigma=mean_sd, dims=hp_dim)
    scale = pm.HalfNormal(POPULATION_SCALE, sigma=scale_sd, dims=hp_dim)
    if centred:
        return pm.Normal(name, mu=mean, sigma=scale, dims=dims)
    offset = pm.Normal(POPULATION_OFFSET, mu=0.0, sigma=1.0, dims=dims)
    return pm.Deterministic(name, mean + scale * offset, dims=dims)


def hierarchical_prior(centre: np.ndarray, **options) -> Callable[[str, tuple[str, ...]], TensorVariable]:
    """A prior factory ``(name, dims) -> variable`` for the individuals' log HP (``priors={"hp": ...}``).

    It declares :func:`hierarchical_log_hp` with ``centre`` and ``options``.
    """

    def factory(name: str, dims: tuple[str, ...]) -> TensorVariable:
        if len(dims) != 2:
            raise ValueError(f"a population layer needs different HP (dims individual, hp), got dims {dims}")
        return hierarchical_log_hp(name, centre, tuple(dims), **options)

    return factory


def population_draws(fit: xr.DataTree | xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Posterior draws ``(mean, scale)`` of the population of log HP, each ``(S, P + 1)`` (chains stacked).

    ``fit`` is a fitted model's ``idata_`` (the variables are read from its ``unconstrained_posterior``
    group, else its ``posterior``) or a dataset holding :data:`POPULATION_MEAN` and
    :data:`POPULATION_SCALE` (dims chain, draw, hp).
    """
    if isinstance(fit, xr.DataTree):
        group = "unconstrained_posterior" if "unconstrained_posterior" in fit.children else "posterior"
        fit = fit[group].to_dataset()
    for variable in (POPULATION_MEAN, POPULATION_SCALE):
        if variable not in fit:
            raise KeyError(f"{variable!r} not in the posterior: the fit has no population layer")
    stacked = [fit[v].transpose("chain", "draw", ...).values for v in (POPULATION_MEAN, POPULATION_SCALE)]
    return tuple(v.reshape(-1, v.shape[-1]) for v in stacked)
