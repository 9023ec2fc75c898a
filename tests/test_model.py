"""The declared PyMC model: structure, coords and log-density against SciPy."""

import numpy as np
from conftest import make_long
from pymc.model_graph import ModelGraph
from reference import se
from scipy import stats

import magma_pymc as mp


def test_declared_model_structure_and_logp(small_problem):
    model = mp.Magma(common_hp=False, prior_mean=0.5, max_iter=1)
    model.fit(make_long(small_problem), method="fixed", hyperparameters={
        "mean_process": {"variance": 2.0, "lengthscale": 1.5},
        "individual": {"variance": 1.0, "lengthscale": 0.8, "noise": 0.2},
    })
    pm_model = model.build_model()
    assert {"mu0", "f", "y", "log_mu0_hp", "log_hp"} <= set(pm_model.named_vars)
    assert pm_model.coords["individual"] == ("i0", "i1", "i2", "i3")
    assert len(pm_model.coords["input"]) == model.data_.n_inputs
    assert pm_model.named_vars_to_dims["y"] == ("obs",)
    plates = {tuple(p.dim_info.names): p for p in ModelGraph(pm_model).get_plates()}  # what model_to_graphviz draws
    assert ("individual", "slot") in plates and ("obs",) in plates

    # Log-density at a point, against SciPy.
    rng = np.random.default_rng(1)
    data = model.data_
    log_mu0_hp = np.log([2.0, 1.5])
    log_hp = np.log(rng.uniform(0.3, 2.0, (4, 3)))
    mu0 = rng.normal(0, 1, data.n_inputs)
    f = rng.normal(0, 1, (4, data.n_max))
    terms = [pm_model[name] for name in ("mu0", "f", "y")]
    logp = pm_model.compile_logp(vars=terms, jacobian=False)(
        {"log_mu0_hp": log_mu0_hp, "log_hp": log_hp, "mu0": mu0, "f": f}
    )
    t = data.grid[:, 0]
    expected = stats.multivariate_normal(np.full(t.size, 0.5), se(t, t, 2.0, 1.5) + 1e-8 * np.eye(t.size)).logpdf(mu0)
    for i, ind in enumerate(data.individuals):
        n = ind.n_points
        v, l, s2 = np.exp(log_hp[i])
        cov = np.eye(data.n_max)
        cov[:n, :n] = se(ind.inputs[:, 0], ind.inputs[:, 0], v, l) + 1e-8 * np.eye(n)
        expected += stats.multivariate_normal(np.zeros(data.n_max), cov).logpdf(f[i])
        latent = mu0[data.index[i, :n]] + f[i, :n]
        expected += stats.norm(latent, np.sqrt(s2)).logpdf(ind.outputs).sum()
    np.testing.assert_allclose(logp, expected, rtol=1e-8)
