r"""MagmaClust results as an ``xarray.DataTree``, and saving/loading through its netCDF file.

Groups (named dims ``individual``, ``cluster``, ``input``, ``vem_iteration``):

- ``posterior``: HP on the natural scale with dims ``(chain, draw)`` (one chain of one draw, as MAGMA's
  EM): mean-process HP prefixed ``mu_`` with dim ``cluster``, individual HP (dim ``individual`` with
  different HP), and the cluster ``weights``;
- ``clusters``: ``responsibilities`` (``individual, cluster``), most probable ``label`` per individual;
- ``vem_trace``: the ``elbo`` and the number of clusters per iteration (0 = initial values) and the
  individual HP;
- ``hyperposterior``: ``mu_mean`` (``cluster, input``) and ``mu_cov`` (``cluster, input, input_bis``)
  of :math:`q(\mu_k)` on the training grid, or on the inducing points (``inducing``);
- ``observed_data``: the training data in long format.

Root attributes: ``elbo``, ``vbic``, ``n_clusters``, ``n_params``, the jitter, the settings and
``inducing_points`` (their number, 0 for the exact model).
"""

from __future__ import annotations

import json
from os import PathLike
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from magma_pymc.params import NOISE
from magma_pymc.persistence import kernel_from_record, kernel_record
from magma_pymc.results import input_coords

if TYPE_CHECKING:
    from magma_pymc.cluster.estimator import MagmaClust

__all__ = ["FORMAT_VERSION", "cluster_datatree", "load_cluster_model", "save_cluster_model"]

FORMAT_VERSION = "1.0"
MEAN_PREFIX = "mu_"


def _individual_hp(names, log_params, leading_dims, ids) -> dict:
    dims = leading_dims if ids is None else (*leading_dims, "individual")
    return {name: (dims, np.exp(log_params[..., k])) for k, name in enumerate((*names, NOISE))}


def cluster_datatree(model: MagmaClust) -> xr.DataTree:
    """The groups of the module docstring for a fitted model."""
    state, current, trace, data = model._state, model._estep, model._trace, model.data_
    ids = None if model.common_hp else np.array([str(i) for i in data.ids])
    clusters = np.arange(state.tau.shape[1])
    id_coord = {"individual": np.array([str(i) for i in data.ids])}
    posterior = {
        MEAN_PREFIX + name: (("chain", "draw", "cluster"), np.exp(state.mean_log_params[None, None, :, k]))
        for k, name in enumerate(model.mean_kernel.names)
    }
    posterior.update(_individual_hp(model.kernel.names, state.log_params[None, None], ("chain", "draw"), ids))
    posterior["weights"] = (("chain", "draw", "cluster"), np.exp(state.log_weights)[None, None])
    posterior = xr.Dataset(posterior, coords={"cluster": clusters, **({} if ids is None else {"individual": ids})})
    cluster_group = xr.Dataset(
        {"responsibilities": (("individual", "cluster"), state.tau),
         "label": ("individual", np.argmax(state.tau, axis=1))},
        coords={**id_coord, "cluster": clusters},
    )
    iterations = np.arange(len(trace.elbo))
    vem_trace = xr.Dataset(
        {"elbo": ("vem_iteration", trace.elbo), "n_clusters": ("vem_iteration", trace.n_clusters),
         **_individual_hp(model.kernel.names, trace.log_params, ("vem_iteration",), ids)},
        coords={"vem_iteration": iterations, **({} if ids is None else {"individual": ids})},
        attrs={"converged": int(trace.converged), "tol": model.tol},
    )
    grid = model._problem_.grid
    coords = input_coords(grid, data.input_names)
    m0 = model._prior_mean_value(grid)
    hyperposterior = xr.Dataset(
        {"mu_mean": (("cluster", "input"), m0[None] + current.posterior.mean),
         "mu_cov": (("cluster", "input", "input_bis"), current.posterior.cov)},
        coords={**coords, "input_bis": coords["input"], "cluster": clusters},
    )
    long = data.to_long()
    observed = xr.Dataset({c: ("obs", long[c].astype(str).to_numpy() if c == "ID" else long[c].to_numpy())
                           for c in long.columns})
    tree = xr.DataTree.from_dict({"posterior": posterior, "clusters": cluster_group, "vem_trace": vem_trace,
                                  "hyperposterior": hyperposterior, "observed_data": observed})
    tree.attrs.update(method="vem", elbo=model.elbo_, vbic=model.vbic_, n_clusters=len(clusters),
                      n_params=int(model.n_params_), jitter=state.jitter, common_hp=int(model.common_hp),
                      shared_mean_hp=int(model.shared_mean_hp), n_individuals=data.n_individuals,
                      inducing_points=len(grid) if model.inducing is not None else 0)
    return tree


def save_cluster_model(model: MagmaClust, path: str | PathLike) -> None:
    """Write the model's ``idata_`` plus a ``fit_state`` group (exact log HP, responsibilities, jitter)."""
    from magma_pymc import __version__

    state = model._state
    hp_dims = ("individual", "hp") if state.log_params.ndim == 2 else ("hp",)
    fit_state = xr.Dataset({
        "mean_log_params": (("cluster", "mean_hp"), state.mean_log_params),
        "log_params": (hp_dims, state.log_params),
        "log_weights": ("cluster", state.log_weights),
        "tau": (("individual", "cluster"), state.tau),
        "jitter": ((), state.jitter),
    })
    config = {
        "n_clusters": model.n_clusters, "common_hp": model.common_hp, "shared_mean_hp": model.shared_mean_hp,
        "max_iter": model.max_iter, "tol": model.tol, "jitter": model.jitter, "mean_step": model.mean_step,
        "new_individual_hp": model.new_individual_hp, "n_init": model.n_init,
        "inducing": model.inducing.tolist() if isinstance(model.inducing, np.ndarray) else model.inducing,
        "prior_mean": getattr(model._prior_mean_value, "value", None),
        "mean_kernel": kernel_record(model.mean_kernel), "kernel": kernel_record(model.kernel),
        "input_names": list(model.data_.input_names),
    }
    tree = model.idata_.copy()
    tree["fit_state"] = xr.DataTree(fit_state)
    tree.attrs.update(magma_pymc_version=__version__, format_version=FORMAT_VERSION, model="MagmaClust",
                      config=json.dumps(config))
    tree.to_netcdf(path, engine="h5netcdf")


def load_cluster_model(path: str | PathLike, *, mean_kernel=None, kernel=None, prior_mean: Any = None) -> MagmaClust:
    """Rebuild a model saved by :func:`save_cluster_model`; it predicts exactly as the saved one."""
    from magma_pymc.cluster.estimator import MagmaClust
    from magma_pymc.cluster.vem import VEMState, VEMTrace, estep
    from magma_pymc.data import as_training_data

    tree = xr.open_datatree(path, engine="h5netcdf").load()
    version = tree.attrs.get("format_version")
    if tree.attrs.get("model") != "MagmaClust" or version is None or version.split(".")[0] != FORMAT_VERSION[0]:
        raise ValueError(f"{path}: not a MagmaClust file of layout {FORMAT_VERSION} (model "
                         f"{tree.attrs.get('model')!r}, layout {version!r})")
    config = json.loads(tree.attrs["config"])
    if config["prior_mean"] is None and prior_mean is None:
        raise ValueError("the saved model used a callable prior mean: pass it again, load(path, prior_mean=...)")
    model = MagmaClust(
        config["n_clusters"], common_hp=config["common_hp"], shared_mean_hp=config["shared_mean_hp"],
        mean_kernel=kernel_from_record(config["mean_kernel"], mean_kernel, "mean_kernel"),
        kernel=kernel_from_record(config["kernel"], kernel, "kernel"),
        prior_mean=config["prior_mean"] if prior_mean is None else prior_mean, max_iter=config["max_iter"],
        tol=config["tol"], jitter=config["jitter"], mean_step=config["mean_step"],
        new_individual_hp=config["new_individual_hp"], n_init=config["n_init"],
        inducing=config.get("inducing"),  # absent from files written before inducing points existed
    )
    frame = tree["observed_data"].to_dataset().to_dataframe().reset_index(drop=True)
    train = as_training_data(frame, input_cols=list(config["input_names"]))
    problem, _ = model._setup(train)
    saved = tree["fit_state"].to_dataset()
    state = VEMState(*(np.asarray(saved[name].values, dtype=float) for name in
                       ("mean_log_params", "log_params", "log_weights", "tau")), float(saved["jitter"].values))
    current, state = estep(state, problem)
    trace_group = tree["vem_trace"].to_dataset()
    trace = VEMTrace(state, current, trace_group["elbo"].values, trace_group["n_clusters"].values,
                     np.zeros((len(trace_group["elbo"]), 0)), bool(tree["vem_trace"].attrs.get("converged", 0)))
    model._finish_loaded(train, problem, state, current, trace)
    del tree["fit_state"]
    model.idata_ = tree
    if "posterior_responsibilities" in tree["clusters"]:  # a NUTS fit (magma_pymc.cluster.sampling)
        model.posterior_responsibilities_ = pd.DataFrame(tree["clusters"]["posterior_responsibilities"].values,
                                                         index=model.responsibilities_.index,
                                                         columns=model.responsibilities_.columns)
    return model
