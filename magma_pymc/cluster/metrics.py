"""Agreement between two partitions: the adjusted Rand index (Hubert and Arabie, 1985)."""

from __future__ import annotations

import numpy as np

__all__ = ["adjusted_rand_index"]


def _pairs(counts: np.ndarray) -> float:
    return float((counts * (counts - 1) / 2).sum())


def adjusted_rand_index(labels_true, labels_pred) -> float:
    r"""ARI :math:`= (\sum_{ij}\binom{n_{ij}}2 - E) / (\tfrac12[\sum_i\binom{a_i}2 + \sum_j\binom{b_j}2] - E)`.

    :math:`E = \sum_i\binom{a_i}2\sum_j\binom{b_j}2 / \binom n2`, from the contingency table :math:`n_{ij}`; 1 for
    identical partitions (up to label names), about 0 for independent ones.
    """
    true_codes = np.unique(np.asarray(labels_true), return_inverse=True)[1]
    pred_codes = np.unique(np.asarray(labels_pred), return_inverse=True)[1]
    if len(true_codes) != len(pred_codes):
        raise ValueError("the two labelings must have the same length")
    table = np.zeros((true_codes.max() + 1, pred_codes.max() + 1))
    np.add.at(table, (true_codes, pred_codes), 1)
    index = _pairs(table)
    rows, cols = _pairs(table.sum(axis=1)), _pairs(table.sum(axis=0))
    expected = rows * cols / _pairs(np.array([len(true_codes)]))
    maximum = 0.5 * (rows + cols)
    if maximum == expected:  # both partitions trivial (one cluster, or all singletons)
        return 1.0
    return (index - expected) / (maximum - expected)
