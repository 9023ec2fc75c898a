r"""Weighted Gaussian mixtures: the summary of every prediction and hyper-posterior.

A fit is a mixture over HP draws :math:`s = 1..S` and components :math:`k = 1..K` (EM: one draw,
one component; NUTS: S posterior draws; clustering: K clusters with weights :math:`\pi_k`), each
giving a Gaussian :math:`\mathcal N(m_j, V_j)` with weight :math:`w_j` (:math:`\sum_j w_j = 1`).

Moments (law of total variance):

.. math::

    \bar m = \sum_j w_j m_j, \qquad
    \bar V = \sum_j w_j V_j + \sum_j w_j (m_j - \bar m)(m_j - \bar m)^\top .

Marginal quantiles solve :math:`\sum_j w_j \Phi((q - m_j)/\sqrt{v_j}) = p` per input
(:func:`mixture_quantiles`); a single component is the Gaussian quantile in closed form.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import ndtr, ndtri

__all__ = ["GaussianMixture", "mixture_quantiles"]


def mixture_quantiles(
    means: np.ndarray,
    variances: np.ndarray,
    probs: Sequence[float],
    weights: np.ndarray | None = None,
    *,
    iterations: int = 200,
) -> np.ndarray:
    r"""Quantiles of the Gaussian mixture :math:`\sum_j w_j\mathcal N(m_j, v_j)`, per column.

    ``means`` and ``variances`` are ``(J, n)``, ``weights`` ``(J,)`` (default: equal); returns
    ``(len(probs), n)``. One component: :math:`m + \sqrt v\,\Phi^{-1}(p)`. Several: vectorised
    bisection on a bracket of :math:`\pm 10` standard deviations around all components, to machine
    precision (deterministic, no sampling).
    """
    means, variances = np.atleast_2d(means), np.atleast_2d(variances)
    sd = np.sqrt(np.maximum(variances, 0.0))
    if len(means) == 1:
        return np.array([means[0] + sd[0] * ndtri(p) for p in probs])
    w = np.full(len(means), 1.0 / len(means)) if weights is None else np.asarray(weights, dtype=float)
    sd = np.where(sd > 0, sd, np.finfo(float).tiny)
    out = []
    for p in probs:
        lo, hi = (means - 10 * sd).min(axis=0), (means + 10 * sd).max(axis=0)
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            below = w @ ndtr((mid - means) / sd) < p
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
            if np.all(hi - lo <= 4 * np.finfo(float).eps * np.maximum(np.abs(mid), 1.0)):
                break
        out.append(0.5 * (lo + hi))
    return np.array(out)


class GaussianMixture:
    r"""Gaussian mixture accumulated one component at a time (memory :math:`O(Jn + n^2)`).

    ``add(mean, cov, weight)``; weights are normalised when the moments are read, so equal weights
    need not be known in advance. ``full=False`` keeps marginal variances only: ``add`` takes a
    variance vector and :meth:`moments` returns the mixture variance (memory :math:`O(Jn)`).
    """

    def __init__(self, full: bool = True) -> None:
        self.full = full
        self.means: list[np.ndarray] = []
        self.variances: list[np.ndarray] = []
        self.weights: list[float] = []
        self._weighted_cov: np.ndarray | float = 0.0

    def add(self, mean: np.ndarray, cov: np.ndarray, weight: float = 1.0) -> None:
        """One component: ``cov`` is its covariance ``(n, n)``, or its variances ``(n,)`` if not ``full``."""
        self.means.append(np.asarray(mean))
        self.variances.append(np.diag(cov).copy() if self.full else np.asarray(cov))
        self.weights.append(float(weight))
        if self.full:
            self._weighted_cov = self._weighted_cov + (cov if weight == 1.0 else weight * cov)

    def _normalised(self) -> np.ndarray:
        w = np.array(self.weights)
        return w / w.sum()

    def normalised_weights(self) -> np.ndarray:
        """Component weights ``(J,)``, summing to 1."""
        return self._normalised()

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Mixture mean ``(n,)`` and covariance ``(n, n)`` (module docstring); variances ``(n,)`` if not ``full``."""
        w, means = self._normalised(), np.array(self.means)
        mean = w @ means
        centred = means - mean
        if not self.full:
            return mean, w @ (np.array(self.variances) + centred**2)
        return mean, self._weighted_cov / float(np.sum(self.weights)) + (centred.T * w) @ centred

    def quantiles(self, probs: Sequence[float]) -> np.ndarray:
        """Exact marginal quantiles, ``(len(probs), n)``."""
        return mixture_quantiles(np.array(self.means), np.array(self.variances), probs, self._normalised())
