r"""Saving and loading a distributed fit: everything an in-process file holds but the training data.

The training data stay on the workers, and prediction needs of them only the fitted hyper-posterior
of :math:`\mu_0` on the grid (:mod:`magma_pymc.distributed.summary`). The file is the fit's
``idata_`` tree (posterior point, hyper-posterior, EM trace) plus

- ``fit_state``: the exact log-scale HP and the jitter, as :func:`magma_pymc.persistence.save_result` writes them;
- ``summary``: the grid (union grid or inducing points), :math:`\alpha` and :math:`L_B`
  (:class:`~magma_pymc.distributed.summary.SummaryArrays`), the training IDs, input names, input range
  and output variance (:class:`~magma_pymc.distributed.summary.PartitionedData`);

and root attributes with the configuration (:func:`magma_pymc.persistence.settings_record`, with the
kernels' values on a few grid points, compared at load), the library version and the layout version.
A loaded model predicts exactly as the saved one.
"""

from __future__ import annotations

import json
from os import PathLike
from typing import Any

import numpy as np
import xarray as xr

from magma_pymc.distributed.graphs import Structure, structure_token
from magma_pymc.distributed.predictor import Predictor
from magma_pymc.distributed.summary import PartitionedData, SummaryArrays
from magma_pymc.em import EMState
from magma_pymc.files import (
    ModelFileError,
    atomic_write,
    check_kernel_values,
    checked_array,
    decode_ids,
    encode_ids,
    kernel_values,
    parse_json,
    read_datatree,
)
from magma_pymc.persistence import FORMAT_VERSION, settings_record
from magma_pymc.settings import Constant, resolve_prior_mean

__all__ = ["save_distributed", "read_file", "read_distributed"]

#: Root attribute marking a distributed fit's file (``Magma.load`` needs the training data, which it lacks).
KIND = "distributed"


def save_distributed(path: str | PathLike, predictor: Predictor, tree: xr.DataTree, settings: dict) -> None:
    """Write a distributed fit (module docstring), atomically (:func:`magma_pymc.files.atomic_write`)."""
    from magma_pymc import __version__

    state, arrays, data = predictor.state, predictor.arrays, predictor.data
    hp_dim = ("individual", "hp") if np.ndim(state.log_params) == 2 else ("hp",)
    fit_state = xr.Dataset({
        "mean_log_params": ("mean_hp", state.mean_log_params), "log_params": (hp_dim, state.log_params),
        "jitter": ((), state.jitter),
    })
    if predictor.population is not None:  # the population distribution estimated at the end of the fit
        fit_state["population_mean"] = ("hp", predictor.population[0])
        fit_state["population_cov"] = (("hp", "hp_bis"), predictor.population[1])
    summary = xr.Dataset(
        {
            "grid": (("input", "dim"), arrays.grid), "alpha": ("input", arrays.alpha),
            "chol_b": (("input", "input_bis"), arrays.chol_b),
            "ids": ("individual", np.array([str(i) for i in data.ids], dtype=object)),
        },
        attrs={"input_range": data.input_range, "output_variance": data.output_variance},
    )
    grid = arrays.grid
    points = grid[np.unique(np.linspace(0, len(grid) - 1, min(len(grid), 5)).round().astype(int))]
    structure = predictor.structure
    config = {
        **settings_record(settings, predictor.prior_mean, data.input_names),
        "ids": encode_ids(data.ids),
        "mean_kernel_values": _fingerprint(structure.mean_kernel, state.mean_log_params, points),
        "kernel_values": _fingerprint(structure.kernel, np.atleast_2d(state.log_params)[0, :-1], points),
    }
    out = tree.copy()
    out["fit_state"], out["summary"] = xr.DataTree(fit_state), xr.DataTree(summary)
    out.attrs.update(magma_pymc_version=__version__, format_version=FORMAT_VERSION, config=json.dumps(config),
                     fit_kind=KIND, method=predictor.method)
    atomic_write(path, lambda temporary: out.to_netcdf(temporary, engine="h5netcdf"))


def _fingerprint(kernel, log_params: np.ndarray, points: np.ndarray) -> dict:
    values = kernel_values(kernel, log_params, points)
    return {"log_params": np.asarray(log_params).tolist(), "points": points.tolist(), "values": values.tolist()}


def read_distributed(path: Any, tree: xr.DataTree, config: dict, model: Any) -> tuple[Predictor, xr.DataTree]:
    """The prediction state and the ``idata_`` tree of a file of :func:`save_distributed`.

    ``tree`` and ``config`` as :func:`read_file` returns them; ``model``: a ``DistributedMagma`` built from the file's
    settings. A malformed file raises :class:`~magma_pymc.files.ModelFileError` naming the field.
    """
    field = "summary"
    try:
        for group in ("fit_state", "summary"):
            if group not in tree.children:
                raise ModelFileError(path, group, "missing")
        summary = tree["summary"].to_dataset()
        dim = model.mean_kernel.input_dim
        grid = checked_array(summary["grid"].values, path, "summary.grid", shape=(None, dim))
        n_grid = len(grid)
        arrays = SummaryArrays(
            grid, checked_array(summary["alpha"].values, path, "summary.alpha", shape=(n_grid,)),
            checked_array(summary["chol_b"].values, path, "summary.chol_b", shape=(n_grid, n_grid)),
        )
        stored = [str(i) for i in summary["ids"].values]
        ids = np.empty(len(stored), dtype=object)
        ids[:] = decode_ids(config.get("ids"), stored, path)
        span, variance = (float(summary.attrs[k]) for k in ("input_range", "output_variance"))
        if not (np.isfinite(span) and span > 0 and np.isfinite(variance) and variance > 0):
            raise ModelFileError(path, "summary", f"input range {span} and output variance {variance} must be > 0")
        field = "fit_state"
        fit_state = tree["fit_state"].to_dataset()
        rows = () if model.common_hp else (len(ids),)
        state = EMState(
            checked_array(fit_state["mean_log_params"].values, path, "fit_state.mean_log_params",
                          shape=(model.mean_kernel.n_params,)),
            checked_array(fit_state["log_params"].values, path, "fit_state.log_params",
                          shape=(*rows, model.kernel.n_params + 1)),
            float(checked_array(fit_state["jitter"].values, path, "fit_state.jitter", shape=())),
        )
        population = None
        if "population_mean" in fit_state:
            p = model.kernel.n_params + 1
            population = (
                checked_array(fit_state["population_mean"].values, path, "fit_state.population_mean", shape=(p,)),
                checked_array(fit_state["population_cov"].values, path, "fit_state.population_cov", shape=(p, p)),
            )
            if not np.all(np.linalg.eigvalsh(population[1]) > 0):
                raise ModelFileError(path, "fit_state.population_cov", "not positive definite")
    except ModelFileError:
        raise
    except (KeyError, ValueError, TypeError) as err:
        raise ModelFileError(path, field, f"{type(err).__name__}: {err}") from None
    check_kernel_values(model.mean_kernel, config.get("mean_kernel_values"), path, "mean_kernel")
    check_kernel_values(model.kernel, config.get("kernel_values"), path, "kernel")
    names = tuple(config["input_names"])
    prior_mean = Constant(config["prior_mean"]) if config["prior_mean"] is not None else resolve_prior_mean(
        model.prior_mean, None)
    settings = (model.mean_kernel, model.kernel, model.common_hp, model.inducing is not None, model.compile_mode)
    row_bounds = [*model.kernel.log_bounds(span, variance), (np.log(1e-8 * variance), np.log(1e4 * variance))]
    predictor = Predictor(
        Structure(*settings, token=structure_token(*settings)), str(tree.attrs.get("method", "em")), state, arrays,
        (model.mean_kernel.log_bounds(span, variance), row_bounds), PartitionedData(ids, names, span, variance),
        prior_mean, model.new_individual_hp, population,
    )
    out = tree.copy()
    del out["fit_state"], out["summary"]
    return predictor, out


def read_file(path: str | PathLike) -> tuple[xr.DataTree, dict]:
    """A distributed fit's file and its configuration, after checking its kind and layout version."""
    tree = read_datatree(path)
    version = tree.attrs.get("format_version")
    if not isinstance(version, str) or version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise ModelFileError(path, "format_version", f"layout {version!r} is not {FORMAT_VERSION}")
    if tree.attrs.get("fit_kind") != KIND:
        raise ModelFileError(path, "fit_kind", "not a distributed fit's file: load it with Magma.load")
    return tree, parse_json(tree.attrs.get("config"), path, "config")
