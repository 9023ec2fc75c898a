"""Kernels: a thin layer over ``pm.gp.cov`` with named, log-parameterised hyper-parameters.

A :class:`Kernel` pairs a *factory* -- a function of positive hyper-parameters returning any
``pm.gp.cov`` expression (sums, products, ``Matern52``, ``Periodic``, ``RatQuad``...) -- with the
metadata MAGMA needs around it: the parameter names (read from the factory's signature), what
each parameter measures (a variance, a lengthscale, or something else) to choose data-driven
initial values and optimiser bounds, and optional user-given initial values.

No covariance is written here: evaluation always goes through the PyMC covariance object. The
only addition is *batching*. ``pm.gp.cov`` kernels are not batch-aware (a ``(B, n, d)`` input
silently returns a wrong shape), so a batch of individuals is handled by building the graph for
one individual and vectorising it with :func:`pytensor.graph.replace.vectorize_graph`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pytensor.graph.replace import vectorize_graph
from pytensor.tensor.variable import TensorVariable

__all__ = ["Kernel", "squared_exponential_kernel", "matern52_kernel", "SquaredExponential", "Matern52", "noise_kind"]

ParameterKind = Literal["variance", "lengthscale", "other"]

#: Hyper-parameter kind of the noise variance appended to every individual kernel.
noise_kind: ParameterKind = "variance"


def _guess_kind(name: str) -> ParameterKind:
    lowered = name.lower()
    if "var" in lowered or lowered in {"eta", "amplitude", "scale", "sigma2"}:
        return "variance"
    if "length" in lowered or lowered in {"ls", "ell", "period"}:
        return "lengthscale"
    return "other"


@dataclass(frozen=True, eq=False)
class Kernel:
    r"""A ``pm.gp.cov`` expression with named positive hyper-parameters.

    Parameters
    ----------
    factory
        Function of the positive hyper-parameters (as PyTensor scalars, keyword arguments named
        as in its signature) returning a ``pm.gp.cov.Covariance``, e.g.
        ``lambda variance, lengthscale: variance * pm.gp.cov.ExpQuad(1, ls=lengthscale)``.
    input_dim
        Dimension of the inputs the kernel acts on.
    kinds
        What each parameter measures, used for data-driven initial values and bounds:
        ``"variance"`` (scaled by the output variance), ``"lengthscale"`` (scaled by the input
        range) or ``"other"`` (initial value 1). Guessed from the names when omitted.
    initial
        Optional initial values (natural scale) overriding the data-driven ones.

    Notes
    -----
    Every parameter :math:`\theta_k > 0` is optimised and sampled as
    :math:`\log\theta_k \in \mathbb{R}`. Two kernels are equal (and share compiled graphs)
    when they have the same factory, parameter names and input dimension.
    """

    factory: Callable[..., pm.gp.cov.Covariance]
    input_dim: int = 1
    kinds: Mapping[str, ParameterKind] = field(default_factory=dict)
    initial: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = tuple(inspect.signature(self.factory).parameters)
        if not names:
            raise ValueError("a kernel factory needs at least one hyper-parameter argument")
        kinds = {name: self.kinds.get(name, _guess_kind(name)) for name in names}
        unknown = set(self.kinds) - set(names)
        if unknown:
            raise ValueError(f"kinds given for unknown hyper-parameters {sorted(unknown)}; the factory takes {names}")
        for name, value in self.initial.items():
            if name not in names:
                raise ValueError(f"initial value given for unknown hyper-parameter {name!r}; the factory takes {names}")
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"initial value of hyper-parameter {name!r} must be positive and finite, got {value!r}")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "kinds", kinds)
        self._check_structure()

    def _check_structure(self) -> None:
        """Call the factory on symbolic HP (nothing is compiled).

        It must return a ``pm.gp.cov`` covariance acting on exactly ``input_dim`` columns, every active dimension among
        them. A mismatch would otherwise fail deep inside a graph or, worse, silently ignore columns.
        """
        try:
            cov = self.factory(**{name: pt.scalar(name, dtype="float64") for name in self.names})
        except Exception as err:
            raise ValueError(f"the kernel factory {self.factory!r} failed on symbolic hyper-parameters "
                             f"{list(self.names)}: {type(err).__name__}: {err}") from err
        if not isinstance(cov, pm.gp.cov.Covariance):
            raise TypeError(f"the kernel factory {self.factory!r} must return a pm.gp.cov.Covariance "
                            f"(e.g. variance * pm.gp.cov.ExpQuad(input_dim, ls=lengthscale)), got {type(cov).__name__}")
        active = np.atleast_1d(np.asarray(cov.active_dims, dtype=int))
        if cov.input_dim != self.input_dim or active.size and (active.min() < 0 or active.max() >= self.input_dim):
            raise ValueError(
                f"the kernel factory's covariance has input_dim={cov.input_dim} and active_dims={active.tolist()} "
                f"but the Kernel acts on {self.input_dim}-dimensional inputs: give the pm.gp.cov kernel "
                f"input_dim={self.input_dim} (and active_dims within 0..{self.input_dim - 1}), or Kernel(input_dim=...)"
            )

    names: tuple[str, ...] = field(init=False, repr=False)

    @property
    def n_params(self) -> int:
        return len(self.names)

    def _key(self) -> tuple:
        return (self.factory, self.names, self.input_dim)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Kernel) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def covariance(self, log_params: TensorVariable) -> pm.gp.cov.Covariance:
        """The PyMC covariance at ``exp(log_params)`` (a vector ordered as :attr:`names`)."""
        values = {name: pt.exp(log_params[k]) for k, name in enumerate(self.names)}
        return self.factory(**values)

    def batched(self, inputs: TensorVariable, log_params: TensorVariable) -> TensorVariable:
        r"""Covariance matrices of a batch of input sets.

        Parameters
        ----------
        inputs
            ``(B, n, d)`` tensor of B input sets.
        log_params
            ``(P,)`` shared log hyper-parameters, or ``(B, P)`` one row per input set.

        Returns
        -------
        ``(B, n, n)`` tensor with ``out[b] = k_{\theta_b}(X_b, X_b)``, computed by vectorising the
        single-set PyMC graph (checked against the PyMC kernel in the tests).
        """
        one_input = pt.matrix("x_one", dtype="float64")
        one_params = pt.vector("theta_one", dtype="float64")
        single = self.covariance(one_params)(one_input)
        return vectorize_graph(single, {one_input: inputs, one_params: log_params})

    def cross_batched(self, left: TensorVariable, right: TensorVariable, log_params: TensorVariable) -> TensorVariable:
        """``(B, n, m)`` cross-covariances ``k(left_b, right_b)``; ``log_params`` as in :meth:`batched`."""
        one_left = pt.matrix("x_left", dtype="float64")
        one_right = pt.matrix("x_right", dtype="float64")
        one_params = pt.vector("theta_one", dtype="float64")
        single = self.covariance(one_params)(one_left, one_right)
        return vectorize_graph(single, {one_left: left, one_right: right, one_params: log_params})

    def initial_log_params(self, input_range: float, output_variance: float) -> np.ndarray:
        """Initial log hyper-parameters: user values, else data-scaled defaults.

        Defaults: a variance starts at the output variance, a lengthscale at a tenth of the
        input range (wiggly enough to follow the data, long enough to borrow strength), any other
        parameter at 1.
        """
        defaults = {"variance": output_variance, "lengthscale": 0.1 * input_range, "other": 1.0}
        return np.log([self.initial.get(name, defaults[self.kinds[name]]) for name in self.names])

    def log_bounds(self, input_range: float, output_variance: float) -> list[tuple[float, float]]:
        """Box constraints on the log scale so optimisers cannot run to 0 or infinity.

        Variances in ``[1e-8, 1e4] x`` the output variance, lengthscales in ``[1e-3, 1e2] x`` the
        input range, other parameters in ``[e^-10, e^10]``.
        """
        bounds = {
            "variance": (np.log(1e-8 * output_variance), np.log(1e4 * output_variance)),
            "lengthscale": (np.log(1e-3 * input_range), np.log(1e2 * input_range)),
            "other": (-10.0, 10.0),
        }
        return [bounds[self.kinds[name]] for name in self.names]


def _squared_exponential(variance, lengthscale, *, input_dim: int = 1):
    return variance * pm.gp.cov.ExpQuad(input_dim, ls=lengthscale)


def _matern52(variance, lengthscale, *, input_dim: int = 1):
    return variance * pm.gp.cov.Matern52(input_dim, ls=lengthscale)


def _with_input_dim(factory: Callable, input_dim: int) -> Callable:
    # One module-level function per (factory, input_dim) so equal kernels share compiled graphs.
    key = (factory, input_dim)
    if key not in _FACTORY_CACHE:
        def bound(variance, lengthscale):
            return factory(variance, lengthscale, input_dim=input_dim)

        bound.__name__ = f"{factory.__name__.lstrip('_')}_{input_dim}d"
        _FACTORY_CACHE[key] = bound
    return _FACTORY_CACHE[key]


_FACTORY_CACHE: dict[tuple, Callable] = {}


def squared_exponential_kernel(input_dim: int = 1, **initial: float) -> Kernel:
    r"""A :class:`Kernel`, also named ``SquaredExponential`` (as ``mp.SquaredExponential()``): the squared exponential :math:`k(x,x') = v \exp(-\|x-x'\|^2 / (2\ell^2))`.

    Hyper-parameters ``variance`` (:math:`v`) and ``lengthscale`` (:math:`\ell`), evaluated by
    ``pm.gp.cov.ExpQuad``. Keyword arguments set initial values.
    """
    return Kernel(_with_input_dim(_squared_exponential, input_dim), input_dim=input_dim, initial=initial)


def matern52_kernel(input_dim: int = 1, **initial: float) -> Kernel:
    r"""A :class:`Kernel`, also named ``Matern52`` (as ``mp.Matern52()``): Matern 5/2, ``variance * pm.gp.cov.Matern52(input_dim, ls=lengthscale)``."""
    return Kernel(_with_input_dim(_matern52, input_dim), input_dim=input_dim, initial=initial)


#: ``SquaredExponential()`` and ``Matern52()``: the factories above under the names of the PyMC
#: covariances they wrap (``pm.gp.cov.ExpQuad``/``Matern52``), the names users write.
SquaredExponential = squared_exponential_kernel
Matern52 = matern52_kernel
