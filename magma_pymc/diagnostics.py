r"""Post-sampling checks of a NUTS fit: divergences, :math:`\hat R`, bulk ESS (ArviZ)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from magma_pymc.exceptions import ConvergenceWarning
from magma_pymc.exceptions import warn as _warn
from magma_pymc.model import LOG_HP, MEAN_LOG_HP

__all__ = ["MAX_RHAT", "MIN_ESS", "check_diagnostics", "extreme", "warn_on_problems"]

#: Diagnostic thresholds of the post-sampling checks (:class:`ConvergenceWarning` when crossed).
MAX_RHAT, MIN_ESS = 1.01, 100.0


def check_diagnostics(tree: xr.DataTree) -> list[str]:
    r"""Warn (:class:`ConvergenceWarning`) on divergences, a high :math:`\hat R` or a low bulk ESS.

    Thresholds: max :math:`\hat R` > ``MAX_RHAT`` or min bulk ESS < ``MIN_ESS`` over every variable the sampler
    moved (the ``unconstrained_posterior`` group: log HP and, with a population layer, its mean, scale and offsets;
    else the log HP of ``posterior``); returns the problems found (empty: none).
    """
    import arviz as az  # arviz-stats is slow to import: only when sampling

    if "unconstrained_posterior" in tree.children:
        group, var_names = "unconstrained_posterior", list(tree["unconstrained_posterior"].data_vars)
    else:
        group, var_names = "posterior", [MEAN_LOG_HP, LOG_HP]
    n_div = int(tree["sample_stats"]["diverging"].sum())
    rhat, rhat_at = extreme(az.rhat(tree, group=group, var_names=var_names), largest=True)
    ess, ess_at = extreme(az.ess(tree, group=group, var_names=var_names, method="bulk"), largest=False)
    return warn_on_problems(n_div, rhat, ess, rhat_at=rhat_at, ess_at=ess_at)


def extreme(values: xr.Dataset, *, largest: bool) -> tuple[float, str]:
    """The largest (or smallest) entry over every variable of ``values``, and where it is.

    The location reads ``name[dim=label, ...]`` (``name`` for a scalar variable), e.g.
    ``log_hp[individual=A, hp=lengthscale]``: the variable a user looks at first in ``az.summary``.
    NaN entries are skipped unless every entry is NaN (then NaN and the first variable's name).
    """
    best, where = np.nan, ""
    for name, variable in values.data_vars.items():
        data = np.asarray(variable.values, dtype=float)
        if data.size == 0 or np.all(np.isnan(data)):
            where = where or str(name)
            continue
        flat = int(np.nanargmax(data) if largest else np.nanargmin(data))
        value = float(data.ravel()[flat])
        if np.isnan(best) or (value > best if largest else value < best):
            index = np.unravel_index(flat, data.shape)
            labels = ", ".join(f"{dim}={variable[dim].values[i]}" if dim in variable.coords else f"{dim}={i}"
                               for dim, i in zip(variable.dims, index, strict=True))
            best, where = value, f"{name}[{labels}]" if labels else str(name)
    return best, where


def warn_on_problems(n_divergences: int, max_rhat: float, min_ess: float, *, rhat_at: str = "",
                     ess_at: str = "") -> list[str]:
    r"""The problems among divergences, max :math:`\hat R` and min bulk ESS, each in one warning.

    Thresholds :data:`MAX_RHAT`, :data:`MIN_ESS`; one :class:`ConvergenceWarning` names them all, with the
    variable where the worst :math:`\hat R` and ESS were found (``rhat_at``, ``ess_at``; :func:`extreme`)
    when given. Returns them (empty: none).
    """
    problems = [f"{n_divergences} divergent transition(s)"] if n_divergences else []
    if not max_rhat <= MAX_RHAT:
        problems.append(f"max r_hat {max_rhat:.3f} > {MAX_RHAT}" + (f" at {rhat_at}" if rhat_at else ""))
    if not min_ess >= MIN_ESS:
        problems.append(f"min bulk ESS {min_ess:.0f} < {MIN_ESS:.0f}" + (f" at {ess_at}" if ess_at else ""))
    if problems:
        _warn(
            "NUTS diagnostics: " + ", ".join(problems)
            + " (raise tune/draws or target_accept; see az.summary(model.idata_))",
            ConvergenceWarning,
        )
    return problems
