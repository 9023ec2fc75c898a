r"""Individuals grouped by size into padded batches, so that ragged data cost what their points cost.

The padded arrays of :class:`magma_pymc.data.TrainingData` pad every individual to the longest,
:math:`N_{max}`: the batched factorisations then cost :math:`M N_{max}^3` and hold
:math:`M N_{max}^2` numbers. One individual of 2,000 points among ten of 3 makes that eleven
factorisations of size 2,000 instead of one. Here individuals are sorted by size and cut into
*buckets*, each padded only to its own longest member, such that

.. math::

    B_k\, n_k^3 \;\le\; r \sum_{i \in k} N_i^3 + s

for every bucket :math:`k` of :math:`B_k` individuals padded to :math:`n_k` (``waste`` :math:`r`,
``slack`` :math:`s`): the padded work is within a factor :math:`r` of :math:`\sum_i N_i^3`, and
small individuals are not split into many buckets (each bucket is one more graph call; the slack
is the work a call's overhead is worth). Data of equal sizes form a single bucket, identical to
the one padded batch.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from magma_pymc.data import TrainingData

__all__ = ["PaddedBatch", "size_buckets", "padded_batches", "padded_cost", "WASTE", "SLACK"]

#: Padded work allowed per bucket, relative to the work of its real points (sum N_i^3).
WASTE = 1.25
#: Work (in N^3 units) a separate graph call is worth: buckets smaller than this merge.
SLACK = 64.0**3 * 8


class PaddedBatch(NamedTuple):
    """Individuals ``rows`` (positions in the training data) padded to their own longest.

    Arrays as in :class:`~magma_pymc.data.TrainingData`: ``inputs (B, n, d)``, ``outputs``,
    ``mask`` and ``index`` ``(B, n)``; padded slots repeat the individual's last input, hold
    output 0, mask 0 and index ``N`` (one past the grid).
    """

    rows: np.ndarray
    inputs: np.ndarray
    outputs: np.ndarray
    mask: np.ndarray
    index: np.ndarray


def size_buckets(n_points: np.ndarray, *, waste: float | None = None, slack: float | None = None) -> list[np.ndarray]:
    """Partition individuals (by their numbers of points) into buckets (module docstring).

    Greedy over individuals sorted by decreasing size (stable): a bucket takes the next
    individual while the bound holds with it. Returns the rows of each bucket, in their
    original order within the bucket; buckets from the largest individuals to the smallest.
    ``waste`` and ``slack`` default to :data:`WASTE` and :data:`SLACK` (read at call time).
    """
    waste = WASTE if waste is None else waste
    slack = SLACK if slack is None else slack
    sizes = np.asarray(n_points, dtype=float)
    if sizes.ndim != 1 or sizes.size == 0:
        raise ValueError("size_buckets needs a non-empty 1-D array of sizes")
    order = np.argsort(-sizes, kind="stable")
    buckets: list[list[int]] = []
    longest = real = 0.0
    for row in order:
        n = sizes[row]
        if buckets and (len(buckets[-1]) + 1) * longest**3 <= waste * (real + n**3) + slack:
            buckets[-1].append(int(row))
            real += n**3
        else:
            buckets.append([int(row)])
            longest, real = n, n**3
    return [np.sort(np.array(rows, dtype=np.int64)) for rows in buckets]


def padded_batches(data: TrainingData, buckets: list[np.ndarray] | None = None) -> tuple[PaddedBatch, ...]:
    """One :class:`PaddedBatch` per bucket (default: :func:`size_buckets` of the data's sizes)."""
    if buckets is None:
        buckets = size_buckets(data.n_points)
    batches = []
    for rows in buckets:
        n = int(data.n_points[rows].max())
        mask = data.mask[rows, :n]
        batches.append(PaddedBatch(rows, data.inputs[rows, :n], data.outputs[rows, :n], mask, data.index[rows, :n]))
    return tuple(batches)


def padded_cost(n_points: np.ndarray, buckets: list[np.ndarray] | None = None) -> tuple[float, float]:
    """``(sum_k B_k n_k^3, sum_k B_k n_k^2)``.

    Factorisation work and stored numbers of the batches (one batch padded to the longest when ``buckets`` is ``None``).
    """
    sizes = np.asarray(n_points, dtype=float)
    groups = [np.arange(len(sizes))] if buckets is None else buckets
    longest = [sizes[rows].max() for rows in groups]
    return (float(sum(len(r) * n**3 for r, n in zip(groups, longest, strict=True))),
            float(sum(len(r) * n**2 for r, n in zip(groups, longest, strict=True))))
