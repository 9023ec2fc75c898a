r"""Summaries of a Gaussian mixture :math:`\sum_k w_k\,\mathcal N(m_k, s_k^2)`, pointwise over inputs.

Mean :math:`\bar m = \sum_k w_k m_k`, variance :math:`\sum_k w_k s_k^2 + \sum_k w_k (m_k - \bar m)^2`
(law of total variance, without the cancellation of :math:`\sum_k w_k(s_k^2 + m_k^2) - \bar m^2`), and
exact quantiles: the root of the mixture CDF :math:`F(x) = \sum_k w_k \Phi((x - m_k)/s_k) = p`, which
lies between the smallest and the largest component quantile (``F`` is a convex combination of the
component CDFs), found by vectorised bisection to floating-point resolution.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr, ndtri

__all__ = ["mixture_interval", "mixture_moments", "mixture_quantile"]

#: Bisection halvings: the bracket's width shrinks by 2^-BISECTIONS (far below float64 resolution).
BISECTIONS = 200


def mixture_moments(weights: np.ndarray, means: np.ndarray, variances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance per input; ``weights`` ``(K,)``, ``means`` and ``variances`` ``(K, n)``."""
    mean = weights @ means
    variance = weights @ variances + weights @ (means - mean[None]) ** 2
    return mean, variance


def mixture_quantile(weights: np.ndarray, means: np.ndarray, sds: np.ndarray, prob: float) -> np.ndarray:
    """The ``prob`` quantile of the mixture at each input (``(n,)``); exact for one component."""
    z = ndtri(prob)
    component = means + sds * z
    live = weights > 0
    if live.sum() == 1:
        return component[live][0]
    low, high = component[live].min(axis=0), component[live].max(axis=0)
    for _ in range(BISECTIONS):
        middle = 0.5 * (low + high)
        below = weights @ ndtr((middle[None] - means) / sds) < prob
        low, high = np.where(below, middle, low), np.where(below, high, middle)
        if np.all(high - low <= 4 * np.finfo(float).eps * np.maximum(np.abs(middle), 1.0)):
            break
    return 0.5 * (low + high)


def mixture_interval(weights: np.ndarray, means: np.ndarray, variances: np.ndarray, prob: float):
    """Central ``prob`` interval ``(lower, upper)``: the ``(1 - prob)/2`` and ``(1 + prob)/2`` quantiles.

    With a single component these are :math:`m \\mp \\Phi^{-1}(\\tfrac12 + \\tfrac p2)\\, s`, as
    :func:`magma_pymc.results.gaussian_dataset` computes them.
    """
    if not 0 < prob < 1:
        raise ValueError(f"prob must be in (0, 1), got {prob}")
    weights = np.asarray(weights, dtype=float)
    sds = np.sqrt(np.maximum(variances, 0.0))
    live = weights > 0
    if live.sum() == 1:
        half = ndtri(0.5 + prob / 2) * sds[live][0]
        return means[live][0] - half, means[live][0] + half
    sds = np.maximum(sds, np.finfo(float).tiny)
    return (mixture_quantile(weights, means, sds, (1 - prob) / 2), mixture_quantile(weights, means, sds, (1 + prob) / 2))
