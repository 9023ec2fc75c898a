"""Synthetic data following the simulation scheme of the MAGMA paper.

Leroy, Latouche, Guedj and Gey (2022), "MAGMA: inference and prediction using
multi-task Gaussian processes with common mean", Machine Learning 111, section 5.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .split import split_observed

if TYPE_CHECKING:
    from magma_pymc.cluster.simulate import ClusteredSimulation

__all__ = ["SCHEMES", "Simulation", "se_kernel", "simulate", "split_observed"]

#: Relative jitter added to the diagonal of a squared-exponential covariance matrix
#: before factorising it: ``K + JITTER * variance * I``.
JITTER: float = 1e-8


def se_kernel(
    x1: np.ndarray, x2: np.ndarray, variance: float, lengthscale: float
) -> np.ndarray:
    r"""Squared-exponential kernel matrix.

    .. math:: k(x, x') = v \exp\left(-\frac{(x - x')^2}{2 \ell^2}\right)

    Parameters
    ----------
    x1, x2 : np.ndarray
        1-D input arrays of lengths ``n1`` and ``n2``.
    variance : float
        Signal variance :math:`v > 0`.
    lengthscale : float
        Length-scale :math:`\ell > 0`.

    Returns
    -------
    np.ndarray
        Matrix of shape ``(n1, n2)``.
    """
    d = np.subtract.outer(np.asarray(x1, float), np.asarray(x2, float))
    return variance * np.exp(-0.5 * (d / lengthscale) ** 2)


def _gp_factor(x: np.ndarray, variance: float, lengthscale: float, jitter: float) -> np.ndarray:
    """Square root ``L`` with ``L @ L.T = K + jitter * variance * I``.

    Cholesky is tried first; if it fails (covariance numerically singular even after the
    jitter) the symmetric eigen-decomposition is used, with negative eigenvalues clipped
    to zero.
    """
    cov = se_kernel(x, x, variance, lengthscale)
    cov[np.diag_indices_from(cov)] += jitter * variance
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        w, u = np.linalg.eigh(cov)
        return u * np.sqrt(np.clip(w, 0.0, None))


def _ids(prefix: str, n: int) -> list[str]:
    """IDs ``prefix0..prefix{n-1}``, zero-padded so lexical order = numeric order."""
    width = len(str(max(n - 1, 0)))
    return [f"{prefix}{i:0{width}d}" for i in range(n)]


@dataclass(frozen=True, eq=False)
class Simulation:
    """Result of :func:`simulate`.

    Attributes
    ----------
    data : pd.DataFrame
        Training individuals in long format, columns ``ID`` (str), ``Input``, ``Output``;
        sorted by ID then Input. IDs are ``"i0".."i{M-1}"`` zero-padded to a common
        width (``"i00".."i19"`` for M = 20), so that sorting IDs keeps numeric order.
    new : pd.DataFrame
        ``n_new`` extra individuals from the same model (same mean process), same
        columns, IDs ``"new0"...`` (zero-padded likewise), with all their points; use
        :func:`split_observed` to split them into observed / forecast parts. Empty (with
        the same columns) if ``n_new == 0``.
    grid : np.ndarray
        The full input grid, shape ``(G,)`` (default ``np.linspace(0, 10, 201)``).
    mean_process : np.ndarray
        The draw of :math:`\\mu_0` on ``grid``, shape ``(G,)``.
    prior_mean : np.ndarray
        :math:`m_0(t) = a t + b` on ``grid``, shape ``(G,)``.
    hyperparameters : dict
        ``{"prior_mean": {"slope": a, "intercept": b},
        "mean_process": {"variance": v0, "lengthscale": l0},
        "individual": DataFrame}``; the DataFrame is indexed by ``ID`` (training then
        new individuals) with columns ``variance``, ``lengthscale``, ``noise`` (the noise
        *variance* :math:`\\sigma_i^2`).
    individual_processes : dict[str, np.ndarray]
        Noise-free latent curve :math:`\\mu_0 + f_i` on ``grid`` for every individual
        (training and new), keyed by ID; each of shape ``(G,)``.
    """

    data: pd.DataFrame
    new: pd.DataFrame
    grid: np.ndarray
    mean_process: np.ndarray
    prior_mean: np.ndarray
    hyperparameters: dict
    individual_processes: dict = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        """IDs of the training individuals, in order."""
        return list(pd.unique(self.data["ID"]))

    @property
    def new_ids(self) -> list[str]:
        """IDs of the new individuals, in order (empty list if none)."""
        return list(pd.unique(self.new["ID"]))

    def grid_index(self, inputs: np.ndarray) -> np.ndarray:
        """Positions in ``grid`` of the given inputs (which must be grid points)."""
        x = np.asarray(inputs, dtype=float)
        pos = np.clip(np.searchsorted(self.grid, x), 0, self.grid.size - 1)
        left = np.clip(pos - 1, 0, self.grid.size - 1)
        pos = np.where(np.abs(self.grid[left] - x) < np.abs(self.grid[pos] - x), left, pos)
        if not np.allclose(self.grid[pos], x, rtol=0.0, atol=1e-9):
            raise ValueError("some inputs are not points of the simulation grid")
        return pos

    def latent(self, df: pd.DataFrame) -> np.ndarray:
        """Noise-free values :math:`\\mu_0(t) + f_i(t)` at the rows of a long frame.

        Parameters
        ----------
        df : pd.DataFrame
            Long frame with columns ``ID`` and ``Input`` (e.g. ``self.data``, ``self.new``
            or a part returned by :func:`split_observed`); inputs must be grid points.

        Returns
        -------
        np.ndarray
            Array of length ``len(df)``, aligned with the rows of ``df``.
        """
        out = np.empty(len(df))
        ids = df["ID"].to_numpy()
        pos = self.grid_index(df["Input"].to_numpy())
        for key in pd.unique(ids):
            mask = ids == key
            out[mask] = self.individual_processes[key][pos[mask]]
        return out

    def __repr__(self) -> str:
        return (
            f"Simulation(n_individuals={self.data['ID'].nunique()}, "
            f"n_rows={len(self.data)}, n_new={self.new['ID'].nunique()}, "
            f"grid=[{self.grid[0]:g}, {self.grid[-1]:g}] ({self.grid.size} points))"
        )


#: Default hyper-parameter intervals of each scheme of :func:`simulate`: uniform intervals of
#: the log variance and log lengthscale of the mean process and of the individuals, and of the
#: noise draw (the noise standard deviation for ``"paper"``, the log noise variance for
#: ``"smooth"``).
SCHEMES: dict[str, dict[str, tuple[float, float]]] = {
    "paper": {
        "mean_variance_range": (0.0, 5.0),
        "mean_lengthscale_range": (0.0, 1.0),
        "variance_range": (0.0, 5.0),
        "lengthscale_range": (0.0, 1.0),
        "noise_range": (0.0, 2.0),
    },
    "smooth": {
        "mean_variance_range": (1.0, 3.0),
        "mean_lengthscale_range": (1.0, 3.0),
        "variance_range": (1.0, 3.0),
        "lengthscale_range": (1.0, 3.0),
        "noise_range": (-3.0, -1.0),
    },
}


def _clustered(arguments: dict) -> ClusteredSimulation:
    """:func:`simulate` with ``n_clusters``: the MagmaClust scheme, refusing MAGMA-only arguments that were set."""
    from magma_pymc.cluster.simulate import simulate_clustered  # the cluster package imports this module

    defaults = {"scheme": "paper", "grid": None, "n_points_new": None, "slope_range": (-2.0, 2.0),
                "intercept_range": (0.0, 10.0), "mean_variance_range": None, "mean_lengthscale_range": None,
                "variance_range": None, "lengthscale_range": None, "noise_range": None, "jitter": JITTER}
    given = sorted(name for name, default in defaults.items()
                   if (arguments[name] is not None if default is None else arguments[name] != default))
    if given:
        raise ValueError(f"simulate(n_clusters=...) follows the MagmaClust scheme and does not take "
                         f"{', '.join(given)}; "
                         "use magma_pymc.cluster.simulate_clustered for its own options")
    return simulate_clustered(arguments["n_clusters"], arguments["n_individuals"], arguments["n_points"],
                              common_grid=arguments["common_grid"], common_hp=arguments["common_hp"],
                              n_new=arguments["n_new"], seed=arguments["seed"])


def simulate(
    n_individuals: int = 20,
    n_points: int = 30,
    *,
    scheme: str = "paper",
    common_grid: bool = False,
    common_hp: bool = True,
    seed: int | np.random.Generator | None = None,
    grid: np.ndarray | None = None,
    n_new: int = 0,
    n_points_new: int | None = None,
    slope_range: tuple[float, float] = (-2.0, 2.0),
    intercept_range: tuple[float, float] = (0.0, 10.0),
    mean_variance_range: tuple[float, float] | None = None,
    mean_lengthscale_range: tuple[float, float] | None = None,
    variance_range: tuple[float, float] | None = None,
    lengthscale_range: tuple[float, float] | None = None,
    noise_range: tuple[float, float] | None = None,
    jitter: float = JITTER,
    n_clusters: int | None = None,
) -> Simulation | ClusteredSimulation:
    r"""Simulate data from the MAGMA generative model, by default with the paper's scheme.

    .. math::

        m_0(t) &= a t + b, \qquad a \sim \mathcal U[-2, 2],\; b \sim \mathcal U[0, 10],\\
        \mu_0 &\sim \mathcal{GP}(m_0, k_{\theta_0}), \qquad
        f_i \sim \mathcal{GP}(0, c_{\theta_i}) \text{ independent},\\
        y_i(t) &= \mu_0(t) + f_i(t) + \varepsilon_i(t), \qquad
        \varepsilon_i(t) \sim \mathcal N(0, \sigma_i^2) \text{ i.i.d.},

    with squared-exponential kernels :math:`k(x, x') = v \exp(-(x - x')^2 / (2\ell^2))`, on the
    grid 0, 0.05, ..., 10 (201 points) by default.

    ``scheme="paper"`` (default): the scheme of the MAGMA paper's simulation study (Leroy et al.,
    2022, section 5), as in the authors' code (``simu_scheme`` in ``simulation_study.R`` of
    ArthurLeroy/MAGMA) and their data sets (:func:`~magma_pymc.datasets.load_paper_simulations`).
    The authors write the kernel :math:`\exp(a - e^{-b} (x - x')^2 / 2)`, i.e. variance
    :math:`v = e^a` and lengthscale :math:`\ell = e^{b/2}`, and draw

    * mean process :math:`\theta_0` and individuals :math:`\theta_i` alike:
      :math:`a \sim \mathcal U[0, 5]` (variance :math:`e^a \in [1, 148.4]`),
      :math:`b \sim \mathcal U[0, 2]` (lengthscale :math:`e^{b/2} \in [1, 2.72]`);
    * noise: standard deviation :math:`\sigma_i \sim \mathcal U[0, 2]`, noise *variance*
      :math:`\sigma_i^2 \in [0, 4]` (the authors' ``kern_to_cov`` adds ``sigma^2`` to the
      diagonal; their data sets hold ``sigma`` up to 2.00, and their likelihood under
      :math:`\sigma_i^2` exceeds that under :math:`\sigma_i` by hundreds of log-units,
      ``tests/test_paper_data.py``).

    The authors round every draw to two decimals; this function does not.

    ``scheme="smooth"``: an easier scheme with smoother, less noisy curves, all log-uniform:
    :math:`\log v_0, \log \ell_0, \log v_i, \log \ell_i \sim \mathcal U[1, 3]` (variances and
    lengthscales in :math:`[2.7, 20.1]`) and :math:`\log \sigma_i^2 \sim \mathcal U[-3, -1]`
    (noise variance in :math:`[0.05, 0.37]`). Its forecasts are about twenty times easier (MSE)
    than the paper's; it is not the paper's scheme.

    With ``common_hp=True`` a single draw :math:`(v, \ell, \sigma^2)` is shared by all
    individuals (training and new); otherwise each individual draws its own.

    The processes are sampled on the whole ``grid``; each individual then observes ``n_points``
    grid points drawn uniformly without replacement, independently per individual, or one random
    subset shared by all if ``common_grid=True`` (the paper's settings: first letter common grid,
    second letter common HP, e.g. ``"FT"`` is ``common_grid=False, common_hp=True``). The
    squared-exponential covariance on a fine grid is numerically singular, so ``jitter * v``
    (default ``1e-8 * v``) is added to its diagonal before a Cholesky factorisation (falling back
    to an eigen-decomposition with clipped eigenvalues if Cholesky still fails).

    Parameters
    ----------
    n_individuals : int, default 20
        Number M of training individuals.
    n_points : int, default 30
        Number of observed grid points per individual.
    scheme : {"paper", "smooth"}, default "paper"
        Default hyper-parameter distributions (above; intervals in :data:`SCHEMES`).
    common_grid : bool, default False
        If True, all individuals (training and new) share the same input points.
    common_hp : bool, default True
        If True, all individuals share the same hyper-parameters :math:`\theta_i,
        \sigma_i^2`.
    seed : int, np.random.Generator or None
        Seed for ``np.random.default_rng``; the same seed gives identical output.
    grid : np.ndarray, optional
        Strictly increasing 1-D grid; default ``np.linspace(0, 10, 201)``.
    n_new : int, default 0
        Number of extra individuals drawn from the same model (same :math:`\mu_0`),
        returned in ``Simulation.new``.
    n_points_new : int, optional
        Points per new individual (default ``n_points``); ignored with
        ``common_grid=True``, where new individuals share the common inputs.
    slope_range, intercept_range : tuple of float
        Uniform intervals for :math:`a` and :math:`b` of :math:`m_0` (linear scale).
    mean_variance_range, mean_lengthscale_range : tuple of float, optional
        Intervals of :math:`\log v_0` and :math:`\log \ell_0` (default: the scheme's).
    variance_range, lengthscale_range : tuple of float, optional
        Intervals of :math:`\log v_i` and :math:`\log \ell_i` (default: the scheme's).
    noise_range : tuple of float, optional
        Interval of the noise draw (default: the scheme's): of the noise standard deviation
        :math:`\sigma_i` with ``scheme="paper"``, of :math:`\log \sigma_i^2` with
        ``scheme="smooth"``.
    jitter : float, default 1e-8
        Relative diagonal jitter (multiplied by the kernel variance).
    n_clusters : int, optional
        Clustered data instead, ``n_clusters`` mean processes following the MagmaClust paper's
        scheme: :func:`magma_pymc.cluster.simulate_clustered` with ``n_individuals``,
        ``n_points``, ``common_grid``, ``common_hp``, ``n_new`` and ``seed``, and its own defaults
        for everything else (call it directly for its other options). The arguments specific to
        MAGMA's scheme (``scheme``, ``grid``, ``n_points_new``, the ranges, ``jitter``) are then
        refused rather than ignored.

    Returns
    -------
    Simulation or ClusteredSimulation
        Frames ``data`` and ``new`` plus the ground truth; see :class:`Simulation` (and
        :class:`magma_pymc.cluster.ClusteredSimulation` with ``n_clusters``, which adds the true
        ``labels``).
    """
    if n_clusters is not None:
        return _clustered(locals())
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {sorted(SCHEMES)}, got {scheme!r}")
    given = {
        "mean_variance_range": mean_variance_range,
        "mean_lengthscale_range": mean_lengthscale_range,
        "variance_range": variance_range,
        "lengthscale_range": lengthscale_range,
        "noise_range": noise_range,
    }
    ranges = {key: SCHEMES[scheme][key] if value is None else value for key, value in given.items()}
    grid = np.linspace(0.0, 10.0, 201) if grid is None else np.asarray(grid, dtype=float)
    if grid.ndim != 1 or grid.size < 1 or np.any(np.diff(grid) <= 0):
        raise ValueError("grid must be a non-empty, strictly increasing 1-D array")
    n_grid = grid.size
    n_points_new = n_points if n_points_new is None else n_points_new
    if n_individuals < 1 or n_new < 0:
        raise ValueError("need n_individuals >= 1 and n_new >= 0")
    for n in (n_points, n_points_new):
        if not 1 <= n <= n_grid:
            raise ValueError(f"number of points must be in [1, {n_grid}], got {n}")
    rng = np.random.default_rng(seed)

    def log_uniform(bounds: tuple[float, float], size: int | None = None) -> np.ndarray:
        return np.exp(rng.uniform(bounds[0], bounds[1], size))

    # Mean process.
    slope = float(rng.uniform(*slope_range))
    intercept = float(rng.uniform(*intercept_range))
    prior_mean = slope * grid + intercept
    v0 = float(log_uniform(ranges["mean_variance_range"]))
    l0 = float(log_uniform(ranges["mean_lengthscale_range"]))
    mean_process = prior_mean + _gp_factor(grid, v0, l0, jitter) @ rng.standard_normal(n_grid)

    # Individual hyper-parameters.
    ids = _ids("i", n_individuals) + _ids("new", n_new)
    n_total = len(ids)
    size = 1 if common_hp else n_total
    variance = log_uniform(ranges["variance_range"], size)
    lengthscale = log_uniform(ranges["lengthscale_range"], size)
    if scheme == "paper":  # uniform noise standard deviation
        noise_variance = rng.uniform(*ranges["noise_range"], size) ** 2
    else:
        noise_variance = log_uniform(ranges["noise_range"], size)
    hp = pd.DataFrame(
        {
            "variance": np.broadcast_to(variance, n_total),
            "lengthscale": np.broadcast_to(lengthscale, n_total),
            "noise": np.broadcast_to(noise_variance, n_total),
        },
        index=pd.Index(ids, name="ID"),
    )

    # Observed grid positions.
    counts = [n_points] * n_individuals + [n_points_new] * n_new
    if common_grid:
        shared = np.sort(rng.choice(n_grid, size=n_points, replace=False))
        positions = [shared] * n_total
    else:
        positions = [np.sort(rng.choice(n_grid, size=c, replace=False)) for c in counts]

    # Individual processes on the grid.
    z = rng.standard_normal((n_total, n_grid))
    if common_hp:
        factor = _gp_factor(grid, hp["variance"].iloc[0], hp["lengthscale"].iloc[0], jitter)
        f = z @ factor.T
    else:
        f = np.stack(
            [
                _gp_factor(grid, v, l, jitter) @ z[i]
                for i, (v, l) in enumerate(zip(hp["variance"], hp["lengthscale"], strict=True))
            ]
        )
    latent = mean_process + f

    # Noisy observations.
    rows_id, rows_x, rows_y = [], [], []
    for i, key in enumerate(ids):
        pos = positions[i]
        noise_sd = np.sqrt(hp["noise"].iloc[i])
        rows_id.append(np.full(pos.size, key, dtype=object))
        rows_x.append(grid[pos])
        rows_y.append(latent[i, pos] + noise_sd * rng.standard_normal(pos.size))
    frame = pd.DataFrame(
        {
            "ID": pd.Series(np.concatenate(rows_id), dtype=str),
            "Input": np.concatenate(rows_x),
            "Output": np.concatenate(rows_y),
        }
    )
    is_new = frame["ID"].str.startswith("new").to_numpy()
    data = frame.loc[~is_new].reset_index(drop=True)
    new = frame.loc[is_new].reset_index(drop=True)

    return Simulation(
        data=data,
        new=new,
        grid=grid,
        mean_process=mean_process,
        prior_mean=prior_mean,
        hyperparameters={
            "prior_mean": {"slope": slope, "intercept": intercept},
            "mean_process": {"variance": v0, "lengthscale": l0},
            "individual": hp,
        },
        individual_processes={key: latent[i] for i, key in enumerate(ids)},
    )
