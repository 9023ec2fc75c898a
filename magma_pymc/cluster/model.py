r"""The MagmaClust model declared in PyMC, with the labels as a mixture (marginalised).

.. math::

    \pi &\sim \mathrm{Dirichlet}(\mathbf 1_K),\qquad
    \log\gamma_k, \log\theta, \log\sigma^2 \sim \mathcal N(\text{data-scaled centre}, 2^2),\\
    \mu_k(t) &\sim \mathcal N(m(t), K_{\gamma_k}(t,t)) \quad \text{on the union grid } t,\\
    p(y_i \mid \mu, \pi) &= \sum_k \pi_k\, \mathcal N\big(y_i;\ \mu_k(t_i),\ \Psi_i\big),\qquad
    \Psi_i = C_{\theta_i}(t_i,t_i) + \sigma_i^2 I,

the individual processes :math:`f_i` integrated out (the covariance :math:`\Psi_i`) and the labels
summed out by log-sum-exp (a ``pm.Potential`` named ``y``: PyMC's ``Mixture`` needs components of
one shape, and individuals have different numbers of points). The matrix of
:math:`\log\mathcal N(y_i; \mu_k(t_i), \Psi_i)` (dims ``cluster, individual``) is the named, untraced
variable ``component_log_likelihood``, from which the label probabilities of a draw follow
(:mod:`magma_pymc.cluster.sampling`). Coordinates ``cluster``, ``input``, ``individual``, ``mean_hp``, ``hp``.
The training arrays, the prior centres, :math:`m(t)` and the jitter enter as ``pm.Data`` (``constant_data``
of a sampled result), so the compiled log-density is the same function for every data set of one structure
(and Numba's on-disk cache serves it again). ``pm.model_to_graphviz(model)`` shows the model VEM fits; its
variational posterior replaces the exact posterior of :math:`(\mu, Z)` that NUTS samples
(``MagmaClust.fit(method="nuts")``).
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

__all__ = ["COMPONENT_LOG_LIKELIHOOD", "build_cluster_model"]

PRIOR_SD = 2.0
#: Name of the ``(cluster, individual)`` matrix of :math:`\log\mathcal N(y_i; \mu_k(t_i), \Psi_i)` in the model.
COMPONENT_LOG_LIKELIHOOD = "component_log_likelihood"


def build_cluster_model(
    data: TrainingData,
    n_clusters: int,
    mean_kernel: Kernel,
    kernel: Kernel,
    prior_mean: Callable[[np.ndarray], np.ndarray],
    *,
    centres: tuple[np.ndarray, np.ndarray],
    common_hp: bool = True,
    shared_mean_hp: bool = False,
    noncentred: bool = False,
    jitter: float = 1e-8,
) -> pm.Model:
    r"""Declare the model of the module docstring for ``data``.

    ``centres`` are the prior centres of the log HP (``(P0,)``, ``(P + 1,)``), e.g. the data-driven initial values.
    ``log_mu_hp`` has dims ``(cluster, mean_hp)``, or ``(mean_hp,)`` with ``shared_mean_hp`` (one set for all
    clusters); ``log_hp`` ``(hp,)``, or ``(individual, hp)`` without ``common_hp``. ``noncentred`` declares
    :math:`\mu_k = m + L_k z_k`, :math:`L_k = \mathrm{chol}(K_{\gamma_k} + jI)`, :math:`z_k \sim \mathcal N(0, I)` (free
    variable ``mu_white``; ``mu`` a Deterministic), the same model in the coordinates NUTS samples well: centred, the
    prior's near-null directions of a smooth :math:`K_{\gamma_k}` force tiny steps (measured on K = 2, N = 10:
    tree depth 10 at every draw, 27 divergences in 400 draws).
    """
    coords = {"cluster": np.arange(n_clusters), "input": np.arange(data.n_inputs),
              "individual": [str(i) for i in data.ids], "mean_hp": list(mean_kernel.names),
              "hp": [*kernel.names, NOISE], "slot": np.arange(data.n_max),
              "input_dim": np.arange(data.input_dim)}
    with pm.Model(coords=coords) as model:
        grid = pm.Data("grid", data.grid, dims=("input", "input_dim"))
        inputs = pm.Data("inputs", data.inputs, dims=("individual", "slot", "input_dim"))
        outputs = pm.Data("outputs", data.outputs * data.mask, dims=("individual", "slot"))
        mask = pm.Data("mask", data.mask, dims=("individual", "slot"))
        index = pm.Data("index", data.index, dims=("individual", "slot"))
        mean_centre = pm.Data("mean_hp_centre", np.asarray(centres[0], dtype=float), dims="mean_hp")
        centre = pm.Data("hp_centre", np.asarray(centres[1], dtype=float), dims="hp")
        prior_mean_values = pm.Data("prior_mean", prior_mean(data.grid), dims="input")
        jitter_value = pm.Data("jitter", np.asarray(jitter, dtype=float))

        weights = pm.Dirichlet("weights", a=np.ones(n_clusters), dims="cluster")
        mean_dims = ("mean_hp",) if shared_mean_hp else ("cluster", "mean_hp")
        mean_log = pm.Normal("log_mu_hp", mu=mean_centre, sigma=PRIOR_SD, dims=mean_dims)
        log_hp = pm.Normal("log_hp", mu=centre, sigma=PRIOR_SD, dims=("hp",) if common_hp else ("individual", "hp"))
        n_grid = grid.shape[0]
        covs = pt.stack([mean_kernel.covariance(mean_log if shared_mean_hp else mean_log[k])(grid)
                         for k in range(n_clusters)])
        if noncentred:  # mu_k = m + L_k z_k: NUTS's geometry does not depend on how smooth K_k is
            white = pm.Normal("mu_white", 0.0, 1.0, dims=("cluster", "input"))
            factor = cholesky(covs + jitter_value * pt.eye(n_grid), lower=True)
            mu = pm.Deterministic("mu", prior_mean_values + (factor @ white[..., None])[..., 0],
                                  dims=("cluster", "input"))
        else:
            mu = pm.MvNormal("mu", mu=prior_mean_values, cov=covs + jitter_value * pt.eye(n_grid),
                             dims=("cluster", "input"))
        psi = individual_covariances(kernel, log_hp, inputs, mask, jitter_value)
        chol = cholesky(psi, lower=True)                                                        # (M, n, n)
        mu_padded = pt.concatenate([mu, pt.zeros((n_clusters, 1))], axis=1)[:, index]          # (K, M, n)
        residuals = (outputs[None] - mu_padded) * mask[None]
        white = solve_triangular(chol[None], residuals[..., None], lower=True, b_ndim=2)[..., 0]
        half_logdet = pt.log(pt.diagonal(chol, axis1=-2, axis2=-1)).sum(axis=-1)               # (M,)
        log_lik = -0.5 * (white**2).sum(axis=-1) - half_logdet[None] - 0.5 * LOG_2PI * mask.sum(axis=1)[None]
        log_lik.name = COMPONENT_LOG_LIKELIHOOD
        model.add_named_variable(log_lik, dims=("cluster", "individual"))
        pm.Potential("y", pm.math.logsumexp(pt.log(weights)[:, None] + log_lik, axis=0).sum())
    return model
