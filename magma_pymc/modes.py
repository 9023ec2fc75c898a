"""The ``"NUMPY"`` compile mode: PyTensor's full graph rewrites, each op run by its NumPy implementation.

PyTensor's C backend (``"CVM"``) compiles the C code of every op once per machine, about a
minute for MAGMA's graphs on an empty cache; Numba JIT-compiles every new graph. MAGMA's graphs
are dominated by a few dense linear-algebra ops on small matrices (Cholesky factorisations,
triangular solves, the batched block loss of :mod:`magma_pymc.ops`) that run in LAPACK whatever
the backend, so running each op's Python ``perform`` (NumPy/SciPy) loses little once the graph
is rewritten as for ``"CVM"`` (``fast_run``), and compiles nothing.

Two rewrites of ``fast_run`` are adapted because their Python implementation is slow:

* ``clip(x, lo, hi)`` with constant ``lo <= hi`` -- used by PyMC's stationary kernels for squared
  distances -- has no NumPy ufunc in PyTensor (``numpy.clip`` differs when ``lo > hi``) and is
  rewritten to ``minimum(maximum(x, lo), hi)``, equal when ``lo <= hi``;
* *fusion* groups chains of elementwise ops into one ``Elemwise{Composite}``, whose Python
  implementation runs element by element. Each fused node is replaced by
  :class:`NumpyFusedElemwise`, which runs the composite's scalar ops as whole-array NumPy ufuncs
  in one ``perform``: the same ufuncs in the same order as the unfused graph, without the
  per-node cost of PyTensor's Python VM and ``Elemwise.perform`` (about 10 us per op; MAGMA's
  M-step graphs have 40-60 elementwise ops on arrays of a few thousand entries).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytensor.tensor as pt
from pytensor.compile import optdb
from pytensor.compile.mode import Mode, predefined_modes, register_mode
from pytensor.graph import Apply, Op
from pytensor.graph.basic import Constant
from pytensor.graph.rewriting.basic import in2out, node_rewriter
from pytensor.graph.rewriting.db import RewriteDatabaseQuery
from pytensor.link.vm import VMLinker
from pytensor.scalar.basic import Cast, Clip, Composite, Identity
from pytensor.tensor.basic import get_underlying_scalar_constant_value
from pytensor.tensor.elemwise import Elemwise
from pytensor.tensor.exceptions import NotScalarConstantError
from pytensor.tensor.utils import import_func_from_string

__all__ = ["NUMPY_MODE_NAME", "NumpyFusedElemwise"]

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


def _array_function(node) -> tuple[Callable, bool]:
    """The whole-array NumPy function of one scalar node (as ``Elemwise.perform`` chooses it), and
    whether it takes ``out=`` (a ufunc, or a fold of one, returning a new array)."""
    scalar_op, n_inputs = node.op, len(node.inputs)
    if isinstance(scalar_op, Composite):
        run = _program(scalar_op)
        return (lambda *args: run(args)), False
    if isinstance(scalar_op, Cast):
        dtype = np.dtype(scalar_op.o_type.dtype)
        return (lambda x: np.asarray(x).astype(dtype)), False
    if isinstance(scalar_op, Identity):
        return (lambda x: x), False
    spec = getattr(scalar_op, "nfunc_spec", None)
    function = import_func_from_string(spec[0]) if spec else None
    if isinstance(function, np.ufunc) and function.nout == 1 and spec[1] == n_inputs:
        return function, True
    if isinstance(function, np.ufunc) and spec[1] == 2 and n_inputs > 2:  # variadic add, mul, ...

        def fold(*args, out=None):
            result = function(args[0], args[1], out=out)
            for arg in args[2:]:
                result = function(result, arg, out=out)
            return result

        return fold, True
    if function is not None and spec[1] == n_inputs:
        return function, False
    # No NumPy equivalent: the scalar implementation, element by element (as Elemwise.perform),
    # cast back from NumPy's object arrays.
    elementwise = np.frompyfunc(scalar_op.impl, n_inputs, scalar_op.nout)
    dtypes = [np.dtype(out.type.dtype) for out in node.outputs]

    def typed(*args):
        results = elementwise(*args)
        if len(dtypes) == 1:
            return np.asarray(results, dtype=dtypes[0])
        return tuple(np.asarray(result, dtype=dtype) for result, dtype in zip(results, dtypes, strict=True))

    return typed, False


def _program(composite: Composite) -> Callable:
    """A function ``run(inputs, shape=None)`` evaluating ``composite``'s scalar graph on arrays, one
    NumPy call per scalar op.

    With ``shape`` (the broadcast shape of the inputs), a float64 intermediate array of that
    shape is overwritten by the ufunc that uses it last (``out=``), as PyTensor's in-place rewrites
    do for unfused ops; never an input or an output of the composite. A fold (variadic add or mul)
    only overwrites its first or second argument, so that the others are read before.
    """
    fgraph = composite.fgraph
    position = {var: k for k, var in enumerate(fgraph.inputs)}
    last_use: dict[int, int] = {}
    nodes = fgraph.toposort()
    plan = []
    for step, node in enumerate(nodes):
        sources = []
        for var in node.inputs:
            if isinstance(var, Constant):
                sources.append((None, np.asarray(var.data, dtype=var.type.dtype)))
            else:
                sources.append((position[var], None))
                last_use[position[var]] = step
        for var in node.outputs:
            position[var] = len(position)
        plan.append((node, sources))
    outputs = [
        (None, np.asarray(var.data, dtype=var.type.dtype)) if isinstance(var, Constant) else (position[var], None)
        for var in fgraph.outputs
    ]
    functions = [_array_function(node) for node, _ in plan]
    # Never overwritten: the outputs, and whatever a step that may return its argument (identity,
    # a nested composite) reads, since its result can alias it.
    kept = {k for k, _ in outputs if k is not None}
    kept |= {k for (_, sources), (_, takes_out) in zip(plan, functions, strict=True) if not takes_out for k, _ in sources}
    owned: set[int] = set()  # intermediates allocated by this program
    steps = []
    for step, ((node, sources), (function, takes_out)) in enumerate(zip(plan, functions, strict=True)):
        donors = []
        if takes_out and node.outputs[0].type.dtype == "float64":
            usable = sources if isinstance(function, np.ufunc) else sources[:2]
            donors = [k for k, _ in usable if k in owned and k not in kept and last_use[k] == step]
        if takes_out:
            owned.add(position[node.outputs[0]])
        steps.append((function, sources, len(node.outputs), donors))

    def run(inputs, shape=None):
        values = list(inputs)
        for function, sources, n_outputs, donors in steps:
            args = [values[k] if k is not None else constant for k, constant in sources]
            buffer = None
            if shape is not None:
                for k in donors:
                    value = values[k]
                    if isinstance(value, np.ndarray) and value.shape == shape and value.dtype == np.float64:
                        buffer = value
                        break
            result = function(*args) if buffer is None else function(*args, out=buffer)
            values.extend(result if n_outputs > 1 else (result,))
        results = tuple(values[k] if k is not None else constant for k, constant in outputs)
        return results if len(results) > 1 else results[0]

    return run


class NumpyFusedElemwise(Op):
    """``Elemwise{composite}`` evaluated as whole-array NumPy calls, one per scalar op (module docstring).

    Outputs have the node's broadcast shape and dtypes, and own their memory (never views of an
    input), as ``Elemwise.perform`` returns them.
    """

    __props__ = ("composite",)

    def __init__(self, composite: Composite):
        self.composite = composite
        self._run = _program(composite)

    def make_node(self, *inputs):
        reference = Elemwise(self.composite).make_node(*inputs)
        return Apply(self, reference.inputs, [out.type() for out in reference.outputs])

    def perform(self, node, inputs, output_storage):
        shape = np.broadcast_shapes(*(np.shape(x) for x in inputs))
        with np.errstate(all="ignore"):
            results = self._run(inputs, shape)
        if len(node.outputs) == 1:
            results = (results,)
        produced = {id(x) for x in inputs}  # an output equal to an input (or another output) is copied
        for storage, result, out in zip(output_storage, results, node.outputs, strict=True):
            result = np.asarray(result, dtype=out.type.dtype)
            if result.shape != shape or not result.flags.owndata or id(result) in produced:
                result = np.array(np.broadcast_to(result, shape), dtype=out.type.dtype)
            produced.add(id(result))
            storage[0] = result

    def infer_shape(self, *args):
        node, shapes = args[-2], args[-1]  # (node, shapes); (fgraph, node, shapes) in older PyTensor
        return Elemwise(self.composite).infer_shape(node, shapes)


@node_rewriter([Elemwise])
def fused_elemwise_to_numpy(fgraph, node):
    """``Elemwise{Composite}`` (a fusion result) -> :class:`NumpyFusedElemwise`."""
    if not isinstance(node.op.scalar_op, Composite) or node.op.inplace_pattern:
        return None
    return NumpyFusedElemwise(node.op.scalar_op)(*node.inputs, return_list=True)


# Registered under a tag of its own, outside ``fast_run``: the other modes are left untouched
# (guarded: a reloaded module must not register them twice).
if "magma_clip_to_min_max" not in optdb["specialize"]:
    optdb["specialize"].register("magma_clip_to_min_max", clip_to_min_max, _TAG)
if "magma_fused_elemwise_to_numpy" not in optdb:
    # After fusion (position 49), before the in-place rewrites (49.5 onwards).
    optdb.register("magma_fused_elemwise_to_numpy", in2out(fused_elemwise_to_numpy), _TAG, position=49.2)

if NUMPY_MODE_NAME not in predefined_modes:
    register_mode(
        NUMPY_MODE_NAME,
        Mode(
            VMLinker(use_cloop=False, c_thunks=False),
            RewriteDatabaseQuery(include=["fast_run", "py_only", _TAG], exclude=["cxx_only"]),
        ),
    )
