"""Full-Bayesian MAGMA, gathered under one name: NUTS over the HP with :math:`\\mu_0` marginalised.

The work is done by one module per job; this module re-exports their public names:

- :mod:`magma_pymc.sampling`: the marginal PyMC model and ``fit_nuts`` (a :class:`~magma_pymc.fit_result.FitResult`);
- :mod:`magma_pymc.diagnostics`: :math:`\\hat R`, ESS and divergence checks;
- :mod:`magma_pymc.map_priors`: the same priors as log densities for EM's MAP mode;
- :mod:`magma_pymc.mixture`: the Gaussian mixture over draws behind predictions and intervals;
- :mod:`magma_pymc.compare`: ``compare_fits``.
"""

from magma_pymc.compare import compare_fits
from magma_pymc.diagnostics import MAX_RHAT, MIN_ESS, check_diagnostics
from magma_pymc.map_priors import compile_log_priors
from magma_pymc.mixture import GaussianMixture, mixture_quantiles
from magma_pymc.sampling import (
           NUTS_DEFAULTS,
           SAMPLING_JITTER,
           build_marginal_model,
           fit_nuts,
)

__all__ = ["NUTS_DEFAULTS", "SAMPLING_JITTER", "MAX_RHAT", "MIN_ESS", "build_marginal_model", "fit_nuts",
           "check_diagnostics", "compile_log_priors", "GaussianMixture", "mixture_quantiles", "compare_fits"]
