"""Loaders for the real data sets bundled with ``magma_pymc`` (read offline).

Every loader returns a *long* frame with one row per observation and at least the
columns ``ID`` (str), ``Input`` (float) and ``Output`` (float), which is what MAGMA
consumes, plus the documented extra columns. Sources and licences of the bundled files
are listed in ``magma_pymc/datasets/data/README.md``.
"""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np
import pandas as pd

__all__ = ["load_dodgerloop", "load_ecg5000", "load_swimmers", "load_weight"]

_SPLITS = ("train", "test")


@functools.cache
def _read(name: str) -> pd.DataFrame:
    """Read a bundled gzip CSV once (cached; callers must copy before mutating)."""
    with resources.files(__package__).joinpath("data", name).open("rb") as fh:
        return pd.read_csv(fh, compression="gzip")


def _check_split(split: str | None) -> None:
    if split is not None and split not in _SPLITS:
        raise ValueError(f"split must be None, 'train' or 'test', got {split!r}")


def _wide_to_long(
    wide: pd.DataFrame, inputs: np.ndarray, width: int, keep: np.ndarray | None = None
) -> tuple[pd.DataFrame, int]:
    """Melt a UCR-style wide frame (split, label, t0..t{T-1}) into long format.

    IDs are ``"<split>-<row within split>"`` (row numbers counted on the full file),
    zero-padded to ``width`` digits; ``keep`` is an optional boolean mask of the wide
    rows to keep. Missing values are dropped; the number dropped is also returned.
    """
    within = wide.groupby("split", sort=False).cumcount().to_numpy()
    ids = np.array([f"{s}-{k:0{width}d}" for s, k in zip(wide["split"], within, strict=True)], dtype=object)
    if keep is not None:
        wide, ids = wide.loc[keep], ids[keep]
    values = wide.filter(regex=r"^t\d+$").to_numpy(dtype=float)
    n_series, n_times = values.shape
    long = pd.DataFrame(
        {
            "ID": pd.Series(np.repeat(ids, n_times), dtype=str),
            "Input": np.tile(np.asarray(inputs, dtype=float), n_series),
            "Output": values.ravel(),
            "label": np.repeat(wide["label"].to_numpy(dtype=np.int64), n_times),
            "split": pd.Series(np.repeat(wide["split"].to_numpy(dtype=object), n_times), dtype=str),
        }
    )
    missing = long["Output"].isna().to_numpy()
    return long.loc[~missing].reset_index(drop=True), int(missing.sum())


def load_weight() -> pd.DataFrame:
    """Body weight of 342 children (GUSTO cohort, via the R package MagmaClustR).

    Ages lie on the shared grid {0, 3, 6, 9, 12, 18, 24, 36, 48, 60, 72} months, with
    6 to 11 visits per child (some visits missing). Used in the MAGMA papers.

    Returns
    -------
    pd.DataFrame
        3,629 rows, columns ``ID`` (str, 342 children), ``Input`` (age in months,
        float), ``Output`` (weight in kg), ``sex`` (``"Female"`` / ``"Male"``); sorted by
        ID then Input.
    """
    df = _read("weight.csv.gz")
    out = pd.DataFrame(
        {
            "ID": df["ID"].astype(str),
            "Input": df["Input"].astype(float),
            "Output": df["Output"].astype(float),
            "sex": df["sex"].astype(str),
        }
    )
    return out.reset_index(drop=True)


def load_swimmers(gender: int | None = None) -> pd.DataFrame:
    """100 m freestyle race times of 3,456 French swimmers (MagmaClustR ``swimmers``).

    The headline real-data example of the MAGMA paper: 16 to 61 races per swimmer
    (French competitions 2002-2016), irregular ages between 10 and 20 years.

    Parameters
    ----------
    gender : {1, 2} or None
        Keep only swimmers of this competition gender code (as coded in MagmaClustR:
        1,725 swimmers / 38,481 races with code 1; 1,731 swimmers / 38,351 races with
        code 2). ``None`` keeps everybody.

    Returns
    -------
    pd.DataFrame
        76,832 rows when unfiltered; columns ``ID`` (str, the source's swimmer number),
        ``Input`` (age in years), ``Output`` (time in seconds), ``Gender`` (int 1/2);
        sorted by ID (numeric order of the source) then Input.
    """
    if gender is not None and gender not in (1, 2):
        raise ValueError(f"gender must be None, 1 or 2, got {gender!r}")
    df = _read("swimmers.csv.gz")
    if gender is not None:
        df = df.loc[df["Gender"] == gender]
    out = pd.DataFrame(
        {
            "ID": df["ID"].astype(str),
            "Input": df["Age"].astype(float),
            "Output": df["Performance"].astype(float),
            "Gender": df["Gender"].astype(np.int64),
        }
    )
    return out.reset_index(drop=True)


def load_ecg5000(split: str | None = None, label: int | None = None) -> pd.DataFrame:
    """ECG5000 heartbeats from the UCR time-series archive, in long format.

    5,000 series (500 ``train``, 4,500 ``test`` in the UCR split) of 140 regular
    samples, each already z-normalised. Classes (``label``) 1-5 with counts 2,919,
    1,767, 96, 194, 24 (label 1 = normal beat).

    Parameters
    ----------
    split : {"train", "test"} or None
        Keep only one UCR split; ``None`` keeps both (train first).
    label : int or None
        Keep only series of this class (1-5).

    Returns
    -------
    pd.DataFrame
        ``140 * n_series`` rows (700,000 unfiltered); columns ``ID`` (str,
        ``"train-0000".."train-0499"``, ``"test-0000".."test-4499"``: split and row
        number within the split in the source file), ``Input`` (sample index
        0.0..139.0), ``Output`` (signal), ``label`` (int 1-5), ``split`` (str). No
        missing values.
    """
    _check_split(split)
    wide = _read("ecg5000.csv.gz")
    keep = np.ones(len(wide), dtype=bool)
    if split is not None:
        keep &= (wide["split"] == split).to_numpy()
    if label is not None:
        keep &= (wide["label"] == label).to_numpy()
    long, _ = _wide_to_long(wide, np.arange(140, dtype=float), width=4, keep=keep)
    return long


def load_dodgerloop(split: str | None = None) -> pd.DataFrame:
    """Dodgers loop sensor car counts per day (UCR ``DodgerLoopDay``), in long format.

    158 days (78 ``train``, 80 ``test``) of car counts on a Los Angeles freeway
    on-ramp in 288 five-minute bins. The source has **337 missing values, spread
    over 14 days**; those cells are dropped, so the unfiltered frame has
    ``158 * 288 - 337 = 45,167`` rows and some days have fewer than 288 points. The
    number dropped for the returned selection is stored in
    ``df.attrs["n_missing_dropped"]``.

    Parameters
    ----------
    split : {"train", "test"} or None
        Keep only one UCR split; ``None`` keeps both (train first).

    Returns
    -------
    pd.DataFrame
        Columns ``ID`` (str, ``"train-00".."train-77"``, ``"test-00".."test-79"``:
        split and row number within the split), ``Input`` (hour of day, bin * 5 / 60,
        in [0, 23.92]), ``Output`` (car count, float), ``label`` (int 1-7, day of the
        week as coded in the UCR archive), ``split`` (str).
    """
    _check_split(split)
    wide = _read("dodgerloopday.csv.gz")
    keep = None if split is None else (wide["split"] == split).to_numpy()
    long, n_missing = _wide_to_long(wide, np.arange(288) * 5.0 / 60.0, width=2, keep=keep)
    long.attrs["n_missing_dropped"] = n_missing
    return long
