r"""Weighted Gaussian mixtures: the summary of every prediction and hyper-posterior.

A fit is a mixture over HP draws :math:`s = 1..S` and components :math:`k = 1..K` (EM: one draw,
one component; NUTS: S posterior draws; clustering: K clusters with weights :math:`\pi_k`), each
giving a Gaussian :math:`\mathcal N(m_j, V_j)` with weight :math:`w_j` (:math:`\sum_j w_j = 1`).

Moments (law of total variance):

.. math::

    \bar m = \sum_j w_j m_j, \qquad
    \bar V = \sum_j w_j V_j + \sum_j w_j (m_j - \bar m)(m_j - \bar m)^\top .

Marginal quantiles solve :math:`\sum_j w_j \Phi((q - m_j)/\sqrt{v_j}) = p` per input
(:func:`mixture_quantiles`, safeguarded Newton); a single component is the Gaussian quantile in closed form.
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
    iterations: int = 100,
    rtol: float = 1e-12,
) -> np.ndarray:
    r"""Quantiles of the Gaussian mixture :math:`\sum_j w_j\mathcal N(m_j, v_j)`, per column.

    ``means`` and ``variances`` are ``(J, n)``, ``weights`` ``(J,)`` (default: equal); returns
    ``(len(probs), n)``. One component: :math:`m + \sqrt v\,\Phi^{-1}(p)`. Several: Newton's
    method on :math:`F(q) = \sum_j w_j \Phi((q - m_j)/\sqrt{v_j}) - p` from the moment-matched
    Gaussian's quantile, safeguarded by a bracket (initially :math:`\pm 10` standard deviations
    around all components) that every step narrows: a step leaving it is replaced by bisection.
    :math:`F` is increasing, so this converges from any start; near the root it is quadratic:
    a few iterations to a step below ``rtol`` times :math:`\max(|q|, \text{mixture sd})`
    (deterministic, no sampling).
    """
    means, variances = np.atleast_2d(means), np.atleast_2d(variances)
    sd = np.sqrt(np.maximum(variances, 0.0))
    probs = np.asarray(probs, dtype=float)
    if len(means) == 1:
        return means[0] + sd[0] * ndtri(probs)[:, None]
    w = np.full(len(means), 1.0 / len(means)) if weights is None else np.asarray(weights, dtype=float)
    sd = np.where(sd > 0, sd, np.finfo(float).tiny)
    mean = w @ means
    spread = np.sqrt(np.maximum(w @ (variances + (means - mean) ** 2), 0.0))
    # Flattened (quantile, input) pairs; each iteration works on those not yet converged only.
    n_probs, n = len(probs), means.shape[1]
    column = np.tile(np.arange(n), n_probs)
    target = np.repeat(probs, n)
    # Each component's own quantile q_j: F(min_j q_j) <= p <= F(max_j q_j), so they bracket the root.
    own = means[None] + sd[None] * ndtri(probs)[:, None, None]                   # (P, J, n)
    lo, hi = own.min(axis=1).ravel(), own.max(axis=1).ravel()
    q = np.clip((mean + spread * ndtri(probs)[:, None]).ravel(), lo, hi)
    active = np.arange(q.size)
    scaled_weights = (w / np.sqrt(2 * np.pi))[:, None] / sd     # (J, n): w_j / (sqrt(2 pi) sd_j)
    for _ in range(iterations):
        cols, x = column[active], q[active]
        z = (x - means[:, cols]) / sd[:, cols]                    # (J, active)
        excess = w @ ndtr(z) - target[active]
        density = np.einsum("ja,ja->a", scaled_weights[:, cols], np.exp(-0.5 * z**2))
        below = excess < 0
        lo_a, hi_a = np.where(below, x, lo[active]), np.where(below, hi[active], x)
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = excess / density
        # Converged when Newton's step is below rtol times the scale of the answer (the CDF is a
        # floating-point sum: smaller steps would chase rounding noise) or the bracket is that narrow.
        tolerance = rtol * np.maximum(np.abs(x), spread[cols])
        small = np.abs(newton) <= tolerance
        # Bisection where Newton would leave the bracket or the density is 0 (NaN steps fail the test).
        inside = (x - newton > lo_a) & (x - newton < hi_a)
        q[active] = np.where(inside | small, x - newton, 0.5 * (lo_a + hi_a))
        lo[active], hi[active] = lo_a, hi_a
        active = active[~small & (hi_a - lo_a > tolerance)]
        if active.size == 0:
            break
    return q.reshape(n_probs, n)


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
