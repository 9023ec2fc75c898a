r"""The MAGMA paper's own simulated data sets and the authors' per-run results (read offline).

Leroy, Latouche, Guedj and Gey (2022), "MAGMA: inference and prediction using multi-task
Gaussian processes with common mean", Machine Learning 111, section 5 and Table 1. The files in
``data/paper/`` are copies of the authors' public repository ArthurLeroy/MAGMA, folder
``Simulations/`` at commit dc106db (see ``data/README.md``).

Each setting (``"TT"``, ``"TF"``, ``"FT"``, ``"FF"``: common inputs T/F, common hyper-parameters
T/F) holds 100 data sets. In each, ID 0 is the true mean process :math:`\mu_0` on the grid
0, 0.05, ..., 10 (201 noise-free values), ID 1 the test individual and IDs 2..21 the 20 training
individuals, 30 points each. The authors' protocol: train on IDs 2..21 with prior mean 0, observe
the first 20 points of ID 1 and forecast its last 10.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import numpy as np
import pandas as pd

__all__ = ["PaperDataSet", "load_paper_results", "load_paper_simulations", "paper_data_set"]

#: The four settings of the paper: common inputs (first letter), common HP (second letter).
SETTINGS: tuple[str, ...] = ("TT", "TF", "FT", "FF")
N_DATASETS = 100
#: The authors' three methods, in the order of their result files.
METHODS: tuple[str, ...] = ("Algo", "One GP", "GPFDA")


def _check_setting(setting: str) -> str:
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    return setting


@functools.cache
def _read(name: str) -> pd.DataFrame:
    """Read one of the authors' files: semicolon-separated, decimal comma, gzip (cached)."""
    with resources.files(__package__).joinpath("data", "paper", name).open("rb") as fh:
        return pd.read_csv(fh, sep=";", decimal=",", compression="gzip")


def load_paper_simulations(setting: str) -> pd.DataFrame:
    r"""The 100 simulated data sets of one setting of the MAGMA paper (Table 1).

    The generating model (authors' script ``simulation_study.R``, function ``simu_scheme``):
    :math:`\mu_0 \sim GP(m_0, k_{\theta_0})` on the grid 0, 0.05, ..., 10 with
    :math:`m_0(t) = a t + b`, :math:`a \sim U[-2, 2]`, :math:`b \sim U[0, 10]`; individual
    :math:`i` observes :math:`y_i = \mu_0 + f_i + \varepsilon_i` at 30 grid points (shared by all
    individuals of a data set in settings ``T?``), :math:`f_i \sim GP(0, k_{\theta_i})`,
    :math:`\varepsilon_i \sim N(0, \sigma_i^2)`. Kernels
    :math:`k(t, t') = e^{a} \exp(-e^{-b} (t - t')^2 / 2)` (variance :math:`e^a`, lengthscale
    :math:`e^{b/2}`) with :math:`a \sim U[0, 5]`, :math:`b \sim U[0, 2]` for :math:`\theta_0` and
    :math:`\theta_i`, and noise standard deviation :math:`\sigma_i \sim U[0, 2]`; every draw is
    rounded to two decimals. :math:`\theta_i, \sigma_i` are drawn once per data set in settings
    ``?T``, once per individual in settings ``?F``.

    Parameters
    ----------
    setting : {"TT", "TF", "FT", "FF"}

    Returns
    -------
    pd.DataFrame
        83,100 rows sorted by ``dataset``, ``ID``, ``Input``; columns ``dataset`` (int, 1..100),
        ``ID`` (str: ``"0"`` the true mean process, ``"1"`` the test individual, ``"2"``..``"21"``
        the training individuals), ``Input``, ``Output``, and the generating HP of the row's
        individual on the natural scale: ``variance`` (:math:`e^a`), ``lengthscale``
        (:math:`e^{b/2}`), ``noise`` (the noise *variance* :math:`\sigma^2`, 0 for ID 0).
    """
    _check_setting(setting)
    flag = {"T": "TRUE", "F": "FALSE"}
    raw = _read(f"db_rep_100_M_20_N_30_time_{flag[setting[0]]}_hp_{flag[setting[1]]}.csv.gz")
    out = pd.DataFrame(
        {
            "dataset": raw["ID_dataset"].astype(np.int64),
            "ID": raw["ID"].astype(np.int64),
            "Input": raw["Timestamp"].astype(float),
            "Output": raw["Output"].astype(float),
            "variance": np.exp(raw["a"].astype(float)),
            "lengthscale": np.exp(raw["b"].astype(float) / 2),
            "noise": raw["sigma"].astype(float) ** 2,
        }
    )
    out = out.sort_values(["dataset", "ID", "Input"], kind="stable").reset_index(drop=True)
    out["ID"] = out["ID"].astype(str)
    return out


@dataclass(frozen=True)
class PaperDataSet:
    r"""One data set of the paper: training individuals, test individual and true mean process.

    Attributes
    ----------
    training : pd.DataFrame
        IDs ``"2"``..``"21"`` (columns ``ID``, ``Input``, ``Output``), 30 points each.
    test : pd.DataFrame
        ID ``"1"``, its 30 points sorted by input (same columns).
    mean_process : pd.DataFrame
        The true :math:`\mu_0` on the 201-point grid, columns ``Input``, ``Output``.
    hyperparameters : pd.DataFrame
        Generating HP per ID (``"0"`` for :math:`\mu_0`), columns ``variance``,
        ``lengthscale``, ``noise``.
    """

    training: pd.DataFrame
    test: pd.DataFrame
    mean_process: pd.DataFrame
    hyperparameters: pd.DataFrame


def paper_data_set(frame: pd.DataFrame, dataset: int) -> PaperDataSet:
    """Split data set ``dataset`` of a frame from :func:`load_paper_simulations`.

    Parameters
    ----------
    frame : pd.DataFrame
        Output of :func:`load_paper_simulations`.
    dataset : int
        1..100.
    """
    rows = frame.loc[frame["dataset"] == dataset]
    if rows.empty:
        raise ValueError(f"no data set {dataset!r} in the frame (data sets are numbered 1..{N_DATASETS})")
    columns = ["ID", "Input", "Output"]
    hp = rows.groupby("ID", sort=False)[["variance", "lengthscale", "noise"]].first()
    return PaperDataSet(
        training=rows.loc[~rows["ID"].isin(["0", "1"]), columns].reset_index(drop=True),
        test=rows.loc[rows["ID"] == "1", columns].reset_index(drop=True),
        mean_process=rows.loc[rows["ID"] == "0", ["Input", "Output"]].reset_index(drop=True),
        hyperparameters=hp,
    )


def load_paper_results(setting: str, kind: str = "pred") -> pd.DataFrame:
    """The authors' per-run results on the data sets of :func:`load_paper_simulations`.

    Parameters
    ----------
    setting : {"TT", "TF", "FT", "FF"}
    kind : {"pred", "mu"}
        ``"pred"``: forecast of the test individual's last 10 points from its first ``N``
        (``N = 20`` in every setting; ``N = 1..20`` in ``"TT"``). ``"mu"``: estimation of the
        true mean process at the training inputs (the union of the training individuals' inputs)
        from the mean process's hyper-posterior; method ``"One GP"`` has no estimate there (NaN).

    Returns
    -------
    pd.DataFrame
        Columns ``dataset`` (1..100), ``method`` (``"Algo"`` = MAGMA, ``"One GP"``, ``"GPFDA"``;
        GPFDA needs common inputs, NaN in settings ``F?``), ``N`` (observed points of the test
        individual; NaN for ``kind="mu"``), ``MSE``, ``CI95`` (percentage of the evaluated values
        inside the 95 % interval), ``time_train``, ``time_pred`` (seconds, the authors' machine).
    """
    _check_setting(setting)
    if kind not in ("pred", "mu"):
        raise ValueError(f"kind must be 'pred' or 'mu', got {kind!r}")
    raw = _read(f"res_{kind}_N20-10_M20_{setting}.csv.gz")
    n_blocks = len(raw) // (N_DATASETS * len(METHODS))
    if len(raw) != n_blocks * N_DATASETS * len(METHODS) or list(raw["Method"].iloc[: len(METHODS)]) != list(METHODS):
        raise ValueError(f"unexpected layout of the authors' {kind} results for {setting}")
    # Rows run method-fastest, then data set, then (TT forecast only) N.
    dataset = np.tile(np.repeat(np.arange(1, N_DATASETS + 1), len(METHODS)), n_blocks)
    n_observed = raw["N"].astype(float) if "N" in raw else np.full(len(raw), 20.0 if kind == "pred" else np.nan)
    return pd.DataFrame(
        {
            "dataset": dataset,
            "method": raw["Method"].astype(str),
            "N": n_observed,
            "MSE": raw["MSE"].astype(float),
            "CI95": raw["Ratio_IC"].astype(float),
            "time_train": raw["Time_train"].astype(float),
            "time_pred": raw["Time_pred"].astype(float),
        }
    )
