"""Population distribution of the individual HP: the EM estimates' spread, with or without their estimation error.

A well-specified simulation (the model itself, known truth): a mean process mu0 ~ GP(0, SE(2, 2)) on
[0, 10]; individuals with log HP (variance, lengthscale, noise) ~ N(log(1, 1.2, 0.05), diag(0.4, 0.25,
0.5)^2) and 12 random inputs each; 40 training individuals fitted by EM (different HP, prior mean 0);
300 new individuals with 8 points in [0, 7] observed and one forecast at 9 (Type I), and the first
150 of them forecast at 9 with nothing observed (Type II). Each new individual's HP are integrated
(the default prediction) under the population distribution estimated ``"empirical"`` (the training
estimates' mean and covariance), ``"random_effects"`` (:mod:`magma_pymc.population`) or ``"marginal"``
(the individuals' marginal likelihoods, :mod:`magma_pymc.population_em`; the default). Prints the
coverage of the central 50 / 80 / 95 % intervals (from the PIT of the mixture) and the MSE.

Run: ``python benchmarks/bench_population.py [seed ...] [estimate ...]`` (default seed 7, all three estimates).
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pandas as pd

import magma_pymc as mp
import magma_pymc.predictive as predictive
from magma_pymc import scoring

POP_MEAN, POP_SD = np.log([1.0, 1.2, 0.05]), np.array([0.4, 0.25, 0.5])
LEVELS = (0.5, 0.8, 0.95)


def se(a, b, variance, lengthscale):
    return variance * np.exp(-0.5 * (a[:, None] - b[None, :]) ** 2 / lengthscale**2)


def simulate(rng, n_train=40, n_new=300):
    grid = np.linspace(0, 10, 101)
    mu0 = np.linalg.cholesky(se(grid, grid, 2.0, 2.0) + 1e-8 * np.eye(101)) @ rng.standard_normal(101)

    def individual(inputs, log_hp):
        v, ell, s2 = np.exp(log_hp)
        chol = np.linalg.cholesky(se(inputs, inputs, v, ell) + 1e-9 * np.eye(len(inputs)))
        f = chol @ rng.standard_normal(len(inputs))
        return np.interp(inputs, grid, mu0) + f + np.sqrt(s2) * rng.standard_normal(len(inputs))

    log_hp = POP_MEAN + POP_SD * rng.standard_normal((n_train + n_new, 3))
    train = []
    for i in range(n_train):
        t = np.sort(rng.choice(grid, 12, replace=False))
        train.append(pd.DataFrame({"ID": f"i{i:02d}", "Input": t, "Output": individual(t, log_hp[i])}))
    new = [(t, individual(t, log_hp[n_train + i]))
           for i, t in enumerate(np.append(np.sort(rng.uniform(0, 7, 8)), 9.0) for _ in range(n_new))]
    return pd.concat(train, ignore_index=True), new


def pit(pred, y):
    return scoring.mixture_cdf(y, pred["component_weight"].values, pred["component_mean"].values,
                               np.sqrt(pred["component_variance"].values))[0]


ESTIMATES = ("empirical", "random_effects", "marginal")


def main(seeds, estimates=ESTIMATES):
    warnings.simplefilter("ignore")
    print("| seed | population | Type I cov50 | cov80 | cov95 | MSE | Type II cov50 | cov80 | cov95 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for seed in seeds:
        train, new = simulate(np.random.default_rng(seed))
        model = mp.Magma(common_hp=False, prior_mean=0.0).fit(train)
        for estimate in estimates:
            predictive.POPULATION_ESTIMATE = estimate
            model.result_.__dict__.pop("_population", None)  # recomputed under this estimate
            type1 = [(model.predict((t[:-1], y[:-1]), t[-1:], components=True), y[-1:]) for t, y in new]
            type2 = [(model.predict(None, t[-1:], components=True), y[-1:]) for t, y in new[:150]]
            cells = []
            for preds in (type1, type2):
                p = np.array([pit(pred, y) for pred, y in preds])
                cells += [f"{np.mean((p >= (1 - lv) / 2) & (p <= (1 + lv) / 2)):.3f}" for lv in LEVELS]
                if preds is type1:
                    cells.append(f"{np.mean([(pred['mean'].values[0] - y[0]) ** 2 for pred, y in preds]):.3f}")
            print(f"| {seed} | {estimate} | " + " | ".join(cells) + " |", flush=True)
    predictive.POPULATION_ESTIMATE = "marginal"


if __name__ == "__main__":
    args = sys.argv[1:]
    main([int(a) for a in args if a.isdigit()] or [7], [a for a in args if not a.isdigit()] or ESTIMATES)
