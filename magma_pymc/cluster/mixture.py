r"""Pointwise summaries of a Gaussian mixture :math:`\sum_k w_k\,\mathcal N(m_k, s_k^2)` over clusters.

Mean :math:`\bar m = \sum_k w_k m_k` and variance :math:`\sum_k w_k s_k^2 + \sum_k w_k (m_k - \bar m)^2`
(law of total variance, without the cancellation of :math:`\sum_k w_k(s_k^2 + m_k^2) - \bar m^2`); exact
quantiles by :func:`magma_pymc.mixture.mixture_quantiles` (the root of the mixture CDF), the one
mixture helper of the package.
"""

from __future__ import annotations

import numpy as np

from magma_pymc.mixture import mixture_quantiles

__all__ = ["mixture_interval", "mixture_moments"]


def mixture_moments(weights: np.ndarray, means: np.ndarray, variances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance per input; ``weights`` ``(K,)``, ``means`` and ``variances`` ``(K, n)``."""
    mean = weights @ means
    variance = weights @ variances + weights @ (means - mean[None]) ** 2
    return mean, variance


def mixture_interval(weights: np.ndarray, means: np.ndarray, variances: np.ndarray, prob: float):
    """Central ``prob`` interval ``(lower, upper)``: the ``(1 - prob)/2`` and ``(1 + prob)/2`` quantiles.

    Components of zero weight are left out (with a single component left, the Gaussian quantiles in
    closed form).
    """
    if not 0 < prob < 1:
        raise ValueError(f"prob must be in (0, 1), got {prob}")
    weights = np.asarray(weights, dtype=float)
    live = weights > 0
    lower, upper = mixture_quantiles(means[live], variances[live], [(1 - prob) / 2, (1 + prob) / 2], weights[live])
    return lower, upper
