"""An EM fit of :class:`~magma_pymc.estimator.Magma`, assembled: priors, restarts, bounds and the results tree.

``Magma.fit(method="em")`` maximises the marginal likelihood (times the weak prior on the
mean-process log HP by default, :mod:`magma_pymc.priors`; or the posterior under the priors NUTS
would use, ``priors=``) by EM (:mod:`magma_pymc.em`), restarted from other starts where the
``restarts`` policy asks (:mod:`magma_pymc.restarts`); ``method="fixed"`` runs no iteration and
only computes the hyper-posterior at the given HP. An HP that ends on its box constraint is
reported (:func:`magma_pymc.settings.warn_hp_at_bounds`) and makes the fit not converged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from magma_pymc.data import TrainingData
from magma_pymc.em import EMState, Problem
from magma_pymc.fit_result import FitResult
from magma_pymc.model import PRIOR_SD
from magma_pymc.params import NOISE
from magma_pymc.priors import normal_log_prior
from magma_pymc.restarts import run_em_with_restarts
from magma_pymc.results import em_datatree
from magma_pymc.settings import hp_at_bounds, initial_log_params, warn_hp_at_bounds

__all__ = ["EMFit", "fit_em"]


class EMFit(NamedTuple):
    """What :func:`fit_em` hands back to the estimator."""

    result: FitResult
    converged: bool             # EM's criterion met and no HP on its bound
    n_iter: int
    hp_at_bounds: list          # the HP that ended on a box constraint (see warn_hp_at_bounds)


def fit_em(model: Any, train: TrainingData, problem: Problem, state: EMState,
           prior_mean: Callable[[np.ndarray], np.ndarray], *, method: str, map_priors: Any = None) -> EMFit:
    """Run EM (``method="em"``) or none (``"fixed"``) from ``state``.

    ``model`` gives the configuration (a :class:`~magma_pymc.estimator.Magma`: kernels, ``common_hp``,
    ``tol``, ``max_iter``, ``restarts``, ``mean_process_prior``); ``map_priors``, if given, the priors
    of an EM-MAP fit.
    """
    if map_priors is not None:  # EM-MAP under the priors NUTS would use
        from magma_pymc.map_priors import compile_log_priors

        problem = dataclasses.replace(problem, log_priors=compile_log_priors(model._spec(train), map_priors))
    elif model.mean_process_prior == "weak" and method == "em":
        problem = dataclasses.replace(
            problem, log_priors=(normal_log_prior(model._spec(train).centres[0], PRIOR_SD), None))
    mean_kernel, kernel = model.mean_kernel, model.kernel
    names = (mean_kernel.names, (*kernel.names, NOISE), None if model.common_hp else train.ids)
    data_driven = EMState(*initial_log_params(mean_kernel, kernel, train, model.common_hp), state.jitter)
    runs = run_em_with_restarts(state, problem, mean_kernel, kernel, tol=model.tol, data_driven=data_driven,
                                restarts=model.restarts if method == "em" else 0,
                                max_iter=model.max_iter if method == "em" else 0,
                                bound_hits=lambda fitted: hp_at_bounds(fitted, problem, *names))
    trace, at_bounds = runs.trace, []
    if method == "em":
        at_bounds = warn_hp_at_bounds(trace.state, problem, *names, starts=len(runs.labels))
    tree = em_datatree(trace, problem, train, prior_mean, (mean_kernel.names, kernel.names),
                       method=method, tol=model.tol)
    tree.attrs.update(runs.attrs())
    result = FitResult.from_point(method, trace.state, problem=problem, data=train, prior_mean=prior_mean,
                                  hp_names=(*kernel.names, NOISE), tree=tree)
    # An HP stopped on its box constraint is not a converged estimate, whatever the likelihood did.
    return EMFit(result, trace.converged and not at_bounds, len(trace.log_likelihood) - 1, at_bounds)
