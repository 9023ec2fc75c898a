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

``"scan"`` (:func:`scan_mean_lengthscales`) is ``"on_bound"`` plus a check of every EM run's end
point along the direction in which MAGMA's likelihood is most often multimodal: the mean-process
lengthscales (a long one leaves :math:`\mu_0` a trend and the individual processes the rest, a
short one lets :math:`\mu_0` carry the common signal). At the fitted individual HP the objective is
evaluated (one E-step each) with every mean-process lengthscale multiplied by each factor of
:data:`SCAN_FACTORS`,

.. math::

    J\big(\theta_0 \cdot f, \theta_{1:M}\big) > J(\theta_0, \theta_{1:M}) + \mathrm{tol}\,|J(\theta_0, \theta_{1:M})|,

and if one beats the end point by more than EM's tolerance, the end point is not the maximum and
EM resumes from the best such point (so its final objective is higher still); the resumed run is
recorded as another start. A fit whose end point passes the check costs
``len(SCAN_FACTORS)`` E-steps more and returns exactly what ``"on_bound"`` does.

``"screen"`` (:func:`run_screened_em`) runs every start (the given one and all of
:data:`ALTERNATIVE_STARTS`) for :data:`SCREEN_ITERATIONS` EM iteration(s), then continues to
convergence only the start whose objective :math:`J` after those :math:`k` iterations is highest,

.. math::

    s^\star = \arg\max_{s} \; J\big(\theta^{(s)}_{k}\big),

and, as ``"on_bound"``, the next best screened starts while the best continued run ends with a HP
on its bound (at most :data:`ON_BOUND_RESTARTS` more). The first iteration moves the HP most
(from the start to near the basin it will end in), so the objective after it ranks the basins at
the cost of one iteration per alternative start; the continued run is the same computation as one
EM run of ``max_iter`` iterations from its start. When the given start screens best and ends off
the bounds, the fit is exactly the single-start fit.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from magma_pymc.em import EMState, EMTrace, Problem, em_step, estep, iterate_em, run_em, warn_not_converged
from magma_pymc.exceptions import NumericalWarning
from magma_pymc.kernels import Kernel

__all__ = [
    "ALTERNATIVE_STARTS",
    "ON_BOUND_RESTARTS",
    "RestartedFit",
    "SCAN_FACTORS",
    "SCREEN_ITERATIONS",
    "check_restarts",
    "resume_em",
    "run_em_with_restarts",
    "run_screened_em",
    "scan_mean_lengthscales",
    "shifted_start",
]

#: ``(label, lengthscale factor, mean-process variance factor, individual variance factor)``, in the order tried.
ALTERNATIVE_STARTS: tuple[tuple[str, float, float, float], ...] = (
    ("lengthscales / 3", 1 / 3, 1.0, 1.0),
    ("lengthscales x 3", 3.0, 1.0, 1.0),
    ("mean-process variance / 10", 1.0, 0.1, 1.0),
    ("individual variances / 10", 1.0, 1.0, 0.1),
)
#: Most restarts the ``"on_bound"`` policy runs (and more continued starts of ``"screen"``).
ON_BOUND_RESTARTS = 2
#: Factors on the mean-process lengthscales at which ``"scan"`` checks an EM end point (a log grid over 10^(+-1)).
SCAN_FACTORS: tuple[float, ...] = tuple(10.0 ** (k / 3) for k in (-3, -2, -1, 1, 2, 3))
#: EM iterations every start runs before the ``"screen"`` policy picks the one it continues.
SCREEN_ITERATIONS = 1
#: The named restart policies (module docstring).
POLICIES = ("on_bound", "scan", "screen")
#: Label of the start EM was given, and of the data-driven start when it is another one.
GIVEN_START = "given start"
DATA_DRIVEN_START = ("data-driven start", 1.0, 1.0, 1.0)


class RestartedFit(NamedTuple):
    """The kept EM run and the record of every run."""

    trace: EMTrace          # the run with the highest final objective
    hp_at_bounds: list      # its HP on a bound (descriptions, as :func:`magma_pymc.settings.hp_at_bounds`)
    labels: tuple           # the starts run, the given one first
    objectives: np.ndarray  # last objective of each run (-inf where the E-step failed)
    best: int               # index of the kept run
    iterations: np.ndarray  # EM iterations each run went through (screened only: SCREEN_ITERATIONS or fewer)

    def attrs(self) -> dict:
        """The record as results-tree attributes (:mod:`magma_pymc.results`)."""
        return {"em_starts": len(self.labels), "em_start_labels": "; ".join(self.labels),
                "em_start_objectives": self.objectives, "em_best_start": self.best,
                "em_start_iterations": self.iterations}


def check_restarts(restarts: object) -> None:
    """``"on_bound"``, ``"scan"``, ``"screen"`` or an int in ``0 .. len(ALTERNATIVE_STARTS)``."""
    if isinstance(restarts, str) and restarts in POLICIES:
        return
    if isinstance(restarts, bool) or not isinstance(restarts, (int, np.integer)) or not (
            0 <= restarts <= len(ALTERNATIVE_STARTS)):
        raise ValueError(f"restarts must be 'on_bound', 'scan', 'screen' or an int from 0 to "
                         f"{len(ALTERNATIVE_STARTS)} (the number of alternative EM starts), got {restarts!r}")


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


def _design(state: EMState, data_driven: EMState) -> tuple:
    """The alternative starts, the data-driven one first when EM was given another start."""
    # Up to rounding: the default start reaches EM through exp and log (HyperParameters).
    given_is_data_driven = (np.allclose(state.mean_log_params, data_driven.mean_log_params, rtol=0, atol=1e-9)
                            and np.allclose(state.log_params, data_driven.log_params, rtol=0, atol=1e-9))
    return ALTERNATIVE_STARTS if given_is_data_driven else (DATA_DRIVEN_START, *ALTERNATIVE_STARTS)


def _final_objective(trace: EMTrace | None) -> float:
    if trace is None or not np.isfinite(trace.log_posterior[-1]):
        return -np.inf
    return float(trace.log_posterior[-1])


def _iterations(traces: Sequence[EMTrace | None]) -> np.ndarray:
    return np.array([0 if trace is None else len(trace.log_posterior) - 1 for trace in traces])


def run_em_with_restarts(state: EMState, problem: Problem, mean_kernel: Kernel, kernel: Kernel, *,
                         data_driven: EMState, restarts: str | int, max_iter: int, tol: float,
                         bound_hits: Callable[[EMState], list]) -> RestartedFit:
    """EM from ``state``, then from the alternative starts the ``restarts`` policy calls for.

    The alternative starts surround ``data_driven`` (the data-driven start; module docstring);
    ``bound_hits(state)`` lists the HP of a fitted state on their bounds. ``restarts="screen"``:
    :func:`run_screened_em`.

    Only the kept run's non-convergence is reported (:class:`~magma_pymc.exceptions.ConvergenceWarning`).
    An alternative start whose E-step fails is recorded with objective ``-inf``; a ``KeyboardInterrupt``
    during a run keeps the runs completed so far.
    """
    check_restarts(restarts)
    if restarts == "screen":
        return run_screened_em(state, problem, mean_kernel, kernel, data_driven=data_driven, max_iter=max_iter,
                               tol=tol, bound_hits=bound_hits)
    scan = restarts == "scan"
    traces, labels = [], []

    def run(start: EMState, label: str) -> None:
        traces.append(run_em(start, problem, max_iter=max_iter, tol=tol, warn=False))
        labels.append(label)
        if scan and not traces[-1].interrupted:
            resumed = scan_mean_lengthscales(traces[-1], problem, mean_kernel, max_iter=max_iter, tol=tol)
            if resumed is not None:
                factor, trace = resumed
                traces.append(trace)
                labels.append(f"{label}'s end, mean-process lengthscales x {factor:.3g}")

    run(state, GIVEN_START)
    design = _design(state, data_driven)
    planned = design[:ON_BOUND_RESTARTS if restarts in ("on_bound", "scan") else restarts]
    for label, *factors in planned:
        objectives = [_final_objective(trace) for trace in traces]
        best = int(np.argmax(objectives))
        if any(t is not None and t.interrupted for t in traces) or (
                restarts in ("on_bound", "scan") and not bound_hits(traces[best].state)):
            break
        start = shifted_start(data_driven, problem, mean_kernel, kernel, tuple(factors))
        try:
            run(start, label)
        except np.linalg.LinAlgError:
            traces.append(None)
            labels.append(label)
    objectives = [_final_objective(trace) for trace in traces]
    hits = [[] if trace is None else bound_hits(trace.state) for trace in traces]
    best = int(np.argmax(objectives))  # the first of equal maxima: the given start wins exact ties
    warn_not_converged(traces[best], max_iter, tol)
    return RestartedFit(traces[best], hits[best], tuple(labels), np.array(objectives), best, _iterations(traces))


def scan_mean_lengthscales(trace: EMTrace, problem: Problem, mean_kernel: Kernel, *, max_iter: int,
                           tol: float) -> tuple[float, EMTrace] | None:
    """The ``"scan"`` check of an EM end point (module docstring); ``(factor, resumed run)`` if it fails, else ``None``.

    The E-step of the best point found starts the resumed run (``max_iter`` more iterations).
    A point whose E-step fails is skipped (and a resumed run that fails is dropped); the jitter warnings of the
    points tried are not passed on.
    """
    kinds = np.array([mean_kernel.kinds[name] for name in mean_kernel.names])
    if not (kinds == "lengthscale").any() or max_iter == 0:
        return None
    state = trace.state
    bounds = np.asarray(problem.mean_bounds, dtype=float)
    current = _final_objective(trace)
    best = None  # (objective, factor, E-step, state)
    for factor in SCAN_FACTORS:
        shift = np.where(kinds == "lengthscale", np.log(factor), 0.0)
        candidate = state._replace(mean_log_params=np.clip(state.mean_log_params + shift, bounds[:, 0], bounds[:, 1]))
        if np.array_equal(candidate.mean_log_params, state.mean_log_params):
            continue  # clipped back onto the end point
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NumericalWarning)
                result, candidate = estep(candidate, problem)
        except np.linalg.LinAlgError:
            continue
        objective = result.log_likelihood + problem.log_prior(candidate)
        if np.isfinite(objective) and objective > current + tol * abs(current) and (
                best is None or objective > best[0]):
            best = (objective, factor, result, candidate)
    if best is None:
        return None
    _, factor, result, candidate = best
    start = trace._replace(state=candidate, estep=result, mean_log_params=candidate.mean_log_params[None],
                           log_params=np.asarray(candidate.log_params)[None],
                           log_likelihood=np.array([result.log_likelihood]), log_posterior=np.array([best[0]]))
    try:
        return factor, resume_em(start, problem, max_iter=max_iter, tol=tol)
    except np.linalg.LinAlgError:  # an E-step on the way failed: the end point stays the result
        return None


def resume_em(trace: EMTrace, problem: Problem, *, max_iter: int, tol: float) -> EMTrace:
    """Up to ``max_iter`` more EM iterations after ``trace``, returned as one trace.

    Continues from the trace's last state and E-step (no E-step recomputed), with the same stopping
    rule: ``run_em`` for ``k`` iterations then ``resume_em`` gives what one run would.
    """
    more = iterate_em((trace.estep, trace.state), lambda state, current: estep(em_step(state, problem, current),
                                                                                 problem),
                      log_likelihood=lambda current: current.log_likelihood, log_prior=problem.log_prior,
                      max_iter=max_iter, tol=tol, warn=False)
    return EMTrace(more.state, more.estep,
                   *(np.concatenate([before, after[1:]]) for before, after in
                     ((trace.mean_log_params, more.mean_log_params), (trace.log_params, more.log_params),
                      (trace.log_likelihood, more.log_likelihood))),
                   more.converged, more.interrupted, np.concatenate([trace.log_posterior, more.log_posterior[1:]]))


def run_screened_em(state: EMState, problem: Problem, mean_kernel: Kernel, kernel: Kernel, *,
                    data_driven: EMState, max_iter: int, tol: float,
                    bound_hits: Callable[[EMState], list]) -> RestartedFit:
    """The ``"screen"`` policy (module docstring): every start for :data:`SCREEN_ITERATIONS`, the best continued.

    The starts are ranked by their objective after the screen (the given start first among equals);
    the best is continued to convergence (``max_iter`` iterations in all, screen included), then the
    next ones while the best continued run ends with a HP on a bound (at most :data:`ON_BOUND_RESTARTS`
    more). The kept run is the continued one with the highest final objective. A start whose E-step
    fails is recorded with objective ``-inf`` (the given start's failure is raised, as with one run);
    a ``KeyboardInterrupt`` keeps the runs completed so far.
    """
    screen = min(SCREEN_ITERATIONS, max_iter)
    starts = [(GIVEN_START, state), *((label, shifted_start(data_driven, problem, mean_kernel, kernel,
                                                            tuple(factors)))
                                      for label, *factors in _design(state, data_driven))]
    if max_iter == 0:
        starts = starts[:1]  # nothing to screen
    traces: list[EMTrace | None] = []
    labels: list[str] = []
    for label, start in starts:
        labels.append(label)
        try:
            traces.append(run_em(start, problem, max_iter=screen, tol=tol, warn=False))
        except np.linalg.LinAlgError:
            if not traces:
                raise
            traces.append(None)
        if traces[-1] is not None and traces[-1].interrupted:
            break
    objectives = np.array([_final_objective(trace) for trace in traces])
    ranked = [int(i) for i in np.argsort(-objectives, kind="stable") if np.isfinite(objectives[i])]
    hits: list[list] = [[] for _ in traces]
    continued: list[int] = []
    interrupted = traces[-1] is not None and traces[-1].interrupted
    for index in ranked[:1 + ON_BOUND_RESTARTS]:
        if continued and not hits[_best(continued, objectives)]:
            break
        trace = traces[index]
        if not (trace.converged or interrupted) and max_iter > screen:
            trace = traces[index] = resume_em(trace, problem, max_iter=max_iter - screen, tol=tol)
            objectives[index] = _final_objective(trace)
        hits[index] = bound_hits(trace.state)
        continued.append(index)
        interrupted = interrupted or trace.interrupted
        if interrupted:
            break
    if not continued:  # the given start's E-step worked, so its objective is finite
        continued = [0]
    best = _best(continued, objectives)
    warn_not_converged(traces[best], max_iter, tol)
    return RestartedFit(traces[best], hits[best], tuple(labels), objectives, best, _iterations(traces))


def _best(indices: Sequence[int], objectives: np.ndarray) -> int:
    """The index among ``indices`` with the highest objective, the earliest start among equals."""
    return min(indices, key=lambda i: (-objectives[i], i))
