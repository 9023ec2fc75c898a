"""Checks of every field a model file holds, before any of it is used (:mod:`magma_pymc.persistence`).

Each check raises :class:`~magma_pymc.files.ModelFileError` naming the file and the field: settings
of the right type and range, kernel records, training data that pass the same validation as at fit
time, inducing points no more numerous than the data's distinct inputs (a tampered size would make
``load`` allocate them), HP of the right shapes, finite and of sane magnitude, a jitter within the
output variance, cluster weights that sum to 1.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from magma_pymc.data import MagmaInputError, TrainingData, as_training_data
from magma_pymc.files import ModelFileError, checked_array, config_value, decode_ids
from magma_pymc.settings import NEW_INDIVIDUAL_HP

__all__ = ["check_config", "training_data_from_file", "check_inducing_record", "check_point", "check_hp_in_bounds",
           "LOG_LIMIT", "BOUND_MARGIN"]

#: Log HP beyond this magnitude overflow (exp(710) is inf): no saved fit holds them.
LOG_LIMIT = 700.0

_NUMBER = (int, float)


def _kernel_record(config: dict, role: str, path: Any, builtin: set[str]) -> dict:
    record = config_value(config, role, (dict,), path)
    names = record.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ModelFileError(path, f"config.{role}.names", f"expected a list of parameter names, got {names!r}")
    dim = record.get("input_dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ModelFileError(path, f"config.{role}.input_dim", f"expected an integer >= 1, got {dim!r}")
    if record.get("builtin") is not None and record.get("builtin") not in builtin:
        raise ModelFileError(path, f"config.{role}.builtin", f"unknown kernel {record.get('builtin')!r}")
    return record


def check_config(config: dict, path: Any, builtin: set[str]) -> None:
    """The estimator's settings as :func:`magma_pymc.persistence.settings_record` writes them."""

    def finite_non_negative(v):
        return np.isfinite(v) and v >= 0

    config_value(config, "common_hp", (bool,), path)
    config_value(config, "max_iter", (int,), path, check=lambda v: v >= 0, expected="an integer >= 0")
    config_value(config, "tol", _NUMBER, path, check=finite_non_negative, expected="a finite number >= 0")
    config_value(config, "jitter", _NUMBER, path, check=finite_non_negative, expected="a finite number >= 0")
    config_value(config, "mean_step", (str,), path, check=lambda v: v in ("marginal", "expected"),
                 expected="'marginal' or 'expected'")
    config_value(config, "new_individual_hp", (str,), path, check=lambda v: v in NEW_INDIVIDUAL_HP,
                 expected="'integrated', 'calibrated', 'map' or 'ml'", default="ml")
    config_value(config, "mean_process_prior", (str, type(None)), path, check=lambda v: v in (None, "weak"),
                 expected="'weak' or null", default=None)
    config_value(config, "prior_mean", (*_NUMBER, type(None)), path, check=lambda v: v is None or np.isfinite(v),
                 expected="a finite number or null")
    config_value(config, "inducing", (int, list, type(None)), path, default=None)
    names = config_value(config, "input_names", (list,), path)
    if not names or not all(isinstance(n, str) for n in names):
        raise ModelFileError(path, "config.input_names", f"expected a list of column names, got {names!r}")
    for role in ("mean_kernel", "kernel"):
        if _kernel_record(config, role, path, builtin)["input_dim"] != len(names):
            raise ModelFileError(path, f"config.{role}.input_dim", f"does not match the {len(names)} input column(s)")


def training_data_from_file(observed: xr.Dataset, config: dict, path: Any) -> TrainingData:
    """The training data of ``observed_data``, validated as at fit time, IDs of their saved types."""
    names = config["input_names"]
    missing = [c for c in ("ID", *names, "Output") if c not in observed.variables]
    if missing:
        raise ModelFileError(path, "observed_data", f"missing variable(s) {missing}")
    try:
        frame = pd.DataFrame({c: np.asarray(observed[c].values).ravel() for c in ("ID", *names, "Output")})
    except ValueError as err:  # columns of different lengths
        raise ModelFileError(path, "observed_data", str(err)) from None
    frame["ID"] = frame["ID"].astype(str)
    try:
        data = as_training_data(frame, input_cols=list(names))
    except MagmaInputError as err:
        raise ModelFileError(path, "observed_data", str(err)) from None
    if "ids" in config:
        typed = decode_ids(config["ids"], [str(i) for i in data.ids], path)
        mapping = dict(zip([str(i) for i in data.ids], typed, strict=True))
        frame["ID"] = np.fromiter((mapping[i] for i in frame["ID"]), dtype=object, count=len(frame))
        data = as_training_data(frame, input_cols=list(names))
    return data


def check_inducing_record(inducing: Any, data: TrainingData, path: Any) -> Any:
    """``None``, an int in ``[2, N]`` or ``(G, d)`` finite points with ``G <= N`` (N distinct inputs)."""
    if inducing is None:
        return None
    n_inputs = data.n_inputs
    if isinstance(inducing, numbers.Integral) and not isinstance(inducing, bool):
        if not 2 <= inducing <= n_inputs:
            raise ModelFileError(path, "config.inducing", f"{inducing} inducing points but the data have only "
                                 f"{n_inputs} distinct input(s)")
        return int(inducing)
    if len(inducing) > n_inputs:
        raise ModelFileError(path, "config.inducing", f"{len(inducing)} inducing points but the data have only "
                             f"{n_inputs} distinct input(s)")
    return checked_array(inducing, path, "config.inducing", shape=(None, data.input_dim))


def check_point(fit_state: xr.Dataset, config: dict, data: TrainingData, path: Any) -> tuple:
    """``(mean_log_params, log_params, jitter, cluster_weights)`` of the ``fit_state`` group, checked."""
    for name in ("mean_log_params", "log_params", "jitter"):
        if name not in fit_state.variables:
            raise ModelFileError(path, f"fit_state.{name}", "missing")
    n_mean = len(config["mean_kernel"]["names"])
    n_ind = len(config["kernel"]["names"]) + 1
    shape = (n_ind,) if config["common_hp"] else (data.n_individuals, n_ind)
    mean_log = checked_array(fit_state["mean_log_params"].values, path, "fit_state.mean_log_params", shape=(n_mean,),
                             low=-LOG_LIMIT, high=LOG_LIMIT)
    log_params = checked_array(fit_state["log_params"].values, path, "fit_state.log_params", shape=shape,
                               low=-LOG_LIMIT, high=LOG_LIMIT)
    outputs = np.concatenate([ind.outputs for ind in data.individuals])
    scale = float(np.var(outputs)) if outputs.size > 1 and np.var(outputs) > 0 else 1.0
    jitter = float(checked_array(fit_state["jitter"].values, path, "fit_state.jitter", shape=(), low=0.0, high=scale))
    weights = np.ones(1)
    if "cluster_weights" in fit_state.variables:
        weights = checked_array(fit_state["cluster_weights"].values, path, "fit_state.cluster_weights", shape=(None,),
                                low=0.0, high=1.0)
        if weights.size == 0 or not np.isclose(weights.sum(), 1.0):
            raise ModelFileError(path, "fit_state.cluster_weights", f"must sum to 1, got {weights.tolist()}")
    return mean_log, log_params, jitter, weights


#: How far (log scale) beyond the optimiser's box constraints saved HP may lie (a NUTS median can
#: leave the box EM keeps to; e^14 is a factor of a million).
BOUND_MARGIN = 14.0


def check_hp_in_bounds(point: Any, problem: Any, path: Any) -> None:
    """Saved HP within the data's box constraints (``problem.mean_bounds``, ``problem.bounds``).

    The bounds are widened by :data:`BOUND_MARGIN`: values no fit of these data produces are refused.
    """
    for field, values, bounds in (("fit_state.mean_log_params", point.mean_log_params, problem.mean_bounds),
                                  ("fit_state.log_params", np.ravel(point.log_params), problem.bounds)):
        low, high = np.array(bounds, dtype=float).T
        bad = (values < low - BOUND_MARGIN) | (values > high + BOUND_MARGIN)
        if bad.any():
            raise ModelFileError(path, field, f"values {np.exp(values[bad]).tolist()} (natural scale) are far outside "
                                 "what a fit of the saved data can produce")
