"""Results as ArviZ-compatible ``xarray.DataTree`` groups with named dims.

Layout shared by every fit method (arviz 1.x works on ``xarray.DataTree``):

- ``posterior``: hyper-parameters on the natural scale, dims ``(chain, draw)`` plus ``individual``
  in the different-HP setting. The mean-process HP are prefixed ``mu0_`` (``mu0_variance``,
  ``mu0_lengthscale``), the individual HP keep their names (``variance``, ``lengthscale``,
  ``noise``). EM stores its estimate as one chain of one draw, so ``az.summary`` and the plots work
  unchanged.
- ``em_trace`` (EM only): the same variables per ``em_iteration`` (0 = initial values) and the
  exact marginal ``log_likelihood``.
- ``hyperposterior``: mean ``mu0_mean`` and covariance ``mu0_cov`` of the mean process on the
  training grid, or on the inducing points of a projected fit (dims ``input``, ``input_bis``).
- ``observed_data``: the training data in long format (dim ``obs``: ``ID``, inputs, ``Output``).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import stats

from magma_pymc.data import TrainingData
from magma_pymc.params import NOISE
from magma_pymc.validation import check_prob

__all__ = ["MEAN_PREFIX", "hp_dataset", "hyperposterior_dataset", "observed_dataset", "training_datatree",
           "input_coords", "gaussian_dataset", "latent_bounds", "em_datatree"]

MEAN_PREFIX = "mu0_"


def input_coords(inputs: np.ndarray, names: tuple[str, ...], dim: str = "input") -> dict:
    """Coordinates for an ``(n, d)`` input array: the values themselves in 1-D, positions plus one
    non-dimension coordinate per input column otherwise."""
    if inputs.shape[1] == 1:
        return {dim: inputs[:, 0]}
    coords = {dim: np.arange(inputs.shape[0])}
    coords.update({f"{name}": (dim, inputs[:, j]) for j, name in enumerate(names)})
    return coords


def hp_dataset(
    mean_names: tuple[str, ...],
    names: tuple[str, ...],
    mean_log: np.ndarray,
    log_params: np.ndarray,
    sample_dims: tuple[str, ...],
    ids: np.ndarray | None,
) -> xr.Dataset:
    """Natural-scale HP from log arrays whose leading axes are ``sample_dims``.

    ``mean_log`` is ``(*S, P0)``; ``log_params`` is ``(*S, P + 1)`` (common HP, ``ids=None``) or
    ``(*S, M, P + 1)``.
    """
    variables = {
        MEAN_PREFIX + name: (sample_dims, np.exp(mean_log[..., k])) for k, name in enumerate(mean_names)
    }
    ind_dims = sample_dims if ids is None else (*sample_dims, "individual")
    for k, name in enumerate((*names, NOISE)):
        variables[name] = (ind_dims, np.exp(log_params[..., k]))
    coords = {} if ids is None else {"individual": np.asarray(ids, dtype=str)}
    return xr.Dataset(variables, coords=coords)


def hyperposterior_dataset(grid: np.ndarray, names: tuple[str, ...], mean: np.ndarray, cov: np.ndarray) -> xr.Dataset:
    """The ``hyperposterior`` group: ``mu0_mean`` and ``mu0_cov`` on ``grid`` (dims ``input``, ``input_bis``)."""
    coords = input_coords(grid, names)
    return xr.Dataset(
        {"mu0_mean": ("input", mean), "mu0_cov": (("input", "input_bis"), cov)},
        coords={**coords, "input_bis": coords["input"]},
    )


def observed_dataset(data: TrainingData) -> xr.Dataset:
    """The ``observed_data`` group: the training data in long format (dim ``obs``, IDs as strings)."""
    long = data.to_long()
    return xr.Dataset({c: ("obs", long[c].astype(str).to_numpy() if c == "ID" else long[c].to_numpy()) for c in long})


def training_datatree(
    data: TrainingData,
    posterior: xr.Dataset,
    mean: np.ndarray,
    cov: np.ndarray,
    attrs: dict,
    extra: dict[str, xr.Dataset] | None = None,
    grid: np.ndarray | None = None,
) -> xr.DataTree:
    """Assemble the groups listed in the module docstring; ``mean``/``cov`` are on ``grid``
    (default: the training grid; the inducing points of a projected fit)."""
    hyperposterior = hyperposterior_dataset(data.grid if grid is None else grid, data.input_names, mean, cov)
    groups = {"posterior": posterior, "hyperposterior": hyperposterior, "observed_data": observed_dataset(data),
              **(extra or {})}
    tree = xr.DataTree.from_dict({name: ds for name, ds in groups.items()})
    tree.attrs.update(attrs)
    return tree


def gaussian_dataset(
    inputs: np.ndarray, names: tuple[str, ...], mean: np.ndarray, cov: np.ndarray, prob: float, full_cov: bool
) -> xr.Dataset:
    """Mean, variance and central ``prob`` credible bounds on dim ``input`` (and ``cov`` if ``full_cov``);
    ``cov`` is the covariance ``(n, n)``, or the variances ``(n,)`` alone."""
    prob = check_prob(prob)
    variance = np.diag(cov).copy() if np.ndim(cov) == 2 else np.asarray(cov, dtype=float)
    half = stats.norm.ppf(0.5 + prob / 2) * np.sqrt(np.maximum(variance, 0.0))
    coords = input_coords(inputs, names)
    ds = xr.Dataset(
        {"mean": ("input", mean), "variance": ("input", variance), "lower": ("input", mean - half), "upper": ("input", mean + half)},
        coords=coords,
    )
    if full_cov:
        ds["cov"] = (("input", "input_bis"), cov)
        ds = ds.assign_coords(input_bis=coords["input"])
    ds.attrs["prob"] = prob
    return ds


def latent_bounds(ds: xr.Dataset, prediction, prob: float) -> xr.Dataset:
    """Add ``latent_variance``, ``latent_lower``, ``latent_upper`` (mu0 + f, without noise) to ``ds``."""
    latent_var = np.diag(prediction.latent_cov).copy()
    half = stats.norm.ppf(0.5 + prob / 2) * np.sqrt(np.maximum(latent_var, 0.0))
    return ds.assign(
        latent_variance=("input", latent_var),
        latent_lower=("input", prediction.mean - half),
        latent_upper=("input", prediction.mean + half),
    )


def em_datatree(trace, problem, data: TrainingData, prior_mean, names: tuple[tuple[str, ...], tuple[str, ...]], *,
                method: str, tol: float) -> xr.DataTree:
    """The tree of a point fit (EM, fixed HP, MAP) from its :class:`~magma_pymc.em.EMTrace`: ``posterior`` as one
    chain of one draw, ``em_trace`` per iteration, the final E-step as ``hyperposterior``, ``observed_data``."""
    # IDs as strings here: hp_dataset's np.asarray(ids, dtype=str) fails on tuple IDs
    ids = None if problem.graphs.common_hp else np.array([str(i) for i in data.ids])
    state = trace.state
    posterior = hp_dataset(*names, state.mean_log_params[None, None], state.log_params[None, None], ("chain", "draw"), ids)
    em_trace = hp_dataset(*names, trace.mean_log_params, trace.log_params, ("em_iteration",), ids)
    em_trace["log_likelihood"] = ("em_iteration", trace.log_likelihood)
    if problem.log_priors is not None:  # MAP mode
        em_trace["log_posterior"] = ("em_iteration", trace.log_posterior)
    em_trace = em_trace.assign_coords(em_iteration=np.arange(len(trace.log_likelihood)))
    em_trace.attrs.update(converged=int(trace.converged), interrupted=int(trace.interrupted), tol=tol)
    grid = problem.data_args.grid
    attrs = {
        "method": method,
        "common_hp": int(problem.graphs.common_hp),
        "jitter": state.jitter,
        "log_likelihood": trace.estep.log_likelihood,
        "n_individuals": data.n_individuals,
        "inducing_points": len(grid) if problem.graphs.projected else 0,
    }
    return training_datatree(data, posterior, prior_mean(grid) + trace.estep.mean, trace.estep.cov, attrs,
                             {"em_trace": em_trace}, grid)
