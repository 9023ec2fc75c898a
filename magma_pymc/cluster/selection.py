r"""Choosing the number of clusters by the variational BIC (Leroy et al., JMLR 2023, section 4.3).

.. math::

    \mathrm{V\text{-}BIC}(K) = \mathcal L_K - \frac{n_{params}(K)}{2}\log\sum_i N_i,\qquad
    n_{params}(K) = (K - 1) + K_\gamma P_0 + M_\theta (P + 1),

with :math:`\mathcal L_K` the final evidence lower bound, :math:`K_\gamma` the number of mean-process HP
sets (K, or 1 when shared), :math:`M_\theta` that of individual HP sets (1 common, M different).
A fit whose clusters emptied during VEM counts the clusters it kept, and does not compete for the
choice: it is a fit with fewer clusters (often the same optimum as the smaller K, with the same
V-BIC up to rounding), not evidence for K. Ties go to the smaller K.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from magma_pymc.cluster.estimator import MagmaClust, check_n_clusters
from magma_pymc.data import as_training_data

__all__ = ["ClusterSelection", "select_n_clusters"]


@dataclass(frozen=True)
class ClusterSelection:
    """``table`` (one row per K: ``elbo``, ``n_params``, ``vbic``, ``n_clusters_kept``, ``seconds``).

    The ``best`` K (highest V-BIC) and the fitted ``models`` keyed by K.
    """

    table: pd.DataFrame
    best: int
    models: dict

    @property
    def best_model(self) -> MagmaClust:
        """The model of the selected number of clusters."""
        return self.models[self.best]

    def plot(self, ax=None):
        """V-BIC against K (:func:`magma_pymc.cluster.plots.plot_vbic`)."""
        from magma_pymc.cluster.plots import plot_vbic

        return plot_vbic(self, ax=ax)


def select_n_clusters(data: Any, k_range: Iterable[int] = range(1, 6), **options: Any) -> ClusterSelection:
    """Fit :class:`MagmaClust` for every K in ``k_range`` and tabulate the V-BIC of the module docstring.

    ``options`` are passed to :class:`MagmaClust`, e.g. ``common_hp``, ``n_init``, ``random_state``.
    """
    train = as_training_data(data)
    values = sorted({check_n_clusters(k, train.n_individuals) for k in k_range})
    if not values:
        raise ValueError("k_range is empty")
    rows, models = [], {}
    for k in values:
        start = time.perf_counter()
        model = MagmaClust(k, **options).fit(train)
        models[k] = model
        rows.append({"n_clusters": k, "n_clusters_kept": model.n_clusters_, "elbo": model.elbo_,
                     "n_params": model.n_params_, "vbic": model.vbic_, "seconds": time.perf_counter() - start})
    table = pd.DataFrame(rows).set_index("n_clusters")
    complete = table[table["n_clusters_kept"] == table.index]
    candidates = complete if len(complete) else table
    best = candidates.index[candidates["vbic"].to_numpy().argmax()]  # first maximum: the smaller K on ties
    return ClusterSelection(table, int(best), models)

