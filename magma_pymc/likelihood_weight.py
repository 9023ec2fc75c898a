r"""How much a new individual's observed points should say about its HP: chosen by held-out forecasts.

With different HP, a Type I prediction integrates the new individual's log HP :math:`x` over

.. math::

    p_\eta(x \mid y_*) \propto p(y_* \mid x)^\eta\, \mathcal N(x; \bar x, S),

the population distribution times its observed points' likelihood raised to a weight :math:`\eta`
(:func:`magma_pymc.hp_integration.posterior_draws`). :math:`\eta = 1` is the posterior, right when the
model is. On real panels the early points of a curve often say less about its later behaviour than a
stationary kernel assumes (a child whose weight leaves the mean curve after two years, a day of traffic
whose evening differs from its morning): the posterior then concentrates on HP that fit the early points
and the forecast's intervals are too narrow (``docs/calibration.md``: 95 % intervals covering 86-89 % on
three of four bundled data sets). A weight :math:`\eta < 1` is the tempered (generalised-Bayes)
posterior, between the posterior and the population.

``new_individual_hp="calibrated"`` chooses :math:`\eta` among :data:`CANDIDATE_WEIGHTS` by the task
itself on the training individuals: each forecasts its own last points (after the first
:data:`OBSERVED_FRACTION` of its points, in input order) from its first ones, :math:`\mu_0` integrated
over its hyper-posterior *without* that individual (undone in closed form:
:func:`magma_pymc.population_em.leave_one_out`), its HP integrated at each candidate weight; the weight
with the lowest mean CRPS over the forecast points wins (:func:`choose_likelihood_weight`). On data the
model describes well the posterior (:math:`\eta = 1`) scores best and is kept. Once per fit, at the
first prediction (cached with the population distribution).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from magma_pymc import hp_integration as hpi
from magma_pymc.data import Individual
from magma_pymc.population_em import IndividualTerms, individual_terms
from magma_pymc.predict import fit_new_individual
from magma_pymc.scoring import crps_mixture

__all__ = ["CANDIDATE_WEIGHTS", "OBSERVED_FRACTION", "MAX_INDIVIDUALS", "WeightChoice", "choose_likelihood_weight",
           "likelihood_weight_of_fit"]

#: Likelihood weights :math:`\eta` compared (1: the posterior).
CANDIDATE_WEIGHTS = (1.0, 0.5, 0.2)
#: Share of a training individual's points (the first, in input order) observed in its held-out forecast.
OBSERVED_FRACTION = 0.6
#: At most this many training individuals (a seeded subset) forecast themselves.
MAX_INDIVIDUALS = 40
#: At most this many of a training individual's forecast points are scored (evenly spaced).
MAX_TARGETS = 30
#: HP draws per batch of conditional predictions.
_CHUNK = 25
#: Fewer held-out forecasts than this: the posterior (:math:`\eta = 1`) is kept, stated in the choice.
MIN_INDIVIDUALS = 5


class WeightChoice(NamedTuple):
    """The chosen weight, the mean CRPS of each candidate, and how many training individuals scored them."""

    weight: float
    crps: dict[float, float]
    n_individuals: int


def _split(term: IndividualTerms) -> tuple[np.ndarray, np.ndarray] | None:
    """Indices of the observed (first) and forecast (last) points of a training individual, in input order."""
    n = len(term.residuals)
    n_observed = int(np.floor(OBSERVED_FRACTION * n))
    if n_observed < 2 or n - n_observed < 1:
        return None
    order = np.lexsort(term.inputs.T[::-1])
    return order[:n_observed], order[n_observed:]


def held_out_crps(graphs, term: IndividualTerms, log_params: np.ndarray, prior: hpi.PopulationPrior, bounds: list,
                  jitter: float, weights: Sequence[float], seed: int = 0,
                  n_draws: int = hpi.N_DRAWS) -> np.ndarray | None:
    r"""Mean CRPS of one training individual's forecast of its last points, at each weight in ``weights``.

    ``term`` holds its inputs, residuals :math:`y_i - \hat m_{-i}(t_i)` and :math:`\hat K_{-i}(t_i, t_i)`
    (:math:`\mu_0` without it), so the forecast is that of a new individual with prior mean 0 for the
    residuals; ``log_params`` are the training individuals' fitted log HP (the start of the MAP search).
    At most :data:`MAX_TARGETS` forecast points, evenly spaced in input order, are scored. One set of
    importance draws serves every weight: the defensive mixture of
    :func:`~magma_pymc.hp_integration.posterior_draws` at the smallest weight (the widest target), the
    observed points' likelihood evaluated once and raised to each weight. ``None`` when the individual
    has too few points to split.
    """
    split = _split(term)
    if split is None:
        return None
    observed, target = split
    target = target[np.unique(np.linspace(0, len(target) - 1, min(len(target), MAX_TARGETS)).round().astype(int))]
    inputs, residuals, cov = term
    joint = np.concatenate([observed, target])
    joint_cov = cov[np.ix_(joint, joint)]
    n_obs = len(observed)
    obs_inputs, obs_residuals, obs_cov = inputs[observed], residuals[observed], joint_cov[:n_obs, :n_obs]
    zeros = np.zeros(len(joint))
    kernel, mode_name = graphs.individual_kernel, graphs.mode
    # One start (the training median): the proposal's centre need not be the exact mode (importance weights).
    individual = Individual("held-out", obs_inputs, obs_residuals, np.arange(n_obs))
    mode = fit_new_individual(graphs, individual, zeros[:n_obs], obs_cov, log_params, bounds, jitter,
                              n_restarts=1, empirical_prior=True, prior=prior).log_params

    def log_likelihood(x: np.ndarray) -> np.ndarray:
        return hpi.log_likelihoods(kernel, x, obs_inputs, obs_residuals, zeros[:n_obs], obs_cov, jitter, mode_name)

    widest = min(weights)
    rng = np.random.default_rng(seed)
    proposal_cov = hpi._laplace_cov(hpi._hessian(lambda x: widest * log_likelihood(x) + prior.log_density(x), mode),
                                    prior)
    from_t, _ = hpi._student_t(rng, mode, proposal_cov, n_draws // 2, hpi.STUDENT_DF)
    from_population = prior.mean + rng.standard_normal((n_draws - n_draws // 2, len(mode))) @ prior.chol.T
    draws = np.vstack([mode, from_t, from_population])
    log_q = np.logaddexp(hpi._student_t_log_density(draws, mode, proposal_cov, hpi.STUDENT_DF),
                         prior.log_density(draws))
    log_lik, log_prior = log_likelihood(draws), prior.log_density(draws)
    usable = np.isfinite(log_lik)
    draws, log_q, log_lik, log_prior = draws[usable], log_q[usable], log_lik[usable], log_prior[usable]
    means, sds = [], []
    for start in range(0, len(draws), _CHUNK):  # (draws, n, n) covariances: bounded memory
        comp = hpi.conditional_predictions(kernel, draws[start:start + _CHUNK], obs_inputs, obs_residuals,
                                           inputs[target], zeros, joint_cov, jitter, mode_name)
        means.append(comp.means)
        sds.append(np.sqrt(np.maximum(np.diagonal(comp.latent_covs, axis1=1, axis2=2) + comp.noise[:, None], 0)))
    means, sds = np.vstack(means), np.vstack(sds)
    scores = []
    for weight in weights:
        log_w = weight * log_lik + log_prior - log_q
        w = np.exp(log_w - log_w.max())
        scores.append(float(crps_mixture(residuals[target], w / w.sum(), means, sds).mean()))
    return np.array(scores)


def likelihood_weight_of_fit(problem, state, prior: hpi.PopulationPrior, *, seed: int = 0) -> WeightChoice:
    r""":func:`choose_likelihood_weight` for a point fit of different HP.

    At most :data:`MAX_INDIVIDUALS` training individuals (a seeded subset) forecast themselves, :math:`\mu_0`
    at the fit's last E-step.
    """
    from magma_pymc.em import estep

    x = np.asarray(state.log_params)
    rows = np.arange(len(x))
    if len(rows) > MAX_INDIVIDUALS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, MAX_INDIVIDUALS, replace=False))
    estep_result = estep(state, problem)
    terms = individual_terms(problem, estep_result, rows, max_points=np.iinfo(np.int64).max)
    return choose_likelihood_weight(problem.graphs, terms, x, prior, problem.bounds[: x.shape[1]],
                                    estep_result[1].jitter)


def choose_likelihood_weight(graphs, terms: Sequence[IndividualTerms | None], log_params: np.ndarray,
                             prior: hpi.PopulationPrior, bounds: list, jitter: float,
                             weights: Sequence[float] = CANDIDATE_WEIGHTS) -> WeightChoice:
    """The weight of ``weights`` with the lowest CRPS averaged over the training individuals' held-out forecasts.

    (Module docstring.) ``terms[k]`` belongs to the individual with log HP ``log_params[k]`` (``None``:
    not scored). With fewer than :data:`MIN_INDIVIDUALS` scored individuals: 1, the count stated.
    """
    scores = [s for term in terms if term is not None
              for s in [held_out_crps(graphs, term, log_params, prior, bounds, jitter, weights)] if s is not None]
    if len(scores) < MIN_INDIVIDUALS:
        return WeightChoice(1.0, {}, len(scores))
    mean = np.mean(scores, axis=0)
    return WeightChoice(float(weights[int(np.argmin(mean))]), dict(zip(weights, mean.tolist(), strict=True)),
                        len(scores))
