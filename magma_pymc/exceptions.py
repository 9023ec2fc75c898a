"""Warning classes users can filter (``warnings.filterwarnings("ignore", category=...)``)."""

import os
import warnings as _warnings

__all__ = ["MagmaWarning", "ConvergenceWarning", "NumericalWarning", "PerformanceWarning", "NotFittedError", "warn"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class MagmaWarning(UserWarning):
    """Base class of the warnings emitted by magma_pymc."""


class ConvergenceWarning(MagmaWarning):
    """An iterative fit (EM, an optimiser, a sampler) stopped before meeting its criterion."""


class NumericalWarning(MagmaWarning):
    """A numerical safeguard was used, e.g. jitter added to make a Cholesky factorisation succeed."""


class PerformanceWarning(MagmaWarning):
    """A fit is expected to take very long or much memory; the message says how to avoid it."""


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """Emit ``message`` attributed to the first caller outside ``magma_pymc`` (the user's line).

    This holds however deep in the package it is raised.
    """
    _warnings.warn(message, category, skip_file_prefixes=(_PACKAGE_DIR,))


class NotFittedError(RuntimeError, AttributeError):
    """A fitted attribute or method was used before ``fit``.

    An ``AttributeError`` too, so that ``hasattr(model, "idata_")`` is ``False`` on an unfitted model.
    """
