"""The MAGMA paper's simulation experiment on the paper's own data, paired with the authors' runs.

For each of the 400 data sets of Leroy et al. (2022, Table 1) bundled in
``magma_pymc.datasets`` (100 per setting TT, TF, FT, FF), fit ``magma_pymc.Magma`` on the 20
training individuals with prior mean 0 (as the authors), observe the first N points of the test
individual, forecast its last 10, and score MSE and CI95 coverage; score the mean process's
hyper-posterior against the true mean process at the training inputs. Every number is printed
beside the authors' own result for the same data set (``load_paper_results``).

Tables printed: Table 1 (mean / median MSE, CI95, data sets where magma_pymc is better, the
authors' MAGMA, One GP and GPFDA), the mean-process estimation error, the TT forecast over
N = 1..20 (with ``--n-observed 1-20``) and the data sets where magma_pymc loses most.

Run (from the repository root)::

    python benchmarks/bench_paper.py                               # all 400 data sets, N = 20
    python benchmarks/bench_paper.py --settings TT --n-observed 1-20
    python benchmarks/bench_paper.py --runs runs.csv               # also save the per-run rows
    python benchmarks/bench_paper.py --load runs.csv               # tables from saved rows
    python benchmarks/bench_paper.py --restarts 2                  # Magma(restarts=2)
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

from magma_pymc.datasets.paper_experiment import (
    paired_difference,
    paired_with_authors,
    run_paper_experiment,
    summary_table,
    worst_datasets,
)


def _numbers(text: str) -> list[int]:
    """``"1-20"`` or ``"1,5,7"`` -> list of ints."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def print_tables(runs: pd.DataFrame, worst: int = 10) -> None:
    paired = paired_with_authors(runs)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 30)
    if (paired["N"] == 20).any():  # Table 1 is at N = 20; a run of other N prints the TT table only
        print("\nTable 1 (forecast of the last 10 points from the first 20; paper's data sets):")
        print(summary_table(paired).round(2).to_string())
    print("\nMean process: MSE and CI95 of the hyper-posterior against the true mu0 at the training inputs:")
    mu = summary_table(paired, target="mu0")
    print(mu[[c for c in mu.columns if not c.startswith("One GP")]].round(3).to_string())
    tt = paired.loc[(paired["setting"] == "TT") & (paired["target"] == "forecast")]
    if tt["N"].nunique() > 1:
        by_n = tt.groupby("N")[["MSE", "CI95", "Algo MSE", "Algo CI95", "One GP MSE", "GPFDA MSE"]].mean()
        print("\nTT, forecast of the last 10 points from the first N (means over data sets):")
        print(by_n.round(2).to_string())
    print("\nPaired difference of forecast MSE, magma_pymc - authors' MAGMA (N = 20): mean, its 95 % bootstrap "
          "interval, Wilcoxon signed-rank p-value:")
    print(paired_difference(paired).round(3).to_string())
    print(f"\nThe {worst} forecasts (N = 20) where magma_pymc's MSE exceeds the authors' most:")
    print(worst_datasets(paired, worst).round(2).to_string(index=False))
    fits = runs.drop_duplicates(["setting", "dataset"]).groupby("setting", sort=False)
    print("\nFits: seconds per fit (mean), EM iterations (mean), fits stopped at max_iter, failures:")
    print(pd.DataFrame({"fit_s": fits["fit_seconds"].mean(), "iters": fits["n_iter"].mean(),
                        "not converged": fits["converged"].apply(lambda c: int((c == False).sum())),  # noqa: E712
                        "failed": fits["error"].apply(lambda e: int(e.notna().sum()))}).round(2).to_string())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="TT,TF,FT,FF")
    parser.add_argument("--datasets", default="1-100", help="data-set numbers, e.g. 1-100 or 3,17")
    parser.add_argument("--n-observed", default="20", help="observed points of the test individual, e.g. 20 or 1-20")
    parser.add_argument("--runs", help="save the per-run rows to this CSV")
    parser.add_argument("--load", help="print the tables of saved rows instead of fitting")
    parser.add_argument("--worst", type=int, default=10)
    parser.add_argument("--restarts", help="Magma(restarts=...): 'scan' (the default), 'on_bound', 'screen' or a "
                                           "number of EM restarts")
    parser.add_argument("--new-individual-hp", help="Magma(new_individual_hp=...): 'integrated' (the default), "
                                                    "'calibrated', 'map' or 'ml'")
    args = parser.parse_args()
    if args.load:
        runs = pd.read_csv(args.load)
    else:
        start = time.perf_counter()
        options = {} if args.restarts is None else {"restarts": int(args.restarts) if args.restarts.isdigit()
                                                    else args.restarts}
        if args.new_individual_hp is not None:
            options["new_individual_hp"] = args.new_individual_hp
        runs = run_paper_experiment(args.settings.split(","), _numbers(args.datasets),
                                    n_observed=_numbers(args.n_observed), progress=True, **options)
        print(f"{time.perf_counter() - start:.0f} s")
        if args.runs:
            runs.to_csv(args.runs, index=False)
    print_tables(runs, args.worst)


if __name__ == "__main__":
    main()
