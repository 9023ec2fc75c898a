"""Checks of user arguments shared by several modules.

Probabilities, counts, ID kinds, column roles and data containers. Each raises early with a message naming the argument
and the value.
"""

from __future__ import annotations

import numbers
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["check_prob", "check_count", "id_kind", "check_id_kinds", "check_column_roles", "check_container"]


def check_prob(prob: Any, name: str = "prob") -> float:
    """A real number strictly between 0 and 1 (a string such as ``"0.9"`` or a bool is refused)."""
    if isinstance(prob, (bool, np.bool_)) or not isinstance(prob, numbers.Real) or not 0.0 < float(prob) < 1.0:
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {prob!r}")
    return float(prob)


def check_count(value: Any, name: str, minimum: int = 1) -> int:
    """An integer ``>= minimum`` (bools and fractional numbers are refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def id_kind(value: Any) -> str:
    """``"bool"``, ``"number"``, ``"string"`` or the type's name.

    IDs of different kinds may compare equal (``True == 1``) or print alike (``1`` and ``"1"``).
    """
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, numbers.Number):
        return "number"
    return "string" if isinstance(value, str) else type(value).__name__


def check_id_kinds(ids: Iterable[Hashable], field: str, error: type[Exception] = ValueError) -> None:
    """Refuse IDs of more than one kind (:func:`id_kind`), and string IDs that are not valid Unicode.

    The message gives one example of each kind.
    """
    kinds: dict[str, Any] = {}
    for value in ids:
        kinds.setdefault(id_kind(value), value)
        if isinstance(value, str) and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise error(f"individual {value!r}: the ID is not valid Unicode (a lone surrogate): it could not be "
                            "stored or written to a file; rename it") from None
    if len(kinds) > 1:
        examples = ", ".join(repr(v.item() if isinstance(v, np.generic) else v) for v in kinds.values())
        raise error(
            f"{field} mix types {sorted(kinds)} (e.g. [{examples}]): IDs such as 1, True and '1' are ambiguous "
            "(True == 1 would merge two individuals); convert them to one type"
        )


def check_column_roles(id_col: Any, input_cols: Sequence[Any] | None, output_col: Any,
                       error: type[Exception] = ValueError) -> None:
    """A column plays one role: the ID, an input or the output."""
    if id_col == output_col:
        raise error(f"id_col and output_col are the same column {id_col!r}")
    for col in input_cols or ():
        if col in (id_col, output_col):
            role = "ID" if col == id_col else "output"
            raise error(f"input_cols includes {col!r}, the {role} column: "
                        "a column is either an input, the ID or the output")


def check_container(data: Any, error: type[Exception] = ValueError) -> None:
    """Refuse containers that look like data but would be misread, naming the conversion to use.

    An xarray object is a Mapping of variables, not of individuals; a bare array has no IDs.
    """
    module = type(data).__module__.split(".")[0]
    if module == "xarray":
        raise error(
            f"unsupported data type xarray.{type(data).__name__}: convert it to a long DataFrame, "
            "e.g. data.to_dataframe().reset_index() (columns ID, input(s), Output)"
        )
    if isinstance(data, np.ndarray):
        raise error(
            f"unsupported data type numpy.ndarray of shape {data.shape}: an array carries no individual IDs; "
            "pass a long DataFrame or a dict {id: (inputs, outputs)}"
        )
