"""Warning classes users can filter (``warnings.filterwarnings("ignore", category=...)``)."""

__all__ = ["MagmaWarning", "ConvergenceWarning", "NumericalWarning"]


class MagmaWarning(UserWarning):
    """Base class of the warnings emitted by magma_pymc."""


class ConvergenceWarning(MagmaWarning):
    """An iterative fit (EM, an optimiser, a sampler) stopped before meeting its criterion."""


class NumericalWarning(MagmaWarning):
    """A numerical safeguard was used, e.g. jitter added to make a Cholesky factorisation succeed."""
