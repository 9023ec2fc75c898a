"""Post-sampling checks of a NUTS fit: divergences, :math:`\\hat R`, bulk ESS (ArviZ)."""

from __future__ import annotations

import xarray as xr

from magma_pymc.exceptions import ConvergenceWarning
from magma_pymc.exceptions import warn as _warn
from magma_pymc.model import LOG_HP, MEAN_LOG_HP

__all__ = ["MAX_RHAT", "MIN_ESS", "check_diagnostics"]

#: Diagnostic thresholds of the post-sampling checks (:class:`ConvergenceWarning` when crossed).
MAX_RHAT, MIN_ESS = 1.01, 100.0


def check_diagnostics(tree: xr.DataTree) -> list[str]:
    """Warn (:class:`ConvergenceWarning`) on divergences, max :math:`\\hat R` > ``MAX_RHAT`` or min
    bulk ESS < ``MIN_ESS`` over the log HP; returns the problems found (empty: none)."""
    import arviz as az  # arviz-stats is slow to import: only when sampling

    var_names = [MEAN_LOG_HP, LOG_HP]
    n_div = int(tree["sample_stats"]["diverging"].sum())
    rhat = max(float(v.max()) for v in az.rhat(tree, var_names=var_names).data_vars.values())
    ess = min(float(v.min()) for v in az.ess(tree, var_names=var_names, method="bulk").data_vars.values())
    problems = [f"{n_div} divergent transition(s)"] if n_div else []
    if not rhat <= MAX_RHAT:
        problems.append(f"max r_hat {rhat:.3f} > {MAX_RHAT}")
    if not ess >= MIN_ESS:
        problems.append(f"min bulk ESS {ess:.0f} < {MIN_ESS:.0f}")
    if problems:
        _warn(
            "NUTS diagnostics: " + ", ".join(problems)
            + " (raise tune/draws or target_accept; see az.summary(model.idata_))",
            ConvergenceWarning,
        )
    return problems
