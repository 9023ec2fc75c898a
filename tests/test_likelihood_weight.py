"""The likelihood weight of new_individual_hp="calibrated": held-out forecasts against a dense reference,
the choice rule, and the choice on simulations with known structure."""

import itertools
import warnings

import numpy as np
import pytest
from conftest import NEW_T, NEW_Y, T_PRED, fit_fixed, make_long
from scipy import stats

import magma_pymc as mp
from magma_pymc import hp_integration as hpi
from magma_pymc import likelihood_weight as lw
from magma_pymc.population_em import IndividualTerms

PRIOR = hpi.PopulationPrior(np.log([1.0, 1.5, 0.1]), np.diag([0.3, 0.1, 0.3]))


def se_kernel(t, x):
    variance, lengthscale = np.exp(x[:2])
    return variance * np.exp(-0.5 * (t[:, None] - t[None, :]) ** 2 / lengthscale**2)


def dense_held_out_crps(term, weight):
    """Trapezoid rule over the log HP (15^3 nodes, +-4.5 prior sd) of the tempered posterior given the first
    60 % of the points; the CRPS of the resulting mixture at each later point by integrating (F - 1{z >= y})^2."""
    t, r, cov = term.inputs[:, 0], term.residuals, term.cov
    n = len(t)
    o, p = np.arange(int(0.6 * n)), np.arange(int(0.6 * n), n)
    sd = np.sqrt(np.diag(PRIOR.cov))
    axes = [np.linspace(m - 4.5 * s, m + 4.5 * s, 15) for m, s in zip(PRIOR.mean, sd, strict=True)]
    nodes = np.array(list(itertools.product(*axes)))
    log_w, means, sds = [], [], []
    for x in nodes:
        sigma = cov + se_kernel(t, x) + np.exp(x[2]) * np.eye(n)
        s_oo, s_po = sigma[np.ix_(o, o)], sigma[np.ix_(p, o)]
        log_w.append(weight * stats.multivariate_normal(np.zeros(len(o)), s_oo).logpdf(r[o])
                     + stats.multivariate_normal(PRIOR.mean, PRIOR.cov).logpdf(x))
        means.append(s_po @ np.linalg.solve(s_oo, r[o]))
        sds.append(np.sqrt(np.diag(sigma[np.ix_(p, p)] - s_po @ np.linalg.solve(s_oo, s_po.T))))
    w = np.exp(np.array(log_w) - max(log_w))
    w /= w.sum()
    means, sds = np.array(means), np.array(sds)
    z = np.linspace(-15, 15, 6001)
    scores = []
    for k, y in enumerate(r[p]):
        cdf = w @ stats.norm.cdf((z[None, :] - means[:, k, None]) / sds[:, k, None])
        scores.append(np.trapezoid((cdf - (z >= y)) ** 2, z))
    return float(np.mean(scores))


@pytest.fixture
def graphs_and_starts(small_problem):
    model, _ = fit_fixed(small_problem, common_hp=False)
    problem = model.result_.problem
    return problem.graphs, model.result_.point.log_params, problem.bounds[:3]


def test_held_out_crps_matches_dense_quadrature(graphs_and_starts):
    """One individual's forecast of its last 4 of 10 points, mu0's (leave-one-out) covariance given, at the
    posterior (weight 1) and a tempered one (0.2): importance sampling against the dense trapezoid rule."""
    graphs, starts, bounds = graphs_and_starts
    rng = np.random.default_rng(5)
    t = np.sort(rng.uniform(0, 10, 10))
    cov = 0.2 * np.exp(-0.5 * (t[:, None] - t[None, :]) ** 2 / 3.0**2) + 1e-9 * np.eye(10)
    residuals = np.sin(t) + rng.normal(0, 0.3, 10)
    term = IndividualTerms(t[:, None], residuals, cov)
    scores = lw.held_out_crps(graphs, term, starts, PRIOR, bounds, 0.0, (1.0, 0.2))
    reference = [dense_held_out_crps(term, w) for w in (1.0, 0.2)]
    np.testing.assert_allclose(scores, reference, rtol=0.02)
    # The weight matters here: the two references differ by more than twice the tolerance.
    assert abs(reference[0] - reference[1]) > 0.05 * reference[0]


def test_choice_rule_and_its_stated_fallback(graphs_and_starts, monkeypatch):
    """The weight with the lowest mean CRPS wins; fewer than MIN_INDIVIDUALS scorable individuals (too few
    points to split count as none): the posterior, weight 1, with the count stated."""
    graphs, starts, bounds = graphs_and_starts
    table = {0: [3.0, 2.0, 2.5], 1: [1.0, 1.4, 0.9]}   # means 2.0, 1.7, 1.7 -> first minimum, 0.5
    calls = iter([table[0], table[1]] * 3)
    monkeypatch.setattr(lw, "held_out_crps", lambda *a, **k: np.array(next(calls)))
    monkeypatch.setattr(lw, "MIN_INDIVIDUALS", 2)
    choice = lw.choose_likelihood_weight(graphs, [object(), object()], starts, PRIOR, bounds, 0.0)
    assert choice.weight == 0.5 and choice.n_individuals == 2
    np.testing.assert_allclose(list(choice.crps.values()), [2.0, 1.7, 1.7])
    monkeypatch.setattr(lw, "MIN_INDIVIDUALS", 3)
    assert lw.choose_likelihood_weight(graphs, [object(), object()], starts, PRIOR, bounds, 0.0) == (1.0, {}, 2)
    short = IndividualTerms(np.zeros((2, 1)), np.zeros(2), np.eye(2))   # 2 points: nothing to split
    assert lw._split(short) is None


def _growth_panel(seed, n_individuals=24, n_points=12):
    """Curves on [0, 10] whose deviations from a common mean are small on the first 60 % of the inputs and
    grow after (a random slope from t = 6): early points understate the late spread."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 10, n_points)
    curves = []
    for _ in range(n_individuals):
        smooth = 0.3 * np.sin(t / 2 + rng.uniform(0, 6))
        slope = rng.normal(0, 1.5) * np.clip(t - 6, 0, None)
        curves.append((t, np.sin(t) + smooth + slope + rng.normal(0, 0.1, n_points)))
    return make_long(curves)


def test_calibrated_prediction_tempers_where_early_points_mislead_and_states_the_weight():
    """On curves that leave the mean only after their first 60 % the training individuals' own forecasts
    prefer a tempered posterior (weight < 1); Magma.predict states the weight and uses it (its intervals
    cover the held-out late points of new curves better than the posterior's); a fit on too few
    individuals keeps weight 1."""
    train, test = _growth_panel(0), _growth_panel(1, n_individuals=10)
    with warnings.catch_warnings():  # a flat training curve's lengthscale on its bound: not what is tested
        warnings.simplefilter("ignore", mp.ConvergenceWarning)
        model = mp.Magma(common_hp=False, new_individual_hp="calibrated").fit(train)
    hits = {"calibrated": [], "integrated": []}
    for _, curve in test.groupby("ID"):
        observed, late = curve.iloc[:7], curve.iloc[7:]
        for name in hits:
            model.new_individual_hp = name
            pred = model.predict(observed, late["Input"].to_numpy(), prob=0.9)
            y = late["Output"].to_numpy()
            inside = (y >= pred["lower"].values) & (y <= pred["upper"].values)
            hits[name].extend(inside)
            if name == "calibrated":
                assert pred.attrs["hp_likelihood_weight"] < 1.0
    assert np.mean(hits["calibrated"]) > np.mean(hits["integrated"])
    few, _ = fit_fixed([(NEW_T, NEW_Y), (NEW_T + 0.5, NEW_Y), (NEW_T + 1.0, -NEW_Y)], common_hp=False,
                       new_individual_hp="calibrated")
    assert few.predict((NEW_T, NEW_Y), T_PRED).attrs["hp_likelihood_weight"] == 1.0
