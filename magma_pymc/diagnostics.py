r"""Post-sampling checks of a NUTS fit: divergences, :math:`\hat R`, bulk ESS (ArviZ)."""

from __future__ import annotations

import xarray as xr

from magma_pymc.exceptions import ConvergenceWarning
from magma_pymc.exceptions import warn as _warn
from magma_pymc.model import LOG_HP, MEAN_LOG_HP

__all__ = ["MAX_RHAT", "MIN_ESS", "check_diagnostics", "warn_on_problems"]

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
    rhat = max(float(v.max()) for v in az.rhat(tree, group=group, var_names=var_names).data_vars.values())
    ess = min(float(v.min()) for v in az.ess(tree, group=group, var_names=var_names,
                                             method="bulk").data_vars.values())
    return warn_on_problems(n_div, rhat, ess)


def warn_on_problems(n_divergences: int, max_rhat: float, min_ess: float) -> list[str]:
    r"""The problems among divergences, max :math:`\hat R` and min bulk ESS, each in one warning.

    Thresholds :data:`MAX_RHAT`, :data:`MIN_ESS`; one :class:`ConvergenceWarning` names them all.
    Returns them (empty: none).
    """
    problems = [f"{n_divergences} divergent transition(s)"] if n_divergences else []
    if not max_rhat <= MAX_RHAT:
        problems.append(f"max r_hat {max_rhat:.3f} > {MAX_RHAT}")
    if not min_ess >= MIN_ESS:
        problems.append(f"min bulk ESS {min_ess:.0f} < {MIN_ESS:.0f}")
    if problems:
        _warn(
            "NUTS diagnostics: " + ", ".join(problems)
            + " (raise tune/draws or target_accept; see az.summary(model.idata_))",
            ConvergenceWarning,
        )
    return problems
