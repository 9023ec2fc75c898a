"""MagmaClust: clusters of individuals, each cluster with its own mean process (Leroy et al., JMLR 2023).

* :class:`MagmaClust` -- the estimator (variational EM, mixture predictions, save/load);
* :func:`select_n_clusters` -- V-BIC over a range of numbers of clusters;
* :func:`simulate_clustered` -- clustered data following the MagmaClust paper's scheme;
* :mod:`magma_pymc.cluster.plots` -- mean processes, clustered individuals, mixture predictions.
"""

from magma_pymc.cluster.estimator import MagmaClust
from magma_pymc.cluster.metrics import adjusted_rand_index
from magma_pymc.cluster.selection import ClusterSelection, select_n_clusters
from magma_pymc.cluster.simulate import ClusteredSimulation, simulate_clustered
from magma_pymc.cluster.vem import ClusterWarning

__all__ = [
    "ClusterSelection",
    "ClusterWarning",
    "ClusteredSimulation",
    "MagmaClust",
    "adjusted_rand_index",
    "select_n_clusters",
    "simulate_clustered",
]
