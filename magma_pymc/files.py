"""Durable model files: atomic writes, closed reads, checked fields, IDs that keep their type.

* :func:`atomic_write` writes to a temporary file in the destination's folder and renames it into
  place (``os.replace``, atomic on POSIX and Windows): an exception, a ``KeyboardInterrupt`` or a
  killed process during the write leaves the old file intact, never a truncated one.
* :func:`read_datatree` loads the whole file into memory and closes it, so the same path can be
  written again at once.
* :class:`ModelFileError` is the one error a malformed or tampered file gives, naming the file and
  the field; the checks below read every value before it is used (nothing in a file is executed:
  IDs are decoded with :func:`ast.literal_eval`, which evaluates literals only).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import json
import os
import tempfile
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ModelFileError", "atomic_write", "read_datatree", "encode_ids", "decode_ids", "config_value",
           "kernel_values", "check_kernel_values",
           "checked_array", "parse_json"]


class ModelFileError(ValueError):
    """A file is not a valid magma_pymc model file; the message names the file and the field."""

    def __init__(self, path: Any, field: str, problem: str) -> None:
        self.path, self.field = str(path), field
        super().__init__(f"{path}: not a valid magma_pymc model file: field {field!r}: {problem}")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)``, flush it to disk and rename it over ``path``.

    The temporary file lives in the destination's folder (a rename across file systems is not
    atomic) and is removed if anything, including ``KeyboardInterrupt``, interrupts the write.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where folders can be synced
        folder_handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(folder_handle)
        finally:
            os.close(folder_handle)


def read_datatree(path: str | os.PathLike):
    """The file's ``xarray.DataTree``, loaded into memory, the file closed.

    Unreadable files raise :class:`ModelFileError`.
    """
    import xarray as xr

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        with xr.open_datatree(path, engine="h5netcdf") as tree:
            return tree.load().copy(deep=True)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelFileError(path, "<file>", f"cannot be read as netCDF/HDF5 ({type(err).__name__}: {err})") from None


# ------------------------------------------------------------------------------------------- IDs
def encode_ids(ids: Sequence[Hashable]) -> list[str | None]:
    """``repr`` of each ID that :func:`ast.literal_eval` gives back equal and of the same type.

    Such IDs are str, int, float, bool and tuples of them; ``None`` for others (they are restored as strings).
    """
    encoded = []
    for ident in ids:
        text = repr(ident.item() if isinstance(ident, np.generic) else ident)
        try:
            back = ast.literal_eval(text)
            same = back == ident and type(back) is type(ident.item() if isinstance(ident, np.generic) else ident)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            same = False
        encoded.append(text if same else None)
    return encoded


def decode_ids(encoded: Any, stored: Sequence[str], path: Any) -> list[Hashable]:
    """IDs of their original type from :func:`encode_ids`'s list.

    Checked against the IDs ``stored`` as strings in the file (one per individual, in order).
    """
    if not isinstance(encoded, list) or len(encoded) != len(stored):
        raise ModelFileError(path, "config.ids", f"expected a list of {len(stored)} ID(s), got {_short(encoded)}")
    ids = []
    for text, as_string in zip(encoded, stored, strict=True):
        if text is None:
            ids.append(as_string)
            continue
        if not isinstance(text, str) or len(text) > 10_000:
            raise ModelFileError(path, "config.ids", f"an ID must be a literal's text, got {_short(text)}")
        try:
            value = ast.literal_eval(text)
            hash(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise ModelFileError(path, "config.ids", f"{_short(text)} is not a literal ID") from None
        if str(value) != as_string:
            raise ModelFileError(path, "config.ids", f"ID {_short(text)} does not match the data's ID {as_string!r}")
        ids.append(value)
    if len({(type(v), v) for v in ids}) != len(ids):
        raise ModelFileError(path, "config.ids", "IDs are not unique")
    return ids


# ---------------------------------------------------------------------------------------- fields
def parse_json(text: Any, path: Any, field: str) -> dict:
    """A JSON object from an attribute's text."""
    if not isinstance(text, str):
        raise ModelFileError(path, field, f"expected JSON text, got {type(text).__name__}")
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ModelFileError(path, field, f"invalid JSON ({err})") from None
    if not isinstance(value, dict):
        raise ModelFileError(path, field, f"expected a JSON object, got {type(value).__name__}")
    return value


def config_value(config: dict, key: str, kinds: tuple, path: Any, *, check: Callable[[Any], bool] | None = None,
                 expected: str = "", default: Any = ...) -> Any:
    """``config[key]`` if it is one of ``kinds`` (bools are not numbers here) and passes ``check``."""
    if key not in config:
        if default is not ...:
            return default
        raise ModelFileError(path, f"config.{key}", "missing")
    value = config[key]
    kind_ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not kind_ok or (check is not None and not check(value)):
        want = expected or " or ".join(k.__name__ for k in kinds)
        raise ModelFileError(path, f"config.{key}", f"expected {want}, got {_short(value)}")
    return value


def checked_array(values: Any, path: Any, field: str, *, shape: tuple | None = None, finite: bool = True,
                  low: float | None = None, high: float | None = None) -> np.ndarray:
    """A checked float64 array with the given ``shape`` (``None`` entries: any size).

    Its values must be finite, and within ``[low, high]`` where given.
    """
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ModelFileError(path, field, f"not numeric ({_short(values)})") from None
    if shape is not None and (array.ndim != len(shape) or any(
            s is not None and s != a for s, a in zip(shape, array.shape, strict=True))):
        want = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
        raise ModelFileError(path, field, f"expected shape {want}, got {array.shape}")
    if finite and not np.all(np.isfinite(array)):
        raise ModelFileError(path, field, f"{int(np.sum(~np.isfinite(array)))} NaN/inf value(s)")
    if low is not None and np.any(array < low) or high is not None and np.any(array > high):
        raise ModelFileError(path, field,
                             f"values outside [{low}, {high}] (min {np.min(array):.3g}, max {np.max(array):.3g})")
    return array


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# ------------------------------------------------------------------------------------- kernels
#: Relative difference between a saved kernel's values and the given kernel's above which they differ.
KERNEL_RTOL = 1e-8


def kernel_values(kernel: Any, log_params: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``k(points, points)`` at the log HP ``log_params``.

    A fingerprint of the kernel saved with a fit, so that a different kernel passed at load (same parameter names, other
    function) is detected.
    """
    return np.asarray(_kernel_function(kernel)(np.asarray(log_params, dtype=float), np.asarray(points, dtype=float)))


@functools.cache
def _kernel_function(kernel: Any):
    import pytensor.tensor as pt

    from magma_pymc.compiled import _compile
    from magma_pymc.modes import NUMPY_MODE_NAME

    log_params, points = pt.vector("log_params", dtype="float64"), pt.matrix("points", dtype="float64")
    return _compile([log_params, points], kernel.covariance(log_params)(points), NUMPY_MODE_NAME)


def check_kernel_values(kernel: Any, record: Any, path: Any, role: str) -> None:
    """Compare ``kernel`` with the values saved by :func:`kernel_values`.

    ``record``: dict with ``log_params``, ``points``, ``values``; a mismatch is a ``ValueError`` naming the role.
    """
    if record is None:
        return  # files written before fingerprints were recorded
    try:
        log_params = checked_array(record["log_params"], path, f"config.{role}_values.log_params",
                                   shape=(kernel.n_params,), low=-700.0, high=700.0)
        points = checked_array(record["points"], path, f"config.{role}_values.points", shape=(None, kernel.input_dim))
        saved = checked_array(record["values"], path, f"config.{role}_values.values", shape=(len(points), len(points)))
    except (KeyError, TypeError):
        raise ModelFileError(path, f"config.{role}_values", "expected log_params, points and values") from None
    given = kernel_values(kernel, log_params, points)
    scale = max(float(np.max(np.abs(saved))), np.finfo(float).tiny)
    if given.shape != saved.shape or not np.all(np.abs(given - saved) <= KERNEL_RTOL * scale):
        raise ValueError(
            f"{path}: the {role} given to load computes other covariances than the saved model's (same parameter "
            f"names, different function: e.g. a Matern52 for a squared exponential); pass the kernel the model "
            f"was fitted with"
        )
