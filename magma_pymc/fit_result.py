r"""``FitResult``: the one immutable record every inference method produces.

A fit is a set of mixture components :math:`(s, k)`: HP draws :math:`s = 1..S` (EM, fixed HP and
MAP: :math:`S = 1`, the optimum; NUTS: the thinned posterior draws, weight :math:`1/S` each) times
clusters :math:`k = 1..K` with weights :math:`\pi_k` (:math:`K = 1` today). Component
:math:`(s, k)` has weight :math:`\pi_k / S` and its own HP; predictions and the hyper-posterior of
:math:`\mu_0` are the Gaussian mixture over components (:mod:`magma_pymc.predictive`).

Extension points, by design:

- clustering: ``cluster_weights`` of length K, and draws with a cluster axis (a per-cluster
  ``problem`` when the clusters' mean processes differ);
- integrating the new individual's HP: inner draws of :math:`\theta_*` within each component, added
  by :mod:`magma_pymc.predictive` as further mixture components of weight :math:`w_{s,k}/R`;
- a distributed EM returns the same record (S = 1) built by :func:`FitResult.from_point`.

Persistence (:mod:`magma_pymc.persistence`) saves and loads this record, not the estimator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import xarray as xr

from magma_pymc.data import TrainingData
from magma_pymc.em import EMState, Problem
from magma_pymc.model import LOG_HP, MEAN_LOG_HP

__all__ = ["FitResult", "SAMPLED_METHODS", "log_draws", "flat_log_draws"]

#: Methods whose result is a set of posterior draws (the others: one point, S = 1).
SAMPLED_METHODS = ("nuts", "laplace", "advi", "fullrank_advi")


def log_draws(tree: xr.DataTree, thin: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Thinned log-HP draws ``(C, D, P0)`` and ``(C, D, [M,] P + 1)`` of a sampled fit.

    Variables ``log_mu0_hp``, ``log_hp`` (:mod:`magma_pymc.model`), in the ``unconstrained_posterior`` group, or in
    ``posterior`` for trees saved before that group existed.
    """
    group = "unconstrained_posterior" if "unconstrained_posterior" in tree.children else "posterior"
    post = tree[group]
    mean_log = post[MEAN_LOG_HP].transpose("chain", "draw", "mean_hp").values[:, ::thin]
    dims = ("chain", "draw", *[d for d in post[LOG_HP].dims if d not in ("chain", "draw")])
    return mean_log, post[LOG_HP].transpose(*dims).values[:, ::thin]


def flat_log_draws(tree: xr.DataTree, thin: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """:func:`log_draws` with chains and draws flattened to one axis of S draws."""
    mean_log, log_params = log_draws(tree, thin)
    n = mean_log.shape[0] * mean_log.shape[1]
    return mean_log.reshape(n, -1), log_params.reshape(n, *log_params.shape[2:])


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.array(array, dtype=float)
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class FitResult:
    """What ``fit`` produces, whatever the method (module docstring).

    Attributes
    ----------
    method
        ``"em"``, ``"fixed"``, or one of :data:`SAMPLED_METHODS` (EM with priors, the MAP, is ``"em"``).
    mean_log_draws, log_param_draws
        ``(S, P0)`` and ``(S, P + 1)`` (common HP) or ``(S, M, P + 1)``: the HP of the components,
        log scale (read-only arrays).
    cluster_weights
        ``(K,)`` mixture weights of the clusters, summing to 1 (``[1.0]`` without clustering).
    point
        The point estimate (EM's optimum; NUTS's posterior median) and the jitter every component uses.
    problem
        Compiled graphs, training arrays and optimiser bounds, shared by the components.
    data
        The validated training data.
    prior_mean
        :math:`m_0` as a function of an ``(n, d)`` input array.
    hp_names
        Names of the individual HP (the individual kernel's parameters, then ``noise``).
    tree
        The results ``xarray.DataTree`` (layout in :mod:`magma_pymc.results`).
    """

    method: str
    mean_log_draws: np.ndarray
    log_param_draws: np.ndarray
    cluster_weights: np.ndarray
    point: EMState
    problem: Problem
    data: TrainingData
    prior_mean: Callable[[np.ndarray], np.ndarray]
    hp_names: tuple[str, ...]
    tree: xr.DataTree

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean_log_draws", _frozen(self.mean_log_draws))
        object.__setattr__(self, "log_param_draws", _frozen(self.log_param_draws))
        object.__setattr__(self, "cluster_weights", _frozen(self.cluster_weights))
        if len(self.mean_log_draws) != len(self.log_param_draws) or len(self.mean_log_draws) == 0:
            raise ValueError(
                f"FitResult needs as many mean-process as individual HP draws (at least one), got "
                f"{len(self.mean_log_draws)} and {len(self.log_param_draws)}"
            )
        if not np.isclose(self.cluster_weights.sum(), 1.0):
            raise ValueError(f"cluster weights must sum to 1, got {self.cluster_weights.tolist()}")

    @classmethod
    def from_point(cls, method: str, state: EMState, **fields) -> FitResult:
        """The one-draw, one-cluster record of a point estimate (EM, fixed HP, MAP)."""
        return cls(method, state.mean_log_params[None], state.log_params[None], np.ones(1), state, **fields)

    @property
    def n_draws(self) -> int:
        """S, the number of HP draws."""
        return len(self.mean_log_draws)

    @property
    def jitter(self) -> float:
        """The jitter of the point estimate."""
        return self.point.jitter

    def components(self) -> Iterator[tuple[float, EMState]]:
        """``(weight, state)`` of every mixture component, draws x clusters; weights sum to 1."""
        for mean_log, log_params in zip(self.mean_log_draws, self.log_param_draws, strict=True):
            for weight in self.cluster_weights:
                yield float(weight) / self.n_draws, EMState(mean_log, log_params, self.point.jitter)
