"""Hyper-parameters on the natural scale, and their log-scale arrays used by the graphs.

Layout (``Magma.hyperparameters_``):

- ``mean_process``: a ``pandas.Series`` indexed by the mean kernel's parameter names, e.g.
  ``variance`` (:math:`\\eta_0^2`) and ``lengthscale`` for the default squared exponential;
- ``individual``: a ``pandas.DataFrame`` with one column per individual-kernel parameter plus
  ``noise`` (:math:`\\sigma^2`, a variance), and one row per individual ID -- or a single row
  labelled ``"common"`` when the HP are common to all individuals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from magma_pymc.kernels import Kernel

__all__ = ["HyperParameters", "COMMON_ROW", "NOISE"]

#: Row label of the individual HP in the common-HP setting.
COMMON_ROW = "common"
#: Name of the noise variance column.
NOISE = "noise"


@dataclass(frozen=True)
class HyperParameters:
    """Natural-scale hyper-parameters of a MAGMA model (see module docstring for the layout)."""

    mean_process: pd.Series
    individual: pd.DataFrame

    @property
    def common_hp(self) -> bool:
        return list(self.individual.index) == [COMMON_ROW]

    def to_log(self, mean_kernel: Kernel, kernel: Kernel, ids: Sequence | None) -> tuple[np.ndarray, np.ndarray]:
        """Log-scale arrays ordered as the kernels' parameters (noise last).

        With ``ids`` (different HP) the individual array is ``(M, P + 1)`` in that order;
        a common row is broadcast to all individuals.
        """
        mean = np.log(self.mean_process.loc[list(mean_kernel.names)].to_numpy(dtype=float))
        columns = [*kernel.names, NOISE]
        table = self.individual.loc[:, columns]
        if ids is None:
            if not self.common_hp:
                raise ValueError("common-HP model given hyper-parameters with one row per individual")
            return mean, np.log(table.to_numpy(dtype=float)[0])
        if self.common_hp:
            return mean, np.log(np.tile(table.to_numpy(dtype=float), (len(ids), 1)))
        missing = [i for i in ids if i not in table.index]
        if missing:
            raise ValueError(f"no hyper-parameters given for individuals {missing[:5]}")
        return mean, np.log(table.loc[list(ids)].to_numpy(dtype=float))

    @classmethod
    def from_log(
        cls, mean_kernel: Kernel, kernel: Kernel, mean_log: np.ndarray, log_params: np.ndarray, ids: Sequence | None
    ) -> HyperParameters:
        columns = [*kernel.names, NOISE]
        rows = np.exp(np.atleast_2d(log_params))
        # tupleize_cols=False: tuple IDs stay labels (not a MultiIndex, which rejects a single name)
        index = pd.Index([COMMON_ROW] if ids is None else list(ids), name="individual", tupleize_cols=False)
        return cls(
            mean_process=pd.Series(np.exp(mean_log), index=list(mean_kernel.names), name="mean_process"),
            individual=pd.DataFrame(rows, index=index, columns=columns),
        )

    @classmethod
    def coerce(cls, value: Any, mean_kernel: Kernel, kernel: Kernel) -> HyperParameters:
        """Accept a :class:`HyperParameters` or a dict ``{"mean_process": {...}, "individual": ...}``.

        ``individual`` may be a mapping of scalars (the same HP for every individual, stored as the
        ``"common"`` row) or a DataFrame indexed by individual ID. Every value must be positive
        and finite.
        """
        if isinstance(value, HyperParameters):
            hp = value
        elif isinstance(value, Mapping):
            unknown = set(value) - {"mean_process", "individual"}
            if unknown or not {"mean_process", "individual"} <= set(value):
                raise ValueError(
                    f"hyper-parameters need exactly the keys 'mean_process' and 'individual'; got {sorted(value)}"
                )
            try:
                group = "mean_process"
                mean = pd.Series(dict(value["mean_process"]), dtype=float, name="mean_process")
                group, individual = "individual", value["individual"]
                if isinstance(individual, pd.DataFrame):
                    table = individual.astype(float)
                else:
                    table = pd.DataFrame([dict(individual)], index=pd.Index([COMMON_ROW], name="individual"), dtype=float)
            except (TypeError, ValueError) as err:  # e.g. a string value, or not a mapping
                raise ValueError(f"{group} hyper-parameters must be a mapping of numbers: {err}") from None
            hp = cls(mean, table)
        else:
            raise TypeError(f"hyper-parameters must be a HyperParameters or a dict, got {type(value).__name__}")
        _check(hp.mean_process.to_dict(), mean_kernel.names, "mean_process")
        for row, values in hp.individual.iterrows():
            _check(values.to_dict(), (*kernel.names, NOISE), f"individual {row!r}")
        return hp


def _check(values: Mapping[str, float], names: Sequence[str], where: str) -> None:
    missing = [n for n in names if n not in values]
    extra = [n for n in values if n not in names]
    if missing or extra:
        raise ValueError(f"{where} hyper-parameters: expected {list(names)}, missing {missing}, unexpected {extra}")
    for name in names:
        value = float(values[name])
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"{where} hyper-parameter {name!r} must be positive and finite, got {value!r}")
