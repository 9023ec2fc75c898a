r"""EM from several deterministic starts, keeping the highest objective.

EM climbs to *a* local maximum of its objective (the marginal log-likelihood
:math:`\log p(y \mid \theta_0, \theta_{1:M})`, plus the log prior of the HP in MAP mode, e.g.
under the default weak mean-process prior). From one start it can stop on a poor one: a
mean-process lengthscale grown large enough that :math:`\mu_0` only carries a trend, the rest
absorbed by the individual processes, or a HP run to its box constraint. :func:`run_em_with_restarts`
runs EM again from alternative starts and keeps the run with the highest final objective

.. math::

    \hat\theta = \arg\max_{s} \; \Big[\log p(y \mid \theta^{(s)}) + \log p(\theta^{(s)})\Big],


:math:`\theta^{(s)}` the HP EM ends at from start :math:`s`. The alternative starts are
deterministic shifts of the data-driven start (:meth:`magma_pymc.Magma.initial_hyperparameters`;
when EM was given another start, the data-driven start itself is tried first), on the log scale and per
parameter kind (:attr:`magma_pymc.kernels.Kernel.kinds`), tried in the order of
:data:`ALTERNATIVE_STARTS`: every lengthscale (mean process and individuals) divided by 3, then
multiplied by 3 (the scale of variation, the HP whose likelihood is most often multimodal), then
the mean-process variance divided by 10 (more of the signal to the individuals), then the
individual kernel variances divided by 10 (more to the mean process). Shifted values are clipped
into the box constraints. No randomness: the same data give the same fit.

Policies (``Magma(restarts=...)``): ``"on_bound"`` restarts only while the best run so far ends
with a HP on its box constraint (at most :data:`ON_BOUND_RESTARTS` restarts), so a fit with no
HP on a bound costs and returns exactly what a single start does; an int ``k`` always runs the
first ``k`` alternative starts (``k + 1`` EM runs in all). The given start wins exact ties.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from magma_pymc.em import EMState, EMTrace, Problem, run_em, warn_not_converged
from magma_pymc.kernels import Kernel

__all__ = [
    "ALTERNATIVE_STARTS",
    "ON_BOUND_RESTARTS",
    "RestartedFit",
    "check_restarts",
    "run_em_with_restarts",
    "shifted_start",
]

#: ``(label, lengthscale factor, mean-process variance factor, individual variance factor)``, in the order tried.
ALTERNATIVE_STARTS: tuple[tuple[str, float, float, float], ...] = (
    ("lengthscales / 3", 1 / 3, 1.0, 1.0),
    ("lengthscales x 3", 3.0, 1.0, 1.0),
    ("mean-process variance / 10", 1.0, 0.1, 1.0),
    ("individual variances / 10", 1.0, 1.0, 0.1),
)
#: Most restarts the ``"on_bound"`` policy runs.
ON_BOUND_RESTARTS = 2
#: Label of the start EM was given, and of the data-driven start when it is another one.
GIVEN_START = "given start"
DATA_DRIVEN_START = ("data-driven start", 1.0, 1.0, 1.0)


class RestartedFit(NamedTuple):
    """The kept EM run and the record of every run."""

    trace: EMTrace          # the run with the highest final objective
    hp_at_bounds: list      # its HP on a bound (descriptions, as :func:`magma_pymc.settings.hp_at_bounds`)
    labels: tuple           # the starts run, the given one first
    objectives: np.ndarray  # final objective of each run (-inf where the E-step failed)
    best: int               # index of the kept run

    def attrs(self) -> dict:
        """The record as results-tree attributes (:mod:`magma_pymc.results`)."""
        return {"em_starts": len(self.labels), "em_start_labels": "; ".join(self.labels),
                "em_start_objectives": self.objectives, "em_best_start": self.best}


def check_restarts(restarts: object) -> None:
    """``"on_bound"`` or an int in ``0 .. len(ALTERNATIVE_STARTS)``."""
    if restarts == "on_bound" and isinstance(restarts, str):
        return
    if isinstance(restarts, bool) or not isinstance(restarts, (int, np.integer)) or not (
            0 <= restarts <= len(ALTERNATIVE_STARTS)):
        raise ValueError(f"restarts must be 'on_bound' or an int from 0 to {len(ALTERNATIVE_STARTS)} (the number of "
                         f"alternative EM starts), got {restarts!r}")


def _log_shift(kinds: Sequence[str], lengthscale: float, variance: float) -> np.ndarray:
    factors = {"lengthscale": lengthscale, "variance": variance, "other": 1.0}
    return np.log([factors[kind] for kind in kinds])


def shifted_start(state: EMState, problem: Problem, mean_kernel: Kernel, kernel: Kernel,
                  factors: tuple[float, float, float]) -> EMState:
    """``state`` with its HP multiplied by ``factors``, clipped into the problem's bounds.

    ``factors`` = (lengthscales, mean-process variances, individual kernel variances); the noise is kept.
    """
    lengthscale, mean_variance, individual_variance = factors
    mean_kinds = [mean_kernel.kinds[n] for n in mean_kernel.names]
    kinds = [*(kernel.kinds[n] for n in kernel.names), "other"]  # the noise (last column) is not shifted
    mean_bounds = np.asarray(problem.mean_bounds, dtype=float)
    bounds = np.reshape(np.asarray(problem.bounds, dtype=float), (*np.shape(state.log_params), 2))
    mean_log = np.clip(state.mean_log_params + _log_shift(mean_kinds, lengthscale, mean_variance),
                       mean_bounds[:, 0], mean_bounds[:, 1])
    log_params = np.clip(state.log_params + _log_shift(kinds, lengthscale, individual_variance),
                         bounds[..., 0], bounds[..., 1])
    return state._replace(mean_log_params=mean_log, log_params=log_params)


def run_em_with_restarts(state: EMState, problem: Problem, mean_kernel: Kernel, kernel: Kernel, *,
                         data_driven: EMState, restarts: str | int, max_iter: int, tol: float,
                         bound_hits: Callable[[EMState], list]) -> RestartedFit:
    """EM from ``state``, then from the alternative starts the ``restarts`` policy calls for.

    The alternative starts surround ``data_driven`` (the data-driven start; module docstring);
    ``bound_hits(state)`` lists the HP of a fitted state on their bounds.

    Only the kept run's non-convergence is reported (:class:`~magma_pymc.exceptions.ConvergenceWarning`).
    An alternative start whose E-step fails is recorded with objective ``-inf``; a ``KeyboardInterrupt``
    during a run keeps the runs completed so far.
    """
    check_restarts(restarts)
    traces = [run_em(state, problem, max_iter=max_iter, tol=tol, warn=False)]
    hits, labels = [bound_hits(traces[0].state)], [GIVEN_START]
    objectives = [float(traces[0].log_posterior[-1])]
    # Up to rounding: the default start reaches EM through exp and log (HyperParameters).
    given_is_data_driven = (np.allclose(state.mean_log_params, data_driven.mean_log_params, rtol=0, atol=1e-9)
                            and np.allclose(state.log_params, data_driven.log_params, rtol=0, atol=1e-9))
    design = ALTERNATIVE_STARTS if given_is_data_driven else (DATA_DRIVEN_START, *ALTERNATIVE_STARTS)
    planned = design[:ON_BOUND_RESTARTS if restarts == "on_bound" else restarts]
    interrupted = traces[0].interrupted
    for label, *factors in planned:
        best = int(np.argmax(objectives))
        if interrupted or (restarts == "on_bound" and not hits[best]):
            break
        start = shifted_start(data_driven, problem, mean_kernel, kernel, tuple(factors))
        labels.append(label)
        try:
            trace = run_em(start, problem, max_iter=max_iter, tol=tol, warn=False)
        except np.linalg.LinAlgError:
            traces.append(None)
            hits.append([])
            objectives.append(-np.inf)
            continue
        interrupted = trace.interrupted
        traces.append(trace)
        hits.append(bound_hits(trace.state))
        objectives.append(float(trace.log_posterior[-1]) if np.isfinite(trace.log_posterior[-1]) else -np.inf)
    best = int(np.argmax(objectives))  # the first of equal maxima: the given start wins exact ties
    warn_not_converged(traces[best], max_iter, tol)
    return RestartedFit(traces[best], hits[best], tuple(labels), np.array(objectives), best)
