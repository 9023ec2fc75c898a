"""Long data frames (pandas or ``dask.dataframe``) as partitions of whole individuals on a Dask cluster.

A pandas frame is split into partitions of consecutive individuals (in order of first appearance,
as an in-process fit orders them); each partition travels inside the task that validates it, so
Dask can recompute it if its worker dies (data scattered with ``client.scatter`` could not be). A
``dask.dataframe`` is used as partitioned: each of its partitions must hold whole individuals
(``ddf.shuffle(on="ID")`` or ``ddf.set_index("ID")`` arrange that); an individual split between
partitions is an error naming it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from magma_pymc.data import MagmaInputError
from magma_pymc.distributed import partition as tasks

__all__ = ["split_by_individual", "validated_partitions", "is_dask_frame"]


def is_dask_frame(data: Any) -> bool:
    """Whether ``data`` is a dask DataFrame (checked without importing dask)."""
    return type(data).__module__.startswith("dask") and hasattr(data, "to_delayed")


def split_by_individual(frame: pd.DataFrame, n_partitions: int, id_col: str = "ID") -> list[pd.DataFrame]:
    """``n_partitions`` frames of consecutive individuals (order of first appearance), rows in their order."""
    if id_col not in frame.columns:
        raise MagmaInputError(f"missing column(s) {id_col!r} (ID); available: {list(frame.columns)}")
    codes, uniques = pd.factorize(frame[id_col])
    if (codes < 0).any():
        raise MagmaInputError(f"ID column {id_col!r} has {int((codes < 0).sum())} missing value(s)")
    n_partitions = max(1, min(int(n_partitions), len(uniques)))
    bounds = np.linspace(0, len(uniques), n_partitions + 1).round().astype(int)
    chunk_of_code = np.searchsorted(bounds, np.arange(len(uniques)), side="right") - 1
    chunk_of_row = chunk_of_code[codes]
    return [frame[chunk_of_row == k] for k in range(n_partitions)]


def validated_partitions(client, data: Any, n_partitions: int | None, input_dim: int, options: dict) -> list:
    """Futures of each partition's validated :class:`~magma_pymc.data.TrainingData`.

    ``None`` for an empty partition of a dask frame.
    """
    if is_dask_frame(data):
        import dask

        delayed = [dask.delayed(_validate_or_none)(part, input_dim, options) for part in data.to_delayed()]
        return client.compute(delayed)
    if isinstance(data, pd.DataFrame):
        if n_partitions is None:
            n_partitions = 2 * max(1, len(client.nthreads()))
        chunks = split_by_individual(data, n_partitions, options.get("id_col", "ID"))
        return [client.submit(tasks.validate, chunk, input_dim, options) for chunk in chunks]
    raise TypeError(
        f"a distributed fit takes a pandas or dask DataFrame in long format, got {type(data).__name__}"
    )


def _validate_or_none(frame: pd.DataFrame, input_dim: int, options: dict):
    return None if len(frame) == 0 else tasks.validate(frame, input_dim, options)


def check_whole_individuals(summaries: list) -> None:
    """Every individual in exactly one partition (IDs are unique within a partition by validation)."""
    ids = pd.Series(np.concatenate([s.ids for s in summaries]))
    split = ids[ids.duplicated()].unique()
    if len(split):
        shown = ", ".join(repr(i) for i in split[:5]) + (f", ... ({len(split)} in all)" if len(split) > 5 else "")
        raise MagmaInputError(
            f"individual(s) {shown} appear in several partitions of the dask DataFrame: each individual's rows "
            "must be in one partition (e.g. ddf.shuffle(on='ID') or ddf.set_index('ID'))"
        )
