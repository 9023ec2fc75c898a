"""The jitter policy: what is added to covariance diagonals before a Cholesky factorisation.

All values are relative to the output variance (the unit of every covariance), except
``MODEL_JITTER``, the absolute default of the declared PyMC model (:func:`magma_pymc.model.build_model`).

- EM and prediction start at ``JITTER_DEFAULT`` and raise it tenfold whenever a factorisation
  fails, up to ``JITTER_MAX`` (:func:`smallest_working_jitter`, used by the E-steps of MAGMA, of
  its distributed EM and of MagmaClust); the value used is recorded.
- NUTS samples at a fixed ``max(start, SAMPLING_JITTER)``: the sampler visits HP (long lengthscales)
  where the union-grid :math:`K_0` needs more jitter than EM's start, and a fixed value keeps the
  target one smooth function.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from magma_pymc.exceptions import NumericalWarning
from magma_pymc.exceptions import warn as _warn

__all__ = ["JITTER_DEFAULT", "JITTER_MAX", "SAMPLING_JITTER", "MODEL_JITTER", "smallest_working_jitter"]

#: Jitter, relative to the output variance, tried first on every factorised covariance.
JITTER_DEFAULT = 1e-10
#: Largest relative jitter tried before giving up; jitter grows tenfold per failure.
JITTER_MAX = 1e-3
#: Jitter floor during sampling, relative to the output variance (recorded as ``idata_.attrs["jitter"]``).
SAMPLING_JITTER = 1e-8
#: Default jitter of the declared PyMC model's mean-process prior covariance.
MODEL_JITTER = 1e-8


def smallest_working_jitter[Result](
    attempt: Callable[[float], Result | None], jitter: float, output_scale: float, failure: Callable[[float], str]
) -> tuple[Result, float]:
    """``(attempt(j), j)`` for the smallest working ``j`` of ``jitter, 10 jitter, 100 jitter, ...``.

    ``attempt`` returns ``None`` when a factorisation fails. A zero start goes to
    ``JITTER_DEFAULT * output_scale`` (ten times zero would loop); beyond
    ``JITTER_MAX * output_scale`` a ``LinAlgError`` with ``failure(j)`` is raised. A
    :class:`~magma_pymc.exceptions.NumericalWarning` reports a grown jitter, which the caller records.
    """
    start = jitter
    while (result := attempt(jitter)) is None:
        if jitter >= JITTER_MAX * output_scale:
            raise np.linalg.LinAlgError(failure(jitter))
        jitter = jitter * 10.0 if jitter > 0 else JITTER_DEFAULT * output_scale
    if jitter != start:
        _warn(f"Cholesky failed; jitter raised from {start:.3g} to {jitter:.3g} (recorded in the results)",
              NumericalWarning)
    return result, jitter
