"""Thread safety of the process-wide compiled functions and of the BLAS thread limit.

A compiled PyTensor function owns its input and output storage: two threads calling the same
function at once overwrite each other's inputs and read each other's outputs (measured: wrong
log-likelihoods and ``'NoneType' object has no attribute 'shape'``). Compiled graphs are shared by
every model of a structure (:func:`magma_pymc.compiled.graphs_for`), so :class:`PerThreadFunction`
gives each thread its own copy (``Function.copy``: same graph, separate storage; about 0.05 s, once
per function and thread). :func:`limited_blas` counts the threads inside it, so the limit is set by
the first to enter and restored by the last to leave instead of being undone under a running fit.

Across processes nothing is shared but the compile cache on disk, which PyTensor locks itself.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from threadpoolctl import threadpool_limits

__all__ = ["COMPILE_LOCK", "PerThreadFunction", "limited_blas"]

#: Held while compiling: graph rewriting and the compile cache are not meant for concurrent use.
COMPILE_LOCK = threading.RLock()


class PerThreadFunction:
    """A compiled function called through a private copy in every thread but the one that compiled it."""

    def __init__(self, function: Any) -> None:
        self._function = function
        self._owner = threading.get_ident()
        self._local = threading.local()

    def _for_this_thread(self) -> Any:
        if threading.get_ident() == self._owner:
            return self._function
        copy = getattr(self._local, "function", None)
        if copy is None:
            with COMPILE_LOCK:
                copy = self._local.function = self._function.copy()
        return copy

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call this thread's copy of the function."""
        return self._for_this_thread()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # maker, inputs, ... of the underlying function
        return getattr(self._function, name)


_blas_lock = threading.Lock()
_blas_depth = 0
_blas_limiter: Any = None


@contextlib.contextmanager
def limited_blas(threads: int | None) -> Iterator[None]:
    """At most ``threads`` BLAS threads while any thread is inside (``None``: no limit)."""
    global _blas_depth, _blas_limiter
    if threads is None:
        yield
        return
    with _blas_lock:
        if _blas_depth == 0:
            _blas_limiter = threadpool_limits(limits=threads, user_api="blas")
        _blas_depth += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_depth -= 1
            if _blas_depth == 0:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None
