r"""Prediction for a new individual under MagmaClust: a Gaussian mixture of K MAGMA predictions.

1. Each cluster's mean process at :math:`s = (t_*, t_p)` given all training data, exact through the
   grid (as MAGMA, with :math:`Q_k = K_k(s,t) L_k^{-\top}`):
   :math:`\hat m_k(s) - m(s) = Q_k\alpha_k`, :math:`\hat K_k(s,s) = K_k(s,s) - Q_kQ_k^\top +
   (L_{B_k}^{-1}Q_k^\top)^\top(L_{B_k}^{-1}Q_k^\top)`.
2. The new individual's HP: the common HP, or (different HP) the maximiser of its mixture
   likelihood :math:`\log\sum_k\pi_k\,\mathcal N(y_*;\hat m_k(t_*), \hat K_k(t_*,t_*) + \Psi_*)`,
   with MAGMA's restarts and optional empirical prior (:func:`magma_pymc.predict.fit_new_individual`);
   Type II with different HP: the median of the training HP.
3. Cluster probabilities :math:`\tau_{*k}\propto\pi_k\,\mathcal N(y_*;\hat m_k(t_*),\hat K_k(t_*,t_*)+\Psi_*)`
   (Type II: :math:`\pi_k`), and each cluster's MAGMA prediction (Gaussian conditioning on :math:`y_*`).
The prediction is the mixture :math:`\sum_k\tau_{*k}\mathcal N(\text{mean}_k, \text{cov}_k)`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.linalg import solve_triangular
from scipy.special import logsumexp

from magma_pymc.cluster.vem import ClusterProblem, VEMEStep, VEMState
from magma_pymc.data import Individual
from magma_pymc.predict import Prediction, fit_new_individual, predict_individual

__all__ = ["ClusterPrediction", "cluster_means_at", "predict_clusters"]


class ClusterPrediction(NamedTuple):
    """A new individual's cluster probabilities, per-cluster predictions and log HP (and where they came from)."""

    probabilities: np.ndarray   # (K,) tau_*k
    components: list            # K magma_pymc.predict.Prediction, one per cluster
    log_params: np.ndarray      # (P + 1,) the new individual's log HP
    hp_source: str


def cluster_means_at(problem: ClusterProblem, state: VEMState, current: VEMEStep, inputs: np.ndarray,
                     prior_mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Means ``(K, s)`` (prior mean included) and covariances ``(K, s, s)`` of the mean processes at ``inputs``."""
    post = current.posterior
    cross = problem.mean_covariance(state.mean_log_params, problem.grid, inputs)                 # (K, N, s)
    q_t = solve_triangular(post.chol_prior, cross, lower=True, check_finite=False)
    mean = np.einsum("kns,kn->ks", q_t, post.alpha)
    reduced = solve_triangular(post.chol_b, q_t, lower=True, check_finite=False)
    prior = problem.mean_covariance(state.mean_log_params, inputs, inputs) + state.jitter * np.eye(len(inputs))
    cov = prior - q_t.mT @ q_t + reduced.mT @ reduced
    return prior_mean[None] + mean, cov


class _MixtureLikelihood:
    """Adapter giving :func:`~magma_pymc.predict.fit_new_individual` the mixture likelihood (step 2)."""

    def __init__(self, graphs, log_weights: np.ndarray) -> None:
        self.graphs, self.log_weights = graphs, log_weights

    def components(self, log_params, inputs, outputs, means, covs, jitter):
        results = [self.graphs.new_individual_step(log_params, inputs, outputs, m, c, jitter)
                   for m, c in zip(means, covs, strict=True)]
        return np.array([float(v) for v, _ in results]), np.array([np.asarray(g) for _, g in results])

    def new_individual_step(self, log_params, inputs, outputs, means, covs, jitter):
        values, grads = self.components(log_params, inputs, outputs, means, covs, jitter)
        logits = self.log_weights - values
        if not np.all(np.isfinite(logits)):
            return np.inf, np.zeros_like(log_params)
        total = logsumexp(logits)
        return -total, np.exp(logits - total) @ grads


def predict_clusters(problem: ClusterProblem, state: VEMState, current: VEMEStep, individual: Individual,
                     pred_inputs: np.ndarray, prior_mean, *, empirical_prior: bool) -> ClusterPrediction:
    """Steps 1-3 of the module docstring."""
    graphs, jitter = problem.graphs, state.jitter
    joint = np.concatenate([individual.inputs, pred_inputs])
    means, covs = cluster_means_at(problem, state, current, joint, prior_mean(joint))
    n_obs = individual.n_points
    likelihood = _MixtureLikelihood(graphs, state.log_weights)
    obs_means, obs_covs = means[:, :n_obs], covs[:, :n_obs, :n_obs]
    hp = fit_new_individual(
        likelihood, individual, obs_means, obs_covs, state.log_params,
        problem.bounds[: graphs.individual_kernel.n_params + 1], jitter, empirical_prior=empirical_prior,
    )
    if n_obs:
        values, _ = likelihood.components(hp.log_params, individual.inputs, individual.outputs, obs_means, obs_covs,
                                          jitter)
        logits = state.log_weights - values
        probabilities = np.exp(logits - logsumexp(logits))
    else:
        probabilities = np.exp(state.log_weights)
    components: list[Prediction] = [
        predict_individual(graphs, individual, pred_inputs, m, c, hp, jitter) for m, c in zip(means, covs, strict=True)
    ]
    return ClusterPrediction(probabilities, components, hp.log_params, hp.source)
