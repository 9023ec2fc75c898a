r"""Single-GP baseline: one GP per individual, HP by maximum likelihood, same kernel and outputs as Magma.

:math:`y(t) = m_0 + f(t) + \varepsilon`, :math:`f \sim GP(0, c_\theta)`: MAGMA's prediction with
the mean process replaced by the constant :math:`m_0` (zero hyper-posterior covariance), so it
reuses the same compiled graphs (:mod:`magma_pymc.predict_graphs`) and returns the same
``xarray.Dataset`` as :meth:`magma_pymc.Magma.predict`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from magma_pymc.compiled import DEFAULT_MODE, graphs_for
from magma_pymc.data import as_individual, as_inputs
from magma_pymc.jitter import JITTER_DEFAULT
from magma_pymc.kernels import Kernel, SquaredExponential
from magma_pymc.mstep import minimize_log_params
from magma_pymc.predict import NewIndividualFit, Prediction
from magma_pymc.results import gaussian_dataset, latent_bounds

__all__ = ["SingleGP"]


class SingleGP:
    """A GP fitted to one individual alone (the baseline of the MAGMA paper).

    Parameters
    ----------
    kernel
        Covariance of :math:`f` (default squared exponential).
    prior_mean
        Constant :math:`m_0`; ``None`` uses the mean of the individual's outputs.
    n_restarts
        Optimiser starts: data-scaled defaults, then lengthscales x 0.3, x 3, ...
    """

    def __init__(self, *, kernel: Kernel | None = None, prior_mean: float | None = None, n_restarts: int = 3,
                 compile_mode: str = DEFAULT_MODE, jitter: float = JITTER_DEFAULT) -> None:
        self.kernel = kernel if kernel is not None else SquaredExponential()
        self.prior_mean = prior_mean
        self.n_restarts = n_restarts
        self.compile_mode = compile_mode
        self.jitter = jitter

    def fit(self, data: Any, **data_options: Any) -> SingleGP:
        """Maximise the marginal likelihood :math:`\\log\\mathcal N(y; m_0, C_\\theta + \\sigma^2 I)`."""
        individual = as_individual(data, input_dim=self.kernel.input_dim, **data_options)
        if individual.n_points < 2:
            raise ValueError(f"individual {individual.id!r}: a single GP needs at least 2 points, got {individual.n_points}")
        graphs = graphs_for(self.kernel, self.kernel, common_hp=True, common_grid=False, mode=self.compile_mode)
        y = individual.outputs
        m0 = float(y.mean()) if self.prior_mean is None else float(self.prior_mean)
        span = float(np.max(np.ptp(individual.inputs, axis=0))) or 1.0
        variance = float(np.var(y)) or 1.0
        n = individual.n_points
        mean, zero_cov = np.full(n, m0), np.zeros((n, n))
        jitter = self.jitter * variance
        bounds = [*self.kernel.log_bounds(span, variance), (np.log(1e-8 * variance), np.log(1e4 * variance))]
        base = np.append(self.kernel.initial_log_params(span, variance), np.log(0.1 * variance))
        lengthscale = np.array([kind == "lengthscale" for kind in self.kernel.kinds.values()] + [False])

        def objective(log_params):
            return graphs.new_individual_step(log_params, individual.inputs, y, mean, zero_cov, jitter)

        best = None
        for factor in (1.0, 0.3, 3.0, 0.1, 10.0)[: self.n_restarts]:
            start = base + np.log(factor) * lengthscale
            result = minimize_log_params(objective, start, bounds)
            if best is None or result.fun < best.fun:
                best = result
        self.individual_, self.prior_mean_, self.jitter_ = individual, m0, jitter
        self.hp_ = NewIndividualFit(best.x, "fitted", float(best.fun))
        self._graphs = graphs
        return self

    def predict(self, inputs: Any, *, prob: float = 0.95, full_cov: bool = False) -> xr.Dataset:
        """Posterior of the individual at ``inputs``: same variables as :meth:`Magma.predict`."""
        if not hasattr(self, "hp_"):
            raise RuntimeError("this SingleGP is not fitted yet: call .fit(data) first")
        ind = self.individual_
        x = as_inputs(inputs, input_dim=self.kernel.input_dim)
        n = ind.n_points + x.shape[0]
        mean, latent, predictive = self._graphs.predictive(
            self.hp_.log_params, ind.inputs, ind.outputs, x, np.full(n, self.prior_mean_), np.zeros((n, n)), self.jitter_
        )
        pred = Prediction(np.asarray(mean), np.asarray(latent), np.asarray(predictive), self.hp_)
        ds = gaussian_dataset(x, ("Input",) if x.shape[1] == 1 else tuple(f"Input{j + 1}" for j in range(x.shape[1])),
                              pred.mean, pred.predictive_cov, prob, full_cov)
        return latent_bounds(ds, pred, prob)
