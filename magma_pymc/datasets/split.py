"""Per-individual split of a long frame into observed points and forecast targets."""

from __future__ import annotations

import pandas as pd

__all__ = ["split_observed"]


def split_observed(
    df: pd.DataFrame,
    n_observed: int,
    *,
    id_col: str = "ID",
    input_col: str = "Input",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split each individual's points into the first ``n_observed`` and the rest.

    Within each individual, rows are ordered by input; the ``n_observed`` smallest
    inputs are *observed* and the remaining ones are the forecast *target* (the MAGMA
    paper's protocol: 20 observed points, the last 10 to predict). Individuals with at
    most ``n_observed`` points go entirely into the observed part.

    Parameters
    ----------
    df : pd.DataFrame
        Long frame; all columns are kept.
    n_observed : int
        Number of observed points per individual (>= 0).
    id_col, input_col : str
        Names of the ID and input columns.

    Returns
    -------
    observed, target : tuple of pd.DataFrame
        Both sorted by individual (in order of first appearance in ``df``) then input,
        with a fresh ``RangeIndex``.
    """
    if n_observed < 0:
        raise ValueError("n_observed must be >= 0")
    order = pd.Series(pd.factorize(df[id_col])[0], index=df.index, name="__order")
    ordered = (
        df.assign(__order=order)
        .sort_values(["__order", input_col], kind="stable")
        .drop(columns="__order")
    )
    rank = ordered.groupby(id_col, sort=False).cumcount().to_numpy()
    observed = ordered.loc[rank < n_observed].reset_index(drop=True)
    target = ordered.loc[rank >= n_observed].reset_index(drop=True)
    return observed, target

