r"""Default weakly informative prior on the mean-process hyper-parameters, for EM.

Maximum likelihood can put the mean-process HP on a boundary: when the training curves share
little beyond their average, :math:`\log p(y \mid \theta_0)` keeps increasing as the variance
:math:`\eta_0^2 \to 0` (a flat :math:`\mu_0` equal to the prior mean, with an invisible band) and
the lengthscale then has nothing to pin it, so it stops on its bound. EM instead maximises
:math:`\log p(y \mid \theta_0) + \log p(\log\theta_0)` with the default prior of the PyMC model
(:func:`magma_pymc.model.build_model`), independent normals on the log HP

.. math::

    \log\theta_{0,k} \sim \mathcal N(c_k, s^2), \qquad s = 2,

centred on the data-scaled initial values :math:`c` (variance: the output variance, lengthscale:
a tenth of the input range). It vanishes at both ends of every log HP (boundary-avoiding) and is
weak: one standard deviation is a factor :math:`e^2 \approx 7.4`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["normal_log_prior"]

_LOG_2PI = np.log(2.0 * np.pi)


def normal_log_prior(centre: np.ndarray, sd: float) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    r"""``log_params -> (log density, gradient)`` of independent :math:`\mathcal N(c_k, s^2)` on the log HP."""
    centre = np.asarray(centre, dtype=float)
    if not np.isfinite(sd) or sd <= 0:
        raise ValueError(f"the prior standard deviation must be positive and finite, got {sd!r}")

    def log_prior(log_params: np.ndarray) -> tuple[float, np.ndarray]:
        z = (np.asarray(log_params, dtype=float) - centre) / sd
        value = float(-0.5 * (z**2).sum() - centre.size * (np.log(sd) + 0.5 * _LOG_2PI))
        return value, -z / sd

    return log_prior
