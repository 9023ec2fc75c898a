"""The jitter policy: what is added to covariance diagonals before a Cholesky factorisation.

All values are relative to the output variance (the unit of every covariance), except
``MODEL_JITTER``, the absolute default of the declared PyMC model (:func:`magma_pymc.model.build_model`).

- EM and prediction start at ``JITTER_DEFAULT`` and raise it tenfold whenever a factorisation
  fails, up to ``JITTER_MAX`` (:func:`magma_pymc.em.estep`); the value used is recorded.
- NUTS samples at a fixed ``max(start, SAMPLING_JITTER)``: the sampler visits HP (long lengthscales)
  where the union-grid :math:`K_0` needs more jitter than EM's start, and a fixed value keeps the
  target one smooth function.
"""

__all__ = ["JITTER_DEFAULT", "JITTER_MAX", "SAMPLING_JITTER", "MODEL_JITTER"]

#: Jitter, relative to the output variance, tried first on every factorised covariance.
JITTER_DEFAULT = 1e-10
#: Largest relative jitter tried before giving up; jitter grows tenfold per failure.
JITTER_MAX = 1e-3
#: Jitter floor during sampling, relative to the output variance (recorded as ``idata_.attrs["jitter"]``).
SAMPLING_JITTER = 1e-8
#: Default jitter of the declared PyMC model's mean-process prior covariance.
MODEL_JITTER = 1e-8
