r"""The MAGMA model declared in PyMC.

.. math::

    \log\theta_0, \log\theta_i, \log\sigma_i^2 &\sim \mathcal N(\text{data-scaled centre}, 2^2) \text{ (default priors)}\\
    \mu_0(t) &\sim \mathcal N(m_0(t), K_{\theta_0}(t,t)) \quad \text{on the union grid } t\\
    f_i(t_i) &\sim \mathcal N(0, C_{\theta_i}(t_i,t_i))\\
    y_i &\sim \mathcal N(\mu_0(t_i) + f_i(t_i), \sigma_i^2 I)

Coordinates: ``individual``, ``input`` (the union grid), ``slot`` (position within an individual,
padded to the largest individual), ``obs`` (the observations), ``mean_hp`` and ``hp``. The
covariances are the same :class:`~magma_pymc.kernels.Kernel` expressions EM compiles, so
``pm.model_to_graphviz(model)`` shows the model EM fits. Padded slots of :math:`f` are
independent standard normals that no observation touches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pytensor.tensor.linalg import cholesky

from magma_pymc.data import TrainingData
from magma_pymc.jitter import MODEL_JITTER
from magma_pymc.kernels import Kernel
from magma_pymc.params import NOISE

__all__ = ["build_model", "ModelSpec", "hp_coords", "log_hp_variables", "MEAN_LOG_HP", "LOG_HP", "PRIOR_SD"]

#: Names of the log hyper-parameter variables in the model.
MEAN_LOG_HP = "log_mu0_hp"
LOG_HP = "log_hp"
#: Standard deviation of the default normal priors on log hyper-parameters.
PRIOR_SD = 2.0

LogPriorFactory = Callable[[str, tuple[str, ...]], pm.Distribution]


class ModelSpec(NamedTuple):
    """What declares the HP of a MAGMA model: kernels, HP sharing, individual IDs and prior centres."""

    mean_kernel: Kernel
    kernel: Kernel
    common_hp: bool
    ids: tuple
    centres: tuple[np.ndarray, np.ndarray]  # (mean_centre (P0,), centre (P + 1,)): default prior centres


def hp_coords(spec: ModelSpec) -> dict:
    """Coordinates ``mean_hp``, ``hp`` and ``individual`` of the HP variables."""
    return {"mean_hp": list(spec.mean_kernel.names), "hp": [*spec.kernel.names, NOISE],
            "individual": [str(i) for i in spec.ids]}


def log_hp_variables(spec: ModelSpec, priors: Mapping[str, LogPriorFactory] | None = None, *,
                     deterministics: bool = True):
    r"""Declare (inside a ``pm.Model`` with :func:`hp_coords`) the log-HP variables ``log_mu0_hp`` and ``log_hp``.

    Their priors are ``priors``' factories or the default :math:`\mathcal N(c, 2^2)` around ``spec.centres``; with
    ``deterministics``, the natural-scale HP ``mu0_<name>``, ``<name>`` too. Shared by the declared model, the marginal
    model NUTS samples, and EM's MAP priors.
    """
    priors = dict(priors or {})
    mean_centre, centre = spec.centres
    default_mean = lambda name, dims: pm.Normal(name, mu=mean_centre, sigma=PRIOR_SD, dims=dims)  # noqa: E731
    default = lambda name, dims: pm.Normal(name, mu=centre, sigma=PRIOR_SD, dims=dims)  # noqa: E731
    hp_dims = ("hp",) if spec.common_hp else ("individual", "hp")
    mean_log = priors.get("mean_hp", default_mean)(MEAN_LOG_HP, ("mean_hp",))
    log_hp = priors.get("hp", default)(LOG_HP, hp_dims)
    if deterministics:
        for k, name in enumerate(spec.mean_kernel.names):
            pm.Deterministic(f"mu0_{name}", pt.exp(mean_log[k]))
        for k, name in enumerate([*spec.kernel.names, NOISE]):
            pm.Deterministic(name, pt.exp(log_hp[..., k]), dims=None if spec.common_hp else "individual")
    return mean_log, log_hp


def build_model(
    data: TrainingData,
    mean_kernel: Kernel,
    kernel: Kernel,
    prior_mean: Callable[[np.ndarray], np.ndarray],
    *,
    common_hp: bool = True,
    centres: tuple[np.ndarray, np.ndarray],
    priors: Mapping[str, LogPriorFactory] | None = None,
    jitter: float = MODEL_JITTER,
    noncentred: bool = False,
) -> pm.Model:
    r"""Declare the MAGMA model for ``data``.

    Parameters
    ----------
    centres
        ``(mean_centre, centre)``: centres of the default priors on the log HP (``(P0,)`` and
        ``(P + 1,)``), e.g. the data-driven initial values of EM.
    priors
        Optional ``{"mean_hp": f, "hp": g}`` where each callable receives the variable name and
        its dims and returns a PyMC distribution of the log hyper-parameters (created inside the
        model). Default: independent normals with standard deviation 2 around ``centres`` (a
        factor e^2 ~ 7 either way at one standard deviation). EM maximises the likelihood
        alone (flat priors).
    jitter
        Added to the diagonal of the prior covariances of the mean process and of every individual process.
    noncentred
        Declare :math:`\mu_0 = m_0 + L_0 z_0` and :math:`f_i = L_i z_i` with standard normal
        ``mu0_white``, ``f_white`` and Cholesky factors :math:`L` of the prior covariances (same
        distribution; the geometry NUTS samples well when the data say little about the latent
        values). ``mu0`` and ``f`` are then Deterministics.
    """
    grid = data.grid
    input_coord = grid[:, 0] if data.input_dim == 1 else np.arange(data.n_inputs)
    spec = ModelSpec(mean_kernel, kernel, common_hp, tuple(data.ids), centres)
    coords = {
        **hp_coords(spec),
        "input": input_coord,
        "slot": np.arange(data.n_max),
        "obs": np.arange(int(data.mask.sum())),
    }
    observed_rows, observed_slots = np.nonzero(data.mask)
    with pm.Model(coords=coords) as model:
        grid_data = pm.Data("grid", grid)
        inputs = pm.Data("inputs", data.inputs)
        mean_log, log_hp = log_hp_variables(spec, priors)

        prior_cov = mean_kernel.covariance(mean_log)(grid_data) + jitter * pt.eye(data.n_inputs)
        if noncentred:
            white0 = pm.Normal("mu0_white", dims="input")
            mu0 = pm.Deterministic("mu0", prior_mean(grid) + cholesky(prior_cov, lower=True) @ white0, dims="input")
        else:
            mu0 = pm.MvNormal("mu0", mu=prior_mean(grid), cov=prior_cov, dims="input")

        mask = pt.as_tensor(data.mask)
        # The jitter as on the mean process: without it, HP drawn from the prior (prior predictive draws, or the
        # shapes pm.model_to_graphviz evaluates) can make an individual's covariance numerically singular.
        cov = kernel.batched(inputs, log_hp[..., :-1]) + jitter * pt.eye(data.n_max)
        # Padded slots: identity rows/columns keep the batch positive definite.
        cov = pt.switch(mask[:, :, None] * mask[:, None, :] > 0, cov, pt.eye(data.n_max))
        if noncentred:
            white = pm.Normal("f_white", dims=("individual", "slot"))
            f = pm.Deterministic("f", (cholesky(cov, lower=True) @ white[..., None])[..., 0], dims=("individual", "slot"))
        else:
            f = pm.MvNormal("f", mu=0.0, cov=cov, dims=("individual", "slot"))

        mu0_padded = pt.concatenate([mu0, pt.zeros((1,))])[data.index]
        noise_sd = pt.sqrt(pt.exp(log_hp[..., -1]))
        noise_sd = noise_sd if common_hp else noise_sd[observed_rows]
        latent = (mu0_padded + f)[observed_rows, observed_slots]
        pm.Normal("y", mu=latent, sigma=noise_sd, observed=data.outputs[observed_rows, observed_slots], dims="obs")
    return model

