"""Initial responsibilities (k-means on curves regularised to a common grid) and canonical label order.

MagmaClustR initialises MagmaClust with k-means on the training curves brought to a common grid;
here each individual is linearly interpolated (constant beyond its own range) onto evenly spaced
points of the input range (1-D inputs), or read at its nearest input for every union-grid point
(d-dimensional inputs), and k-means++ runs with restarts, the lowest within-cluster sum of
squares winning. Labels are arbitrary for VEM; :func:`canonical_order` sorts clusters by the mean
level of their mean process so that runs (seeds, restarts, values of K) compare.
"""

from __future__ import annotations

import numpy as np

from magma_pymc.data import TrainingData

__all__ = ["canonical_order", "initial_responsibilities", "kmeans", "regularised_curves"]

#: Points of the common grid the curves are interpolated on (1-D inputs).
N_REGULARISED = 50


def regularised_curves(train: TrainingData, n_points: int = N_REGULARISED) -> np.ndarray:
    """``(M, G)`` curves on a common grid (module docstring)."""
    if train.input_dim == 1:
        grid = np.linspace(train.grid[0, 0], train.grid[-1, 0], n_points)
        return np.stack([np.interp(grid, ind.inputs[:, 0], ind.outputs) for ind in train.individuals])
    distances = ((train.inputs[:, :, None, :] - train.grid[None, None]) ** 2).sum(axis=-1)   # (M, n, N)
    distances = np.where(train.mask[:, :, None] > 0, distances, np.inf)
    nearest = np.argmin(distances, axis=1)                                                   # (M, N)
    return np.take_along_axis(train.outputs, nearest, axis=1)


def kmeans(points: np.ndarray, n_clusters: int, rng: np.random.Generator, *, n_init: int = 10,
           max_iter: int = 100) -> np.ndarray:
    """Labels ``(M,)`` of Lloyd's k-means with k-means++ seeding, best of ``n_init`` runs."""
    best_labels, best_inertia = None, np.inf
    for _ in range(n_init):
        centres = points[[rng.integers(len(points))]]
        for _ in range(1, n_clusters):  # k-means++: next centre drawn with probability ~ squared distance
            gaps = ((points[:, None] - centres[None]) ** 2).sum(axis=2).min(axis=1)
            total = gaps.sum()
            pick = rng.choice(len(points), p=gaps / total) if total > 0 else rng.integers(len(points))
            centres = np.vstack([centres, points[pick]])
        labels = np.full(len(points), -1)
        for _ in range(max_iter):
            distances = ((points[:, None] - centres[None]) ** 2).sum(axis=2)
            new_labels = np.argmin(distances, axis=1)
            if np.array_equal(new_labels, labels):
                break
            labels = new_labels
            for k in range(n_clusters):  # an emptied centre keeps its place
                if np.any(labels == k):
                    centres[k] = points[labels == k].mean(axis=0)
        inertia = ((points - centres[labels]) ** 2).sum()
        if inertia < best_inertia:
            best_labels, best_inertia = labels, inertia
    return best_labels


def initial_responsibilities(train: TrainingData, n_clusters: int, rng: np.random.Generator,
                             *, n_init: int = 10) -> np.ndarray:
    """One-hot ``(M, K)`` responsibilities of the k-means labels of :func:`regularised_curves`."""
    labels = kmeans(regularised_curves(train), n_clusters, rng, n_init=n_init)
    return np.eye(n_clusters)[labels]


def canonical_order(grid_means: np.ndarray) -> np.ndarray:
    """Permutation sorting clusters by the average of their mean process on the grid (``(K, N)``).

    Ties broken by the first grid value, so that labels do not depend on the initialisation.
    """
    return np.lexsort((grid_means[:, 0], grid_means.mean(axis=1)))


def initial_log_params(mean_kernel, kernel, tau: np.ndarray, residuals: np.ndarray, mask: np.ndarray,
                       input_range: float, output_variance: float, common_hp: bool):
    r"""Data-driven starting HP given the initial responsibilities ``tau`` (M, K).

    ``(K, P0)`` and the individual log HP (``(P + 1,)``, or ``(M, P + 1)`` with different HP).

    MAGMA starts every variance at the variance of all outputs. With clusters that variance includes
    the spread *between* clusters, which the individual processes would then claim (measured: a
    cluster's mean-process variance collapsing to its lower bound, a flat mean process and the
    individuals absorbing the cluster's shape). Here each cluster's mean-process variance starts at
    the mean square of its members' residuals :math:`r = y - m` (its level included, as
    :math:`\mu_k \sim GP(m, k_{\gamma_k})` must reach it), and the individual variance (and a tenth of it
    for the noise) at the pooled variance around the cluster levels; lengthscales as in MAGMA.
    """
    weights = tau.T[:, :, None] * mask[None]                                          # (K, M, n)
    sizes = np.maximum(weights.sum(axis=(1, 2)), np.finfo(float).tiny)
    levels = (weights * residuals[None]).sum(axis=(1, 2)) / sizes
    floor = 1e-6 * output_variance
    cluster_variance = np.maximum((weights * residuals[None] ** 2).sum(axis=(1, 2)) / sizes, floor)
    within = (weights * (residuals[None] - levels[:, None, None]) ** 2).sum() / mask.sum()
    within = max(within, floor)
    mean_log = np.stack([mean_kernel.initial_log_params(input_range, v) for v in cluster_variance])
    log_params = np.append(kernel.initial_log_params(input_range, within), np.log(0.1 * within))
    if not common_hp:
        log_params = np.tile(log_params, (tau.shape[0], 1))
    return mean_log, log_params
