"""Saving and loading a :class:`~magma_pymc.fit_result.FitResult` through the netCDF file of its tree.

The file is the result's ``xarray.DataTree`` plus a ``fit_state`` group holding the exact
log-scale point estimate and jitter, and root attributes recording the library version and
the estimator's configuration (a JSON dict the estimator writes and reads back:
``Magma.save``/``Magma.load``). HP draws of a sampled fit are read back from its ``posterior``
group. Kernels are code: the built-in ones are recorded by name and rebuilt; a
custom kernel must be passed again to :func:`load_model` and is checked against the recorded
parameter names. A callable prior mean likewise; constants are stored.
"""

from __future__ import annotations

import json
from os import PathLike
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

from magma_pymc.data import TrainingData, as_training_data
from magma_pymc.em import EMState
from magma_pymc.fit_result import FitResult, flat_log_draws
from magma_pymc.kernels import Kernel, Matern52, SquaredExponential

__all__ = ["save_result", "read_result", "SavedFit", "settings_record", "settings_from_record", "kernel_record",
           "kernel_from_record", "FORMAT_VERSION"]

#: Version of the file layout; files with another major version are refused.
FORMAT_VERSION = "1.0"

_BUILTIN = {"squared_exponential": SquaredExponential, "matern52": Matern52}


def kernel_record(kernel: Kernel) -> dict:
    """JSON record of a kernel: the built-in factory's name (``None`` for custom), parameter names, input dim."""
    name = kernel.factory.__name__.rsplit("_", 1)[0]
    builtin = name if name in _BUILTIN and kernel.factory is _BUILTIN[name](kernel.input_dim).factory else None
    return {"builtin": builtin, "names": list(kernel.names), "input_dim": kernel.input_dim}


def kernel_from_record(record: dict, given: Kernel | None, role: str) -> Kernel:
    """The kernel of ``record``: rebuilt if built in, else ``given`` (checked against the record)."""
    if given is None:
        if record["builtin"] is None:
            raise ValueError(
                f"the saved model uses a custom {role} with parameters {record['names']}: pass it again, "
                f"load_model(path, {role}=...)"
            )
        given = _BUILTIN[record["builtin"]](record["input_dim"])
    if list(given.names) != record["names"] or given.input_dim != record["input_dim"]:
        raise ValueError(
            f"{role} given to load_model has parameters {list(given.names)} on {given.input_dim}-d inputs; "
            f"the saved model has {record['names']} on {record['input_dim']}-d inputs"
        )
    return given


def settings_record(settings: dict[str, Any], prior_mean: Any, input_names: tuple[str, ...]) -> dict:
    """JSON-serialisable record of an estimator's settings (``Magma.get_params()``): kernels by
    :func:`kernel_record`, the prior mean by value (``None`` for a callable, which is code), the
    inducing points as a list; ``compile_mode`` is left out (it belongs to the machine, not the model)."""
    inducing = settings["inducing"]
    record = {k: v for k, v in settings.items() if k not in ("mean_kernel", "kernel", "prior_mean", "compile_mode")}
    record.update(
        inducing=inducing.tolist() if isinstance(inducing, np.ndarray) else inducing,
        prior_mean=getattr(prior_mean, "value", None),
        mean_kernel=kernel_record(settings["mean_kernel"]),
        kernel=kernel_record(settings["kernel"]),
        input_names=list(input_names),
    )
    return record


def settings_from_record(record: dict, *, mean_kernel: Kernel | None = None, kernel: Kernel | None = None,
                         prior_mean: Any = None) -> dict[str, Any]:
    """The estimator's keyword arguments from :func:`settings_record`'s record; custom kernels and a
    callable prior mean, which a file cannot hold, must be given again."""
    if record["prior_mean"] is None and prior_mean is None:
        raise ValueError("the saved model used a callable prior mean: pass it again, Magma.load(path, prior_mean=...)")
    return dict(
        common_hp=record["common_hp"],
        mean_kernel=kernel_from_record(record["mean_kernel"], mean_kernel, "mean_kernel"),
        kernel=kernel_from_record(record["kernel"], kernel, "kernel"),
        prior_mean=record["prior_mean"] if prior_mean is None else prior_mean,
        max_iter=record["max_iter"],
        tol=record["tol"],
        jitter=record["jitter"],
        mean_step=record["mean_step"],
        inducing=record.get("inducing"),  # absent from files written before inducing points existed
        new_individual_hp=record.get("new_individual_hp", "ml"),  # older files: the likelihood alone
    )


class SavedFit(NamedTuple):
    """What a file holds: the :class:`FitResult` fields that are data, and the estimator's configuration."""

    method: str
    mean_log_draws: np.ndarray
    log_param_draws: np.ndarray
    cluster_weights: np.ndarray
    point: EMState
    data: TrainingData
    tree: xr.DataTree
    config: dict
    converged: bool  # EM: converged; NUTS: no diagnostic problem
    n_iter: int      # EM iterations (0 for NUTS)


def save_result(result: FitResult, path: str | PathLike, config: dict) -> None:
    """Write ``result`` and the JSON-serialisable ``config`` to netCDF (``h5netcdf`` engine)."""
    from magma_pymc import __version__

    state = result.point
    hp_dim = ("individual", "hp") if state.log_params.ndim == 2 else ("hp",)
    fit_state = xr.Dataset(
        {
            "mean_log_params": ("mean_hp", state.mean_log_params),
            "log_params": (hp_dim, state.log_params),
            "jitter": ((), state.jitter),
            "cluster_weights": ("cluster", result.cluster_weights),
        }
    )
    tree = result.tree.copy()
    tree["fit_state"] = xr.DataTree(fit_state)
    tree.attrs.update(magma_pymc_version=__version__, format_version=FORMAT_VERSION, config=json.dumps(config))
    tree.to_netcdf(path, engine="h5netcdf")


def read_result(path: str | PathLike) -> SavedFit:
    """Read a file written by :func:`save_result`.

    Raises ``ValueError`` with the versions involved when the file was written with an
    incompatible layout.
    """
    tree = xr.open_datatree(path, engine="h5netcdf").load()
    version = tree.attrs.get("format_version")
    if version is None or version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise ValueError(
            f"{path}: file layout version {version!r} (written by magma_pymc "
            f"{tree.attrs.get('magma_pymc_version', 'unknown')}) is not compatible with this magma_pymc, "
            f"which reads layout {FORMAT_VERSION}"
        )
    config = json.loads(tree.attrs["config"])
    frame = tree["observed_data"].to_dataset().to_dataframe().reset_index(drop=True)
    data = as_training_data(frame, input_cols=list(config["input_names"]))
    fit_state = tree["fit_state"].to_dataset()
    point = EMState(
        np.asarray(fit_state["mean_log_params"].values, dtype=float),
        np.asarray(fit_state["log_params"].values, dtype=float),
        float(fit_state["jitter"].values),
    )
    # files written before cluster weights were recorded: one cluster
    weights = fit_state["cluster_weights"].values if "cluster_weights" in fit_state else np.ones(1)
    del tree["fit_state"]
    method = tree.attrs.get("method", "em")
    if method == "nuts":
        mean_draws, draws = flat_log_draws(tree, int(tree.attrs.get("thin", 1)))
    else:
        mean_draws, draws = point.mean_log_params[None], point.log_params[None]
    if "em_trace" in tree.children:
        trace = tree["em_trace"]
        converged, n_iter = bool(trace.attrs.get("converged", 0)), trace.sizes["em_iteration"] - 1
    else:
        converged, n_iter = tree.attrs.get("diagnostics", "ok") == "ok", 0
    return SavedFit(method, mean_draws, draws, weights, point, data, tree, config, converged, n_iter)
