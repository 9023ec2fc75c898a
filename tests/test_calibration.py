"""Coverage of the integrated prediction on a well-specified simulation, within binomial limits."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import magma_pymc as mp
from magma_pymc import scoring

POP_MEAN = np.log([1.0, 1.2, 0.05])     # variance, lengthscale, noise of the individual processes
POP_SD = np.array([0.4, 0.25, 0.5])
HP0 = dict(variance=2.0, lengthscale=2.0)
LEVELS = (0.5, 0.8, 0.95)


def se(a, b, variance, lengthscale):
    return variance * np.exp(-0.5 * (a[:, None] - b[None, :]) ** 2 / lengthscale**2)


def simulate(rng, n_train, n_new):
    """Training and new individuals of the model itself: mu0 ~ GP(0, k0), log HP ~ N(POP_MEAN, diag(POP_SD^2))."""
    grid = np.linspace(0, 10, 101)
    mu0 = np.linalg.cholesky(se(grid, grid, **HP0) + 1e-8 * np.eye(101)) @ rng.standard_normal(101)

    def individual(inputs, log_hp):
        v, l, s2 = np.exp(log_hp)
        f = np.linalg.cholesky(se(inputs, inputs, v, l) + 1e-9 * np.eye(len(inputs))) @ rng.standard_normal(len(inputs))
        return np.interp(inputs, grid, mu0) + f + np.sqrt(s2) * rng.standard_normal(len(inputs))

    log_hp = POP_MEAN + POP_SD * rng.standard_normal((n_train + n_new, 3))
    train = []
    for i in range(n_train):
        t = np.sort(rng.choice(grid, 12, replace=False))
        train.append(pd.DataFrame({"ID": f"i{i:02d}", "Input": t, "Output": individual(t, log_hp[i])}))
    new = []
    for i in range(n_new):  # 8 points observed in [0, 7], one forecast at 9
        t = np.append(np.sort(rng.uniform(0, 7, 8)), 9.0)
        new.append((t, individual(t, log_hp[n_train + i])))
    table = pd.DataFrame(np.exp(log_hp[:n_train]), index=[f"i{i:02d}" for i in range(n_train)],
                         columns=["variance", "lengthscale", "noise"])
    return pd.concat(train, ignore_index=True), new, table


@pytest.mark.slow
def test_integrated_intervals_cover_within_binomial_limits():
    """300 independent forecasts (one point per new individual, its HP from the population): the
    counts inside the 50 / 80 / 95 % intervals lie within the two-sided 99.9 % binomial interval of
    a calibrated forecast. Mean-process HP and training HP are the truth, so what is tested is the
    integration over the new individual's HP given the estimated population distribution."""
    rng = np.random.default_rng(2024)
    train, new, table = simulate(rng, 40, 300)
    model = mp.Magma(common_hp=False, prior_mean=0.0).fit(
        train, method="fixed", hyperparameters={"mean_process": HP0, "individual": table})
    pit = []
    for t, y in new:
        pred = model.predict((t[:-1], y[:-1]), t[-1:], components=True)
        assert pred.attrs["hp_source"] == "integrated"
        pit.append(scoring.mixture_cdf(y[-1:], pred["component_weight"].values, pred["component_mean"].values,
                                       np.sqrt(pred["component_variance"].values))[0])
    pit = np.array(pit)
    for level in LEVELS:  # inside the central interval of mass `level` <=> PIT within (1 -+ level) / 2
        inside = int(np.sum((pit >= (1 - level) / 2) & (pit <= (1 + level) / 2)))
        low, high = stats.binom.interval(0.999, len(new), level)
        assert low <= inside <= high, (level, inside, (low, high))
