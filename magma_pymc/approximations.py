r"""Cheaper posterior approximations of a PyMC model than NUTS: Laplace at the MAP, and ADVI.

Both work on PyMC's unconstrained parameter vector :math:`x` (the log HP; PyMC's log transform for
a positive variable such as a population scale), on the model NUTS samples, and return draws as a
posterior ``xr.Dataset`` with dims ``(chain, draw, ...)`` (one chain), holding every free variable
on its own scale and every Deterministic, as ``pm.sample`` does.

*Laplace*: :math:`x^* = \arg\max \log p(x \mid y)` (SciPy's L-BFGS-B on PyMC's compiled log density
and gradient, polished by Newton steps), :math:`H = -\nabla^2 \log p(x^* \mid y)` by central
differences of the exact gradient (symmetrised; :math:`2\dim x` gradient evaluations), and draws
:math:`x = x^* + L^{-\top} z`, :math:`H = L L^\top`, :math:`z \sim \mathcal N(0, I)`. Where :math:`H` is not
positive definite (a ridge or a saddle: the Gaussian approximation does not exist) a ``ValueError`` says so.

*ADVI*: PyMC's ``pm.fit`` (mean-field ``"advi"`` or ``"fullrank_advi"``), the approximation's
draws mapped through the model's transforms. Pathfinder lives in pymc-extras, which does not
support this PyMC release; it is not offered.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pymc as pm
import xarray as xr
from pymc.blocking import DictToArrayBijection
from scipy import optimize

__all__ = ["laplace_posterior", "advi_posterior", "APPROXIMATIONS"]

#: Methods of this module, as ``Magma.fit(method=...)`` names them.
APPROXIMATIONS = ("laplace", "advi", "fullrank_advi")


def _log_density(pm_model: pm.Model, mode: str | None = None):
    point = pm_model.initial_point()
    value_vars = pm_model.value_vars
    bijection = DictToArrayBijection.map({v.name: point[v.name] for v in value_vars})
    logp_fn = pm_model.compile_fn([pm_model.logp(), pm_model.dlogp()], inputs=value_vars, point_fn=False, mode=mode)

    def value_and_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
        values = DictToArrayBijection.rmap(bijection._replace(data=x))
        logp, grad = logp_fn(*(values[v.name] for v in value_vars))
        return float(logp), np.asarray(grad, dtype=float)

    return bijection, value_and_grad


def _negative_hessian(value_and_grad, x: np.ndarray, step: float) -> np.ndarray:
    r""":math:`-\nabla^2 \log p` at ``x`` by central differences of the exact gradient, symmetrised."""
    dim = x.size
    hessian = np.empty((dim, dim))
    for k in range(dim):
        e = np.zeros(dim)
        e[k] = step
        hessian[k] = -(value_and_grad(x + e)[1] - value_and_grad(x - e)[1]) / (2 * step)
    return 0.5 * (hessian + hessian.T)


def _posterior_dataset(pm_model: pm.Model, bijection, draws: np.ndarray, mode: str | None = None) -> xr.Dataset:
    """Free variables (own scale) and Deterministics at each row of ``draws`` (unconstrained vectors)."""
    # Transformed values (PyMC names them `<name>_<transform>__`) are dropped: their variable is kept.
    outputs = [v for v in pm_model.unobserved_value_vars if not v.name.endswith("__")]
    fn = pm_model.compile_fn(outputs, inputs=pm_model.value_vars, point_fn=False, mode=mode)
    columns: dict[str, list] = {v.name: [] for v in outputs}
    for x in draws:
        values = DictToArrayBijection.rmap(bijection._replace(data=x))
        for var, value in zip(outputs, fn(*(values[v.name] for v in pm_model.value_vars)), strict=True):
            columns[var.name].append(np.asarray(value))
    coords = {name: list(values) for name, values in pm_model.coords.items()}
    data = {}
    for name, values in columns.items():
        dims = pm_model.named_vars_to_dims.get(name, ())
        array = np.stack(values)[None]                                   # (chain=1, draw, ...)
        extra = [f"{name}_dim_{k}" for k in range(array.ndim - 2 - len(dims))]
        data[name] = (("chain", "draw", *dims, *extra), array)
    used = {d for _, (dims, _) in data.items() for d in dims}
    return xr.Dataset(data, coords={"chain": [0], "draw": np.arange(len(draws)),
                                    **{k: v for k, v in coords.items() if k in used}})


def laplace_posterior(pm_model: pm.Model, *, draws: int = 1000, random_seed: Any = None,
                      start: dict | None = None, step: float = 1e-5, mode: str | None = None,
                      max_newton: int = 20) -> xr.Dataset:
    r"""Laplace approximation at the MAP (module docstring).

    ``attrs``: ``log_posterior_at_map``, ``hessian_condition``, ``optimiser_iterations``, ``seconds``.

    ``start``: initial values of some free variables (on their own scale), as ``pm.sample``'s
    ``initvals``; the MAP search starts from the model's initial point otherwise. ``mode``: the
    PyTensor compile mode of the log density.
    """
    begin = time.perf_counter()
    bijection, value_and_grad = _log_density(pm_model, mode)
    x0 = bijection.data.copy()
    if start:
        point = pm_model.initial_point()
        for name, value in start.items():
            transform = pm_model.rvs_to_transforms.get(pm_model[name])
            key = pm_model.rvs_to_values[pm_model[name]].name
            point[key] = np.asarray(value if transform is None else transform.forward(value).eval(), dtype=float)
        x0 = DictToArrayBijection.map({v.name: point[v.name] for v in pm_model.value_vars}).data

    def negative(x):
        value, grad = value_and_grad(x)
        if not np.isfinite(value):
            return np.inf, np.zeros_like(x)
        return -value, -grad

    result = optimize.minimize(negative, x0, jac=True, method="L-BFGS-B",
                               options=dict(maxiter=5000, ftol=1e-15, gtol=1e-9))
    # L-BFGS-B stops early on the flat ridges of GP likelihoods (relative reduction of f below its
    # tolerance): polish with Newton steps on the difference Hessian, which the approximation needs anyway.
    x_map, hessian = result.x, _negative_hessian(value_and_grad, result.x, step)
    newton_steps = 0
    for newton_steps in range(1, max_newton + 1):  # noqa: B007 (the count is reported after the loop)
        value, grad = value_and_grad(x_map)
        try:
            chol = np.linalg.cholesky(hessian)
            direction = np.linalg.solve(chol.T, np.linalg.solve(chol, grad))
        except np.linalg.LinAlgError:
            break
        length = 1.0
        while length > 1e-4 and not value_and_grad(x_map + length * direction)[0] > value:
            length /= 2
        if length <= 1e-4:
            break
        x_map = x_map + length * direction
        hessian = _negative_hessian(value_and_grad, x_map, step)
        if np.max(np.abs(length * direction)) < 1e-8:
            break
    try:
        factor = np.linalg.cholesky(hessian)
    except np.linalg.LinAlgError:
        eigenvalues = np.linalg.eigvalsh(hessian)
        raise ValueError(
            f"the Laplace approximation does not exist here: the negative Hessian of the log posterior at the "
            f"MAP is not positive definite (smallest eigenvalue {eigenvalues[0]:.3g}); use NUTS or ADVI"
        ) from None
    dim = x_map.size
    rng = np.random.default_rng(random_seed)
    z = rng.standard_normal((draws, dim))
    samples = x_map + np.linalg.solve(factor.T, z.T).T                 # x* + L^{-T} z
    posterior = _posterior_dataset(pm_model, bijection, samples, mode)
    eigenvalues = np.linalg.eigvalsh(hessian)
    posterior.attrs.update(log_posterior_at_map=value_and_grad(x_map)[0],
                           hessian_condition=float(eigenvalues[-1] / eigenvalues[0]),
                           optimiser_iterations=int(result.nit), newton_steps=newton_steps,
                           seconds=time.perf_counter() - begin)
    return posterior


def advi_posterior(pm_model: pm.Model, *, method: str = "advi", draws: int = 1000, n: int = 20000,
                   random_seed: Any = None, progressbar: bool = False, **fit_options: Any) -> xr.Dataset:
    """ADVI (``pm.fit``, ``method`` ``"advi"`` or ``"fullrank_advi"``, ``n`` iterations) and ``draws`` draws from it.

    ``attrs``: ``final_loss`` (negative ELBO, last 10 % mean), ``seconds``.
    """
    if method not in ("advi", "fullrank_advi"):
        raise ValueError(f"method must be 'advi' or 'fullrank_advi', got {method!r}")
    begin = time.perf_counter()
    rng = np.random.default_rng(random_seed)
    seeds = rng.integers(2**31, size=2)
    with pm_model:
        approximation = pm.fit(n=n, method=method, random_seed=int(seeds[0]), progressbar=progressbar, **fit_options)
    bijection, _ = _log_density(pm_model)
    # Draws of the unconstrained values (include_transformed), flattened in the bijection's order.
    tree = approximation.sample(draws, random_seed=int(seeds[1]), include_transformed=True)
    group = tree["posterior"] if isinstance(tree, xr.DataTree) else tree.posterior
    samples = np.stack([
        np.concatenate([np.asarray(group[v.name].values[0, d]).ravel() for v in pm_model.value_vars])
        for d in range(draws)
    ])
    posterior = _posterior_dataset(pm_model, bijection, samples)
    losses = np.asarray(approximation.hist)
    posterior.attrs.update(final_loss=float(losses[-max(1, len(losses) // 10):].mean()), iterations=int(n),
                           seconds=time.perf_counter() - begin)
    return posterior
