r"""Prediction for a new individual (theory page, *Prediction*): Type I (some points observed) and Type II (none).

1. Hyper-posterior of :math:`\mu_0` at :math:`s = (t_*, t_p)` given all training data
   (:func:`magma_pymc.hyperposterior.build_mean_process_at`).
2. The new individual's HP: reused in the common-HP setting; otherwise fitted by maximising
   :math:`\log\mathcal N(y_*; \hat m(t_*), \hat K(t_*,t_*) + \Psi_*)` from several starting points
   (its likelihood surface has several local optima), or -- Type II, nothing to fit -- set to the
   per-parameter median of the training individuals' HP (on the log scale).
3. Gaussian conditioning on :math:`y_*` (:func:`magma_pymc.predict_graphs.build_predictive`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.linalg import solve_triangular

from magma_pymc.compiled import ModelGraphs
from magma_pymc.data import Individual
from magma_pymc.hp_integration import POPULATION_RIDGE, PopulationPrior, log_likelihoods
from magma_pymc.mstep import minimize_log_params

__all__ = ["NewIndividualFit", "Prediction", "fit_new_individual", "predict_individual", "mean_process_at"]


#: Added to the diagonal of the empirical prior's covariance of the log HP (a floor of its spread,
#: and what keeps it positive definite when the training individuals share some HP).
PRIOR_RIDGE = POPULATION_RIDGE


class NewIndividualFit(NamedTuple):
    log_params: np.ndarray   # (P + 1,)
    source: str              # "common", "fitted", "map" or "median" (Type II with different HP)
    neg_log_likelihood: float


class Prediction(NamedTuple):
    mean: np.ndarray            # (n_p,)
    latent_cov: np.ndarray      # (n_p, n_p) covariance of mu0 + f_* at t_p
    predictive_cov: np.ndarray  # (n_p, n_p) latent_cov + sigma_*^2 I
    hp: NewIndividualFit


def mean_process_at(graphs: ModelGraphs, hp_args: tuple, train_args: tuple, jitter: float, inputs: np.ndarray, prior_mean: np.ndarray):
    """Hyper-posterior mean (including the prior mean ``prior_mean`` at ``inputs``) and covariance of mu0."""
    centred, cov = graphs.mean_process_at(*hp_args, *train_args, jitter, inputs)
    return prior_mean + np.asarray(centred), np.asarray(cov)


def fit_new_individual(
    graphs: ModelGraphs,
    individual: Individual,
    obs_mean: np.ndarray,
    obs_cov: np.ndarray,
    trained_log_params: np.ndarray,
    bounds: list,
    jitter: float,
    *,
    n_restarts: int = 4,
    empirical_prior: bool = False,
    prior: PopulationPrior | None = None,
) -> NewIndividualFit:
    r"""HP of the new individual (step 2 of the module docstring).

    ``trained_log_params`` is ``(P + 1,)`` for common HP (returned unchanged) or ``(M, P + 1)``.
    Starting points: the median of the trained HP, then the trained individuals' HP at evenly
    spaced quantiles of their log-likelihood for the new data (``n_restarts`` in all); the best
    optimum wins.

    ``empirical_prior=True`` maximises the posterior instead of the likelihood, under a Gaussian
    prior on the log HP fitted to the training individuals' log HP (mean :math:`\bar x`,
    covariance :math:`S` plus :data:`PRIOR_RIDGE` on the diagonal): the objective gains
    :math:`\tfrac12 (x - \bar x)^\top S^{-1} (x - \bar x)`. With a handful of observed points the
    likelihood alone often drives the noise to zero and the intervals collapse; the prior keeps
    the new individual's HP among those of the population (source ``"map"``). It needs more
    training individuals than log HP (a covariance of full rank); with fewer, the likelihood
    alone is maximised (source ``"fitted"``). ``prior``: that population distribution, given
    (:class:`~magma_pymc.hp_integration.PopulationPrior`; implies ``empirical_prior``).
    """
    if trained_log_params.ndim == 1:
        return NewIndividualFit(trained_log_params, "common", np.nan)
    median = np.median(trained_log_params, axis=0)
    if individual.n_points == 0:
        return NewIndividualFit(median, "median", np.nan)

    def likelihood(log_params):
        return graphs.new_individual_step(log_params, individual.inputs, individual.outputs, obs_mean, obs_cov, jitter)

    # The prior needs a covariance estimate of full rank: more individuals than log HP.
    if prior is None and empirical_prior and len(trained_log_params) > trained_log_params.shape[1]:
        prior = PopulationPrior.from_training(trained_log_params, PRIOR_RIDGE)
    if prior is not None:
        centre, chol = prior.mean, prior.chol

        def objective(log_params):
            value, grad = likelihood(log_params)
            white = solve_triangular(chol, log_params - centre, lower=True)
            return value + 0.5 * white @ white, grad + solve_triangular(chol.T, white, lower=False)
    else:
        objective = likelihood

    # Every start scored in one batched evaluation (same values as `objective`, up to rounding).
    if hasattr(graphs, "individual_kernel"):
        scores = -log_likelihoods(graphs.individual_kernel, trained_log_params, individual.inputs, individual.outputs,
                                  obs_mean, obs_cov, jitter, graphs.mode)
    else:  # another likelihood (e.g. MagmaClust's mixture over clusters): score each start with it
        scores = np.array([float(likelihood(start)[0]) for start in trained_log_params])
    if prior is not None:
        scores = scores - prior.log_density(trained_log_params)
    ranked = trained_log_params[np.argsort(np.where(np.isfinite(scores), scores, np.inf))]
    picks = np.unique(np.linspace(0, len(ranked) - 1, max(n_restarts - 1, 1)).round().astype(int))
    starts = [median, *ranked[picks]]
    best = None
    for start in starts:
        result = minimize_log_params(objective, start, bounds)
        if best is None or result.fun < best.fun:
            best = result
    return NewIndividualFit(best.x, "map" if prior is not None else "fitted", float(best.fun))


def predict_individual(
    graphs: ModelGraphs,
    individual: Individual,
    pred_inputs: np.ndarray,
    joint_mean: np.ndarray,
    joint_cov: np.ndarray,
    hp: NewIndividualFit,
    jitter: float,
) -> Prediction:
    """Condition on the observed points (step 3); ``joint_*`` are mu0's posterior at ``(t_*, t_p)``."""
    mean, latent, predictive = graphs.predictive(
        hp.log_params, individual.inputs, individual.outputs, pred_inputs, joint_mean, joint_cov, jitter
    )
    return Prediction(np.asarray(mean), np.asarray(latent), np.asarray(predictive), hp)
