"""Benchmark of ``magma_pymc.Magma``: fit and predict times, EM iterations, memory, flop floor.

What is measured (one row per case, each case in its own subprocess, data seeded):

* setting: common or uncommon input grids x common or different hyper-parameters (HP);
  M individuals with N_i = 30 points each, on a grid of 201 points on [0, 10] (or a denser
  grid for the union-grid cases); N is the size of the union of all inputs (the grid of the
  mean process in the E-step).
* cold: a NEW Python process with an EMPTY PyTensor compile cache (``PYTENSOR_FLAGS=
  base_compiledir=<fresh tempdir>``, which also holds PyTensor's Numba cache, plus a fresh
  ``NUMBA_CACHE_DIR``). ``import_s`` is ``import magma_pymc`` (PyMC, PyTensor...); ``fit_s`` is
  the first fit and includes compiling the graphs; ``predict_s`` the first prediction
  (includes compiling the prediction graphs).
* warm: the user's usual cache; a first fit and prediction (not reported), then ``--repeat``
  more fits and predictions on the same data in the same process: the fastest of them is
  reported (the usual way to time short code on a shared machine, as ``timeit``).
* seed: the data set (``mp.simulate(..., seed=seed, scheme="smooth")``); ``--seeds 1,2,3`` runs every case on each.
  The number of EM iterations, hence the time, depends on the data set.
* blas: BLAS threads of the worker (``--blas-threads``; ``default`` inherits the environment).
  On a loaded machine multi-threaded OpenBLAS is pathological for the small matrices of MAGMA
  (measured here: a 30 x 30 triangular solve took 20 ms with default threads, 0.04 ms with 1).
* G: inducing points of mu0 (``Magma(inducing=G)``), ``-`` for the exact model.
* iters: EM iterations (``n_iter_``) of the reported fit.
* pred_mse: MSE of the predicted mean on 5 new individuals' last 10 of 30 points, the first 20
  observed (compares the approximation with the exact fit on the same data).
* peak_MiB: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the worker at the end (whole
  process: imports, compilation and all fits).
* floor_s: a flop-bound floor of one EM iteration: NumPy Cholesky of an N x N (G x G) SPD matrix plus
  (batched) Cholesky of every individual's N_i x N_i matrix, best of 5, on this machine.
  ratio = fit_s / floor_s / iters: how many "Cholesky passes" one EM iteration costs (an EM
  iteration runs several E-step evaluations, gradients and an optimiser, so >> 1 is expected;
  for cold cases it mostly measures compilation).

A case that exceeds ``--timeout`` seconds is killed and reported as ``timeout`` with what it
had measured by then (e.g. the first fit of a warm case).

Run (from the repository root)::

    python benchmarks/bench_fit.py                      # --quick: 4 settings warm + 1 cold
    python benchmarks/bench_fit.py --quick --modes NUMPY,CVM --output benchmarks/quick.md
    python benchmarks/bench_fit.py --scale --union --modes NUMPY,CVM --timeout 600
    python benchmarks/bench_fit.py --full --modes NUMPY,CVM   # everything (long)

Groups: ``--quick`` (M=20, all four settings warm, plus cold for uncommon grid / common HP),
``--cold`` (cold for all four settings), ``--scale`` (M in 20, 200, 2000 on the 201 grid,
uncommon grids, both HP settings, warm), ``--union`` (union grid N in 500, 2000, 5000, uncommon
grids, both HP settings, warm; exact up to ``--union-exact-max`` and with G = 100 inducing points); ``--full`` is all of them.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time

MARKER = "BENCH_RESULT "
N_POINTS = 30
SETTINGS = {  # name -> (common_grid, common_hp)
    "common grid / common HP": (True, True),
    "common grid / diff HP": (True, False),
    "uncommon grid / common HP": (False, True),
    "uncommon grid / diff HP": (False, False),
}
COLUMNS = [
    "setting", "M", "N_i", "N", "G", "seed", "mode", "cache", "blas", "status", "import_s", "fit_s", "predict_s",
    "iters", "peak_MiB", "floor_s", "ratio", "pred_mse",
]
#: Inducing points of the approximate cases of ``--union`` (mu0 on G evenly spaced points).
UNION_INDUCING = 100
N_NEW = 5


# ------------------------------------------------------------------------------------ worker
def _emit(result: dict) -> None:
    """Print the result so far: the parent keeps the last line (survives a timeout)."""
    print(MARKER + json.dumps(result), flush=True)


def _cholesky_floor(n_union: int, sizes: list[int], repeats: int = 5) -> float:
    """Best-of-``repeats`` seconds of one N x N Cholesky plus every individual's N_i x N_i one,
    with the BLAS threads the library uses while fitting (``magma_pymc.compiled.BLAS_THREADS``)."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    from magma_pymc.compiled import BLAS_THREADS

    rng = np.random.default_rng(0)

    def spd(n: int, batch: int | None = None):
        shape = (n, n) if batch is None else (batch, n, n)
        a = rng.standard_normal(shape)
        return a @ np.swapaxes(a, -1, -2) + n * np.eye(n)

    big = spd(n_union)
    counts: dict[int, int] = {}
    for s in sizes:
        counts[s] = counts.get(s, 0) + 1
    small = [spd(s, c) for s, c in counts.items()]
    best = math.inf
    with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
        for _ in range(repeats):
            t0 = time.perf_counter()
            np.linalg.cholesky(big)
            for batch in small:
                np.linalg.cholesky(batch)
            best = min(best, time.perf_counter() - t0)
    return best


def worker(case: dict) -> None:
    """Run one case in this (fresh) process and print its results as JSON lines."""
    import resource
    import warnings

    warnings.simplefilter("ignore")
    result = dict(case, status="running")
    t0 = time.perf_counter()
    import numpy as np

    import magma_pymc as mp

    result["import_s"] = time.perf_counter() - t0
    _emit(result)

    grid = None if case["grid_size"] is None else np.linspace(0.0, 10.0, case["grid_size"])
    sim = mp.simulate(
        case["M"], case["N_i"], common_grid=case["common_grid"], common_hp=case["common_hp"],
        seed=case["seed"], n_new=N_NEW, grid=grid, scheme="smooth"
    )
    observed, target = mp.split_observed(sim.new, 20)
    pred_inputs = np.linspace(sim.grid[0], sim.grid[-1], 100)
    first = observed["ID"].iloc[0]

    def fit_and_predict(prefix: str):
        options = {} if case.get("restarts") is None else {"restarts": case["restarts"]}
        model = mp.Magma(common_hp=case["common_hp"], compile_mode=case["mode"], inducing=case.get("G"), **options)
        t = time.perf_counter()
        model.fit(sim.data)
        fit_s = time.perf_counter() - t
        result[prefix + "fit_s"] = min(fit_s, result.get(prefix + "fit_s", math.inf))
        result[prefix + "iters"] = model.n_iter_
        result["N"] = int(model.data_.grid.shape[0])
        _emit(result)
        t = time.perf_counter()
        model.predict(observed[observed["ID"] == first], pred_inputs)
        predict_s = time.perf_counter() - t
        result[prefix + "predict_s"] = min(predict_s, result.get(prefix + "predict_s", math.inf))
        _emit(result)
        return model

    def prediction_mse(model) -> float:
        """MSE of the predicted mean on the last 10 points of each new individual (first 20 observed)."""
        errors = []
        for ident, part in target.groupby("ID", sort=False):
            pred = model.predict(observed[observed["ID"] == ident], part["Input"].to_numpy())
            errors.append(pred["mean"].values - part["Output"].to_numpy())
        return float(np.mean(np.concatenate(errors) ** 2))

    if case["cache"] == "warm":
        fit_and_predict("first_")
    for _ in range(case["repeat"] if case["cache"] == "warm" else 1):
        model = fit_and_predict("")
    result["pred_mse"] = prediction_mse(model)
    _emit(result)
    sizes = sim.data.groupby("ID").size().tolist()
    floor = _cholesky_floor(case.get("G") or result["N"], sizes)
    result["floor_s"] = floor
    result["ratio"] = result["fit_s"] / floor / max(result["iters"], 1)
    result["peak_MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    result["status"] = "ok"
    _emit(result)


# ------------------------------------------------------------------------------------ parent
def build_cases(args) -> list[dict]:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    specs = []  # (setting, M, grid_size, cache[, inducing points])
    if args.quick:
        specs += [(s, 20, None, "warm") for s in SETTINGS]
        if not args.cold:
            specs.append(("uncommon grid / common HP", 20, None, "cold"))
    if args.cold:
        specs += [(s, 20, None, "cold") for s in SETTINGS]
    if args.scale:
        for s in ("uncommon grid / common HP", "uncommon grid / diff HP"):
            specs += [(s, m, None, "warm") for m in (20, 200, 2000) if not (args.quick and m == 20)]
    if args.union:
        for n in args.union_sizes:
            # Each individual draws N_i of the n grid points at random: M = 4 n / N_i draws cover
            # about 1 - e^-4 = 98% of the grid (the measured union size is reported as N).
            m = math.ceil(4 * n / N_POINTS)
            for s in ("uncommon grid / common HP", "uncommon grid / diff HP"):
                if n <= args.union_exact_max:
                    specs.append((s, m, n, "warm"))
                specs.append((s, m, n, "warm", UNION_INDUCING))
    cases = []
    for mode in modes:
        for setting, m, grid_size, cache, *inducing in specs:
            common_grid, common_hp = SETTINGS[setting]
            for seed in args.seeds:
                cases.append(dict(
                    setting=setting, common_grid=common_grid, common_hp=common_hp, M=m, N_i=N_POINTS,
                    grid_size=grid_size, mode=mode, cache=cache, seed=seed, blas=args.blas_threads,
                    G=inducing[0] if inducing else None, repeat=args.repeat, restarts=args.restarts,
                ))
    return cases


def run_case(case: dict, timeout: float) -> dict:
    """Run ``case`` in a subprocess (fresh compile cache if cold); never hangs past ``timeout``."""
    env = dict(os.environ)
    if case["blas"] != "default":
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(case["blas"])
    tmp = tempfile.TemporaryDirectory(prefix="magma_bench_") if case["cache"] == "cold" else None
    if tmp is not None:
        flags = [f for f in env.get("PYTENSOR_FLAGS", "").split(",") if f and not f.startswith("base_compiledir")]
        env["PYTENSOR_FLAGS"] = ",".join([*flags, f"base_compiledir={tmp.name}/pytensor"])
        env["NUMBA_CACHE_DIR"] = f"{tmp.name}/numba"
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(case)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        status = None if proc.returncode == 0 else f"error rc={proc.returncode}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker and its compiler subprocesses
        out, err = proc.communicate()
        status = "timeout"
    finally:
        if tmp is not None:
            tmp.cleanup()
    lines = [line[len(MARKER):] for line in out.splitlines() if line.startswith(MARKER)]
    result = json.loads(lines[-1]) if lines else dict(case)
    if status is not None:
        result["status"] = status
        if status.startswith("error"):
            print(err[-2000:], file=sys.stderr)
    if "fit_s" not in result and "first_fit_s" in result:  # warm case cut short: show first fit
        result["status"] += " (first fit)"
        for key in ("fit_s", "predict_s", "iters"):
            if "first_" + key in result:
                result[key] = result["first_" + key]
    return result


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def table_rows(results: list[dict]) -> list[list[str]]:
    return [[_fmt(r.get(c)) for c in COLUMNS] for r in results]


def format_text(results: list[dict]) -> str:
    rows = [COLUMNS, *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


def format_markdown(results: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines)


def write_output(path: str, results: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        if path.endswith(".csv"):
            writer = csv.writer(fh)
            writer.writerow(COLUMNS)
            writer.writerows([[r.get(c, "") for c in COLUMNS] for r in results])
        else:
            fh.write(format_markdown(results) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="M=20, four settings warm + one cold (default)")
    parser.add_argument("--cold", action="store_true", help="cold case for each of the four settings")
    parser.add_argument("--scale", action="store_true", help="M in 20, 200, 2000 (warm)")
    parser.add_argument("--union", action="store_true", help="union grids N in 500, 2000, 5000 (warm)")
    parser.add_argument(
        "--union-exact-max", type=int, default=2000,
        help="largest union grid also fitted exactly (default 2000); the others use inducing points only",
    )
    parser.add_argument(
        "--union-sizes", type=lambda text: [int(v) for v in text.split(",")], default=[500, 2000, 5000],
        help="comma-separated grid sizes of --union (default 500,2000,5000; simulating different HP on the "
             "5000 grid alone takes minutes: mp.simulate draws every curve on the whole grid)",
    )
    parser.add_argument("--full", action="store_true", help="all of the above")
    parser.add_argument(
        "--modes", default=os.environ.get("MAGMA_PYMC_COMPILE_MODE", "NUMPY"),
        help="comma-separated PyTensor compile modes, e.g. NUMBA,CVM (default: the library default)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per case (default 600)")
    parser.add_argument(
        "--blas-threads", default="default",
        help="set OPENBLAS/OMP/MKL_NUM_THREADS in the workers (default: inherit the environment)",
    )
    parser.add_argument(
        "--seeds", type=lambda text: [int(v) for v in text.split(",")], default=[1],
        help="comma-separated seeds of the simulated data sets (default 1)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3,
        help="timed fits per warm case after the first (the fastest is reported; default 3)",
    )
    parser.add_argument(
        "--restarts", type=lambda text: int(text) if text.isdigit() else text, default=None,
        help="Magma(restarts=...) of every fit: 'scan', 'on_bound', 'screen' or a number of restarts (default: the library's)",
    )
    parser.add_argument("--output", help="also write the table to this file (.csv, else markdown)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return
    if args.full:
        args.quick = args.cold = args.scale = args.union = True
    if not (args.quick or args.cold or args.scale or args.union):
        args.quick = True

    cases = build_cases(args)
    results = []
    for k, case in enumerate(cases, 1):
        label = f"{case['setting']}, M={case['M']}, seed {case['seed']}, {case['mode']}, {case['cache']}"
        print(f"[{k}/{len(cases)}] {label} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        results.append(run_case(case, args.timeout))
        print(f"    {results[-1]['status']} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    print(format_text(results))
    if args.output:
        write_output(args.output, results)


if __name__ == "__main__":
    main()
