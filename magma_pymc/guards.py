r"""Guards before a fit that would be very costly or ill-posed.

The per-iteration cost of the exact model, and inducing points that do not fit the data.

Cost model of one EM iteration of the exact model on a union grid of :math:`N` inputs, with the
individuals in size buckets (:mod:`magma_pymc.batches`, :math:`B_k` individuals padded to
:math:`n_k`): the mean-process step and the E-step factorise :math:`N \times N` matrices a few tens
of times, the individual step the blocks :math:`\Psi_i`, so

.. math::

    \text{time} \approx c_t \big(N^3 + \textstyle\sum_k B_k n_k^3\big), \qquad
    \text{memory} \approx c_m \big(N^2 + \textstyle\sum_k B_k n_k^2\big).

:data:`SECONDS_PER_CUBE` and :data:`BYTES_PER_SQUARE` are measured on 2 cores (one BLAS
thread, see ``docs/performance.md``); the warning is an order of magnitude, not a promise.
"""

from __future__ import annotations

import numpy as np

from magma_pymc.exceptions import MagmaWarning, PerformanceWarning
from magma_pymc.exceptions import warn as _warn

__all__ = ["PerformanceWarning", "iteration_cost", "warn_if_costly", "check_inducing_points",
           "SECONDS_PER_CUBE", "BYTES_PER_SQUARE", "WARN_SECONDS", "WARN_BYTES"]

#: Seconds per N^3 of one EM iteration (measured: 1.4e-9 on an idle 2-core machine at N = 3000,
#: 7e-9 on a loaded one at N = 1000); the larger value errs on the side of warning.
SECONDS_PER_CUBE = 3e-9
#: Bytes per N^2 held during one EM iteration (about fourteen N x N float64 matrices; measured
#: 1 GB at N = 3000).
BYTES_PER_SQUARE = 8 * 14
#: An iteration estimated above this many seconds, or bytes, warns.
WARN_SECONDS = 60.0
WARN_BYTES = 4e9


def iteration_cost(n_grid: int, bucket_sizes: list[tuple[int, int]]) -> tuple[float, float]:
    """Estimated ``(seconds, bytes)`` of one EM iteration (module docstring).

    ``bucket_sizes`` lists ``(B_k, n_k)``.
    """
    cubes = float(n_grid) ** 3 + sum(b * float(n) ** 3 for b, n in bucket_sizes)
    squares = float(n_grid) ** 2 + sum(b * float(n) ** 2 for b, n in bucket_sizes)
    return SECONDS_PER_CUBE * cubes, BYTES_PER_SQUARE * squares


def warn_if_costly(n_grid: int, bucket_sizes: list[tuple[int, int]], *, projected: bool) -> tuple[float, float]:
    """:class:`PerformanceWarning` before an iteration estimated above :data:`WARN_SECONDS` or :data:`WARN_BYTES`.

    The warning names the way out (``inducing=``); returns the estimate.
    """
    seconds, size = iteration_cost(n_grid, bucket_sizes)
    if seconds > WARN_SECONDS or size > WARN_BYTES:
        grid_part = (f"{n_grid} inducing points" if projected else f"an exact union grid of {n_grid} distinct inputs")
        way_out = ("fewer inducing points" if projected else
                   "Magma(inducing=G) represents the mean process on G points (e.g. inducing=200) at O(G^3) per "
                   "evaluation instead of O(N^3); docs/performance.md gives its measured error")
        _warn(f"one EM iteration on {grid_part} is estimated at about {seconds:.0f} s and {size / 1e9:.1f} GB "
              f"(O(N^3) time, O(N^2) memory): {way_out}", PerformanceWarning)
    return seconds, size


def check_inducing_points(inducing: int | np.ndarray, grid: np.ndarray) -> None:
    """Refuse more inducing points than distinct training inputs (the exact model is then cheaper and exact).

    Also warn when many training inputs lie outside the inducing points' box: there the projected mean process is near
    its prior and the data barely inform its HP (evenly spaced points, an int, span the data by construction).
    """
    n_points, n_grid = (inducing if isinstance(inducing, int) else len(inducing)), len(grid)
    if n_points > n_grid:
        asked = f"inducing={inducing}" if isinstance(inducing, int) else f"{n_points} inducing points"
        raise ValueError(f"{asked} but the training data have only {n_grid} distinct input(s): the exact model "
                         f"(inducing=None) is cheaper and exact here, or pass at most {n_grid} points")
    if isinstance(inducing, int):
        return
    points = inducing
    low, high = points.min(axis=0), points.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    outside = np.any((grid < low - 0.05 * span) | (grid > high + 0.05 * span), axis=1)
    if outside.mean() > 0.1:
        _warn(f"{int(outside.sum())} of the {n_grid} distinct training inputs lie outside the inducing points' range "
              f"[{low.tolist()}, {high.tolist()}] (training inputs span [{grid.min(axis=0).tolist()}, "
              f"{grid.max(axis=0).tolist()}]): the mean process is represented only near the inducing points, so "
              "the data there barely inform it or its hyper-parameters; place inducing points over the data",
              MagmaWarning)
