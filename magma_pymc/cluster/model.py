r"""The MagmaClust model declared in PyMC, with the labels as a mixture (marginalised).

.. math::

    \pi &\sim \mathrm{Dirichlet}(\mathbf 1_K),\qquad
    \log\gamma_k, \log\theta, \log\sigma^2 \sim \mathcal N(\text{data-scaled centre}, 2^2),\\
    \mu_k(t) &\sim \mathcal N(m(t), K_{\gamma_k}(t,t)) \quad \text{on the union grid } t,\\
    p(y_i \mid \mu, \pi) &= \sum_k \pi_k\, \mathcal N\big(y_i;\ \mu_k(t_i),\ \Psi_i\big),\qquad
    \Psi_i = C_{\theta_i}(t_i,t_i) + \sigma_i^2 I,

the individual processes :math:`f_i` integrated out (the covariance :math:`\Psi_i`) and the labels
summed out by log-sum-exp (a ``pm.Potential`` named ``y``: PyMC's ``Mixture`` needs components of
one shape, and individuals have different numbers of points). Coordinates ``cluster``, ``input``,
``individual``, ``mean_hp``, ``hp``. ``pm.model_to_graphviz(model)`` shows the model VEM fits; its
variational posterior replaces the exact posterior of :math:`(\mu, Z)` that NUTS would sample.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pytensor.tensor.linalg import cholesky, solve_triangular

from magma_pymc.data import TrainingData
from magma_pymc.hyperposterior import LOG_2PI, individual_covariances
from magma_pymc.kernels import Kernel
from magma_pymc.params import NOISE

__all__ = ["build_cluster_model"]

PRIOR_SD = 2.0


def build_cluster_model(
    data: TrainingData,
    n_clusters: int,
    mean_kernel: Kernel,
    kernel: Kernel,
    prior_mean: Callable[[np.ndarray], np.ndarray],
    *,
    centres: tuple[np.ndarray, np.ndarray],
    common_hp: bool = True,
    jitter: float = 1e-8,
) -> pm.Model:
    """Declare the model of the module docstring for ``data``.

    ``centres`` are the prior centres of the log HP (``(P0,)``, ``(P + 1,)``), e.g. the data-driven initial values.
    """
    coords = {"cluster": np.arange(n_clusters), "input": np.arange(data.n_inputs),
              "individual": [str(i) for i in data.ids], "mean_hp": list(mean_kernel.names),
              "hp": [*kernel.names, NOISE]}
    grid = data.grid
    mask = pt.as_tensor(data.mask)
    with pm.Model(coords=coords) as model:
        weights = pm.Dirichlet("weights", a=np.ones(n_clusters), dims="cluster")
        mean_log = pm.Normal("log_mu_hp", mu=centres[0], sigma=PRIOR_SD, dims=("cluster", "mean_hp"))
        log_hp = pm.Normal("log_hp", mu=centres[1], sigma=PRIOR_SD, dims=("hp",) if common_hp else ("individual", "hp"))
        covs = pt.stack([mean_kernel.covariance(mean_log[k])(grid) for k in range(n_clusters)])
        mu = pm.MvNormal("mu", mu=prior_mean(grid), cov=covs + jitter * pt.eye(data.n_inputs),
                         dims=("cluster", "input"))
        psi = individual_covariances(kernel, log_hp, pt.as_tensor(data.inputs), mask, jitter)
        chol = cholesky(psi, lower=True)                                                     # (M, n, n)
        mu_padded = pt.concatenate([mu, pt.zeros((n_clusters, 1))], axis=1)[:, data.index]  # (K, M, n)
        residuals = (data.outputs[None] - mu_padded) * mask[None]
        white = solve_triangular(chol[None], residuals[..., None], lower=True, b_ndim=2)[..., 0]
        half_logdet = pt.log((chol * pt.eye(data.n_max)).sum(axis=-1)).sum(axis=-1)         # (M,)
        log_lik = -0.5 * (white**2).sum(axis=-1) - half_logdet[None] - 0.5 * LOG_2PI * mask.sum(axis=1)[None]
        pm.Potential("y", pm.math.logsumexp(pt.log(weights)[:, None] + log_lik, axis=0).sum())
    return model
