"""EM's MAP mode: the log prior densities of the HP blocks, the priors NUTS samples under."""

from __future__ import annotations

from collections.abc import Mapping

import pymc as pm
import pytensor

from magma_pymc.model import LogPriorFactory, ModelSpec, hp_coords, log_hp_variables

__all__ = ["compile_log_priors"]


def compile_log_priors(spec: ModelSpec, priors: Mapping[str, LogPriorFactory] | None):
    """``(mean_fn, individual_fn)``.

    Each maps a block of log HP to (log prior density, gradient), the priors of
    :func:`magma_pymc.model.log_hp_variables` (EM's MAP mode, ``fit(..., priors=...)``).

    The priors must be distributions on the log HP themselves (no PyMC transform), since EM
    optimises the log HP directly.
    """
    with pm.Model(coords=hp_coords(spec)) as pm_model:
        variables = log_hp_variables(spec, priors, deterministics=False)
    functions = []
    for variable in variables:
        if pm_model.rvs_to_transforms.get(variable) is not None:
            raise ValueError(
                f"the prior of {variable.name} is transformed by PyMC ({pm_model.rvs_to_transforms[variable]}); "
                "EM's MAP needs unbounded priors on the log hyper-parameters (e.g. pm.Normal)"
            )
        value = pm_model.rvs_to_values[variable]
        log_density = pm_model.logp(vars=[variable])
        functions.append(pytensor.function([value], [log_density, pytensor.grad(log_density, value)]))
    return tuple(functions)
