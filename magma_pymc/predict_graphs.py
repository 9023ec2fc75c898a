r"""Graphs for a new individual (theory page, *Prediction*).

Given the hyper-posterior of :math:`\mu_0` at :math:`s = (t_*, t_p)` -- observed inputs of the new
individual first, prediction inputs after -- with mean :math:`\hat m(s)` and covariance
:math:`\hat K(s,s)`, the new individual's outputs are Gaussian with covariance
:math:`\Gamma = \hat K(s,s) + C_{\theta_*}(s,s)` plus :math:`\sigma_*^2 I` on observed outputs.
"""

from __future__ import annotations

import pytensor.tensor as pt
from pytensor.tensor.linalg import cholesky, solve_triangular
from pytensor.tensor.variable import TensorVariable

from magma_pymc.hyperposterior import LOG_2PI, noisy_covariance
from magma_pymc.kernels import Kernel
from magma_pymc.ops import gaussian_block_loss

__all__ = ["build_new_individual_objective", "build_predictive"]


def build_new_individual_objective(
    kernel: Kernel,
    log_params: TensorVariable,
    obs_inputs: TensorVariable,
    obs_outputs: TensorVariable,
    obs_mean: TensorVariable,
    obs_cov: TensorVariable,
    jitter: TensorVariable,
) -> TensorVariable:
    r"""Negative log-likelihood of the new individual's HP :math:`(\theta_*, \sigma_*^2)`.

    .. math::

        -\log \mathcal N\big(y_*;\ \hat m(t_*),\ \hat K(t_*,t_*) + C_{\theta_*}(t_*,t_*)
        + \sigma_*^2 I\big)

    ``log_params`` is ``(P + 1,)``, the last entry :math:`\log\sigma_*^2`. Evaluated as one block of
    :class:`~magma_pymc.ops.GaussianBlockLoss` with scatter :math:`r r^\top`,
    :math:`r = y_* - \hat m(t_*)` (one factorisation, closed-form gradient).
    """
    n_obs = obs_inputs.shape[0]
    gamma = obs_cov + noisy_covariance(kernel, log_params, obs_inputs, jitter)
    residual = obs_outputs - obs_mean
    scatter = residual[:, None] * residual[None, :]
    return gaussian_block_loss(gamma[None], scatter[None])[0] + 0.5 * n_obs * LOG_2PI


def build_predictive(
    kernel: Kernel,
    log_params: TensorVariable,
    obs_inputs: TensorVariable,
    obs_outputs: TensorVariable,
    pred_inputs: TensorVariable,
    joint_mean: TensorVariable,
    joint_cov: TensorVariable,
    jitter: TensorVariable,
) -> tuple[TensorVariable, TensorVariable, TensorVariable]:
    r"""Posterior of the new individual at :math:`t_p` given its observed :math:`y_*` (Type I), or none (Type II).

    With :math:`\Gamma = \hat K(s,s) + C_{\theta_*}(s,s)` split into observed (:math:`*`) and
    prediction (:math:`p`) blocks and :math:`\Gamma_{**} \mathrel{+}= \sigma_*^2 I`:

    .. math::

        \text{mean} = \hat m(t_p) + \Gamma_{p*}\Gamma_{**}^{-1}(y_* - \hat m(t_*)), \qquad
        \text{latent} = \Gamma_{pp} - \Gamma_{p*}\Gamma_{**}^{-1}\Gamma_{*p},

    the covariance of :math:`\mu_0 + f_*` at :math:`t_p`; the predictive covariance of new
    observations adds :math:`\sigma_*^2 I`. With no observed input (Type II) the formulas reduce to
    the prior :math:`\hat m(t_p)`, :math:`\hat K(t_p,t_p) + C_{\theta_*}(t_p,t_p)`.

    Returns ``(mean, latent_cov, predictive_cov)``.
    """
    n_obs = obs_inputs.shape[0]
    n_pred = pred_inputs.shape[0]
    noise = pt.exp(log_params[-1])
    joint_inputs = pt.concatenate([obs_inputs, pred_inputs], axis=0)
    gamma = joint_cov + kernel.covariance(log_params[:-1])(joint_inputs)
    gamma_oo = gamma[:n_obs, :n_obs] + (noise + jitter) * pt.eye(n_obs)
    chol = cholesky(gamma_oo, lower=True)
    reduced = solve_triangular(chol, gamma[:n_obs, n_obs:], lower=True, b_ndim=2)
    white = solve_triangular(chol, obs_outputs - joint_mean[:n_obs], lower=True, b_ndim=1)
    mean = joint_mean[n_obs:] + reduced.T @ white
    latent = gamma[n_obs:, n_obs:] - reduced.T @ reduced
    return mean, latent, latent + noise * pt.eye(n_pred)
