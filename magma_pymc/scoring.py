r"""Calibration scores of predictive distributions: coverage, interval score, CRPS and PIT.

Every prediction of :mod:`magma_pymc` is, point by point, a finite Gaussian mixture
:math:`F(y) = \sum_k w_k \Phi((y - m_k)/s_k)` (one component for a plug-in prediction, one per
draw of the hyper-parameters when they are integrated). The scores below take the marginal
mixtures as ``weights`` ``(K,)``, ``means`` and ``sds`` ``(K, n)`` and observed values ``y``
``(n,)``:

* coverage of the central interval of mass :math:`1 - \alpha`: :math:`[F^{-1}(\alpha/2), F^{-1}(1-\alpha/2)]`
  (:func:`central_interval`, exact mixture quantiles);
* interval score (Gneiting & Raftery 2007, eq. 43), proper for the interval:
  :math:`(u - l) + \frac2\alpha (l - y)_+ + \frac2\alpha (y - u)_+`;
* continuous ranked probability score, closed form for a Gaussian mixture (Grimit et al. 2006):

  .. math::

      \mathrm{CRPS}(F, y) = \sum_k w_k A(y - m_k, s_k^2)
        - \tfrac12 \sum_{k,l} w_k w_l A(m_k - m_l, s_k^2 + s_l^2), \quad
      A(\mu, \sigma^2) = 2\sigma\varphi(\mu/\sigma) + \mu(2\Phi(\mu/\sigma) - 1);

* probability integral transform :math:`F(y)`, uniform on (0, 1) for a calibrated forecast.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

from magma_pymc.mixture import mixture_quantiles

__all__ = ["check_level", "mixture_cdf", "central_interval", "crps_mixture", "interval_score"]

_SQRT_2PI = np.sqrt(2.0 * np.pi)


def check_level(prob: float, name: str = "prob") -> float:
    """``prob`` as a float strictly inside (0, 1), or a ``ValueError`` naming ``name``."""
    try:
        value = float(prob)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1), got {prob!r}") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1 (the mass of a central interval), got {prob!r}")
    return value


def _as_mixture(weights, means, sds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    w = np.asarray(weights, dtype=float).reshape(-1)
    m = np.atleast_2d(np.asarray(means, dtype=float))
    s = np.atleast_2d(np.asarray(sds, dtype=float))
    if m.shape != s.shape or m.shape[0] != w.size:
        raise ValueError(f"mixture shapes disagree: weights {w.shape}, means {m.shape}, sds {s.shape}")
    if np.any(w < 0) or not np.isclose(w.sum(), 1.0):
        raise ValueError("mixture weights must be non-negative and sum to 1")
    return w, m, np.maximum(s, np.finfo(float).tiny)


def mixture_cdf(y, weights, means, sds) -> np.ndarray:
    """:math:`F(y)` of the marginal mixtures, ``(n,)`` (the PIT when ``y`` is the observed value)."""
    w, m, s = _as_mixture(weights, means, sds)
    return w @ ndtr((np.asarray(y, dtype=float)[None, :] - m) / s)


def central_interval(level: float, weights, means, sds) -> tuple[np.ndarray, np.ndarray]:
    r"""Central interval of mass ``level`` of the marginal mixtures.

    :math:`F^{-1}((1 \mp \text{level})/2)` (exact quantiles, :func:`magma_pymc.mixture.mixture_quantiles`).
    """
    level = check_level(level, "level")
    w, m, s = _as_mixture(weights, means, sds)
    lower, upper = mixture_quantiles(m, s**2, ((1 - level) / 2, (1 + level) / 2), w)
    return lower, upper


def _a(mu: np.ndarray, var: np.ndarray) -> np.ndarray:
    sd = np.sqrt(var)
    z = mu / sd
    return 2.0 * sd * np.exp(-0.5 * z * z) / _SQRT_2PI + mu * (2.0 * ndtr(z) - 1.0)


def crps_mixture(y, weights, means, sds) -> np.ndarray:
    """Closed-form CRPS of the marginal Gaussian mixtures at ``y``, ``(n,)`` (module docstring)."""
    w, m, s = _as_mixture(weights, means, sds)
    y = np.asarray(y, dtype=float)
    first = w @ _a(y[None, :] - m, s**2)
    pair = _a(m[:, None, :] - m[None, :, :], s[:, None, :] ** 2 + s[None, :, :] ** 2)
    second = np.einsum("k,l,kln->n", w, w, pair)
    return first - 0.5 * second


def interval_score(y, lower, upper, alpha: float) -> np.ndarray:
    r"""Interval score of central ``1 - alpha`` intervals ``[lower, upper]`` (module docstring), ``(n,)``."""
    alpha = check_level(alpha, "alpha")
    y, lower, upper = (np.asarray(a, dtype=float) for a in (y, lower, upper))
    return (upper - lower) + 2.0 / alpha * (np.maximum(lower - y, 0.0) + np.maximum(y - upper, 0.0))
