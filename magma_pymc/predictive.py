r"""Hyper-posterior of :math:`\mu_0` and new-individual predictions from a :class:`~magma_pymc.fit_result.FitResult`.

One path for every fit method: for each mixture component :math:`j = (s, k)` of the fit (weight
:math:`w_j`),

1. :math:`\mu_0` at the requested inputs, :math:`\mathcal N(\hat m_j, \hat K_j)`, from the
   E-step's factors (:func:`magma_pymc.predict_diag.mean_process_parts`, theory page,
   *Prediction* step 1; on size buckets for ragged data);
2. for a prediction, the new individual's HP and the Gaussian conditional: with common HP the
   shared HP; with different HP (default) weighted draws :math:`r` of its HP from their posterior
   given its observed points and the population distribution of the component's training HP
   (:mod:`magma_pymc.hp_integration`), each an inner component of weight :math:`w_j v_r` (with a
   single training individual there is no population spread: plugged in, with a warning);
   or one plugged-in value (``new_individual_hp="map"`` / ``"ml"``:
   :func:`magma_pymc.predict.fit_new_individual`, the training median for Type II);

and the result is the Gaussian mixture over components (:class:`magma_pymc.mixture.GaussianMixture`):
mixture mean and covariance, intervals from its exact quantiles. EM (one component) gives the
Gaussian prediction itself. Without ``full_cov`` only means and variances are formed, in chunks of
prediction inputs (:mod:`magma_pymc.predict_diag`): memory linear in the number of prediction inputs.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from magma_pymc import hp_integration as hpi
from magma_pymc.data import Individual, TrainingData
from magma_pymc.estep_buckets import bucketed_factors
from magma_pymc.exceptions import MagmaWarning
from magma_pymc.exceptions import warn as _warn
from magma_pymc.fit_result import FitResult
from magma_pymc.likelihood_weight import WeightChoice, likelihood_weight_of_fit
from magma_pymc.mixture import GaussianMixture
from magma_pymc.population import population_prior
from magma_pymc.predict import fit_new_individual, predict_individual
from magma_pymc.predict_diag import EStepFactors, mean_process_parts, predictive_diagonal
from magma_pymc.results import gaussian_dataset
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
        values = problem.graphs.estep_factors(*args, *problem.data_args, state.jitter)
    return EStepFactors(*(np.asarray(v) for v in values))


def _mean_process(problem, state, obs_inputs: np.ndarray, pred_inputs: np.ndarray):
    r"""Centred :math:`\mu_0` hyper-posterior parts of one component.

    The parts are :class:`~magma_pymc.predict_diag.MeanProcessParts`.
    """
    return mean_process_parts(problem.graphs.mean_kernel, problem.graphs.mode, state.mean_log_params,
                              problem.data_args.grid, _factors(problem, state), obs_inputs, pred_inputs, state.jitter)


def hyperposterior(result: FitResult, inputs: np.ndarray, *, prob: float = 0.95) -> xr.Dataset:
    r"""Mixture hyper-posterior of :math:`\mu_0` at ``(n, d)`` ``inputs``.

    ``mean``, ``variance``, ``lower``/``upper`` (exact mixture quantiles), ``cov``; ``attrs["n_draws"]``.
    """
    probs = _interval_probs(prob)
    problem, m0 = result.problem, result.prior_mean(inputs)
    mixture = GaussianMixture()
    for weight, state in result.components():
        parts = _mean_process(problem, state, inputs, inputs[:0])
        mixture.add(m0 + parts.mean_obs, parts.cov_obs, weight)
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
    new_individual_hp: str = "calibrated",
    components: bool = False,
) -> xr.Dataset:
    r"""Mixture prediction of ``individual`` at ``pred_inputs`` (module docstring).

    ``mean``; predictive ``variance``, ``lower``, ``upper`` (a new noisy observation);
    ``latent_variance``, ``latent_lower``, ``latent_upper`` (:math:`\mu_0 + f_*`); ``cov`` when
    ``full_cov``. ``attrs``: ``individual``, ``prediction_type``, ``hp_source``, ``n_draws`` and
    ``hp_<name>``, the median over components of the new individual's HP (its posterior mode when
    integrated; the population's mean for Type II). ``new_individual_hp``: ``"integrated"``,
    ``"calibrated"``, ``"map"`` or ``"ml"``
    (:class:`~magma_pymc.estimator.Magma`). ``components``: also return the mixture's
    ``component_weight``, ``component_mean``, ``component_variance`` (predictive) on dim ``component``.
    """
    probs = _interval_probs(prob)
    problem, n_obs = result.problem, individual.n_points
    graphs = problem.graphs
    joint_inputs = np.concatenate([individual.inputs, pred_inputs])
    m0_obs, m0_pred = result.prior_mean(individual.inputs), result.prior_mean(pred_inputs)
    bounds = problem.bounds[: len(result.hp_names)]
    latent, predictive = GaussianMixture(full_cov), GaussianMixture(full_cov)
    new_hp, ess, diagonal, source, likelihood_weight = [], [], False, "", 1.0
    for weight, state in result.components():
        if full_cov:  # mu0 jointly at (t_*, t_p)
            parts = _mean_process(problem, state, joint_inputs, joint_inputs[:0])
            joint_mean, joint_cov = np.concatenate([m0_obs, m0_pred]) + parts.mean_obs, parts.cov_obs
            obs_mean, obs_cov = joint_mean[:n_obs], joint_cov[:n_obs, :n_obs]
        else:  # observed block, cross block and diagonal at t_p only
            parts = _mean_process(problem, state, individual.inputs, pred_inputs)
            parts = parts._replace(mean_pred=m0_pred + parts.mean_pred)
            obs_mean, obs_cov = m0_obs + parts.mean_obs, parts.cov_obs
        integrate = new_individual_hp in INTEGRATED and state.log_params.ndim == 2
        if integrate and len(state.log_params) < 2:  # stated fallback: no population spread to estimate
            _warn("one training individual: no population distribution of the individual HP to integrate the new "
                  "individual's HP over; they are plugged in (maximum likelihood, or the training HP for Type II)",
                  MagmaWarning)
            integrate = False
        prior = _population(result, state) if integrate else None
        from_population = integrate and not n_obs
        if from_population:  # Type II: nothing to condition the HP on
            draws = hpi.population_draws(prior)
        else:
            hp = fit_new_individual(graphs, individual, obs_mean, obs_cov, state.log_params, bounds, state.jitter,
                                    empirical_prior=new_individual_hp != "ml", prior=prior)
            source = hp.source
        if not integrate:
            if full_cov:
                pred = predict_individual(graphs, individual, pred_inputs, joint_mean, joint_cov, hp, state.jitter)
                latent.add(pred.mean, pred.latent_cov, weight)
                predictive.add(pred.mean, pred.predictive_cov, weight)
            else:
                mean, latent_var, predictive_var = predictive_diagonal(
                    graphs.individual_kernel, graphs.mode, hp.log_params, individual.inputs, individual.outputs,
                    pred_inputs, obs_mean, parts, state.jitter)
                latent.add(mean, latent_var, weight)
                predictive.add(mean, predictive_var, weight)
            new_hp.append(hp.log_params)
            continue
        if not from_population:
            if new_individual_hp == "calibrated":
                likelihood_weight = _likelihood_weight(result, state, prior).weight
            draws = hpi.posterior_draws(graphs.individual_kernel, individual.inputs, individual.outputs, obs_mean,
                                        obs_cov, prior, hp.log_params, state.jitter, compile_mode=graphs.mode,
                                        likelihood_weight=likelihood_weight)
        if full_cov:
            inner = hpi.conditional_predictions(graphs.individual_kernel, draws.log_params, individual.inputs,
                                                individual.outputs, pred_inputs, joint_mean, joint_cov, state.jitter,
                                                graphs.mode)
            eye = np.eye(len(pred_inputs))
            for w, mean, cov, noise in zip(draws.weights, inner.means, inner.latent_covs, inner.noise, strict=True):
                latent.add(mean, cov, weight * w)
                predictive.add(mean, cov + noise * eye, weight * w)
        else:
            for w, log_params in zip(draws.weights, draws.log_params, strict=True):
                mean, latent_var, predictive_var = predictive_diagonal(
                    graphs.individual_kernel, graphs.mode, log_params, individual.inputs, individual.outputs,
                    pred_inputs, obs_mean, parts, state.jitter)
                latent.add(mean, latent_var, weight * w)
                predictive.add(mean, predictive_var, weight * w)
        source = draws.source
        new_hp.append(prior.mean if from_population else hp.log_params)
        ess.append(draws.ess)
        diagonal = prior.diagonal
    mean, cov = predictive.moments()
    ds = gaussian_dataset(pred_inputs, result.data.input_names, mean, cov, prob, full_cov)
    lower, upper = predictive.quantiles(probs)
    latent_lower, latent_upper = latent.quantiles(probs)
    latent_cov = latent.moments()[1]
    ds = ds.assign(lower=("input", lower), upper=("input", upper),
                   latent_variance=("input", np.diag(latent_cov).copy() if full_cov else latent_cov),
                   latent_lower=("input", latent_lower), latent_upper=("input", latent_upper))
    median_hp = np.exp(np.median(np.array(new_hp), axis=0))
    if components:
        ds = ds.assign(component_weight=("component", predictive.normalised_weights()),
                       component_mean=(("component", "input"), np.array(predictive.means)),
                       component_variance=(("component", "input"), np.array(predictive.variances)))
    if ess:
        # ESS of the importance weights (worst component); "diagonal": too few training individuals
        # for a full population covariance (hp_integration.PopulationPrior.from_training).
        ds.attrs.update(hp_draws_ess=float(np.min(ess)), n_hp_draws=len(predictive.means) // result.n_draws,
                        population_cov="diagonal" if diagonal else "full", hp_likelihood_weight=likelihood_weight)
    ds.attrs.update(
        individual=str(individual.id), prediction_type="I" if n_obs else "II", hp_source=source,
        n_draws=result.n_draws, intervals=_INTERVALS,
        **{f"hp_{name}": float(v) for name, v in zip(result.hp_names, median_hp, strict=True)},
    )
    return ds


#: Values of ``new_individual_hp`` that integrate the new individual's HP (a mixture prediction), with the
#: weight of its observed points' likelihood in their posterior (:func:`magma_pymc.hp_integration.posterior_draws`).
INTEGRATED = ("integrated", "calibrated")

#: How the population distribution of the individual HP is estimated from a point fit:
#: ``"marginal"`` (the individuals' marginal likelihoods, Monte Carlo EM: :mod:`magma_pymc.population_em`),
#: ``"random_effects"`` (the estimates with their Laplace estimation error, :mod:`magma_pymc.population`) or
#: ``"empirical"`` (the fitted HP taken as exact). Fits other than EM (given HP, sampled draws) use
#: ``"empirical"``; a distributed EM fit computes the same estimate at the end of the fit
#: (:mod:`magma_pymc.distributed.population`).
POPULATION_ESTIMATE = "marginal"


def _likelihood_weight(result: FitResult, state, prior: hpi.PopulationPrior) -> WeightChoice:
    """The weight of the observed points' likelihood in the new individual's HP posterior (cached on a point fit).

    ``new_individual_hp="calibrated"``, :mod:`magma_pymc.likelihood_weight`. Fits without a point estimate
    or the training data at hand (sampled, distributed) keep the posterior (1).
    """
    if result.method not in ("em", "fixed") or not isinstance(result.data, TrainingData):
        return WeightChoice(1.0, {}, 0)
    cached = result.__dict__.get("_likelihood_weight")
    if cached is None:
        cached = likelihood_weight_of_fit(result.problem, result.point, prior)
        object.__setattr__(result, "_likelihood_weight", cached)  # a frozen record: computed once, on first use
    return cached


def _population(result: FitResult, state) -> hpi.PopulationPrior:
    """The population distribution of the individual HP at ``state`` (cached on a point fit)."""
    # Only HP estimated by EM have an estimation error to remove (given HP, method="fixed", are taken as
    # they are), and only an in-process fit holds what the estimation covariances need (the data); a
    # distributed fit computes its population at the end of the fit (cached here by its predictor).
    if POPULATION_ESTIMATE == "empirical" or result.method != "em":
        return hpi.PopulationPrior.from_training(state.log_params)
    cached = result.__dict__.get("_population")
    if cached is None:
        if not isinstance(result.data, TrainingData):
            return hpi.PopulationPrior.from_training(state.log_params)
        cached = population_prior(result.problem, result.point, method=POPULATION_ESTIMATE)
        object.__setattr__(result, "_population", cached)  # a frozen record: computed once, on first use
    return cached
