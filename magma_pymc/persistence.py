"""Saving and loading fitted models through the netCDF file of their ``idata_``.

The file is the model's ``xarray.DataTree`` plus a ``fit_state`` group holding the exact
log-scale hyper-parameters and jitter, and root attributes recording the library version and
the configuration. Kernels are code: the built-in ones are recorded by name and rebuilt; a
custom kernel must be passed again to :func:`load_model` and is checked against the recorded
parameter names. A callable prior mean likewise; constants are stored.
"""

from __future__ import annotations

import json
from os import PathLike
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from magma_pymc.kernels import Kernel, Matern52, SquaredExponential

if TYPE_CHECKING:
    from magma_pymc.estimator import Magma

__all__ = ["save_model", "load_model", "FORMAT_VERSION"]

#: Version of the file layout; files with another major version are refused.
FORMAT_VERSION = "1.0"

_BUILTIN = {"squared_exponential": SquaredExponential, "matern52": Matern52}


def _kernel_record(kernel: Kernel) -> dict:
    name = kernel.factory.__name__.rsplit("_", 1)[0]
    builtin = name if name in _BUILTIN and kernel.factory is _BUILTIN[name](kernel.input_dim).factory else None
    return {"builtin": builtin, "names": list(kernel.names), "input_dim": kernel.input_dim}


def _kernel_from_record(record: dict, given: Kernel | None, role: str) -> Kernel:
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


def save_model(model: Magma, path: str | PathLike) -> None:
    """Write a fitted model to netCDF (``h5netcdf`` engine)."""
    from magma_pymc import __version__

    model._check_fitted()
    state = model._state
    hp_dim = ("individual", "hp") if state.log_params.ndim == 2 else ("hp",)
    fit_state = xr.Dataset(
        {
            "mean_log_params": ("mean_hp", state.mean_log_params),
            "log_params": (hp_dim, state.log_params),
            "jitter": ((), state.jitter),
        }
    )
    prior_mean = getattr(model._prior_mean_value, "value", None)
    config = {
        "common_hp": model.common_hp,
        "max_iter": model.max_iter,
        "tol": model.tol,
        "jitter": model.jitter,
        "mean_step": model.mean_step,
        "new_individual_hp": model.new_individual_hp,
        "inducing": model.inducing.tolist() if isinstance(model.inducing, np.ndarray) else model.inducing,
        "prior_mean": prior_mean,
        "mean_kernel": _kernel_record(model.mean_kernel),
        "kernel": _kernel_record(model.kernel),
        "input_names": list(model.data_.input_names),
    }
    tree = model.idata_.copy()
    tree["fit_state"] = xr.DataTree(fit_state)
    tree.attrs.update(magma_pymc_version=__version__, format_version=FORMAT_VERSION, config=json.dumps(config))
    tree.to_netcdf(path, engine="h5netcdf")


def load_model(
    path: str | PathLike,
    *,
    mean_kernel: Kernel | None = None,
    kernel: Kernel | None = None,
    prior_mean: Any = None,
) -> Magma:
    """Rebuild a model saved by :func:`save_model`; it predicts exactly as the saved one.

    Raises ``ValueError`` with the versions involved when the file was written with an
    incompatible layout, and when a custom kernel or a callable prior mean must be passed again.
    """
    from magma_pymc.em import EMState
    from magma_pymc.estimator import Magma
    from magma_pymc.params import HyperParameters

    tree = xr.open_datatree(path, engine="h5netcdf").load()
    version = tree.attrs.get("format_version")
    if version is None or version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise ValueError(
            f"{path}: file layout version {version!r} (written by magma_pymc "
            f"{tree.attrs.get('magma_pymc_version', 'unknown')}) is not compatible with this magma_pymc, "
            f"which reads layout {FORMAT_VERSION}"
        )
    config = json.loads(tree.attrs["config"])
    if config["prior_mean"] is None and prior_mean is None:
        raise ValueError("the saved model used a callable prior mean: pass it again, load_model(path, prior_mean=...)")
    model = Magma(
        common_hp=config["common_hp"],
        mean_kernel=_kernel_from_record(config["mean_kernel"], mean_kernel, "mean_kernel"),
        kernel=_kernel_from_record(config["kernel"], kernel, "kernel"),
        prior_mean=config["prior_mean"] if prior_mean is None else prior_mean,
        max_iter=config["max_iter"],
        tol=config["tol"],
        jitter=config["jitter"],
        mean_step=config["mean_step"],
        inducing=config.get("inducing"),  # absent from files written before inducing points existed
        new_individual_hp=config.get("new_individual_hp", "ml"),  # older files: the likelihood alone
    )
    observed = tree["observed_data"].to_dataset()
    frame = observed.to_dataframe().reset_index(drop=True)
    model.data_ = _training_data(frame, config["input_names"])
    model._prior_mean_value = model._resolve_prior_mean(model.data_)
    model._problem_ = model._problem(model.data_)
    fit_state = tree["fit_state"].to_dataset()
    model._state = EMState(
        np.asarray(fit_state["mean_log_params"].values, dtype=float),
        np.asarray(fit_state["log_params"].values, dtype=float),
        float(fit_state["jitter"].values),
    )
    ids = None if model.common_hp else model.data_.ids
    model.hyperparameters_ = HyperParameters.from_log(
        model.mean_kernel, model.kernel, model._state.mean_log_params, model._state.log_params, ids
    )
    model.log_likelihood_ = float(tree.attrs.get("log_likelihood", np.nan))
    if "em_trace" in tree.children:
        trace = tree["em_trace"]
        model.converged_ = bool(trace.attrs.get("converged", 0))
        model.n_iter_ = trace.sizes["em_iteration"] - 1
    del tree["fit_state"]
    model.idata_ = tree
    return model


def _training_data(frame, input_names):
    from magma_pymc.data import as_training_data

    return as_training_data(frame, input_cols=list(input_names))
