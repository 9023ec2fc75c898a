r"""The population distribution of the individual HP, estimated with the training HP's estimation error.

With different HP, a new individual's log HP :math:`x_*` are integrated over their posterior under a
population distribution :math:`x_i \sim \mathcal N(\bar x, S)` learned from the training individuals
(:mod:`magma_pymc.hp_integration`). The training HP are *estimates* :math:`\hat x_i`, each from a
few points: their spread is the population's plus their estimation error, and a covariance taken
from them as if they were exact overstates :math:`S` (intervals too wide where nothing is observed;
measured on real panels: 99 % coverage of nominal 95 % intervals for Type II).

Here each estimate is a noisy measurement of its individual's log HP,
:math:`\hat x_i \mid x_i \sim \mathcal N(x_i, V_i)`, so that marginally
:math:`\hat x_i \sim \mathcal N(\bar x, S + V_i)` (the random-effects model of meta-analysis), and
:math:`(\bar x, S)` maximise

.. math::

    \sum_i \log \mathcal N(\hat x_i;\ \bar x,\ S + V_i), \qquad S = L L^\top,

over :math:`\bar x` and the Cholesky factor :math:`L` (log diagonal), by L-BFGS-B from the
empirical mean and covariance. :math:`V_i` is the Laplace covariance of :math:`\hat x_i`: the inverse
Hessian (central differences of the compiled gradient) of the individual M-step objective
:math:`-Q_i` at the fit's last E-step, eigenvalues floored so that a direction the data do not
identify gets a large variance (it then says nothing about :math:`S`). The complete-data Hessian
of :math:`Q_i` is at least the observed information, so :math:`V_i` errs small and :math:`S` large:
the correction is conservative. With :math:`V_i = 0` the estimate is the empirical mean and
(maximum-likelihood) covariance.

This random-effects estimate is where :func:`population_prior`'s default, the maximum of the
individuals' marginal likelihood (:mod:`magma_pymc.population_em`), starts; it is the estimate itself
with ``method="random_effects"``. In-process and distributed fits share :func:`population_estimate`,
so that both give the same estimate of the same fit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.optimize import minimize

from magma_pymc.em import EMState, Problem, estep
from magma_pymc.estep_buckets import separable_individual_objectives
from magma_pymc.hp_integration import POPULATION_RIDGE, PopulationPrior, floored_inverse
from magma_pymc.kernels import Kernel
from magma_pymc.population_em import (
    MAX_INDIVIDUALS,
    IndividualTerms,
    batched_log_likelihoods,
    individual_terms,
    monte_carlo_em,
)

__all__ = ["laplace_covariances", "estimation_covariances", "random_effects_population", "population_prior",
           "POPULATION_METHODS", "population_estimate",
           "sampled_rows", "marginal_population_of_terms", "MIN_INDIVIDUALS"]

#: Step of the central differences of the gradient, in log-HP units.
HESSIAN_STEP = 1e-4
#: Smallest curvature kept in a Hessian's eigen-decomposition (variance at most its inverse).
MIN_CURVATURE = 1e-4


def laplace_covariances(gradients: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    r"""``(M, p, p)`` inverse Hessians of separable objectives at the rows of ``x`` ``(M, p)``.

    From central differences of their ``gradients`` (rows in, rows out); eigenvalues floored at
    :data:`MIN_CURVATURE`.
    """
    p = x.shape[1]
    hessians = np.empty((len(x), p, p))
    for j in range(p):
        step = np.zeros(p)
        step[j] = HESSIAN_STEP
        hessians[:, :, j] = (np.asarray(gradients(x + step)) - np.asarray(gradients(x - step))) / (2 * HESSIAN_STEP)
    hessians = 0.5 * (hessians + hessians.mT)
    return floored_inverse(hessians, MIN_CURVATURE)


def estimation_covariances(problem: Problem, state: EMState, estep_result=None) -> np.ndarray:
    r"""``(M, P + 1, P + 1)`` Laplace covariances :math:`V_i` of the fitted individual log HP (module docstring).

    ``estep_result``: :func:`magma_pymc.em.estep` at ``state``, if already computed.
    """
    current, state = estep_result or estep(state, problem)
    graphs, x = problem.graphs, state.log_params
    rows = np.arange(len(x))
    if problem.batches is not None:
        blocks = list(zip(current.deviations, current.cov_blocks, strict=True))
        objectives = separable_individual_objectives(graphs, problem.batches, blocks, state.jitter)

        def gradients(log_params):
            return objectives(log_params, rows)[1]
    else:
        inputs, mask = problem.data_args.inputs, problem.data_args.mask

        def gradients(log_params):
            return graphs.individual_steps(log_params, inputs, current.deviations, current.cov_blocks, mask,
                                           state.jitter)[1]

    return laplace_covariances(gradients, x)


def random_effects_population(estimates: np.ndarray, covariances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Maximum-likelihood :math:`(\bar x, S)` of :math:`\hat x_i \sim \mathcal N(\bar x, S + V_i)` (module docstring).

    ``estimates`` ``(M, p)``, ``covariances`` ``(M, p, p)``; ``M > p``.
    """
    m, p = estimates.shape
    lower = np.tril_indices(p)
    diagonal = np.flatnonzero(lower[0] == lower[1])

    def unpack(z):
        factor = np.zeros((p, p))
        values = z[p:].copy()
        values[diagonal] = np.exp(values[diagonal])
        factor[lower] = values
        return z[:p], factor @ factor.T

    def minus_log_likelihood(z):
        mean, cov = unpack(z)
        total = cov[None] + covariances
        chol = np.linalg.cholesky(total)
        white = np.linalg.solve(chol, (estimates - mean)[..., None])[..., 0]
        return 0.5 * (white**2).sum() + np.log(np.diagonal(chol, axis1=1, axis2=2)).sum()

    start_cov = np.cov(estimates, rowvar=False, bias=True) + 1e-6 * np.eye(p)
    start_factor = np.linalg.cholesky(start_cov)
    z0 = np.concatenate([estimates.mean(axis=0), start_factor[lower]])
    z0[p + diagonal] = np.log(np.diag(start_factor))
    fit = minimize(minus_log_likelihood, z0, method="L-BFGS-B")
    best = fit.x if fit.fun <= minus_log_likelihood(z0) else z0
    return unpack(best)


#: Estimates of :func:`population_prior`: the individuals' marginal likelihoods (Monte Carlo EM,
#: :mod:`magma_pymc.population_em`) or the random-effects model of the estimates (this module).
POPULATION_METHODS = ("marginal", "random_effects")
#: Fewer training individuals than this keep the random-effects estimate: a covariance of the P + 1 log HP
#: from a handful of marginal likelihoods is at the mercy of one individual.
MIN_INDIVIDUALS = 10


def population_prior(problem: Problem, state: EMState, ridge: float = POPULATION_RIDGE, *,
                     method: str = "marginal", seed: int = 0) -> PopulationPrior:
    """The population distribution of a point fit's individual HP, with their estimation error removed.

    :func:`population_estimate` from the fit's Laplace covariances and, for the marginal estimate,
    the sampled individuals' :func:`~magma_pymc.population_em.individual_terms`. Falls back to
    :meth:`PopulationPrior.from_training` (the fitted HP taken as exact) with too few individuals
    for a full covariance (``M <= P + 1``), as that method does.
    """
    _check_method(method)
    x = np.asarray(state.log_params)
    if len(x) <= x.shape[1]:
        return PopulationPrior.from_training(x, ridge)
    estep_result = estep(state, problem)
    covariances = estimation_covariances(problem, state, estep_result)
    graphs = problem.graphs
    return population_estimate(x, covariances, lambda rows: individual_terms(problem, estep_result, rows),
                               graphs.individual_kernel, graphs.mode, estep_result[1].jitter, ridge,
                               method=method, seed=seed)


def population_estimate(estimates: np.ndarray, covariances: np.ndarray,
                        sampled_terms: Callable[[np.ndarray], Sequence[IndividualTerms | None]], kernel: Kernel,
                        mode: str, jitter: float, ridge: float = POPULATION_RIDGE, *, method: str = "marginal",
                        seed: int = 0) -> PopulationPrior:
    """The population distribution of the fitted log HP ``estimates`` ``(M, p)`` (in-process and distributed fits).

    ``method="marginal"``: :func:`magma_pymc.population_em.monte_carlo_em` on the individuals
    :func:`sampled_rows` picks, started from the random-effects estimate (with fewer than
    :data:`MIN_INDIVIDUALS` individuals, the random-effects estimate itself); ``"random_effects"``:
    :func:`random_effects_population` of the estimates and their Laplace ``covariances`` ``(M, p, p)``.
    ``sampled_terms(rows)`` gives the :class:`~magma_pymc.population_em.IndividualTerms` of those
    rows (``None`` for an individual on the measurement model), called only for the marginal
    estimate; ``kernel``, ``mode`` and ``jitter`` are the individuals' kernel, compile mode and the
    fit's jitter. ``ridge`` is added to the covariance's diagonal.
    """
    _check_method(method)
    mean, cov = random_effects_population(estimates, covariances)
    if method == "marginal" and len(estimates) >= MIN_INDIVIDUALS:
        rows = sampled_rows(len(estimates), seed)
        mean, cov = marginal_population_of_terms(sampled_terms(rows), kernel, mode, jitter, estimates[rows],
                                                 covariances[rows], mean, cov, seed=seed)
    return PopulationPrior(mean, cov + ridge * np.eye(estimates.shape[1]))


def sampled_rows(n_individuals: int, seed: int = 0) -> np.ndarray:
    """Sorted rows of the individuals entering the marginal estimate.

    All of them, or a seeded subset of :data:`~magma_pymc.population_em.MAX_INDIVIDUALS`.
    """
    rows = np.arange(n_individuals)
    if n_individuals > MAX_INDIVIDUALS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, MAX_INDIVIDUALS, replace=False))
    return rows


def marginal_population_of_terms(terms: Sequence[IndividualTerms | None], kernel: Kernel, mode: str, jitter: float,
                                 estimates: np.ndarray, covariances: np.ndarray, start_mean: np.ndarray,
                                 start_cov: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`magma_pymc.population_em.monte_carlo_em` on the sampled individuals' ``terms``.

    ``None`` terms (more than :data:`~magma_pymc.population_em.LAPLACE_POINTS` points) keep the
    measurement model of their ``estimates`` and ``covariances`` (the same rows, in order).
    """
    sampled = np.array([t is not None for t in terms], dtype=bool)
    kept = [t for t in terms if t is not None]

    def log_likelihood(draws):
        return batched_log_likelihoods(kernel, kept, draws, jitter, mode)

    mean, cov, _ = monte_carlo_em(log_likelihood, sampled, estimates, covariances, start_mean, start_cov, seed=seed)
    return mean, cov


def _check_method(method: str) -> None:
    if method not in POPULATION_METHODS:
        raise ValueError(f"method must be one of {POPULATION_METHODS}, got {method!r}")
