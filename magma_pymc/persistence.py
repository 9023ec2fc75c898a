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

from magma_pymc.data import TrainingData
from magma_pymc.em import EMState
from magma_pymc.file_checks import LOG_LIMIT, check_config, check_inducing_record, check_point, training_data_from_file
from magma_pymc.files import (
    ModelFileError,
    atomic_write,
    check_kernel_values,
    checked_array,
    encode_ids,
    kernel_values,
    parse_json,
    read_datatree,
)
from magma_pymc.fit_result import SAMPLED_METHODS, FitResult, flat_log_draws
from magma_pymc.kernels import Kernel, Matern52, SquaredExponential

__all__ = ["save_result", "read_result", "check_kernels", "SavedFit", "settings_record", "settings_from_record",
           "kernel_record", "kernel_from_record", "FORMAT_VERSION"]

#: Version of the file layout; files with another major version are refused.
FORMAT_VERSION = "1.1"  # 1.1: IDs with their types, kernel values, checked on load

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
    elif record["builtin"] is not None and kernel_record(given)["builtin"] not in (None, record["builtin"]):
        raise ValueError(
            f"{role} given to load is the built-in {kernel_record(given)['builtin']!r} kernel; the saved model used "
            f"{record['builtin']!r}"
        )
    if list(given.names) != record["names"] or given.input_dim != record["input_dim"]:
        raise ValueError(
            f"{role} given to load_model has parameters {list(given.names)} on {given.input_dim}-d inputs; "
            f"the saved model has {record['names']} on {record['input_dim']}-d inputs"
        )
    return given


def settings_record(settings: dict[str, Any], prior_mean: Any, input_names: tuple[str, ...]) -> dict:
    """JSON-serialisable record of an estimator's settings (``Magma.get_params()``).

    Kernels by :func:`kernel_record`, the prior mean by value (``None`` for a callable, which is code), the inducing
    points as a list; ``compile_mode`` is left out (it belongs to the machine, not the model).
    """
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
    """The estimator's keyword arguments from :func:`settings_record`'s record.

    Custom kernels and a callable prior mean, which a file cannot hold, must be given again.
    """
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
        mean_process_prior=record.get("mean_process_prior"),  # older files: maximum likelihood
        restarts=record.get("restarts", "on_bound"),
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
    """Write ``result`` and the JSON-serialisable ``config`` to netCDF (``h5netcdf`` engine), atomically.

    A temporary file in the same folder renamed over ``path`` (:func:`magma_pymc.files.atomic_write`).

    ``config`` gains the IDs with their types (:func:`magma_pymc.files.encode_ids`) and each kernel's
    values at the fitted HP on a few training inputs, which :func:`check_kernels` compares at load.
    """
    from magma_pymc import __version__

    for ident in result.data.ids:
        try:
            str(ident).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"individual ID {ident!r} cannot be written to a file: it is not valid Unicode "
                             "(a lone surrogate); rename it") from None
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
    grid = result.data.grid
    points = grid[np.unique(np.linspace(0, len(grid) - 1, min(len(grid), 5)).round().astype(int))]
    individual_log = np.atleast_2d(state.log_params)[0, :-1]
    config = {
        **config,
        "ids": encode_ids(result.data.ids),
        "mean_kernel_values": _fingerprint(result.problem.graphs.mean_kernel, state.mean_log_params, points),
        "kernel_values": _fingerprint(result.problem.graphs.individual_kernel, individual_log, points),
    }
    tree = result.tree.copy()
    tree["fit_state"] = xr.DataTree(fit_state)
    tree.attrs.update(magma_pymc_version=__version__, format_version=FORMAT_VERSION, config=json.dumps(config))
    atomic_write(path, lambda temporary: tree.to_netcdf(temporary, engine="h5netcdf"))


def _fingerprint(kernel: Kernel, log_params: np.ndarray, points: np.ndarray) -> dict:
    values = kernel_values(kernel, log_params, points)
    return {"log_params": np.asarray(log_params).tolist(), "points": points.tolist(), "values": values.tolist()}


def check_kernels(config: dict, mean_kernel: Kernel, kernel: Kernel, path: Any) -> None:
    """The kernels a model is loaded with compute the saved values (files before fingerprints: no check)."""
    check_kernel_values(mean_kernel, config.get("mean_kernel_values"), path, "mean_kernel")
    check_kernel_values(kernel, config.get("kernel_values"), path, "kernel")


def read_result(path: str | PathLike) -> SavedFit:
    """Read a file written by :func:`save_result`, checking every field (:mod:`magma_pymc.file_checks`).

    The file is read whole and closed. A malformed or tampered file raises
    :class:`~magma_pymc.files.ModelFileError` naming the file and the field; one written with an
    incompatible layout names the versions involved.
    """
    tree = read_datatree(path)
    field = "format_version"
    try:
        version = tree.attrs.get("format_version")
        if not isinstance(version, str):
            raise ModelFileError(path, field, f"missing or not text ({version!r}): not a file written by Magma.save")
        if version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
            raise ModelFileError(
                path, field,
                f"file layout version {version!r} "
                f"(written by magma_pymc {tree.attrs.get('magma_pymc_version', 'unknown')}) "
                f"is not compatible with this magma_pymc, which reads layout {FORMAT_VERSION}",
            )
        field = "config"
        config = parse_json(tree.attrs.get("config"), path, field)
        check_config(config, path, set(_BUILTIN))
        for group in ("observed_data", "fit_state"):
            if group not in tree.children:
                raise ModelFileError(path, group, "missing")
        field = "observed_data"
        data = training_data_from_file(tree["observed_data"].to_dataset(), config, path)
        config["inducing"] = check_inducing_record(config.get("inducing"), data, path)
        field = "fit_state"
        mean_log, log_params, jitter, weights = check_point(tree["fit_state"].to_dataset(), config, data, path)
        point = EMState(mean_log, log_params, jitter)
        del tree["fit_state"]
        field = "method"
        method = tree.attrs.get("method", "em")
        if method not in ("em", "fixed", *SAMPLED_METHODS):
            raise ModelFileError(path, field, f"unknown fit method {method!r}")
        if method in SAMPLED_METHODS:
            field = "posterior"
            mean_draws, draws = flat_log_draws(tree, int(tree.attrs.get("thin", 1)))
            checked_array(mean_draws, path, field, shape=(None, len(mean_log)), low=-LOG_LIMIT, high=LOG_LIMIT)
            checked_array(draws, path, field, shape=(None, *log_params.shape), low=-LOG_LIMIT, high=LOG_LIMIT)
        else:
            mean_draws, draws = point.mean_log_params[None], point.log_params[None]
        field = "em_trace"
        if "em_trace" in tree.children:
            trace = tree["em_trace"]
            converged, n_iter = bool(trace.attrs.get("converged", 0)), trace.sizes["em_iteration"] - 1
        else:
            converged, n_iter = tree.attrs.get("diagnostics", "ok") == "ok", 0
    except ModelFileError:
        raise
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as err:  # anything else malformed
        raise ModelFileError(path, field, f"{type(err).__name__}: {err}") from None
    return SavedFit(method, mean_draws, draws, weights, point, data, tree, config, converged, n_iter)


def restored_result(saved: SavedFit, model: Any, path: Any) -> FitResult:
    """``saved`` as the fit of ``model`` (a :class:`~magma_pymc.estimator.Magma` built from its settings).

    The kernels are checked against the saved ones, the problem is rebuilt from the saved data and
    the HP are checked within its bounds (a :class:`~magma_pymc.files.ModelFileError` otherwise).
    """
    from magma_pymc.file_checks import check_hp_in_bounds
    from magma_pymc.params import NOISE
    from magma_pymc.settings import resolve_prior_mean

    check_kernels(saved.config, model.mean_kernel, model.kernel, path)
    m0 = resolve_prior_mean(model.prior_mean, saved.data)
    problem = model._problem(saved.data, m0)
    check_hp_in_bounds(saved.point, problem, path)
    return FitResult(saved.method, saved.mean_log_draws, saved.log_param_draws, saved.cluster_weights, saved.point,
                     problem, saved.data, m0, (*model.kernel.names, NOISE), saved.tree)
