"""Validation and conversion of MAGMA data: individuals ``i`` observed at inputs ``t_i`` with outputs ``y_i``.

MAGMA works on the sorted union grid of all inputs, so this module validates the data once, with early
explicit errors, and builds the grid, per-individual index maps and padded ``(M, N_max)`` arrays.
"""

from __future__ import annotations

import numbers
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from magma_pymc.exceptions import warn as _warn
from magma_pymc.validation import check_column_roles, check_container, check_id_kinds

__all__ = ["MagmaInputError", "Individual", "TrainingData", "as_training_data", "as_individual", "as_inputs"]


class MagmaInputError(ValueError):
    """Invalid user data; the message names the individual (by ID) and the field."""


@dataclass(frozen=True, eq=False)
class Individual:
    """One individual's validated data, sorted by input.

    Attributes
    ----------
    id : Hashable
    inputs, outputs : np.ndarray
        ``(n, d)`` and ``(n,)`` float64; rows sorted lexicographically, no duplicated inputs.
    order : np.ndarray
        ``(n,)`` int64 positions among the individual's rows as the user gave them, so results
        can be reported in the user's order (``user_inputs[order] == inputs``; with
        ``duplicates="mean"``, the first of the merged rows).
    """

    id: Hashable
    inputs: np.ndarray
    outputs: np.ndarray
    order: np.ndarray

    @property
    def n_points(self) -> int:
        return int(self.inputs.shape[0])


@dataclass(frozen=True, eq=False)
class TrainingData:
    """Validated training data of ``M`` individuals on their union grid.

    Attributes
    ----------
    individuals, ids : tuple of Individual, np.ndarray
        In order of first appearance in the user's data; ``ids`` is an object array.
    grid : np.ndarray
        ``(N, d)`` sorted union of all inputs (exact float equality).
    index, mask : np.ndarray
        ``(M, N_max)`` int64 positions in ``grid`` and float64 mask (1.0 real,
        0.0 padding); padded slots hold ``N``, one past the end (a dummy slot).
    inputs, outputs : np.ndarray
        ``(M, N_max, d)`` and ``(M, N_max)`` padded data; padded inputs repeat the
        individual's last real input (kernels stay finite), padded outputs are 0.0.
    common_grid : bool
        True when all individuals have exactly the same inputs.
    input_names : tuple of str
        Names of the input dimensions (used by :meth:`to_long`).
    """

    individuals: tuple[Individual, ...]
    ids: np.ndarray
    grid: np.ndarray
    index: np.ndarray
    mask: np.ndarray
    inputs: np.ndarray
    outputs: np.ndarray
    common_grid: bool
    input_names: tuple[str, ...]

    @property
    def n_individuals(self) -> int:
        return len(self.individuals)

    @property
    def n_inputs(self) -> int:
        return int(self.grid.shape[0])

    @property
    def input_dim(self) -> int:
        return int(self.grid.shape[1])

    @property
    def n_points(self) -> np.ndarray:
        return np.array([ind.n_points for ind in self.individuals], dtype=np.int64)

    @property
    def n_max(self) -> int:
        return int(self.index.shape[1])

    @classmethod
    def from_individuals(cls, individuals: Sequence[Individual],
                         input_names: Sequence[str] | None = None) -> TrainingData:
        """Assemble grid, index maps and padded arrays from validated individuals."""
        inds = tuple(individuals)
        if not inds:
            raise MagmaInputError("empty data: no individuals")
        d, n_points = inds[0].inputs.shape[1], [ind.n_points for ind in inds]
        ids = np.fromiter((ind.id for ind in inds), dtype=object)  # 1-D even for tuple IDs
        bad = [ind.id for ind in inds if ind.inputs.shape[1] != d or ind.n_points == 0]
        if bad := bad + list(ids[pd.Series(ids).duplicated().to_numpy()]):
            raise MagmaInputError(f"individual(s) {_fmt(bad)}: each individual needs inputs of "
                                  f"dimension {d}, at least one point and a unique ID")
        names = tuple(input_names) if input_names is not None else _default_names(d)
        allx = np.concatenate([ind.inputs for ind in inds])
        perm, first = _sort_rows(allx)
        grid, inverse = allx[perm][first], np.empty(len(allx), dtype=np.int64)
        inverse[perm] = np.cumsum(first) - 1  # position in grid of each row of allx
        m, n_grid, n_max, bounds = len(inds), grid.shape[0], max(n_points), np.cumsum([0, *n_points])
        index, mask = np.full((m, n_max), n_grid, dtype=np.int64), np.zeros((m, n_max))
        inputs, outputs = np.empty((m, n_max, d)), np.zeros((m, n_max))
        for i, (ind, n) in enumerate(zip(inds, n_points, strict=True)):
            index[i, :n], mask[i, :n] = inverse[bounds[i]:bounds[i + 1]], 1.0
            inputs[i, :n], inputs[i, n:], outputs[i, :n] = ind.inputs, ind.inputs[-1], ind.outputs
        # Each individual's inputs are distinct grid rows, so equal sets <=> all n_i == N.
        common = all(n == n_grid for n in n_points)
        return cls(inds, ids, grid, index, mask, inputs, outputs, common, names)

    def to_long(self) -> pd.DataFrame:
        """Long DataFrame with columns ``ID``, inputs, ``Output``; sorted by input within individual."""
        x = np.concatenate([ind.inputs for ind in self.individuals])
        return pd.DataFrame({"ID": [ind.id for ind in self.individuals for _ in range(ind.n_points)],
                             **{name: x[:, j] for j, name in enumerate(self.input_names)},
                             "Output": np.concatenate([ind.outputs for ind in self.individuals])})


def as_training_data(data: Any, *, id_col: str = "ID", input_cols: str | Sequence[str] | None = None,
                     output_col: str = "Output", min_points: int = 1, duplicates: str = "error",
                     input_dim: int | None = None) -> TrainingData:
    """Validate training data and build the union grid, index maps and padded arrays.

    Parameters
    ----------
    data : pandas.DataFrame, dict, list, tuple or TrainingData
        A long DataFrame with columns ``id_col``, input(s), ``output_col``
        (MagmaClustR convention); a dict ``{id: (inputs, outputs)}``; a list of
        ``(inputs, outputs)`` pairs (IDs 0, 1, ...); or a TrainingData (returned
        as is). Inputs have shape ``(n,)`` or ``(n, d)`` and need not be sorted.
    id_col, input_cols, output_col : str, str or list of str or None, str
        Column names (DataFrame form). ``input_cols=None`` takes every other column
        as an input (a non-numeric extra column is an error, never dropped).
    min_points : int
        Minimum number of distinct inputs per individual (at least 1).
    duplicates : {"error", "mean"}
        Repeated inputs within an individual raise, or their outputs are averaged
        with a ``UserWarning`` reporting the merges.
    input_dim : int, optional
        Expected input dimension ``d``, checked when given.

    Returns
    -------
    TrainingData
        Individuals in order of first appearance, each sorted by input (``order``
        maps back). Invalid data raise ``MagmaInputError`` naming individual and field.
    """
    if isinstance(data, TrainingData):
        _check_dim(data.grid, "training data", input_dim)
        return data
    if isinstance(data, pd.DataFrame):
        ids, x, y, labels, names = _parse_frame(data, id_col, input_cols, output_col, need_id=True)
        if ids.dtype == object:  # before factorize, which merges True and 1
            check_id_kinds(ids, f"ID column {id_col!r}", MagmaInputError)
        codes, uniques = pd.factorize(ids)  # keeps order of first appearance
        groups = np.split(np.argsort(codes, kind="stable"), np.cumsum(np.bincount(codes))[:-1])
        raw = [(_native(u), x[r], y[r], labels[r]) for u, r in zip(uniques, groups, strict=False)]  # [] if no rows (np.split gives one empty group)
    elif isinstance(data, (Mapping, list, tuple)) and type(data).__module__.split(".")[0] != "xarray":
        items = list(data.items()) if isinstance(data, Mapping) else list(enumerate(data))
        check_id_kinds([k for k, _ in items], "individual IDs", MagmaInputError)
        raw, names = [], None
        for ident, value in items:
            x, y = _parse_pair(ident, value, input_dim)
            input_dim = x.shape[1]  # later individuals must match the first one
            raw.append((ident, x, y, None))
    else:
        check_container(data, MagmaInputError)
        raise MagmaInputError(f"unsupported data type {type(data).__name__}: expected a DataFrame, "
                              "a dict {id: (inputs, outputs)} or a list of (inputs, outputs) pairs")
    individuals, merged = [], {}
    for ident, x, y, labels in raw:
        ind, merged[ident] = _build(ident, x, y, labels, names, output_col, duplicates, input_dim)
        if ind.n_points < max(min_points, 1):
            raise MagmaInputError(f"individual {ident!r}: {ind.n_points} distinct input(s), "
                                  f"fewer than min_points={min_points}")
        individuals.append(ind)
    _warn_merged(merged)
    return TrainingData.from_individuals(individuals, names)


def as_individual(data: Any, *, id_col: str = "ID", input_cols: str | Sequence[str] | None = None,
                  output_col: str = "Output", input_dim: int | None = None, name: Hashable = "new",
                  duplicates: str = "error") -> Individual:
    """Validate the data of one (new) individual, e.g. for prediction.

    ``data`` is a DataFrame for one individual (an ID column is optional; if present
    it must hold a single ID, which becomes the ID), an ``(inputs, outputs)`` pair, an
    Individual, or ``None``/empty for no data (zero points; needs ``input_dim``).
    ``name`` is the ID when the data carry none. Other options are as in
    :func:`as_training_data`. Inputs are sorted; ``Individual.order`` maps back.
    """
    if isinstance(data, Individual):
        _check_dim(data.inputs, f"individual {data.id!r}", input_dim)
        return data
    ident, names = name, None
    if data is None or (isinstance(data, (list, tuple)) and len(data) == 0):
        if input_dim is None:
            raise MagmaInputError(f"individual {name!r}: input_dim is required when there is no data")
        x, y, labels = np.empty((0, input_dim)), np.empty(0), None
    elif isinstance(data, pd.DataFrame):
        ids, x, y, labels, names = _parse_frame(data, id_col, input_cols, output_col, False, name)
        uniques = pd.unique(ids) if ids is not None else []
        if len(uniques) > 1:
            raise MagmaInputError(f"expected data for one individual, but ID column {id_col!r} "
                                  f"holds {len(uniques)} IDs: {_fmt(uniques)}")
        ident = _native(uniques[0]) if len(uniques) else name
    elif isinstance(data, (list, tuple)):
        (x, y), labels = _parse_pair(name, data, input_dim), None
    else:
        raise MagmaInputError(f"individual {name!r}: unsupported data type {type(data).__name__}: "
                              "expected a DataFrame, an (inputs, outputs) pair or None")
    ind, n_merged = _build(ident, x, y, labels, names, output_col, duplicates, input_dim)
    _warn_merged({ident: n_merged})
    return ind


def as_inputs(inputs: Any, *, input_dim: int, name: str = "inputs") -> np.ndarray:
    """Validate prediction inputs into a finite ``(n, input_dim)`` float64 array.

    1-D arrays (or a scalar) become ``(n, 1)`` when ``input_dim == 1``. Inputs are
    *not* sorted and duplicates are allowed: the prediction grid is the user's choice.
    """
    x = _check_dim(_to_float(inputs, "inputs", who=repr(name)), repr(name), input_dim)
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise MagmaInputError(f"{name!r}: {len(bad)} input row(s) with NaN/inf at position(s) {_fmt(bad)}")
    return x


def _default_names(d: int) -> tuple[str, ...]:
    return ("Input",) if d == 1 else tuple(f"Input{j + 1}" for j in range(d))


def _fmt(values: Any, limit: int = 5) -> str:  # short list for error messages
    vals = list(values)
    more = f", ... ({len(vals)} in all)" if len(vals) > limit else ""
    return "[" + ", ".join(repr(_native(v)) for v in vals[:limit]) + more + "]"


def _fmt_inputs(x: np.ndarray) -> str:  # 1-D inputs as scalars, d-dim ones as tuples
    return _fmt([float(r[0]) if len(r) == 1 else tuple(map(float, r)) for r in x])


def _native(value: Any) -> Any:  # numpy scalars -> Python ones: IDs print and compare naturally
    return value.item() if isinstance(value, np.generic) else value


def _to_float(values: Any, field: str, who: str = "", owners: np.ndarray | None = None) -> np.ndarray:
    """Convert to float64; ``owners`` (one ID per row) or ``who`` name the culprits."""
    try:
        arr = np.asarray(values)
        if arr.dtype.kind in "biuf":
            return arr.astype(np.float64)
        arr = np.asarray(values, dtype=object)  # object view: ["x", 2] must not turn 2 into "2"
    except ValueError as err:  # ragged nested sequences
        raise MagmaInputError(f"{who}: {field} are not a rectangular array ({err})") from None
    # Missing values become NaN (reported later, per individual); non-numbers become None.
    flat = [np.nan if v is None or v is pd.NA else float(v) if isinstance(v, (numbers.Real, np.bool_))
            else None for v in arr.ravel()]
    bad = np.array([v is None for v in flat], dtype=bool).reshape(arr.shape)
    if bad.any():
        if owners is not None:  # a DataFrame column: one owner per value
            who = f"individual(s) {_fmt(pd.unique(owners[bad]))}"
        raise MagmaInputError(f"{who}: non-numeric values in {field}, e.g. {_fmt(arr[bad], 3)}")
    return np.array(flat, dtype=np.float64).reshape(arr.shape)


def _check_dim(x: np.ndarray, who: str, input_dim: int | None) -> np.ndarray:
    """Shape inputs as ``(n, d)`` and check ``d`` against ``input_dim``."""
    if x.ndim <= 1 and (input_dim in (None, 1) or x.size == 0):
        x = x.reshape(-1, input_dim or 1)
    elif x.ndim == 1:  # n points or one d-dim point? refuse to guess
        raise MagmaInputError(f"{who}: 1-D inputs are ambiguous with input_dim={input_dim}; "
                              f"pass an array of shape (n, {input_dim})")
    if x.ndim != 2:
        raise MagmaInputError(f"{who}: inputs must have shape (n,) or (n, d), got {x.shape}")
    if input_dim is not None and x.shape[1] != input_dim:
        raise MagmaInputError(f"{who}: inputs have {x.shape[1]} dimension(s), expected {input_dim}")
    return x


def _parse_frame(df: pd.DataFrame, id_col: str, input_cols: Any, output_col: str,
                 need_id: bool, name: Hashable = "new") -> tuple:
    """Check columns and convert a long DataFrame; returns ids, x, y, row labels, input names."""
    if df.columns.duplicated().any():  # df[col] would silently return a DataFrame
        raise MagmaInputError(f"duplicated column name(s) {_fmt(df.columns[df.columns.duplicated()])}")
    auto = input_cols is None
    check_column_roles(id_col, None if auto else [input_cols] if isinstance(input_cols, str) else list(input_cols),
                       output_col, MagmaInputError)
    cols = ([c for c in df.columns if c not in (id_col, output_col)] if auto
            else [input_cols] if isinstance(input_cols, str) else list(input_cols))
    missing = [f"{id_col!r} (ID)"] if need_id and id_col not in df.columns else []
    missing += [f"{output_col!r} (Output)"] if output_col not in df.columns else []
    missing += [f"{c!r} (input)" for c in cols if c not in df.columns] or ([] if cols else ["input(s)"])
    if missing:
        raise MagmaInputError(f"missing column(s) {', '.join(missing)}; available: {list(df.columns)}")
    ids = None
    if id_col in df.columns:
        na = df[id_col].isna().to_numpy()
        if na.any():
            raise MagmaInputError(f"ID column {id_col!r} has {int(na.sum())} missing value(s) "
                                  f"at row(s) {_fmt(df.index[na])}")
        ids = np.fromiter((_native(v) for v in df[id_col].to_numpy(dtype=object)), dtype=object)
    owners = ids if ids is not None else np.fromiter((name for _ in range(len(df))), dtype=object)
    hint = (f" (with input_cols=None every column other than {id_col!r} and {output_col!r} is an "
            "input: drop the column or pass input_cols)") if auto else ""

    def column(col: Any, field: str) -> np.ndarray:
        if pd.api.types.is_numeric_dtype(df[col].dtype):  # fast path; nullable NA -> NaN
            return df[col].to_numpy(dtype=np.float64, na_value=np.nan)
        return _to_float(df[col].to_numpy(dtype=object), field, owners=owners)

    x = np.empty((0, len(cols))) if df.empty else np.column_stack(
        [column(c, f"input column {c!r}{hint}") for c in cols])
    y = column(output_col, f"output column {output_col!r}")
    return ids, x, y, df.index.to_numpy(), tuple(str(c) for c in cols)


def _parse_pair(ident: Any, value: Any, input_dim: int | None) -> tuple[np.ndarray, np.ndarray]:
    who = f"individual {ident!r}"
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise MagmaInputError(f"{who}: expected an (inputs, outputs) pair, got {type(value).__name__}")
    x = _check_dim(_to_float(value[0], "inputs", who=who), who, input_dim)
    y = _to_float(value[1], "outputs", who=who)
    y = y[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1:
        raise MagmaInputError(f"{who}: outputs must have shape (n,), got {y.shape}")
    return x, y


def _sort_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stable lexicographic row sort: permutation, and flags for the first of equal rows."""
    perm = np.lexsort(x.T[::-1])  # lexsort's last key is primary: column 0 sorts first
    first = np.ones(len(x), dtype=bool)
    first[1:] = np.any(x[perm][1:] != x[perm][:-1], axis=1)
    return perm, first


def _build(ident: Any, x: np.ndarray, y: np.ndarray, labels: np.ndarray | None, names: tuple[str, ...] | None,
           output_name: str, duplicates: str, input_dim: int | None) -> tuple[Individual, int]:
    """Check one individual's data, sort it by input, handle duplicates; ``labels`` name rows."""
    who = f"individual {ident!r}"
    x = _check_dim(x, who, input_dim)
    labels = np.arange(len(x)) if labels is None else labels  # DataFrame index, else positions
    if duplicates not in ("error", "mean"):
        raise MagmaInputError(f"duplicates must be 'error' or 'mean', got {duplicates!r}")
    if len(x) != len(y):
        raise MagmaInputError(f"{who}: {len(x)} inputs but {len(y)} outputs (lengths must match)")
    names = names or _default_names(x.shape[1])
    for j, col in enumerate(names):
        bad = ~np.isfinite(x[:, j])
        if bad.any():
            raise MagmaInputError(f"{who}: {int(bad.sum())} NaN/inf value(s) in input {col!r} "
                                  f"at row(s) {_fmt(labels[bad])}")
    bad = ~np.isfinite(y)
    if bad.any():
        raise MagmaInputError(f"{who}: {int(bad.sum())} NaN/inf value(s) in output {output_name!r} "
                              f"at input(s) {_fmt_inputs(x[bad])}")
    x = x + 0.0  # -0.0 -> 0.0, so equal inputs are also bitwise equal
    order, first = _sort_rows(x)  # stable: among duplicates the user's first row comes first
    x, y, n_merged = x[order], y[order], int((~first).sum())
    if n_merged and duplicates == "error":
        dup = _fmt_inputs(x[~first][_sort_rows(x[~first])[1]])  # each duplicated value once
        raise MagmaInputError(f"{who}: duplicated input(s) {dup} in {', '.join(map(repr, names))} "
                              f"({n_merged} extra row(s)); pass duplicates='mean' to average outputs")
    group = np.cumsum(first) - 1  # average outputs over runs of equal inputs (no-op without duplicates)
    y, x, order = np.bincount(group, weights=y) / np.bincount(group), x[first], order[first]
    return Individual(ident, x, y, order.astype(np.int64)), n_merged


def _warn_merged(merged: dict) -> None:
    if any(merged.values()):
        detail = ", ".join(f"{k!r}: {v}" for k, v in merged.items() if v)
        _warn(f"duplicates='mean': merged {sum(merged.values())} duplicated input row(s) by "
                      f"averaging their outputs, for individual(s) {{{detail}}}", UserWarning)
