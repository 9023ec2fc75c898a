r"""Clustered data following the simulation scheme of the MagmaClust paper (Leroy et al., JMLR 2023, section 6).

.. math::

    Z_i &\sim \mathcal M(1, \pi),\qquad m_k(t) = a_k t + b_k,\\
    \mu_k &\sim \mathcal{GP}(m_k, k_{\gamma_k}),\qquad f_i \sim \mathcal{GP}(0, c_{\theta_i}),\\
    y_i(t) &= \mu_{Z_i}(t) + f_i(t) + \varepsilon_i(t),\qquad \varepsilon_i(t) \sim \mathcal N(0, \sigma_i^2),

with squared-exponential kernels, every HP drawn log-uniformly as in
:func:`magma_pymc.datasets.simulate` (the MAGMA paper's intervals), slopes :math:`a_k \sim \mathcal U[-2, 2]`
and intercepts :math:`b_k` stratified over ``intercept_range`` (one draw in each of K equal sub-intervals,
in random order), which controls how far apart the clusters are; with ``min_separation`` the mean
processes are redrawn until every pair is at least that far apart in root-mean-square distance on the
grid (well-separated clusters, as a stated condition rather than a lucky draw). Individuals observe ``n_points``
inputs of a 201-point grid on [0, 10], drawn independently (uncommon grid) or shared (common grid).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from magma_pymc.datasets.simulate import se_kernel

__all__ = ["ClusteredSimulation", "simulate_clustered"]


def _factor(grid: np.ndarray, variance: float, lengthscale: float) -> np.ndarray:
    cov = se_kernel(grid, grid, variance, lengthscale) + 1e-8 * variance * np.eye(len(grid))
    values, vectors = np.linalg.eigh(cov)   # robust square root of a numerically singular SE covariance
    return vectors * np.sqrt(np.clip(values, 0.0, None))


@dataclass(frozen=True, eq=False)
class ClusteredSimulation:
    """``data`` (training, long format ``ID``, ``Input``, ``Output``).

    ``new`` (extra individuals with all their points), the true ``labels`` (a Series indexed by ID, training and new),
    the cluster ``weights``, the mean processes on ``grid`` (``mean_processes``, ``(K, G)``), the noise-free curves
    (``latent``: ID -> ``(G,)``) and the true ``hyperparameters``.
    """

    data: pd.DataFrame
    new: pd.DataFrame
    labels: pd.Series
    weights: np.ndarray
    grid: np.ndarray
    mean_processes: np.ndarray
    latent: dict
    hyperparameters: dict

    def latent_at(self, frame: pd.DataFrame) -> np.ndarray:
        """Noise-free values at the rows of a long frame whose inputs are grid points."""
        positions = np.searchsorted(self.grid, frame["Input"].to_numpy())
        return np.array([self.latent[i][p] for i, p in zip(frame["ID"], positions, strict=True)])


def simulate_clustered(
    n_clusters: int = 3,
    n_individuals: int = 60,
    n_points: int = 30,
    *,
    weights: np.ndarray | None = None,
    common_grid: bool = False,
    common_hp: bool = True,
    n_new: int = 0,
    seed: int | None = None,
    intercept_range: tuple[float, float] = (0.0, 30.0),
    slope_range: tuple[float, float] = (-2.0, 2.0),
    mean_variance_range: tuple[float, float] = (1.0, 3.0),
    mean_lengthscale_range: tuple[float, float] = (1.0, 3.0),
    variance_range: tuple[float, float] = (1.0, 3.0),
    lengthscale_range: tuple[float, float] = (1.0, 3.0),
    noise_range: tuple[float, float] = (-3.0, -1.0),
    min_separation: float | None = None,
    max_redraws: int = 1000,
) -> ClusteredSimulation:
    """Draw a clustered data set (module docstring); log-scale ranges as :func:`magma_pymc.datasets.simulate`."""
    if n_clusters < 1 or n_individuals < n_clusters:
        raise ValueError(f"need 1 <= n_clusters <= n_individuals, got {n_clusters} and {n_individuals}")
    rng = np.random.default_rng(seed)
    grid = np.linspace(0.0, 10.0, 201)
    weights = np.full(n_clusters, 1.0 / n_clusters) if weights is None else np.asarray(weights, dtype=float)
    edges = np.linspace(*intercept_range, n_clusters + 1)
    for _ in range(max_redraws):
        intercepts = rng.permutation(rng.uniform(edges[:-1], edges[1:]))
        slopes = rng.uniform(*slope_range, n_clusters)
        mean_hp = np.exp(rng.uniform(*np.transpose([mean_variance_range, mean_lengthscale_range]), (n_clusters, 2)))
        means = np.stack([
            slopes[k] * grid + intercepts[k] + _factor(grid, *mean_hp[k]) @ rng.standard_normal(len(grid))
            for k in range(n_clusters)
        ])
        gaps = np.sqrt(((means[:, None] - means[None]) ** 2).mean(axis=2))[np.triu_indices(n_clusters, 1)]
        if min_separation is None or n_clusters == 1 or gaps.min() >= min_separation:
            break
    else:
        raise ValueError(f"no draw of mean processes {min_separation} apart in {max_redraws} tries: widen "
                         "intercept_range or lower min_separation")
    n_total = n_individuals + n_new
    width = len(str(max(n_total - 1, 0)))
    ids = [f"i{i:0{width}d}" for i in range(n_individuals)] + [f"new{i:0{width}d}" for i in range(n_new)]
    # Every cluster has at least one training individual, the rest drawn from the weights.
    extra = rng.choice(n_clusters, n_individuals - n_clusters, p=weights)
    labels = np.concatenate([rng.permutation(np.concatenate([np.arange(n_clusters), extra])),
                             rng.choice(n_clusters, n_new, p=weights)])
    hp_rows = np.exp(rng.uniform(*np.transpose([variance_range, lengthscale_range, noise_range]),
                                 (1 if common_hp else n_total, 3)))
    hp_rows = np.broadcast_to(hp_rows, (n_total, 3))
    shared = np.sort(rng.choice(len(grid), n_points, replace=False))
    rows, latent, factors = [], {}, {}
    for i, ident in enumerate(ids):
        key = (hp_rows[i, 0], hp_rows[i, 1])
        if key not in factors:  # one factorisation per distinct HP (one in all with common HP)
            factors[key] = _factor(grid, *key)
        curve = means[labels[i]] + factors[key] @ rng.standard_normal(len(grid))
        latent[ident] = curve
        where = shared if common_grid else np.sort(rng.choice(len(grid), n_points, replace=False))
        noisy = curve[where] + np.sqrt(hp_rows[i, 2]) * rng.standard_normal(len(where))
        rows.append(pd.DataFrame({"ID": ident, "Input": grid[where], "Output": noisy}))
    frame = pd.concat(rows, ignore_index=True)
    is_new = frame["ID"].str.startswith("new")
    hp = pd.DataFrame(hp_rows, index=pd.Index(ids, name="ID"), columns=["variance", "lengthscale", "noise"])
    return ClusteredSimulation(
        data=frame[~is_new].reset_index(drop=True), new=frame[is_new].reset_index(drop=True),
        labels=pd.Series(labels, index=pd.Index(ids, name="ID"), name="cluster"), weights=weights, grid=grid,
        mean_processes=means, latent=latent,
        hyperparameters={"slope": slopes, "intercept": intercepts, "mean_process": mean_hp, "individual": hp},
    )
