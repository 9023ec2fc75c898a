"""The ``"NUMPY"`` compile mode: PyTensor's full graph rewrites, each op run by its NumPy implementation.

PyTensor's C backend (``"CVM"``) compiles the C code of every op once per machine, about a
minute for MAGMA's graphs on an empty cache; Numba JIT-compiles every new graph. MAGMA's graphs
are dominated by a few dense linear-algebra ops on small matrices (Cholesky factorisations,
triangular solves, the batched block loss of :mod:`magma_pymc.ops`) that run in LAPACK whatever
the backend, so running each op's Python ``perform`` (NumPy/SciPy) loses little once the graph
is rewritten as for ``"CVM"`` (``fast_run``), and compiles nothing.

Two rewrites of ``fast_run`` are left out or replaced because their Python implementation is
slow: *fusion* (a fused ``Composite`` is evaluated element by element in Python), and
``clip(x, lo, hi)`` with constant ``lo <= hi`` -- used by PyMC's stationary kernels for squared
distances -- which has no NumPy ufunc in PyTensor (``numpy.clip`` differs when ``lo > hi``) and
is rewritten to ``minimum(maximum(x, lo), hi)``, equal when ``lo <= hi``.
"""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt
from pytensor.compile import optdb
from pytensor.compile.mode import Mode, predefined_modes, register_mode
from pytensor.graph.rewriting.basic import node_rewriter
from pytensor.graph.rewriting.db import RewriteDatabaseQuery
from pytensor.link.vm import VMLinker
from pytensor.scalar.basic import Clip
from pytensor.tensor.basic import get_underlying_scalar_constant_value
from pytensor.tensor.elemwise import Elemwise
from pytensor.tensor.exceptions import NotScalarConstantError

__all__ = ["NUMPY_MODE_NAME"]

#: Name under which the mode is registered with PyTensor (``Magma(compile_mode="NUMPY")``).
NUMPY_MODE_NAME = "NUMPY"
_TAG = "magma_numpy"


def _constant(var) -> float | None:
    try:
        return float(get_underlying_scalar_constant_value(var))
    except NotScalarConstantError:
        return None


@node_rewriter([Elemwise])
def clip_to_min_max(fgraph, node):
    """``clip(x, lo, hi)`` -> ``minimum(maximum(x, lo), hi)`` for constant ``lo <= hi``."""
    if not isinstance(node.op.scalar_op, Clip):
        return None
    x, lo, hi = node.inputs
    lo_value, hi_value = _constant(lo), _constant(hi)
    if lo_value is None or hi_value is None or not lo_value <= hi_value:
        return None
    out = pt.maximum(x, lo)
    if not np.isposinf(hi_value):
        out = pt.minimum(out, hi)
    return [pt.cast(out, node.outputs[0].dtype)]


# Registered under a tag of its own, outside ``fast_run``: the other modes are left untouched
# (guarded: a reloaded module must not register it twice).
if "magma_clip_to_min_max" not in optdb["specialize"]:
    optdb["specialize"].register("magma_clip_to_min_max", clip_to_min_max, _TAG)

if NUMPY_MODE_NAME not in predefined_modes:
    register_mode(
        NUMPY_MODE_NAME,
        Mode(
            VMLinker(use_cloop=False, c_thunks=False),
            RewriteDatabaseQuery(include=["fast_run", "py_only", _TAG], exclude=["fusion", "cxx_only"]),
        ),
    )
