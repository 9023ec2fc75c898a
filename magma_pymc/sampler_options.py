"""Options of ``Magma.fit(method="nuts")`` passed to ``pm.sample``: defaults, pass-through and checks.

Every keyword of ``pm.sample`` and of PyMC's NUTS step (``max_treedepth``, ``step_scale``, ...) is
accepted and passed on unchanged, except those the library sets itself (``model``,
``return_inferencedata``, ``compute_convergence_checks``: its own checks run after sampling). The
defaults differ from ``pm.sample``'s in two places a first run notices: the chains run in parallel
on ``min(chains, available CPUs)`` processes (``pm.sample`` uses at most half the CPUs, so two chains
on two cores run one after the other), and the progress bar is on. An unknown option is an error
naming the public call and the accepted options, before any work is done.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from functools import cache
from typing import Any, NamedTuple

import pymc as pm

from magma_pymc.validation import check_count, check_prob

__all__ = ["SAMPLE_DEFAULTS", "FitOptions", "accepted_options", "available_cpus", "resolve_nuts_sampler",
           "sample_options", "split_fit_options", "with_mass_matrix_default", "LOW_RANK_MASS_MATRIX"]

#: Defaults of ``pm.sample`` options that the library chooses (``cores``: see :func:`sample_options`).
SAMPLE_DEFAULTS: dict[str, Any] = dict(draws=1000, tune=1000, chains=4, random_seed=None, nuts_sampler="pymc",
                                       target_accept=0.9, progressbar=True)
#: ``pm.sample`` keywords the library sets itself.
RESERVED = frozenset({"model", "return_inferencedata", "compute_convergence_checks", "kwargs", "step"})


def resolve_nuts_sampler(name: str) -> str:
    """The NUTS implementation ``nuts_sampler=name`` names.

    ``"auto"``: ``"nutpie"`` where nutpie is installed (its Rust NUTS loop runs the log-density
    compiled by Numba, no Python per step), else ``"pymc"``; any other name unchanged.
    """
    if name != "auto":
        return name
    from importlib.util import find_spec

    return "nutpie" if find_spec("nutpie") is not None else "pymc"


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@cache
def accepted_options() -> frozenset[str]:
    """Keywords of ``pm.sample`` and of the NUTS step (``pm.NUTS`` and its HMC base), minus :data:`RESERVED`."""
    names = set(inspect.signature(pm.sample).parameters)
    for init in (pm.NUTS.__init__, pm.step_methods.hmc.base_hmc.BaseHMC.__init__):
        names |= set(inspect.signature(init).parameters) - {"self", "vars", "model", "initial_point", "dtype",
                                                             "blocked", "rng", "kwargs"}
    return frozenset(names - RESERVED)


def sample_options(options: Mapping[str, Any], *, public: str = "Magma.fit(method='nuts')") -> dict[str, Any]:
    """Keyword arguments for ``pm.sample`` from the user's ``options`` and :data:`SAMPLE_DEFAULTS`.

    ``cores`` defaults to ``min(chains, available_cpus())``. Raises ``TypeError`` naming ``public``
    and the accepted options for an unknown keyword, and for one the library sets itself.
    """
    reserved = sorted(set(options) & RESERVED)
    if reserved:
        raise TypeError(f"{public}: {', '.join(reserved)} cannot be set (the library sets it)")
    unknown = sorted(set(options) - accepted_options())
    if unknown:
        raise TypeError(
            f"{public} got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; it accepts the data "
            f"options of Magma.fit and pm.sample's options: {', '.join(sorted(accepted_options()))}"
        )
    kwargs = {**SAMPLE_DEFAULTS, **options}
    # Before anything runs: draws=0 or chains=0 would end in a division by zero after sampling.
    for name, minimum in (("draws", 1), ("chains", 1), ("tune", 0)):
        kwargs[name] = check_count(kwargs[name], name, minimum=minimum)
    kwargs["target_accept"] = check_prob(kwargs["target_accept"], "target_accept")
    if kwargs.get("cores") is None:
        kwargs["cores"] = max(1, min(int(kwargs["chains"]), available_cpus()))
    return kwargs


class FitOptions(NamedTuple):
    """The keywords of ``Magma.fit``, sorted by :func:`split_fit_options`."""

    data: dict[str, Any]        # for magma_pymc.data.as_training_data
    sampler: dict[str, Any]     # for NUTS or an approximation of the posterior
    map_priors: Any             # priors of an EM-MAP fit (None: none)
    sampled: bool               # NUTS or an approximation (not EM)


def split_fit_options(method: str, options: Mapping[str, Any], data_options: frozenset[str]) -> FitOptions:
    """Sort the keywords of ``Magma.fit(method=...)``.

    ``data_options`` go to the data, the rest to the inference; ``ValueError`` for an unknown
    method or sampler options without a sampler, ``TypeError`` naming ``Magma.fit`` for an unknown
    keyword, before any work is done.
    """
    from magma_pymc.sampling import APPROXIMATIONS, is_sampler_option  # imports PyMC's samplers

    methods = ("em", "fixed", "nuts", *APPROXIMATIONS)
    if method not in methods:
        raise ValueError(f"method must be one of {methods}, got {method!r}")
    data = {k: v for k, v in options.items() if k in data_options}
    sampler = {k: v for k, v in options.items() if k not in data_options}
    unknown = sorted(k for k in sampler
                     if not (k == "priors" or is_sampler_option(k, "nuts") or is_sampler_option(k, method)))
    if unknown:
        raise TypeError(f"Magma.fit() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
                        f"it takes the data options {', '.join(sorted(data_options))} and the inference "
                        "options of help(Magma.fit)")
    sampled = method == "nuts" or method in APPROXIMATIONS
    map_priors = sampler.pop("priors", None) if method == "em" else None
    if sampler and not sampled:
        raise ValueError(f"sampler options {sorted(sampler)} need method='nuts' (or an approximation)")
    if method in APPROXIMATIONS:
        wrong = sorted(k for k in sampler if not is_sampler_option(k, method))
        if wrong:
            raise TypeError(f"Magma.fit(method={method!r}) does not take {', '.join(map(repr, wrong))} "
                            f"(sampler options of method='nuts')")
    return FitOptions(data, sampler, map_priors, sampled)


#: nutpie's option for its low-rank mass-matrix adaptation (on by default with the population layer).
LOW_RANK_MASS_MATRIX = "low_rank_modified_mass_matrix"


def with_mass_matrix_default(options: Mapping[str, Any], population: bool) -> dict[str, Any]:
    """``options`` with nutpie's low-rank mass-matrix adaptation switched on for the population layer.

    The layer's free variables (population mean and scale, every individual's offsets) are correlated
    through the mean and scale, which a diagonal mass matrix cannot follow: on M = 20 x 30 with different HP,
    the low-rank adaptation raised the smallest bulk ESS 1.3-2.6x over three seeds at the same steps per
    draw and CPU (``docs/performance.md``). A value the user gave in ``nuts_sampler_kwargs`` wins; other
    samplers and common HP are left as they are.
    """
    options = dict(options)
    if population and options.get("nuts_sampler") == "nutpie":
        options["nuts_sampler_kwargs"] = {LOW_RANK_MASS_MATRIX: True, **(options.get("nuts_sampler_kwargs") or {})}
    return options
