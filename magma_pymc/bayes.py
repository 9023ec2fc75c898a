r"""Full-Bayesian MAGMA: NUTS over the hyper-parameters, :math:`\mu_0` integrated out (theory page, *Marginal likelihood*).

Target. With :math:`\Theta = (\theta_0, \theta_i, \sigma_i^2)` on the log scale,

.. math::

    \log p(\log\Theta \mid y) = \log p(y \mid \Theta) + \log p(\log\Theta) + \text{const},

where :math:`\log p(y \mid \Theta)` is the exact marginal likelihood of theory page, *Marginal likelihood*
(:math:`\mu_0` integrated out analytically, :func:`~magma_pymc.hyperposterior.build_estep`), added
to the PyMC model as ``pm.Potential("marginal_likelihood", ...)``, and the default priors are those
of :func:`magma_pymc.model.build_model`: independent :math:`\mathcal N(c, 2^2)` on every log HP,
centred on the data-driven :meth:`~magma_pymc.Magma.initial_hyperparameters`.

Rao-Blackwellisation. Given draws :math:`\Theta^{(s)}, s = 1..S`, the hyper-posterior of
:math:`\mu_0` is the mixture :math:`\frac1S\sum_s \mathcal N(\hat m_s, \hat K_s)` of the closed-form
E-steps, with mean :math:`\bar m = \frac1S\sum_s \hat m_s` and covariance
:math:`\frac1S\sum_s \hat K_s + \frac1S\sum_s (\hat m_s - \bar m)(\hat m_s - \bar m)^\top`.
Predictions average the same way over draws (law of total variance); their intervals are the
exact quantiles of the Gaussian mixture (:func:`mixture_quantiles`), not a Gaussian approximation.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pymc as pm
import pytensor
import pytensor.tensor as pt
import xarray as xr
from scipy.special import ndtr

from magma_pymc.compiled import sampling_mode
from magma_pymc.data import as_individual, as_inputs
from magma_pymc.em import EMState, Problem, estep
from magma_pymc.hyperposterior import TrainingTensors, build_estep, build_estep_common, build_estep_projected
from magma_pymc.model import LOG_HP, MEAN_LOG_HP, PRIOR_SD, LogPriorFactory
from magma_pymc.params import NOISE, HyperParameters
from magma_pymc.predict import fit_new_individual, mean_process_at, predict_individual
from magma_pymc.results import MEAN_PREFIX, gaussian_dataset, input_coords
from magma_pymc.warnings import ConvergenceWarning
from magma_pymc.warnings import warn as _warn

if TYPE_CHECKING:
    from magma_pymc.estimator import Magma

__all__ = ["NUTS_DEFAULTS", "build_marginal_model", "fit_nuts", "predict_nuts", "hyperposterior_nuts",
           "mixture_quantiles", "compare_fits", "is_nuts"]

#: Keyword arguments of ``Magma.fit(..., method="nuts")`` and their defaults.
NUTS_DEFAULTS: dict[str, Any] = dict(draws=1000, tune=1000, chains=4, random_seed=None, nuts_sampler="pymc",
                                     target_accept=0.9, priors=None, thin=1, progressbar=False,
                                     marginalised=True, compile_mode=None)
#: Jitter floor during sampling, relative to the output variance. The sampler visits HP (long
#: lengthscales) where :math:`K_0` on the union grid needs more jitter than at EM's start; a fixed
#: value keeps the target one smooth function. Recorded as ``idata_.attrs["jitter"]``.
SAMPLING_JITTER = 1e-8
#: Diagnostic thresholds of the post-sampling checks (:class:`ConvergenceWarning` when crossed).
MAX_RHAT, MIN_ESS = 1.01, 100.0


def is_nuts(model: Magma) -> bool:
    """Whether ``model`` was fitted with ``method="nuts"`` (also after save/load: read from ``idata_``)."""
    return getattr(model, "idata_", None) is not None and model.idata_.attrs.get("method") == "nuts"


def build_marginal_model(
    model: Magma, problem: Problem, jitter: float, priors: Mapping[str, LogPriorFactory] | None = None
) -> pm.Model:
    r"""PyMC model of the log HP with :math:`\mu_0` marginalised (module docstring).

    Free variables ``log_mu0_hp`` (dims ``mean_hp``) and ``log_hp`` (dims ``hp``, or
    ``(individual, hp)`` for different HP); Deterministics of the natural-scale HP named as in
    :func:`magma_pymc.results.hp_dataset` (``mu0_variance``, ..., ``noise``); the likelihood is
    ``pm.Potential("marginal_likelihood")``, :math:`-\infty` where a Cholesky factorisation fails.
    The training arrays enter as ``pm.Data`` so that the compiled graph is reused across data sets.
    ``priors`` as in :func:`magma_pymc.model.build_model`.
    """
    mean_names, names = model.mean_kernel.names, (*model.kernel.names, NOISE)
    grid, inputs, residuals, mask, index = problem.data_args
    with pm.Model(coords=_coords(model)) as pm_model:
        data = TrainingTensors(
            pm.Data("grid", grid), pm.Data("inputs", inputs), pm.Data("residuals", residuals),
            pm.Data("mask", mask), pm.Data("index", index), pm.Data("jitter", np.asarray(jitter)),
        )
        mean_log, log_hp = _prior_variables(model, priors)
        for k, name in enumerate(mean_names):
            pm.Deterministic(MEAN_PREFIX + name, pt.exp(mean_log[k]))
        for k, name in enumerate(names):
            pm.Deterministic(name, pt.exp(log_hp[..., k]), dims=None if model.common_hp else "individual")
        if problem.graphs.fast_path:  # common grid and HP: residuals are (M, N) on the grid
            step = build_estep_common(
                model.mean_kernel, model.kernel, mean_log, log_hp, data.grid, data.residuals, data.jitter
            )
        elif problem.graphs.projected:  # mu0 on inducing points (`grid`)
            step = build_estep_projected(model.mean_kernel, model.kernel, mean_log, log_hp, data)
        else:
            step = build_estep(model.mean_kernel, model.kernel, mean_log, log_hp, data)
        loglik = step.log_likelihood
        pm.Potential("marginal_likelihood", pt.switch(pt.isnan(loglik), -np.inf, loglik))
    return pm_model


def _coords(model: Magma) -> dict:
    return {"mean_hp": list(model.mean_kernel.names), "hp": [*model.kernel.names, NOISE],
            "individual": [str(i) for i in model.data_.ids]}


def _prior_variables(model: Magma, priors: Mapping[str, LogPriorFactory] | None):
    """The log-HP variables of the priors (inside a ``pm.Model`` with :func:`_coords`): ``priors``'
    factories, or the defaults ``Normal(centre, PRIOR_SD)`` centred on the data-scaled initial HP."""
    priors = dict(priors or {})
    initial = model.initial_hyperparameters(model.data_)
    mean_centre, centre = np.log(initial.mean_process.to_numpy()), np.log(initial.individual.to_numpy()[0])
    default_mean = lambda name, dims: pm.Normal(name, mu=mean_centre, sigma=PRIOR_SD, dims=dims)  # noqa: E731
    default = lambda name, dims: pm.Normal(name, mu=centre, sigma=PRIOR_SD, dims=dims)  # noqa: E731
    hp_dims = ("hp",) if model.common_hp else ("individual", "hp")
    return (priors.get("mean_hp", default_mean)(MEAN_LOG_HP, ("mean_hp",)),
            priors.get("hp", default)(LOG_HP, hp_dims))


def compile_log_priors(model: Magma, priors: Mapping[str, LogPriorFactory] | None):
    """``(mean_fn, individual_fn)``: each maps a block of log HP to (log prior density, gradient),
    the priors of :func:`build_marginal_model` (EM's MAP mode, ``fit(..., priors=...)``).

    The priors must be distributions on the log HP themselves (no PyMC transform), since EM
    optimises the log HP directly.
    """
    with pm.Model(coords=_coords(model)) as pm_model:
        variables = _prior_variables(model, priors)
    functions = []
    for variable in variables:
        if pm_model.rvs_to_transforms.get(variable) is not None:
            raise ValueError(
                f"the prior of {variable.name} is transformed by PyMC ({pm_model.rvs_to_transforms[variable]}); "
                "EM's MAP needs unbounded priors on the log hyper-parameters (e.g. pm.Normal)"
            )
        value = pm_model.rvs_to_values[variable]
        log_density = pm_model.logp(vars=[variable])
        functions.append(pytensor.function([value], [log_density, pytensor.grad(log_density, value)]))
    return tuple(functions)


def fit_nuts(
    model: Magma, problem: Problem, state: EMState, *, initial: bool = False, draws: int = 1000, tune: int = 1000,
    chains: int = 4, random_seed: Any = None, nuts_sampler: str = "pymc", target_accept: float = 0.9,
    priors: Mapping[str, LogPriorFactory] | None = None, thin: int = 1, progressbar: bool = False,
    marginalised: bool = True, compile_mode: str | None = None,
) -> None:
    r"""Sample the HP posterior with NUTS and fill the fitted attributes of ``model``.

    ``state`` holds the starting HP (used as ``initvals`` when ``initial``; otherwise PyMC starts
    around the prior centres) and the jitter; ``thin`` keeps every ``thin``-th draw for the
    hyper-posterior of :math:`\mu_0` and for predictions (the full chains stay in ``posterior``).
    Sets ``idata_`` (``posterior``, ``sample_stats``, ``constant_data`` from ``pm.sample``, plus
    ``hyperposterior`` -- per-draw ``mu0_mean_draws`` (chain, draw, input) and the mixture
    ``mu0_mean``/``mu0_cov`` -- and ``observed_data``), ``hyperparameters_`` = the posterior
    **median** of each HP (of its logarithm, over all draws), ``log_likelihood_`` at that median,
    and ``converged_`` = no diagnostic warning (:func:`_check_diagnostics`).

    ``marginalised=False`` samples the literal model instead (:func:`magma_pymc.model.build_model`,
    non-centred: :math:`\mu_0` and every :math:`f_i` latent), same priors and jitter: the same HP
    posterior at a far higher cost, as a cross-check on small data. ``compile_mode`` is the
    PyTensor mode of the sampler's log-density (default: the model's ``compile_mode``, or ``"CVM"``
    if that runs Python implementations, :func:`magma_pymc.compiled.sampling_mode`; ``"NUMBA"``
    evaluates small graphs about 7x faster than ``"CVM"`` after a compile of tens of seconds).
    """
    if thin < 1 or int(thin) != thin:
        raise ValueError(f"thin must be a positive integer, got {thin!r}")
    _, state = estep(state, problem)  # grows the jitter if the starting HP need it
    jitter = max(state.jitter, SAMPLING_JITTER * problem.output_scale)
    if marginalised:
        pm_model = build_marginal_model(model, problem, jitter, priors)
    else:
        pm_model = model.build_model(model.data_, priors=priors, jitter=jitter, noncentred=True)
    options = dict(initvals={MEAN_LOG_HP: state.mean_log_params, LOG_HP: state.log_params}) if initial else {}
    if nuts_sampler == "pymc":
        options["compile_kwargs"] = {"mode": compile_mode or sampling_mode(model.compile_mode)}
    with pm_model, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS", category=UserWarning)
        tree = pm.sample(draws=draws, tune=tune, chains=chains, random_seed=random_seed, nuts_sampler=nuts_sampler,
                         target_accept=target_accept, progressbar=progressbar, compute_convergence_checks=False,
                         **options)
    diagnostics = _check_diagnostics(tree)
    mean_log, log_params = _log_draws(tree, 1)
    model._state = EMState(np.median(mean_log, axis=(0, 1)), np.median(log_params, axis=(0, 1)), jitter)
    mean_log, log_params = mean_log[:, ::thin], log_params[:, ::thin]
    model._problem_ = problem
    ids = None if model.common_hp else model.data_.ids
    model.hyperparameters_ = HyperParameters.from_log(
        model.mean_kernel, model.kernel, model._state.mean_log_params, model._state.log_params, ids
    )
    model.log_likelihood_ = estep(model._state, problem)[0].log_likelihood
    model.converged_, model.n_iter_ = not diagnostics, 0
    tree.update({"hyperposterior": xr.DataTree(_hyperposterior_group(model, tree, mean_log, log_params, thin)),
                 "observed_data": xr.DataTree(_observed(model))})
    tree.attrs.update(method="nuts", common_hp=int(model.common_hp), jitter=jitter, thin=int(thin),
                      log_likelihood=model.log_likelihood_, n_individuals=model.data_.n_individuals,
                      nuts_sampler=nuts_sampler, marginalised=int(marginalised),
                      diagnostics="; ".join(diagnostics) or "ok")
    model.idata_ = tree


def _log_draws(tree: xr.DataTree, thin: int) -> tuple[np.ndarray, np.ndarray]:
    """Thinned log-HP draws ``(C, D, P0)`` and ``(C, D, [M,] P + 1)`` from the posterior group."""
    post = tree["posterior"]
    mean_log = post[MEAN_LOG_HP].transpose("chain", "draw", "mean_hp").values[:, ::thin]
    dims = ("chain", "draw", *[d for d in post[LOG_HP].dims if d not in ("chain", "draw")])
    return mean_log, post[LOG_HP].transpose(*dims).values[:, ::thin]


def _check_diagnostics(tree: xr.DataTree) -> list[str]:
    """Warn (:class:`ConvergenceWarning`) on divergences, max :math:`\\hat R` > 1.01 or min bulk ESS < 100."""
    import arviz as az  # arviz-stats is slow to import: only when sampling

    var_names = [MEAN_LOG_HP, LOG_HP]
    n_div = int(tree["sample_stats"]["diverging"].sum())
    rhat = max(float(v.max()) for v in az.rhat(tree, var_names=var_names).data_vars.values())
    ess = min(float(v.min()) for v in az.ess(tree, var_names=var_names, method="bulk").data_vars.values())
    problems = [f"{n_div} divergent transition(s)"] if n_div else []
    if not rhat <= MAX_RHAT:
        problems.append(f"max r_hat {rhat:.3f} > {MAX_RHAT}")
    if not ess >= MIN_ESS:
        problems.append(f"min bulk ESS {ess:.0f} < {MIN_ESS:.0f}")
    if problems:
        _warn(
            "NUTS diagnostics: " + ", ".join(problems)
            + " (raise tune/draws or target_accept; see az.summary(model.idata_))",
            ConvergenceWarning,
        )
    return problems


def _draw_args(model: Magma) -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
    """List of (thinned) ``(mean_log, log_params)`` draws of a NUTS fit, and the jitter."""
    thin = int(model.idata_.attrs.get("thin", 1))
    mean_log, log_params = _log_draws(model.idata_, thin)
    n = mean_log.shape[0] * mean_log.shape[1]
    mean_log, log_params = mean_log.reshape(n, -1), log_params.reshape(n, *log_params.shape[2:])
    return list(zip(mean_log, log_params, strict=True)), float(model.idata_.attrs.get("jitter", model._state.jitter))


def _hyperposterior_group(
    model: Magma, tree: xr.DataTree, mean_log: np.ndarray, log_params: np.ndarray, thin: int
) -> xr.Dataset:
    """Per-draw E-step means of :math:`\\mu_0` on the grid and their mixture mean/covariance."""
    problem = model._problem_
    grid = problem.data_args[0]  # the union grid, or the inducing points
    chains, draws = mean_log.shape[:2]
    jitter = model._state.jitter
    mixture = _Mixture()
    for c in range(chains):
        for d in range(draws):
            outputs = problem.graphs.estep(mean_log[c, d], log_params[c, d], *problem.data_args, jitter)
            mixture.add(outputs[0], outputs[1])
    means = np.array(mixture.means).reshape(chains, draws, -1)
    mix_mean, mix_cov = mixture.moments()
    m0 = model._prior_mean_value(grid)
    coords = input_coords(grid, model.data_.input_names)
    draw_coord = tree["posterior"]["draw"].values[::thin]
    return xr.Dataset(
        {"mu0_mean": ("input", m0 + mix_mean), "mu0_cov": (("input", "input_bis"), mix_cov),
         "mu0_mean_draws": (("chain", "draw", "input"), m0 + means)},
        coords={**coords, "input_bis": coords["input"], "chain": tree["posterior"]["chain"].values,
                "draw": draw_coord},
    )


def _observed(model: Magma) -> xr.Dataset:
    long = model.data_.to_long()
    return xr.Dataset({c: ("obs", long[c].astype(str).to_numpy() if c == "ID" else long[c].to_numpy()) for c in long})


def mixture_quantiles(
    means: np.ndarray, variances: np.ndarray, probs: Sequence[float], *, iterations: int = 200
) -> np.ndarray:
    r"""Quantiles of the equal-weight Gaussian mixture :math:`\frac1S\sum_s\mathcal N(m_s, v_s)`, per column.

    ``means`` and ``variances`` are ``(S, n)``; returns ``(len(probs), n)``. Solves
    :math:`\frac1S\sum_s\Phi((q - m_s)/\sqrt{v_s}) = p` by vectorised bisection on a bracket of
    :math:`\pm 10` standard deviations around all components, to machine precision (no sampling:
    deterministic). With :math:`S = 1` it is the Gaussian quantile.
    """
    sd = np.sqrt(np.maximum(variances, 0.0))
    sd = np.where(sd > 0, sd, np.finfo(float).tiny)
    out = []
    for p in probs:
        lo, hi = (means - 10 * sd).min(axis=0), (means + 10 * sd).max(axis=0)
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            below = ndtr((mid - means) / sd).mean(axis=0) < p
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
            if np.all(hi - lo <= 4 * np.finfo(float).eps * np.maximum(np.abs(mid), 1.0)):
                break
        out.append(0.5 * (lo + hi))
    return np.array(out)


class _Mixture:
    r"""Equal-weight Gaussian mixture built one component at a time (memory :math:`O(Sn + n^2)`).

    Mean :math:`\bar m = \frac1S\sum_s m_s`; covariance
    :math:`\frac1S\sum_s V_s + \frac1S\sum_s (m_s - \bar m)(m_s - \bar m)^\top`.
    """

    def __init__(self) -> None:
        self.means: list[np.ndarray] = []
        self.variances: list[np.ndarray] = []
        self.cov_sum: np.ndarray | float = 0.0

    def add(self, mean: np.ndarray, cov: np.ndarray) -> None:
        self.means.append(np.asarray(mean))
        self.variances.append(np.diag(cov).copy())
        self.cov_sum = self.cov_sum + cov

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        means = np.array(self.means)
        mean = means.mean(axis=0)
        centred = means - mean
        return mean, self.cov_sum / len(means) + centred.T @ centred / len(means)

    def quantiles(self, probs: Sequence[float]) -> np.ndarray:
        return mixture_quantiles(np.array(self.means), np.array(self.variances), probs)


def hyperposterior_nuts(model: Magma, inputs: Any | None = None, *, prob: float = 0.95) -> xr.Dataset:
    """``Magma.hyperposterior`` for a NUTS fit: the mixture over (thinned) draws, exact mixture intervals."""
    x = model.mean_process_grid if inputs is None else as_inputs(inputs, input_dim=model.data_.input_dim)
    draws, jitter = _draw_args(model)
    problem, m0 = model._problem_, model._prior_mean_value(x)
    mixture = _Mixture()
    for hp in draws:
        mixture.add(*mean_process_at(problem.graphs, hp, problem.data_args, jitter, x, m0))
    ds = gaussian_dataset(x, model.data_.input_names, *mixture.moments(), prob, full_cov=True)
    lower, upper = mixture.quantiles((0.5 - prob / 2, 0.5 + prob / 2))
    ds["lower"], ds["upper"] = ("input", lower), ("input", upper)
    ds.attrs.update(n_draws=len(draws), intervals="Gaussian-mixture quantiles over posterior draws")
    return ds


def predict_nuts(
    model: Magma, new_data: Any, inputs: Any, *, prob: float = 0.95, full_cov: bool = False, **data_options: Any
) -> xr.Dataset:
    r"""``Magma.predict`` for a NUTS fit: average of the per-draw MAGMA predictions.

    For every (thinned) posterior draw :math:`s`: :math:`\mu_0` at :math:`(t_*, t_p)`, the new
    individual's HP (reused, or fitted for different HP: :func:`~magma_pymc.predict.fit_new_individual`),
    and the Gaussian conditional :math:`\mathcal N(m_s, V_s)`. The result is the mixture:
    ``mean`` :math:`=\frac1S\sum_s m_s`, ``variance`` :math:`=\frac1S\sum_s V_s + \mathrm{Var}_s(m_s)`,
    ``lower``/``upper`` its exact quantiles (:func:`mixture_quantiles`); the ``latent_*`` variables
    likewise without the noise. ``attrs``: ``n_draws`` and the median over draws of the new
    individual's HP (``hp_<name>``).
    """
    d = model.data_.input_dim
    individual = as_individual(new_data, input_dim=d, **data_options)
    pred_inputs = as_inputs(inputs, input_dim=d)
    joint_inputs = np.concatenate([individual.inputs, pred_inputs])
    draws, jitter = _draw_args(model)
    problem, n_obs = model._problem_, individual.n_points
    graphs, m0 = problem.graphs, model._prior_mean_value(joint_inputs)
    bounds = problem.bounds[: len(model.kernel.names) + 1]
    latent, predictive, new_hp = _Mixture(), _Mixture(), []
    for mean_log, log_params in draws:
        joint_mean, joint_cov = mean_process_at(
            graphs, (mean_log, log_params), problem.data_args, jitter, joint_inputs, m0
        )
        hp = fit_new_individual(
            graphs, individual, joint_mean[:n_obs], joint_cov[:n_obs, :n_obs], log_params, bounds, jitter,
            empirical_prior=model.new_individual_hp == "map",
        )
        pred = predict_individual(graphs, individual, pred_inputs, joint_mean, joint_cov, hp, jitter)
        latent.add(pred.mean, pred.latent_cov)
        predictive.add(pred.mean, pred.predictive_cov)
        new_hp.append(hp.log_params)
    ds = gaussian_dataset(pred_inputs, model.data_.input_names, *predictive.moments(), prob, full_cov)
    probs = (0.5 - prob / 2, 0.5 + prob / 2)
    lower, upper = predictive.quantiles(probs)
    latent_lower, latent_upper = latent.quantiles(probs)
    ds = ds.assign(lower=("input", lower), upper=("input", upper),
                   latent_variance=("input", np.diag(latent.moments()[1])),
                   latent_lower=("input", latent_lower), latent_upper=("input", latent_upper))
    median_hp = np.exp(np.median(np.array(new_hp), axis=0))
    ds.attrs.update(
        individual=str(individual.id), prediction_type="I" if n_obs else "II", hp_source=hp.source,
        n_draws=len(draws), intervals="Gaussian-mixture quantiles over posterior draws",
        **{f"hp_{name}": float(v) for name, v in zip((*model.kernel.names, NOISE), median_hp, strict=True)},
    )
    return ds


def compare_fits(
    *models: Magma | Mapping[str, Magma],
    new_data: pd.DataFrame | None = None,
    target: pd.DataFrame | None = None,
    prob: float = 0.95,
    id_col: str = "ID",
    output_col: str = "Output",
) -> pd.DataFrame:
    r"""Side-by-side table of fitted models (EM, NUTS, fixed...), one row per model.

    ``compare_fits(em, nuts, ...)`` labels rows ``"0: em"``, ``"1: nuts"``;
    ``compare_fits({"EM": em, "NUTS": nuts}, ...)`` uses the given labels.

    Columns: ``method``; the HP estimates (EM: the optimum; NUTS: the posterior median; with
    different HP, the median over individuals) named as in ``idata_.posterior``; ``log_likelihood``,
    the exact marginal :math:`\log p(y\mid\hat\Theta)` at those HP (comparable across models fitted
    to the same data); ``fit_seconds`` (wall time of ``fit``). With ``new_data`` (observed points of
    new individuals, long format) and ``target`` (their points to forecast, long format; an ID absent
    from ``new_data`` is a Type II prediction): ``mse`` of the predictive mean over all target
    points and ``coverage`` of the central ``prob`` predictive intervals.
    """
    if len(models) == 1 and isinstance(models[0], Mapping):
        models = models[0]
    else:
        models = {f"{i}: {m.idata_.attrs.get('method', '?')}": m for i, m in enumerate(models)}
    rows = {}
    for label, model in models.items():
        model._check_fitted()
        hp = model.hyperparameters_
        row: dict[str, Any] = {"method": model.idata_.attrs.get("method", "?")}
        row.update({MEAN_PREFIX + k: float(v) for k, v in hp.mean_process.items()})
        row.update({k: float(v) for k, v in hp.individual.median(axis=0).items()})
        row["log_likelihood"] = float(estep(model._state, model._problem_)[0].log_likelihood)
        row["fit_seconds"] = float(getattr(model, "fit_seconds_", np.nan))
        if target is not None:
            row.update(_forecast_scores(model, new_data, target, prob, id_col, output_col))
        rows[label] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def _forecast_scores(model: Magma, new_data, target, prob: float, id_col: str, output_col: str) -> dict[str, float]:
    names = list(model.data_.input_names)
    errors, inside = [], []
    for ident, rows in target.groupby(id_col, sort=False):
        observed = None if new_data is None else new_data[new_data[id_col] == ident]
        observed = None if observed is None or observed.empty else observed
        pred = model.predict(observed, rows[names].to_numpy(dtype=float), prob=prob, id_col=id_col,
                             input_cols=names, output_col=output_col)
        y = rows[output_col].to_numpy(dtype=float)
        errors.append((pred["mean"].values - y) ** 2)
        inside.append((pred["lower"].values <= y) & (y <= pred["upper"].values))
    return {"mse": float(np.concatenate(errors).mean()), "coverage": float(np.concatenate(inside).mean())}
