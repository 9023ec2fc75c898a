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

__all__ = ["hp_dataset", "training_datatree", "input_coords", "gaussian_dataset", "latent_bounds"]

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
    coords = input_coords(data.grid if grid is None else grid, data.input_names)
    hyperposterior = xr.Dataset(
        {
            "mu0_mean": ("input", mean),
            "mu0_cov": (("input", "input_bis"), cov),
        },
        coords={**coords, "input_bis": coords["input"]},
    )
    long = data.to_long()
    observed = xr.Dataset(
        {column: ("obs", long[column].to_numpy() if column != "ID" else long[column].astype(str).to_numpy()) for column in long.columns}
    )
    groups = {"posterior": posterior, "hyperposterior": hyperposterior, "observed_data": observed, **(extra or {})}
    tree = xr.DataTree.from_dict({name: ds for name, ds in groups.items()})
    tree.attrs.update(attrs)
    return tree


def gaussian_dataset(
    inputs: np.ndarray, names: tuple[str, ...], mean: np.ndarray, cov: np.ndarray, prob: float, full_cov: bool
) -> xr.Dataset:
    """Mean, variance and central ``prob`` credible bounds on dim ``input`` (and ``cov`` if ``full_cov``)."""
    if not 0 < prob < 1:
        raise ValueError(f"prob must be in (0, 1), got {prob}")
    variance = np.diag(cov).copy()
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
