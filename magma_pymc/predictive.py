r"""Hyper-posterior of :math:`\mu_0` and new-individual predictions from a :class:`~magma_pymc.fit_result.FitResult`.

One path for every fit method: for each mixture component :math:`j = (s, k)` of the fit (weight
:math:`w_j`),

1. :math:`\mu_0` at the requested inputs, :math:`\mathcal N(\hat m_j, \hat K_j)`
   (from the E-step's factors, :func:`magma_pymc.predict_diag.mean_process_parts`, theory page, *Prediction* step 1);
2. for a prediction, the new individual's HP (reused, fitted, or the training median:
   :func:`magma_pymc.predict.fit_new_individual`) and the Gaussian conditional
   (:func:`magma_pymc.predict.predict_individual`);

and the result is the Gaussian mixture over components (without ``full_cov``, means and variances
only, in chunks of prediction inputs: :mod:`magma_pymc.predict_diag`; :class:`magma_pymc.mixture.GaussianMixture`):
mixture mean and covariance, intervals from its exact quantiles. EM (one component) gives the
Gaussian prediction itself.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from magma_pymc.data import Individual
from magma_pymc.fit_result import FitResult
from magma_pymc.estep_buckets import bucketed_factors
from magma_pymc.mixture import GaussianMixture, mixture_quantiles
from magma_pymc.predict import fit_new_individual, predict_individual
from magma_pymc.predict_diag import (
    DiagonalMixture,
    EStepFactors,
    estep_factors_function,
    mean_process_parts,
    predictive_diagonal,
)
from magma_pymc.results import gaussian_dataset, input_coords
from magma_pymc.validation import check_prob

__all__ = ["hyperposterior", "predict"]

_INTERVALS = "Gaussian-mixture quantiles over posterior draws"


def _interval_probs(prob: float) -> tuple[float, float]:
    prob = check_prob(prob)
    return 0.5 - prob / 2, 0.5 + prob / 2


def _factors(problem, state) -> EStepFactors:
    """The E-step's factors at a component's HP: on size buckets for ragged data, else the padded graph."""
    args = (state.mean_log_params, state.log_params)
    if problem.batches is not None:
        values = bucketed_factors(problem.graphs, *args, problem.data_args.grid, problem.batches, state.jitter)
    else:
        values = estep_factors_function(problem.graphs)(*args, *problem.data_args, state.jitter)
    return EStepFactors(*(np.asarray(v) for v in values))


def _mean_process(problem, state, inputs: np.ndarray, m0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Mean (with :math:`m_0`) and full covariance of :math:`\mu_0` at ``inputs`` for one component."""
    parts = mean_process_parts(problem.graphs.mean_kernel, problem.graphs.mode, state.mean_log_params,
                               problem.data_args.grid, _factors(problem, state), inputs, inputs[:0], state.jitter)
    return m0 + parts.mean_obs, parts.cov_obs


def hyperposterior(result: FitResult, inputs: np.ndarray, *, prob: float = 0.95) -> xr.Dataset:
    """Mixture hyper-posterior of :math:`\\mu_0` at ``(n, d)`` ``inputs``: ``mean``, ``variance``,
    ``lower``/``upper`` (exact mixture quantiles), ``cov``; ``attrs["n_draws"]``."""
    probs = _interval_probs(prob)
    problem, m0 = result.problem, result.prior_mean(inputs)
    mixture = GaussianMixture()
    for weight, state in result.components():
        mixture.add(*_mean_process(problem, state, inputs, m0), weight)
    ds = gaussian_dataset(inputs, result.data.input_names, *mixture.moments(), prob, full_cov=True)
    lower, upper = mixture.quantiles(probs)
    ds["lower"], ds["upper"] = ("input", lower), ("input", upper)
    ds.attrs.update(n_draws=result.n_draws, intervals=_INTERVALS)
    return ds


def predict(
    result: FitResult,
    individual: Individual,
    pred_inputs: np.ndarray,
    *,
    prob: float = 0.95,
    full_cov: bool = False,
    empirical_prior: bool = True,
) -> xr.Dataset:
    r"""Mixture prediction of ``individual`` at ``pred_inputs`` (module docstring).

    ``mean``; predictive ``variance``, ``lower``, ``upper`` (a new noisy observation);
    ``latent_variance``, ``latent_lower``, ``latent_upper`` (:math:`\mu_0 + f_*`); ``cov`` when
    ``full_cov``. ``attrs``: ``individual``, ``prediction_type``, ``hp_source``, ``n_draws`` and
    ``hp_<name>``, the median over components of the new individual's HP. ``empirical_prior``:
    fit the new individual's HP as a MAP under the training individuals' spread (else ML).
    """
    probs = _interval_probs(prob)
    if not full_cov:
        return _predict_diagonal(result, individual, pred_inputs, prob, probs, empirical_prior)
    problem, n_obs = result.problem, individual.n_points
    joint_inputs = np.concatenate([individual.inputs, pred_inputs])
    graphs, m0 = problem.graphs, result.prior_mean(joint_inputs)
    bounds = problem.bounds[: len(result.hp_names)]
    latent, predictive, new_hp = GaussianMixture(), GaussianMixture(), []
    for weight, state in result.components():
        joint_mean, joint_cov = _mean_process(problem, state, joint_inputs, m0)
        hp = fit_new_individual(
            graphs, individual, joint_mean[:n_obs], joint_cov[:n_obs, :n_obs], state.log_params, bounds,
            state.jitter, empirical_prior=empirical_prior,
        )
        pred = predict_individual(graphs, individual, pred_inputs, joint_mean, joint_cov, hp, state.jitter)
        latent.add(pred.mean, pred.latent_cov, weight)
        predictive.add(pred.mean, pred.predictive_cov, weight)
        new_hp.append(hp.log_params)
    ds = gaussian_dataset(pred_inputs, result.data.input_names, *predictive.moments(), prob, full_cov)
    lower, upper = predictive.quantiles(probs)
    latent_lower, latent_upper = latent.quantiles(probs)
    ds = ds.assign(lower=("input", lower), upper=("input", upper),
                   latent_variance=("input", np.diag(latent.moments()[1]).copy()),
                   latent_lower=("input", latent_lower), latent_upper=("input", latent_upper))
    median_hp = np.exp(np.median(np.array(new_hp), axis=0))
    ds.attrs.update(
        individual=str(individual.id), prediction_type="I" if n_obs else "II", hp_source=hp.source,
        n_draws=result.n_draws, intervals=_INTERVALS,
        **{f"hp_{name}": float(v) for name, v in zip(result.hp_names, median_hp, strict=True)},
    )
    return ds


def _predict_diagonal(result: FitResult, individual: Individual, pred_inputs: np.ndarray, prob: float,
                      probs: tuple[float, float], empirical_prior: bool) -> xr.Dataset:
    """:func:`predict` without the covariance: means and variances only, memory linear in the number
    of prediction inputs (:mod:`magma_pymc.predict_diag`)."""
    problem, graphs = result.problem, result.problem.graphs
    m0_obs, m0_pred = result.prior_mean(individual.inputs), result.prior_mean(pred_inputs)
    bounds = problem.bounds[: len(result.hp_names)]
    latent, predictive, new_hp = DiagonalMixture(), DiagonalMixture(), []
    for weight, state in result.components():
        parts = mean_process_parts(graphs.mean_kernel, graphs.mode, state.mean_log_params, problem.data_args.grid,
                                   _factors(problem, state), individual.inputs, pred_inputs, state.jitter)
        parts = parts._replace(mean_pred=m0_pred + parts.mean_pred)
        obs_mean = m0_obs + parts.mean_obs
        hp = fit_new_individual(graphs, individual, obs_mean, parts.cov_obs, state.log_params, bounds, state.jitter,
                                empirical_prior=empirical_prior)
        mean, latent_var, predictive_var = predictive_diagonal(
            graphs.individual_kernel, graphs.mode, hp.log_params, individual.inputs, individual.outputs, pred_inputs,
            obs_mean, parts, state.jitter)
        latent.add(mean, latent_var, weight)
        predictive.add(mean, predictive_var, weight)
        new_hp.append(hp.log_params)
    mean, variance = predictive.moments()
    lower, upper = mixture_quantiles(np.array(predictive.means), np.array(predictive.variances), probs,
                                     predictive.weights_normalised())
    latent_lower, latent_upper = mixture_quantiles(np.array(latent.means), np.array(latent.variances), probs,
                                                   latent.weights_normalised())
    ds = xr.Dataset(
        {"mean": ("input", mean), "variance": ("input", variance), "lower": ("input", lower), "upper": ("input", upper),
         "latent_variance": ("input", latent.moments()[1]), "latent_lower": ("input", latent_lower),
         "latent_upper": ("input", latent_upper)},
        coords=input_coords(pred_inputs, result.data.input_names),
    )
    median_hp = np.exp(np.median(np.array(new_hp), axis=0))
    ds.attrs.update(
        prob=prob, individual=str(individual.id), prediction_type="I" if individual.n_points else "II",
        hp_source=hp.source, n_draws=result.n_draws, intervals=_INTERVALS,
        **{f"hp_{name}": float(v) for name, v in zip(result.hp_names, median_hp, strict=True)},
    )
    return ds
