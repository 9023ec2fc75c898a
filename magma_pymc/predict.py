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

from magma_pymc.compiled import ModelGraphs
from magma_pymc.data import Individual
from magma_pymc.mstep import minimize_log_params

__all__ = ["NewIndividualFit", "Prediction", "fit_new_individual", "predict_individual", "mean_process_at"]


class NewIndividualFit(NamedTuple):
    log_params: np.ndarray   # (P + 1,)
    source: str              # "common", "fitted" or "median" (Type II with different HP)
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
) -> NewIndividualFit:
    """HP of the new individual (step 2 of the module docstring).

    ``trained_log_params`` is ``(P + 1,)`` for common HP (returned unchanged) or ``(M, P + 1)``.
    Starting points: the median of the trained HP, then the trained individuals' HP at evenly
    spaced quantiles of their log-likelihood for the new data (``n_restarts`` in all); the best
    optimum wins.
    """
    if trained_log_params.ndim == 1:
        return NewIndividualFit(trained_log_params, "common", np.nan)
    median = np.median(trained_log_params, axis=0)
    if individual.n_points == 0:
        return NewIndividualFit(median, "median", np.nan)

    def objective(log_params):
        return graphs.new_individual_step(log_params, individual.inputs, individual.outputs, obs_mean, obs_cov, jitter)

    scores = np.array([float(objective(row)[0]) for row in trained_log_params])
    ranked = trained_log_params[np.argsort(np.where(np.isfinite(scores), scores, np.inf))]
    picks = np.unique(np.linspace(0, len(ranked) - 1, max(n_restarts - 1, 1)).round().astype(int))
    starts = [median, *ranked[picks]]
    best = None
    for start in starts:
        result = minimize_log_params(objective, start, bounds)
        if best is None or result.fun < best.fun:
            best = result
    return NewIndividualFit(best.x, "fitted", float(best.fun))


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
