"""The estimator's settings and the data's scale: checks with clear errors, prior mean wrappers, warnings.

Everything here is validation or a unit: the output variance and input range every default and bound
is expressed in (:func:`scales`), the checked prior mean :math:`m_0`, and the warnings on inputs far
from 0 and on HP that end on their bounds.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from magma_pymc.data import MagmaInputError, TrainingData
from magma_pymc.em import EMState, Problem
from magma_pymc.exceptions import ConvergenceWarning, NumericalWarning
from magma_pymc.exceptions import warn as _warn
from magma_pymc.kernels import Kernel

__all__ = ["Constant", "CheckedPriorMean", "resolve_prior_mean", "check_settings", "check_inducing", "check_kernels",
           "initial_log_params",
           "warn_far_inputs", "warn_hp_at_bounds", "hp_at_bounds", "scales", "FAR_INPUTS"]


class Constant:
    """A constant prior mean, kept as a value so that it can be saved."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        """The constant at each row of ``inputs``."""
        return np.full(np.shape(inputs)[0], self.value)

    def __repr__(self) -> str:
        return f"{self.value!r}"


class CheckedPriorMean:
    """A callable prior mean whose values are checked: shape ``(n,)`` (a scalar is broadcast), finite."""

    def __init__(self, function: Callable[[np.ndarray], np.ndarray]) -> None:
        self.function = function

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        """The function at ``inputs`` (a copy), checked: one finite value per row."""
        n = np.shape(inputs)[0]
        # A copy: the function may modify its argument in place, which must not reach the data.
        values = np.asarray(self.function(np.array(inputs, dtype=float, copy=True)), dtype=float)
        if values.ndim == 0:
            values = np.full(n, float(values))
        if values.shape != (n,):
            raise MagmaInputError(
                f"prior_mean returned shape {values.shape} for {n} input(s) of shape {np.shape(inputs)}; "
                f"it must return one value per input row, shape ({n},)"
            )
        bad = ~np.isfinite(values)
        if bad.any():
            raise MagmaInputError(
                f"prior_mean returned {int(bad.sum())} NaN/inf value(s), e.g. at input(s) "
                f"{np.asarray(inputs)[bad][:3].tolist()}"
            )
        return values

    def __repr__(self) -> str:
        return repr(self.function)


#: Values of ``Magma(new_individual_hp=...)`` (:class:`~magma_pymc.estimator.Magma`).
NEW_INDIVIDUAL_HP = ("integrated", "calibrated", "map", "ml")


def check_settings(common_hp: Any, max_iter: Any, tol: Any, jitter: Any, mean_step: Any = "marginal",
                   new_individual_hp: Any = "calibrated", inducing: Any = None,
                   mean_process_prior: Any = "weak") -> None:
    """Early, explicit errors for the estimator's settings (a zero or NaN jitter could loop forever)."""
    if common_hp not in (True, False):
        raise ValueError(f"common_hp must be True or False, got {common_hp!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative integer, got {max_iter!r}")
    for name, value in (("tol", tol), ("jitter", jitter)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if mean_step not in ("marginal", "expected"):
        raise ValueError(f"mean_step must be 'marginal' or 'expected', got {mean_step!r}")
    if new_individual_hp not in NEW_INDIVIDUAL_HP:
        raise ValueError(f"new_individual_hp must be one of {NEW_INDIVIDUAL_HP}, got {new_individual_hp!r}")
    if mean_process_prior not in ("weak", None):
        raise ValueError(f"mean_process_prior must be 'weak' or None, got {mean_process_prior!r}")
    if inducing is not None and mean_step != "marginal":
        raise ValueError(
            "inducing points need mean_step='marginal': in the projected model the data depend on the "
            "mean-process HP through the projection, which the textbook ('expected') M-step ignores"
        )


def check_kernels(mean_kernel: Kernel, kernel: Kernel, train: TrainingData) -> None:
    """Both kernels act on inputs of the data's dimension."""
    for role, kern in (("mean_kernel", mean_kernel), ("kernel", kernel)):
        if kern.input_dim != train.input_dim:
            raise ValueError(
                f"{role} acts on {kern.input_dim}-dimensional inputs but the data have {train.input_dim} "
                f"input column(s) {train.input_names}"
            )


def initial_log_params(mean_kernel: Kernel, kernel: Kernel, train: TrainingData,
                       common_hp: bool) -> tuple[np.ndarray, np.ndarray]:
    """Data-driven starting log HP.

    Variances at the output variance (noise at a tenth of it), lengthscales at a tenth of the input range, others at 1;
    a kernel's ``initial`` values first.
    """
    input_range, output_var = scales(train)
    mean_log = mean_kernel.initial_log_params(input_range, output_var)
    log_params = np.append(kernel.initial_log_params(input_range, output_var), np.log(0.1 * output_var))
    if not common_hp:
        log_params = np.tile(log_params, (train.n_individuals, 1))
    return mean_log, log_params


def check_inducing(inducing: Any, input_dim: int) -> int | np.ndarray | None:
    """``None``, an int >= 2 (1-D inputs only) or a finite ``(G, d)`` array of distinct points."""
    if inducing is None:
        return None
    if isinstance(inducing, numbers.Integral) and not isinstance(inducing, bool):
        if inducing < 2:
            raise ValueError(f"inducing must be at least 2 points, got {inducing}")
        if input_dim != 1:
            raise ValueError(
                f"inducing={inducing}: evenly spaced points are chosen for 1-D inputs only; with {input_dim}-d "
                "inputs pass a (G, d) array of inducing points"
            )
        return int(inducing)
    points = np.asarray(inducing, dtype=float)
    if points.ndim == 1 and input_dim == 1:
        points = points[:, None]
    if points.ndim != 2 or points.shape[1] != input_dim or points.shape[0] < 2:
        raise ValueError(f"inducing points must be a (G, {input_dim}) array with G >= 2, got shape {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError("inducing points contain NaN or inf")
    if len(np.unique(points, axis=0)) != len(points):
        raise ValueError("inducing points contain duplicates (their prior covariance would be singular)")
    return points


#: Inputs farther from 0 than this many input ranges make kernel distances lose precision.
FAR_INPUTS = 1e4


def warn_far_inputs(inputs: np.ndarray, span: float, names: tuple[str, ...], where: str) -> None:
    """Warn when inputs are far from 0 relative to the training input range (``span``).

    ``pm.gp.cov`` kernels compute squared distances as ``|x|^2 + |y|^2 - 2 x.y``, which cancels
    catastrophically then (measured: inputs ``t + 1e6`` with ``t`` in [0, 10] change the
    log-likelihood by 0.27 and predictions by 1e-2; ``t + 1e8`` makes the E-step fail).
    """
    size = np.max(np.abs(inputs), axis=0) if inputs.size else np.zeros(len(names))
    far = size > FAR_INPUTS * span
    if far.any():
        _warn(
            f"{where}: input(s) {[n for n, f in zip(names, far, strict=True) if f]} "
            f"reach {float(np.max(size[far])):.3g}, more "
            f"than {FAR_INPUTS:g} times the training input range {span:.3g}: kernel distances lose precision "
            "(|x|^2 + |y|^2 - 2xy); shift the inputs towards 0 (e.g. subtract the first training input)",
            NumericalWarning,
        )


def scales(train: TrainingData) -> tuple[float, float]:
    """Input range (largest over dimensions) and output variance: the units of HP defaults and bounds."""
    outputs = np.concatenate([ind.outputs for ind in train.individuals])
    with np.errstate(over="ignore", invalid="ignore"):  # finite data whose spread overflows float64
        span = float(np.max(np.ptp(train.grid, axis=0))) if train.n_inputs > 1 else 1.0
        variance = float(np.var(outputs)) if outputs.size > 1 else 1.0
    for field, value, names in (("inputs", span, train.input_names), ("outputs", variance, ("Output",))):
        if not np.isfinite(value):
            size = {ind.id: float(np.max(np.abs(getattr(ind, field)))) for ind in train.individuals}
            worst = max(size, key=size.get)
            raise MagmaInputError(
                f"individual {worst!r}: {field} {names} as large as {size[worst]:.3g} make the "
                f"{'range' if field == 'inputs' else 'variance'} of the {field} overflow float64; rescale them"
            )
    return (span if span > 0 else 1.0), (variance if variance > 0 else 1.0)


def resolve_prior_mean(prior_mean: Any, train: TrainingData) -> Callable[[np.ndarray], np.ndarray]:
    """:math:`m_0` as a checked function.

    ``None`` -> the mean of all training outputs (a :class:`Constant`), a number -> :class:`Constant`, a callable ->
    :class:`CheckedPriorMean`.
    """
    if prior_mean is None:
        return Constant(float(np.concatenate([ind.outputs for ind in train.individuals]).mean()))
    if callable(prior_mean):
        return CheckedPriorMean(prior_mean)
    try:
        value = float(prior_mean)
    except (TypeError, ValueError):
        raise MagmaInputError(f"prior_mean must be a number, a callable or None, got {prior_mean!r}") from None
    if not np.isfinite(value):
        raise MagmaInputError(f"prior_mean must be finite, got {value!r}")
    return Constant(value)


#: Distance (log scale) from a box constraint under which a fitted HP counts as on the bound.
_AT_BOUND = 1e-4


def warn_hp_at_bounds(state: EMState, problem: Problem, mean_names: tuple[str, ...], names: tuple[str, ...],
                      ids: tuple | None, *, starts: int = 1) -> list[str]:
    """:class:`ConvergenceWarning` naming every fitted HP that ended on its box constraint.

    Such an HP hints at a start far from any optimum, or HP the data do not identify; returns their
    descriptions (:func:`hp_at_bounds`). ``starts``: the number of EM starts tried (:mod:`magma_pymc.restarts`).
    """
    hits = hp_at_bounds(state, problem, mean_names, names, ids)
    if hits:
        more = f" and {len(hits) - 5} more" if len(hits) > 5 else ""
        tried = f" (the best of {starts} EM starts)" if starts > 1 else ""
        _warn(
            f"EM ended with hyper-parameter(s) on their bounds{tried}: {'; '.join(hits[:5])}{more}. The data may not "
            "identify them, or EM started far from an optimum: try other starting values "
            "(fit(..., hyperparameters=...)) or check the data's scale (bounds: Kernel.log_bounds)",
            ConvergenceWarning,
        )
    return hits


def hp_at_bounds(state: EMState, problem: Problem, mean_names: tuple[str, ...], names: tuple[str, ...],
                 ids: tuple | None) -> list[str]:
    """Descriptions of the fitted HP within ``_AT_BOUND`` (log scale) of their box constraint.

    ``names``: the individual HP (kernel parameters, then noise); ``ids``: the individuals' IDs
    (``None`` for common HP).
    """
    blocks = [("", [f"mu0_{n}" for n in mean_names], state.mean_log_params, problem.mean_bounds)]
    rows = np.reshape(state.log_params, (-1, len(names)))
    bounds = np.reshape(problem.bounds, (len(rows), len(names), 2))
    for r, (row, row_bounds) in enumerate(zip(rows, bounds, strict=True)):
        blocks.append(("" if ids is None else f"individual {ids[r]!r} ", names, row, row_bounds))
    hits = [
        f"{who}{name} = {np.exp(value):.3g} ({'lower' if value - low < high - value else 'upper'})"
        for who, block_names, values, block_bounds in blocks
        for name, value, (low, high) in zip(block_names, values, block_bounds, strict=True)
        if min(value - low, high - value) < _AT_BOUND
    ]
    return hits
