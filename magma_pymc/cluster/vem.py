r"""Variational EM of MagmaClust: ``vem_step`` and :func:`run_vem` (docs: *Clustering*).

:math:`q(Z,\mu) = \prod_i q(Z_i)\prod_k q(\mu_k)`. One iteration, each step a coordinate ascent on
the evidence lower bound

.. math::

    \mathcal L = \sum_{ik}\tau_{ik}\big[\log\pi_k + E_{ik} - \log\tau_{ik}\big]
                 - \sum_k \mathrm{KL}(q(\mu_k)\,\|\,p(\mu_k)),

1. responsibilities :math:`\tau_{ik} \propto \pi_k \exp E_{ik}` (log-sum-exp), then
   :math:`\pi_k = \tfrac1M\sum_i\tau_{ik}`; a cluster whose expected size falls below
   :data:`MIN_CLUSTER_SIZE` individuals is dropped (with a :class:`ClusterWarning`);
2. individual HP: MAGMA's individual objective with the responsibility-weighted scatter
   (:func:`~magma_pymc.cluster.linalg.mixture_scatter`), by the same compiled graphs and optimisers;
3. mean-process HP of each cluster (or one shared set): ``"marginal"`` (ECME, default, as MAGMA)
   maximises the collapsed bound :math:`\log\int p(\mu_k)\prod_i\mathcal N(y_i;\mu_k,\Psi_i)^{\tau_{ik}}`
   at the new individual HP, which jointly optimises :math:`q(\mu_k)`; ``"expected"`` the textbook
   :math:`\log\mathcal N(\hat m_k; m, K_k) - \tfrac12\mathrm{tr}(K_k^{-1}\hat K_k)`;
4. closed-form :math:`q(\mu_k)` (:func:`~magma_pymc.cluster.linalg.cluster_posteriors`), and
   :math:`\mathcal L`. With one cluster all of this is MAGMA's EM step for step.

With inducing points (a projected ``problem.graphs``) :math:`q(\mu_k)`, :math:`E_{ik}` and the mean-process
objective come from :mod:`magma_pymc.cluster.inducing`; the rest is unchanged.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pytensor
import pytensor.tensor as pt
from scipy.special import logsumexp, xlogy

from magma_pymc.batched_lbfgsb import minimize_separable
from magma_pymc.cluster.inducing import projected_estep, projected_mean_objectives
from magma_pymc.cluster.linalg import (
    ClusterPosterior,
    IndividualTerms,
    cluster_posteriors,
    expected_log_likelihoods,
    individual_terms,
    mixture_scatter,
    weighted_information,
)
from magma_pymc.compiled import ModelGraphs
from magma_pymc.exceptions import ConvergenceWarning, MagmaWarning
from magma_pymc.exceptions import warn as _warn
from magma_pymc.hyperposterior import individual_covariances
from magma_pymc.jitter import smallest_working_jitter
from magma_pymc.kernels import Kernel
from magma_pymc.mstep import minimize_log_params

__all__ = [
    "MIN_CLUSTER_SIZE",
    "ClusterProblem",
    "ClusterWarning",
    "VEMEStep",
    "VEMState",
    "VEMTrace",
    "estep",
    "run_vem",
    "vem_step",
]

#: A cluster whose expected number of individuals falls below this is dropped during VEM.
MIN_CLUSTER_SIZE = 0.5


class ClusterWarning(MagmaWarning):
    """A cluster emptied during variational EM and was dropped."""


@functools.cache
def _psi_function(kernel: Kernel, common_hp: bool, mode: str):
    log_params = pt.vector("log_params") if common_hp else pt.matrix("log_params")
    inputs, mask, jitter = pt.tensor3("inputs"), pt.matrix("mask"), pt.scalar("jitter")
    psi = individual_covariances(kernel, log_params, inputs, mask, jitter)
    return pytensor.function([log_params, inputs, mask, jitter], psi, mode=mode)


@functools.cache
def _covariance_function(kernel: Kernel, mode: str):
    """``(log_params, x, y) -> k(x, y)`` of a kernel."""
    log_params, left, right = pt.vector("log_params"), pt.matrix("left"), pt.matrix("right")
    return pytensor.function([log_params, left, right], kernel.covariance(log_params)(left, right), mode=mode)


@dataclass(frozen=True)
class ClusterProblem:
    """Everything VEM needs besides the state: MAGMA's compiled graphs, padded data and bounds."""

    graphs: ModelGraphs
    grid: np.ndarray        # (N, d)
    inputs: np.ndarray      # (M, n, d)
    residuals: np.ndarray   # (M, n) y_i - m(t_i), zero on padded slots
    mask: np.ndarray        # (M, n)
    index: np.ndarray       # (M, n)
    mean_bounds: list
    bounds: list            # individual HP bounds (repeated per individual with different HP)
    output_scale: float
    shared_mean_hp: bool = False
    mean_step: str = "marginal"

    def mean_covariance(self, mean_log_params: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """``(K, len(left), len(right))`` prior covariances of the clusters' mean processes."""
        function = _covariance_function(self.graphs.mean_kernel, self.graphs.mode)
        return np.stack([function(row, left, right) for row in mean_log_params])   # K is small

    def psi(self, log_params: np.ndarray, jitter: float) -> np.ndarray:
        r"""Padded :math:`\Psi_i = C_{\theta_i}(t_i, t_i) + (\sigma_i^2 + j) I`, shape ``(M, n, n)``."""
        function = _psi_function(self.graphs.individual_kernel, self.graphs.common_hp, self.graphs.mode)
        return function(log_params, self.inputs, self.mask, jitter)


class VEMState(NamedTuple):
    """The variational EM's parameters: mean-process and individual log HP, log mixing weights, responsibilities."""

    mean_log_params: np.ndarray  # (K, P0)
    log_params: np.ndarray       # (P + 1,) common HP or (M, P + 1)
    log_weights: np.ndarray      # (K,) log pi
    tau: np.ndarray              # (M, K) responsibilities
    jitter: float


class VEMEStep(NamedTuple):
    """The E-step at a state: the clusters' mean-process posteriors and the terms the M-step and the bound use."""

    posterior: ClusterPosterior
    terms: IndividualTerms
    information: tuple | None    # weighted_information(...) at the state's tau (None on inducing points)
    expected: np.ndarray         # (M, K) E_ik
    deviations: np.ndarray       # (K, M, n)
    blocks: np.ndarray           # (K, M, n, n)
    elbo: float


def elbo(tau: np.ndarray, log_weights: np.ndarray, expected: np.ndarray, kl: np.ndarray) -> float:
    """The bound of the module docstring (``0 log 0 = 0``)."""
    weighted = np.where(tau > 0, tau * (log_weights[None] + expected), 0.0)
    return float(weighted.sum() - xlogy(tau, tau).sum() - kl.sum())


def estep(state: VEMState, problem: ClusterProblem, terms: IndividualTerms | None = None) -> tuple[VEMEStep, VEMState]:
    r""":math:`q(\mu_k)` at the state's HP and responsibilities, :math:`E_{ik}` and the bound.

    ``terms``: the individuals' factorisations at the state's HP and jitter, when already computed.
    As MAGMA's E-step, the jitter grows tenfold while a factorisation fails, up to
    ``JITTER_MAX`` times the output variance, with a :class:`NumericalWarning`.
    """
    n_grid = len(problem.grid)

    def attempt(jitter: float):
        try:
            factors = terms
            if factors is None or jitter != state.jitter:
                factors = individual_terms(problem.psi(state.log_params, jitter), problem.residuals, problem.mask)
            if problem.graphs.projected:  # mean processes on inducing points (magma_pymc.cluster.inducing)
                information = projected_estep(problem, state.mean_log_params, factors, state.tau, jitter)
                posterior = information[0]
            else:
                information = weighted_information(factors, state.tau, problem.index, n_grid)
                prior = (problem.mean_covariance(state.mean_log_params, problem.grid, problem.grid)
                         + jitter * np.eye(n_grid))
                posterior = cluster_posteriors(prior, information[0], information[1])
        except np.linalg.LinAlgError:
            return None
        ok = np.all(np.isfinite(posterior.mean)) and np.all(np.isfinite(posterior.kl))
        return (factors, information, posterior) if ok else None

    def failure(jitter: float) -> str:
        return (f"the variational E-step failed even with jitter {jitter:.3g}: the hyper-parameters give numerically "
                f"singular covariances (mean processes {np.exp(state.mean_log_params)}, individuals "
                f"{np.exp(state.log_params)})")

    (terms, information, posterior), jitter = smallest_working_jitter(attempt, state.jitter, problem.output_scale,
                                                                      failure)
    state = state._replace(jitter=jitter)
    if problem.graphs.projected:
        _, expected, deviations, blocks, _ = information
        information = None
    else:
        expected, deviations, blocks = expected_log_likelihoods(
            terms, posterior, problem.residuals, problem.mask, problem.index
        )
    bound = elbo(state.tau, state.log_weights, expected, posterior.kl)
    return VEMEStep(posterior, terms, information, expected, deviations, blocks, bound), state


def update_responsibilities(log_weights: np.ndarray, expected: np.ndarray) -> np.ndarray:
    r""":math:`\tau_{ik} = \pi_k e^{E_{ik}} / \sum_l \pi_l e^{E_{il}}` by log-sum-exp."""
    logits = log_weights[None] + expected
    return np.exp(logits - logsumexp(logits, axis=1, keepdims=True))


def _drop_empty(state: VEMState, current: VEMEStep) -> tuple[VEMState, np.ndarray]:
    """Responsibilities and weights (step 1), dropping clusters that emptied."""
    tau = update_responsibilities(state.log_weights, current.expected)
    keep = np.flatnonzero(tau.sum(axis=0) >= MIN_CLUSTER_SIZE)
    if len(keep) == 0:  # cannot happen with >= 1 individual (sizes sum to M); kept for clarity
        keep = np.array([int(np.argmax(tau.sum(axis=0)))])
    if len(keep) < tau.shape[1]:
        dropped = sorted(set(range(tau.shape[1])) - set(keep.tolist()))
        _warn(
            f"cluster(s) {dropped} emptied during variational EM (expected size below {MIN_CLUSTER_SIZE} "
            f"individual); dropped, {len(keep)} cluster(s) left",
            ClusterWarning,
        )
        log_weights = state.log_weights[keep] - logsumexp(state.log_weights[keep])
        tau = update_responsibilities(log_weights, current.expected[:, keep])
        state = state._replace(mean_log_params=state.mean_log_params[keep])
    sizes = tau.sum(axis=0)
    return state._replace(tau=tau, log_weights=np.log(sizes / tau.shape[0])), keep


def _individual_step(state: VEMState, problem: ClusterProblem, current: VEMEStep, keep: np.ndarray) -> np.ndarray:
    graphs, tau = problem.graphs, state.tau
    deviations, blocks = current.deviations[keep], current.blocks[keep]
    mean_dev, scatter = mixture_scatter(tau, deviations, blocks)
    if graphs.fast_path:
        # One block for all: sum_k (n_k / M) Khat_k + the pooled spread (exact MAGMA blocks with one cluster).
        n_individuals = tau.shape[0]
        sizes = tau.sum(axis=0) / n_individuals
        spread = deviations - mean_dev[None]
        pooled = np.einsum("k,kab->ab", sizes, current.posterior.cov[keep])
        pooled = pooled + np.einsum("mk,kma,kmb->ab", tau, spread, spread) / n_individuals

        def objective(log_params):
            return graphs.individual_step(log_params, problem.grid, mean_dev, pooled, problem.mask, state.jitter)

        return minimize_log_params(objective, state.log_params, problem.bounds).x
    if not graphs.common_hp:
        def objectives(log_params, rows):
            take = rows if rows.size < len(problem.inputs) else slice(None)
            return graphs.individual_steps(
                log_params, problem.inputs[take], mean_dev[take], scatter[take], problem.mask[take], state.jitter
            )

        return minimize_separable(objectives, state.log_params, problem.bounds).x

    def objective(log_params):
        return graphs.individual_step(log_params, problem.inputs, mean_dev, scatter, problem.mask, state.jitter)

    return minimize_log_params(objective, state.log_params, problem.bounds).x


def _mean_objectives(state: VEMState, problem: ClusterProblem, current: VEMEStep, terms: IndividualTerms | None):
    """One ``(value, grad)`` function per cluster for the mean-process step (module docstring, step 3).

    ``terms`` are the individuals' factorisations at the new individual HP (ECME).
    """
    graphs, jitter = problem.graphs, state.jitter
    if problem.mean_step == "expected":
        post = current.posterior
        return [
            lambda lp, m=m, v=v: graphs.mean_process_step(lp, problem.grid, m, v, jitter)
            for m, v in zip(post.mean, post.cov_factor, strict=True)
        ]
    if graphs.projected:
        return projected_mean_objectives(problem, state.tau, terms, jitter)
    summaries = zip(*weighted_information(terms, state.tau, problem.index, len(problem.grid)), strict=True)
    functions = []
    for summary in summaries:
        pseudo = graphs.pseudo_observations(*summary)
        if np.isfinite(pseudo[2]):
            functions.append(
                lambda lp, pseudo=pseudo: graphs.mean_process_pseudo_step(lp, problem.grid, *pseudo, jitter)
            )
        else:  # a grid point no member of the cluster observes: the information form needs no inverse
            functions.append(
                lambda lp, summary=summary: graphs.mean_process_precision_step(lp, problem.grid, *summary, jitter)
            )
    return functions


def vem_step(state: VEMState, problem: ClusterProblem, current: VEMEStep) -> tuple[VEMState, IndividualTerms | None]:
    """Steps 1-3 of the module docstring.

    The caller runs the E-step (step 4) with the returned individual factorisations at the new HP (``None`` when the
    mean step did not need them).
    """
    state, keep = _drop_empty(state, current)
    log_params = _individual_step(state, problem, current, keep)
    terms = None
    if problem.mean_step == "expected":
        current = current._replace(posterior=ClusterPosterior(*(np.asarray(a)[keep] for a in current.posterior)))
    else:
        terms = individual_terms(problem.psi(log_params, state.jitter), problem.residuals, problem.mask)
    functions = _mean_objectives(state, problem, current, terms)
    if problem.shared_mean_hp:
        def shared(lp):
            values = [f(lp) for f in functions]
            return sum(float(v) for v, _ in values), sum(np.asarray(g) for _, g in values)

        fitted = minimize_log_params(shared, state.mean_log_params[0], problem.mean_bounds).x
        mean_log_params = np.tile(fitted, (len(functions), 1))
    else:
        mean_log_params = np.stack([
            minimize_log_params(f, row, problem.mean_bounds).x
            for f, row in zip(functions, state.mean_log_params, strict=True)
        ])
    return state._replace(mean_log_params=mean_log_params, log_params=log_params), terms


class VEMTrace(NamedTuple):
    """The final state and E-step of a variational EM run, and its bound, cluster count and HP per iteration."""

    state: VEMState
    estep: VEMEStep
    elbo: np.ndarray              # (iterations + 1,)
    n_clusters: np.ndarray        # (iterations + 1,)
    log_params: np.ndarray        # (iterations + 1, ...) individual log HP
    converged: bool


def run_vem(state: VEMState, problem: ClusterProblem, *, max_iter: int = 25, tol: float = 1e-3,
            warn_convergence: bool = True) -> VEMTrace:
    """Iterate until the relative change of the bound is below ``tol`` (MAGMA's and MagmaClustR's rule)."""
    current, state = estep(state, problem)
    elbos, sizes, individuals = [current.elbo], [state.tau.shape[1]], [state.log_params]
    converged = False
    for _ in range(max_iter):
        state, terms = vem_step(state, problem, current)
        current, state = estep(state, problem, terms)
        elbos.append(current.elbo)
        sizes.append(state.tau.shape[1])
        individuals.append(state.log_params)
        if sizes[-1] == sizes[-2] and abs(elbos[-1] - elbos[-2]) < tol * abs(elbos[-2]):
            converged = True
            break
    if not converged and max_iter > 0 and warn_convergence:
        _warn(
            f"variational EM did not converge in {max_iter} iterations (last relative change "
            f"{abs(elbos[-1] - elbos[-2]) / abs(elbos[-2]):.2e} >= tol={tol:g}); increase max_iter",
            ConvergenceWarning,
        )
    return VEMTrace(state, current, np.array(elbos), np.array(sizes), np.array(individuals), converged)
