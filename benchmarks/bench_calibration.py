"""Calibration benchmark: do MAGMA's prediction intervals cover what they claim.

Held-out individuals of the bundled real data sets and fresh simulated data sets of the MAGMA
paper's protocol are forecast by each method; every forecast point is scored by its marginal
predictive distribution (a Gaussian mixture, :mod:`magma_pymc.scoring`):

* coverage of the central 50 / 80 / 95 % intervals (pooled over all forecast points);
* IS95: mean interval score of the 95 % interval (width plus 40 x the miss distance);
* CRPS: mean continuous ranked probability score (proper; in the units of the outputs);
* MSE of the predictive mean;
* pred_s, fit_s: median CPU seconds (``time.process_time``, one BLAS thread) of a prediction and a fit;
* PIT: histogram of F(y) in 10 bins, as density (1 = uniform; a U shape means too narrow).

Data (seeded; the same held-out individuals for every method):

* real: ``weight`` (100 training children, 40 held out), ``swimmers`` (gender code 1, 20 training,
  30 held out), ``ECG5000`` (normal beats, 20 training, 30 held out), ``traffic`` (Dodgers loop days,
  20 training, 30 held out). Type I: the first 60 % of a held-out individual's points observed, the
  rest forecast. Type II: all its points forecast, none observed.
  ``--splits K`` pools K seeded training / held-out splits per data set (default 1: seed 0 only).
* simulated (the MAGMA paper's protocol, Leroy et al. 2022, section 5, implemented here): grid 0..10
  step 0.05; prior mean m0(t) = a t + b, a ~ U[-2, 2], b ~ U[0, 10]; SE kernels with variance e^u,
  u ~ U[0, 5] and lengthscale e^(v/2), v ~ U[0, 2], for mu0 and each individual; noise variance
  ~ U[0, 1]; M = 20 training individuals of 30 points (the same 30 inputs for all on a common grid,
  drawn per individual otherwise); HP shared by all individuals (common HP) or drawn per individual
  (different HP). Three new individuals per data set (``--n-new``): Type I forecasts the last 10 of their 30
  points from the first 20; Type II forecasts the 30 points. The model's ``common_hp`` matches the
  data's setting.

Methods: ``single_gp`` (:class:`magma_pymc.baselines.SingleGP` on the observed points; Type I
only) and the MAGMA variants of :data:`METHODS`.

Run (from the repository root)::

    python benchmarks/bench_calibration.py --quick                     # 3 simulated data sets per setting
    python benchmarks/bench_calibration.py --methods default,single_gp --csv benchmarks/calibration.csv
    python benchmarks/bench_calibration.py --tables benchmarks/calibration.csv   # print saved tables
    python benchmarks/bench_calibration.py --only mine --panel mine.csv   # your own panel (ID, Input, Output)
    python benchmarks/bench_calibration.py --methods integrated --only weight,swimmers,ECG5000,traffic --splits 6
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pymc as pm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import magma_pymc as mp  # noqa: E402
from magma_pymc import scoring  # noqa: E402
from magma_pymc.baselines import SingleGP  # noqa: E402

LEVELS = (0.5, 0.8, 0.95)
PIT_BINS = 10
OBSERVED_FRACTION = 0.6


# ------------------------------------------------------------------------------------ data
@dataclass
class Case:
    """One training set and its held-out individuals: ``splits[id] = (observed, target)`` for Type I."""

    data: str
    common_hp: bool
    train: pd.DataFrame
    splits: dict
    full: dict = field(default_factory=dict)  # id -> all points (Type II)


def paper_data_set(rng: np.random.Generator, common_grid: bool, common_hp: bool, n_train: int = 20,
                   n_new: int = 5, n_points: int = 30, n_observed: int = 20) -> tuple[pd.DataFrame, dict, dict]:
    """One data set of the MAGMA paper's protocol (module docstring)."""
    grid = np.round(np.arange(201) * 0.05, 10)
    slope, intercept = rng.uniform(-2, 2), rng.uniform(0, 10)

    def kernel_hp():
        return np.exp(rng.uniform(0, 5)), np.exp(rng.uniform(0, 2) / 2)

    def draw(x, variance, lengthscale):
        d = x[:, None] - x[None, :]
        cov = variance * np.exp(-0.5 * (d / lengthscale) ** 2) + 1e-8 * variance * np.eye(len(x))
        w, u = np.linalg.eigh(cov)
        return u @ (np.sqrt(np.clip(w, 0, None)) * rng.standard_normal(len(x)))

    mu0 = slope * grid + intercept + draw(grid, *kernel_hp())
    shared = (*kernel_hp(), rng.uniform(0, 1))
    shared_inputs = np.sort(rng.choice(len(grid), n_points, replace=False))
    rows = []
    for k in range(n_train + n_new):
        variance, lengthscale, noise = shared if common_hp else (*kernel_hp(), rng.uniform(0, 1))
        idx = shared_inputs if common_grid else np.sort(rng.choice(len(grid), n_points, replace=False))
        t = grid[idx]
        y = mu0[idx] + draw(t, variance, lengthscale) + np.sqrt(noise) * rng.standard_normal(n_points)
        rows.append(pd.DataFrame({"ID": f"{'i' if k < n_train else 'new'}{k:02d}", "Input": t, "Output": y}))
    train = pd.concat(rows[:n_train], ignore_index=True)
    splits = {r["ID"].iloc[0]: (r.iloc[:n_observed], r.iloc[n_observed:]) for r in rows[n_train:]}
    full = {r["ID"].iloc[0]: r for r in rows[n_train:]}
    return train, splits, full


def _split_fraction(individual: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    individual = individual.sort_values("Input")
    n_observed = max(1, int(np.floor(OBSERVED_FRACTION * len(individual))))
    return individual.iloc[:n_observed], individual.iloc[n_observed:]


def held_out_case(name: str, data: pd.DataFrame, common_hp: bool, n_train: int, n_test: int, split: int) -> Case:
    """One split: IDs permuted with seed ``split``; the first ``n_test`` held out, the next ``n_train`` trained on."""
    ids = np.random.default_rng(split).permutation(np.asarray(data["ID"].unique(), dtype=object))
    test_ids, train_ids = ids[:n_test], ids[n_test:n_test + n_train]
    groups = {i: g for i, g in data[data["ID"].isin(test_ids)].groupby("ID")}
    return Case(name, common_hp, data[data["ID"].isin(train_ids)].reset_index(drop=True),
                {i: _split_fraction(groups[i]) for i in test_ids}, {i: groups[i] for i in test_ids})


def real_cases(common_hp: bool, quick: bool, split: int = 0) -> list[Case]:
    """Held-out individuals of the bundled real data sets (module docstring), split ``split`` (0: the default)."""
    loaders = {
        "weight": (lambda: mp.datasets.load_weight(), 100, 40),
        "swimmers": (lambda: mp.datasets.load_swimmers(gender=1), 20, 30),
        "ECG5000": (lambda: mp.datasets.load_ecg5000(label=1), 20, 30),
        "traffic": (lambda: mp.datasets.load_dodgerloop(), 20, 30),
    }
    return [held_out_case(name, load()[["ID", "Input", "Output"]], common_hp, n_train, 5 if quick else n_test, split)
            for name, (load, n_train, n_test) in loaders.items()]


def panel_cases(paths: list[str], common_hp: bool, max_test: int = 30, max_train: int = 100,
                split: int = 0) -> list[Case]:
    """Held-out individuals of the user's own panels: long CSV files with columns ``ID``, ``Input``, ``Output``.

    As :func:`real_cases`: a seeded permutation of the IDs holds out ``min(max_test, M // 3)``
    individuals and trains on up to ``max_train`` of the others; the case is named after the file.
    """
    cases = []
    for path in paths:
        data = pd.read_csv(path)[["ID", "Input", "Output"]]
        n_test = min(max_test, data["ID"].nunique() // 3)
        cases.append(held_out_case(Path(path).stem, data, common_hp, max_train, n_test, split))
    return cases


def simulated_cases(common_grid: bool, common_hp: bool, n_sets: int, n_new: int) -> list[Case]:
    label = f"sim {'common' if common_grid else 'uncommon'} grid, {'common' if common_hp else 'diff'} HP"
    cases = []
    for seed in range(n_sets):
        rng = np.random.default_rng([int(common_grid), int(common_hp), seed])
        train, splits, full = paper_data_set(rng, common_grid, common_hp, n_new=n_new)
        cases.append(Case(label, common_hp, train, splits, full))
    return cases


# --------------------------------------------------------------------------------- methods
@dataclass
class Mixture:
    """Marginal predictive mixtures at the forecast points: weights (K,), means and sds (K, n)."""

    weights: np.ndarray
    means: np.ndarray
    sds: np.ndarray


def from_dataset(ds) -> Mixture:
    """A one-component mixture from a ``Magma.predict`` / ``SingleGP.predict`` dataset, or its stored
    mixture components when it has them (``component_*`` variables)."""
    if "component_mean" in ds:
        return Mixture(ds["component_weight"].values, ds["component_mean"].values,
                       np.sqrt(ds["component_variance"].values))
    return Mixture(np.ones(1), ds["mean"].values[None], np.sqrt(ds["variance"].values)[None])


@dataclass
class Method:
    name: str
    fit_options: dict
    predict_options: dict = field(default_factory=dict)
    description: str = ""
    #: Estimator attributes that act at prediction only (set on a shared fit instead of refitting).
    predict_attributes: dict = field(default_factory=dict)
    #: ``(model, observed, inputs) -> Mixture`` instead of ``model.predict`` (prototypes).
    predictor: Callable | None = None
    #: ``case -> options`` added to :attr:`fit_options`, for options that depend on the training data.
    case_fit_options: Callable | None = None


def integrated_predictor(model, observed, inputs) -> Mixture:
    """Prototype: the new individual's HP integrated over their posterior under the population prior
    (:mod:`magma_pymc.hp_integration`); the plug-in prediction for common HP."""
    from magma_pymc import hp_integration as hpi
    from magma_pymc.data import as_individual, as_inputs
    from magma_pymc.predict import fit_new_individual, mean_process_at

    individual = as_individual(observed, input_dim=1)
    x = as_inputs(inputs, input_dim=1)
    joint_inputs = np.concatenate([individual.inputs, x])
    problem, state = model._problem_, model._state
    joint_mean, joint_cov = mean_process_at(problem.graphs, (state.mean_log_params, state.log_params),
                                            problem.data_args, state.jitter, joint_inputs,
                                            model._prior_mean_value(joint_inputs))
    n_obs = individual.n_points
    if model.common_hp:
        log_params = state.log_params[None]
        draws = hpi.HPDraws(log_params, np.ones(1), 1.0, "common")
    else:
        prior = hpi.PopulationPrior.from_training(state.log_params)
        if n_obs == 0:
            draws = hpi.population_draws(prior)
        else:
            obs_mean, obs_cov = joint_mean[:n_obs], joint_cov[:n_obs, :n_obs]
            fit = fit_new_individual(problem.graphs, individual, obs_mean, obs_cov, state.log_params,
                                     problem.bounds[: len(model.kernel.names) + 1], state.jitter, empirical_prior=True)
            draws = hpi.posterior_draws(model.kernel, individual.inputs, individual.outputs, obs_mean, obs_cov, prior,
                                        fit.log_params, state.jitter)
    comp = hpi.conditional_predictions(model.kernel, draws.log_params, individual.inputs, individual.outputs, x,
                                       joint_mean, joint_cov, state.jitter)
    variances = np.diagonal(comp.latent_covs, axis1=1, axis2=2) + comp.noise[:, None]
    return Mixture(draws.weights, comp.means, np.sqrt(np.maximum(variances, 0)))


def random_slope_kernel(origin: float) -> mp.Kernel:
    r"""The squared-exponential kernel plus a random slope from ``origin``:
    :math:`\sigma^2 \exp(-(t - t')^2 / 2\ell^2) + \beta^2 (t - t_0)(t' - t_0)`,
    the individual deviations' variance growing with time (growth data)."""
    def factory(variance, lengthscale, slope_variance):
        return variance * pm.gp.cov.ExpQuad(1, ls=lengthscale) + slope_variance * pm.gp.cov.Linear(1, c=origin)
    return mp.Kernel(factory, kinds={"slope_variance": "other"})


METHODS: dict[str, Method] = {
    "before": Method("before", {"mean_process_prior": None}, {},
                     "maximum-likelihood EM, the new individual's HP plugged in (MAP under the population prior)",
                     {"new_individual_hp": "map"}),
    "plugin": Method("plugin", {}, {}, "weak mean-process prior, the new individual's HP plugged in",
                     {"new_individual_hp": "map"}),
    "integrated": Method("integrated", {}, {"components": True},
                         "weak mean-process prior, the new individual's HP integrated (the defaults)",
                         {"new_individual_hp": "integrated"}),
    "calibrated": Method("calibrated", {}, {"components": True},
                         "weak mean-process prior, the new individual's HP integrated over their tempered posterior, "
                         "the likelihood weight chosen by the training individuals' held-out forecasts",
                         {"new_individual_hp": "calibrated"}),
    "prototype": Method("prototype", {}, {}, "integrated_predictor (the prototype)", predictor=integrated_predictor),
    "random_slope": Method("random_slope", {}, {"components": True},
                           "the defaults with random_slope_kernel as the individual kernel, origin at the first "
                           "training input", {"new_individual_hp": "integrated"},
                           case_fit_options=lambda case: {"kernel": random_slope_kernel(
                               float(case.train["Input"].min()))}),
}


def fit_model(method: Method, case: Case):
    options = dict(method.fit_options)
    if method.case_fit_options is not None:
        options.update(method.case_fit_options(case))
    fit_kwargs = options.pop("fit_kwargs", {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.process_time()
        model = mp.Magma(common_hp=case.common_hp, **options).fit(case.train, **fit_kwargs)
        seconds = time.process_time() - start
    n_warn = sum(issubclass(w.category, mp.MagmaWarning) for w in caught)
    return model, seconds, n_warn


def score(mix: Mixture, y: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    for level in LEVELS:
        lower, upper = scoring.central_interval(level, mix.weights, mix.means, mix.sds)
        out[f"cov{int(level * 100)}"] = (y >= lower) & (y <= upper)
        if level == 0.95:
            out["IS95"] = scoring.interval_score(y, lower, upper, 1 - level)
    out["CRPS"] = scoring.crps_mixture(y, mix.weights, mix.means, mix.sds)
    out["SE"] = (mix.weights @ mix.means - y) ** 2
    out["PIT"] = scoring.mixture_cdf(y, mix.weights, mix.means, mix.sds)
    return out


def run_case(case: Case, method_name: str, fitted: dict) -> list[dict]:
    """Score one method on one case (Type I and Type II); ``fitted`` caches fits by fit options."""
    records = []
    if method_name == "single_gp":
        for ident, (observed, target) in case.splits.items():
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = SingleGP().fit(observed).predict(target["Input"].to_numpy())
            records.append(dict(type="I", id=ident, seconds=time.perf_counter() - start,
                                **score(from_dataset(ds), target["Output"].to_numpy())))
        return records
    method = METHODS[method_name]
    # methods differing only at prediction share a fit
    key = repr(sorted(method.fit_options.items())) + (method.name if method.case_fit_options else "")
    if key not in fitted:
        fitted[key] = fit_model(method, case)
    model, fit_seconds, n_warn = fitted[key]
    defaults = {name: getattr(mp.Magma(), name) for name in ("new_individual_hp",)}
    for name, value in {**defaults, **method.predict_attributes}.items():
        setattr(model, name, value)
    for kind, items in (("I", case.splits.items()), ("II", ((i, (None, f)) for i, f in case.full.items()))):
        for ident, (observed, target) in items:
            start = time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if method.predictor is not None:
                    mix = method.predictor(model, observed, target["Input"].to_numpy())
                else:
                    mix = from_dataset(model.predict(observed, target["Input"].to_numpy(), **method.predict_options))
            records.append(dict(type=kind, id=ident, seconds=time.process_time() - start, fit_seconds=fit_seconds,
                                warnings=n_warn, **score(mix, target["Output"].to_numpy())))
    return records


def summarise(records: list[dict], data: str, hp: str, method: str) -> list[dict]:
    rows = []
    for kind in ("I", "II"):
        rec = [r for r in records if r["type"] == kind]
        if not rec:
            continue
        cat = {k: np.concatenate([np.atleast_1d(r[k]) for r in rec])
               for k in ("cov50", "cov80", "cov95", "IS95", "CRPS", "SE", "PIT")}
        hist = np.histogram(cat["PIT"], bins=PIT_BINS, range=(0, 1))[0] / len(cat["PIT"]) * PIT_BINS
        rows.append(dict(
            data=data, hp=hp, type=kind, method=method, n_ind=len(rec), n_pts=len(cat["SE"]),
            cov50=cat["cov50"].mean(), cov80=cat["cov80"].mean(), cov95=cat["cov95"].mean(),
            IS95=cat["IS95"].mean(), CRPS=cat["CRPS"].mean(), MSE=cat["SE"].mean(),
            PIT=" ".join(f"{h:.1f}" for h in hist),
            pred_s=float(np.median([r["seconds"] for r in rec])),
            fit_s=float(np.median([r.get("fit_seconds", np.nan) for r in rec])) if "fit_seconds" in rec[0] else np.nan,
            warned=float(np.mean([r.get("warnings", 0) > 0 for r in rec])),
        ))
    return rows


def print_tables(table: pd.DataFrame) -> None:
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    pd.set_option("display.max_rows", 500)
    for kind in ("I", "II"):
        sub = table[table["type"] == kind].sort_values(["data", "hp", "method"])
        if sub.empty:
            continue
        print(f"\n### Type {kind} ({'forecast from the early points' if kind == 'I' else 'no point observed'})\n")
        cols = ["data", "hp", "method", "n_pts", "cov50", "cov80", "cov95", "IS95", "CRPS", "MSE", "PIT", "pred_s",
                "fit_s"]
        print(markdown(sub[cols]))


def print_comparison(table: pd.DataFrame, before: str, after: str) -> None:
    """One row per (data, HP, type): coverage, CRPS and MSE of ``before`` and ``after`` side by side."""
    keys = ["data", "hp", "type"]
    cols = ["cov50", "cov80", "cov95", "CRPS", "MSE"]
    b = table[table["method"] == before].drop_duplicates(keys, keep="last").set_index(keys)[cols]
    a = table[table["method"] == after].drop_duplicates(keys, keep="last").set_index(keys)[cols]
    both = b.merge(a, left_index=True, right_index=True, suffixes=(" before", " after"))
    both["MSE ratio"] = both["MSE after"] / both["MSE before"]
    gp = (table[table["method"] == "single_gp"].drop_duplicates(["data", "type"], keep="last")
          .set_index(["data", "type"]))
    both["GP cov95"] = [gp["cov95"].get((d, t), np.nan) for d, _, t in both.index]
    both["GP MSE"] = [gp["MSE"].get((d, t), np.nan) for d, _, t in both.index]
    order = [f"{c} {w}" for c in cols for w in ("before", "after")] + ["MSE ratio", "GP cov95", "GP MSE"]
    print(f"\n### {before} -> {after}\n")
    print(markdown(both[order].reset_index().sort_values(["type", "hp", "data"])))


def markdown(frame: pd.DataFrame) -> str:
    """A Markdown table, numbers to 3 significant digits."""
    def cell(v):
        return f"{v:.3g}" if isinstance(v, float | np.floating) else str(v)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * frame.shape[1]]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="default,single_gp", help=f"comma list of single_gp, {', '.join(METHODS)}")
    parser.add_argument("--n-sim", type=int, default=40, help="simulated data sets per setting")
    parser.add_argument("--n-new", type=int, default=3, help="new individuals per simulated data set")
    parser.add_argument("--quick", action="store_true",
                        help="3 simulated data sets per setting, 5 held-out real individuals")
    parser.add_argument("--only", default="", help="comma list of data names (weight, swimmers, ECG5000, traffic, sim)")
    parser.add_argument("--hp", default="both", choices=["both", "common", "diff"])
    parser.add_argument("--panel", action="append", default=[],
                        help="a long CSV (columns ID, Input, Output) of your own to score, as the real data sets; "
                             "repeatable; with --only, name it by its file stem")
    parser.add_argument("--splits", type=int, default=1,
                        help="real data and panels: random training / held-out splits pooled per data set "
                             "(seeds 0..K-1)")
    parser.add_argument("--csv", default="", help="append the summary rows to this CSV")
    parser.add_argument("--tables", default="", help="only print the tables of saved CSVs (comma list)")
    parser.add_argument("--compare", default="", help="with --tables: 'before,after' methods side by side")
    args = parser.parse_args(argv)
    if args.tables:
        table = pd.concat([pd.read_csv(f) for f in args.tables.split(",")], ignore_index=True)
        if args.compare:
            print_comparison(table, *args.compare.split(","))
        else:
            print_tables(table)
        return table
    methods = [m for m in args.methods.split(",") if m]
    n_sim = 3 if args.quick else args.n_sim
    only = {o for o in args.only.split(",") if o}
    hp_settings = {"both": (True, False), "common": (True,), "diff": (False,)}[args.hp]
    rows = []
    for common_hp in hp_settings:
        hp = "common" if common_hp else "diff"
        with_sim = not only or "sim" in only
        groups = [simulated_cases(grid, common_hp, n_sim, args.n_new) for grid in (True, False)] if with_sim else []
        # Real data: one case per split, pooled into one row per data set (the held-out group shares the
        # mean process's estimation error, so one split's coverage varies by a few points from split to split).
        per_split = [[c for c in (*real_cases(common_hp, args.quick, k), *panel_cases(args.panel, common_hp, split=k))
                      if not only or c.data in only] for k in range(args.splits)]
        groups += [list(cases) for cases in zip(*per_split, strict=True)]
        for cases in groups:
            fitted_per_case = [dict() for _ in cases]
            for name in methods:
                start = time.perf_counter()
                records = [r for case, fitted in zip(cases, fitted_per_case, strict=True)
                           for r in run_case(case, name, fitted)]
                new_rows = summarise(records, cases[0].data, hp, name)
                rows += new_rows
                if args.csv:  # saved as they come: a long run interrupted keeps what it measured
                    pd.DataFrame(new_rows).to_csv(args.csv, mode="a", header=not os.path.exists(args.csv), index=False)
                for r in new_rows:
                    print(f"{r['data']:32s} {hp:6s} {r['type']:2s} {name:12s} "
                          f"cov50 {r['cov50']:.2f} cov80 {r['cov80']:.2f} cov95 {r['cov95']:.2f} "
                          f"CRPS {r['CRPS']:.3g} MSE {r['MSE']:.3g} [{time.perf_counter() - start:.0f} s]",
                          flush=True)
    table = pd.DataFrame(rows)
    print_tables(table)
    return table


if __name__ == "__main__":
    main()
