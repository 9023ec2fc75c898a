r"""Predictions without the full covariance: memory linear in the number of prediction inputs.

The full-covariance path (:func:`magma_pymc.hyperposterior.build_mean_process_at`,
:func:`magma_pymc.predict_graphs.build_predictive`) forms :math:`\hat K(s, s)` and :math:`\Gamma`
for all of :math:`s = (t_*, t_p)`: :math:`n_p^2` numbers, 3.2 GB at :math:`n_p = 20{,}000`. Means and
variances need only, with :math:`Q_a = K_0(a, t) L_0^{-\top}` and :math:`R_a = L_B^{-1} Q_a^\top`
(theory page, *Prediction*),

.. math::

    \hat m(a) = m_0(a) + Q_a \alpha, \qquad
    \hat K(a, b) = K_0(a, b) - Q_a Q_b^\top + R_a^\top R_b,

at :math:`a, b \in \{t_*, t_p\}`: the observed block :math:`\hat K(t_*, t_*)`, the cross block
:math:`\hat K(t_*, t_p)` and the diagonal of :math:`\hat K(t_p, t_p)`. Then with
:math:`\Gamma = \hat K + C_{\theta_*}` and :math:`L = \mathrm{chol}(\Gamma_{**} + \sigma_*^2 I)`,

.. math::

    \text{mean}_p = \hat m(t_p) + (L^{-1}\Gamma_{*p})^\top L^{-1}(y_* - \hat m(t_*)), \qquad
    \text{latent}_p = \mathrm{diag}\,\Gamma_{pp} - \textstyle\sum_k (L^{-1}\Gamma_{*p})_{kp}^2,

and the predictive variance adds :math:`\sigma_*^2`. Prediction inputs are processed in chunks of
:data:`CHUNK`, so memory is :math:`O(N \cdot \text{CHUNK} + n_* n_p)` beyond the grid's factors.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import pytensor.tensor as pt
from pytensor.tensor.linalg import cholesky, solve_triangular

from magma_pymc.kernels import Kernel

__all__ = ["CHUNK", "OBSERVED_CHUNK_ENTRIES", "EStepFactors", "MeanProcessParts", "mean_process_parts",
           "predictive_diagonal"]

#: Prediction inputs per chunk (memory of the diagonal path: a few N x CHUNK matrices).
CHUNK = 2048
#: Entries of the n_* x chunk matrices of :func:`predictive_diagonal` per chunk (32 MiB each): with
#: few observed points a chunk covers many prediction inputs, so that a prediction mixing many HP
#: draws makes few calls (each call has a fixed cost of about a millisecond).
OBSERVED_CHUNK_ENTRIES = 2**22


class EStepFactors(NamedTuple):
    r"""What the hyper-posterior at new inputs needs from an E-step: :math:`L_0`, :math:`L_B`, :math:`\alpha`."""

    chol_prior: np.ndarray
    chol_b: np.ndarray
    alpha: np.ndarray


class MeanProcessParts(NamedTuple):
    r"""Centred hyper-posterior of :math:`\mu_0` at observed inputs (full) and prediction inputs (diagonal)."""

    mean_obs: np.ndarray    # (n_*,)  mhat - m0 at t_*
    cov_obs: np.ndarray     # (n_*, n_*)
    mean_pred: np.ndarray   # (n_p,)
    cov_cross: np.ndarray   # (n_*, n_p)
    var_pred: np.ndarray    # (n_p,)


@functools.cache
def _parts_function(mean_kernel: Kernel, mode: str):
    from magma_pymc.compiled import _compile

    mean_hp = pt.vector("mean_log_params", dtype="float64")
    grid, chol_prior, chol_b = (pt.matrix(n, dtype="float64") for n in ("grid", "chol_prior", "chol_b"))
    alpha = pt.vector("alpha", dtype="float64")
    obs, pred = pt.matrix("obs_inputs", dtype="float64"), pt.matrix("pred_inputs", dtype="float64")
    jitter = pt.scalar("jitter", dtype="float64")
    cov = mean_kernel.covariance(mean_hp)
    q_obs = solve_triangular(chol_prior, cov(grid, obs), lower=True, b_ndim=2)     # Q_*'  (N, n_*)
    q_pred = solve_triangular(chol_prior, cov(grid, pred), lower=True, b_ndim=2)   # Q_p'  (N, n_p)
    r_obs = solve_triangular(chol_b, q_obs, lower=True, b_ndim=2)
    r_pred = solve_triangular(chol_b, q_pred, lower=True, b_ndim=2)
    cov_obs = cov(obs) + jitter * pt.eye(obs.shape[0]) - q_obs.T @ q_obs + r_obs.T @ r_obs
    cov_cross = cov(obs, pred) - q_obs.T @ q_pred + r_obs.T @ r_pred
    var_pred = cov(pred, diag=True) + jitter - (q_pred**2).sum(axis=0) + (r_pred**2).sum(axis=0)
    outputs = [q_obs.T @ alpha, cov_obs, q_pred.T @ alpha, cov_cross, var_pred]
    return _compile([mean_hp, grid, chol_prior, chol_b, alpha, obs, pred, jitter], outputs, mode)


def mean_process_parts(mean_kernel: Kernel, mode: str, mean_log_params: np.ndarray, grid: np.ndarray,
                       factors: EStepFactors, obs_inputs: np.ndarray, pred_inputs: np.ndarray,
                       jitter: float, *, chunk: int = CHUNK) -> MeanProcessParts:
    """:class:`MeanProcessParts` (module docstring), prediction inputs in chunks of ``chunk``."""
    parts = _parts_function(mean_kernel, mode)
    starts = range(0, max(len(pred_inputs), 1), chunk)
    pieces = [[np.asarray(v)
               for v in parts(mean_log_params, grid, *factors, obs_inputs, pred_inputs[s:s + chunk], jitter)]
              for s in starts]
    mean_obs, cov_obs = pieces[0][0], pieces[0][1]
    return MeanProcessParts(mean_obs, cov_obs, *(np.concatenate([p[k] for p in pieces], axis=-1) for k in (2, 3, 4)))


@functools.cache
def _predictive_function(kernel: Kernel, mode: str):
    from magma_pymc.compiled import _compile

    log_params = pt.vector("log_params", dtype="float64")
    obs, pred = pt.matrix("obs_inputs", dtype="float64"), pt.matrix("pred_inputs", dtype="float64")
    obs_outputs, mean_obs, mean_pred, var_pred = (pt.vector(n, dtype="float64") for n in
                                                  ("obs_outputs", "mean_obs", "mean_pred", "var_pred"))
    cov_obs, cov_cross = pt.matrix("cov_obs", dtype="float64"), pt.matrix("cov_cross", dtype="float64")
    jitter = pt.scalar("jitter", dtype="float64")
    own = kernel.covariance(log_params[:-1])
    noise = pt.exp(log_params[-1])
    gamma_obs = cov_obs + own(obs) + (noise + jitter) * pt.eye(obs.shape[0])
    chol = cholesky(gamma_obs, lower=True)
    reduced = solve_triangular(chol, cov_cross + own(obs, pred), lower=True, b_ndim=2)
    white = solve_triangular(chol, obs_outputs - mean_obs, lower=True, b_ndim=1)
    mean = mean_pred + reduced.T @ white
    latent = var_pred + own(pred, diag=True) - (reduced**2).sum(axis=0)
    inputs = [log_params, obs, obs_outputs, pred, mean_obs, cov_obs, mean_pred, cov_cross, var_pred, jitter]
    return _compile(inputs, [mean, latent, latent + noise], mode)


def predictive_diagonal(kernel: Kernel, mode: str, log_params: np.ndarray, obs_inputs: np.ndarray,
                        obs_outputs: np.ndarray, pred_inputs: np.ndarray, mean_obs: np.ndarray,
                        parts: MeanProcessParts, jitter: float, *, chunk: int | None = None) -> tuple:
    """``(mean, latent_variance, predictive_variance)`` at ``pred_inputs`` (module docstring).

    ``mean_obs`` and the parts' means include the prior mean :math:`m_0`. ``chunk`` (default: the
    larger of :data:`CHUNK` and :data:`OBSERVED_CHUNK_ENTRIES` / n_*) prediction inputs per call.
    """
    if chunk is None:
        chunk = max(CHUNK, OBSERVED_CHUNK_ENTRIES // max(len(obs_inputs), 1))
    function = _predictive_function(kernel, mode)
    pieces = [
        [np.asarray(v) for v in function(log_params, obs_inputs, obs_outputs, pred_inputs[s:s + chunk], mean_obs,
                                         parts.cov_obs, parts.mean_pred[s:s + chunk], parts.cov_cross[:, s:s + chunk],
                                         parts.var_pred[s:s + chunk], jitter)]
        for s in range(0, max(len(pred_inputs), 1), chunk)
    ]
    return tuple(np.concatenate([p[k] for p in pieces]) for k in range(3))
