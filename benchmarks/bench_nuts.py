"""Benchmark of the full-Bayesian mode: EM vs NUTS on M individuals x 30 points.

One row per (input grid, HP setting, method, sampler, compile mode): ``grid`` is ``common`` (every
individual observed on the same 30 inputs, N = 30), ``uncommon`` (30 inputs each drawn from a
201-point grid, union N of about 190) or ``uncommon, G=30`` (uncommon inputs with ``Magma(inducing=30)``:
mu0 on 30 inducing points, theory page *Large union grids*) or ``weight`` (the first M children of the
bundled weight data, 11 ages). Different HP are sampled under the population layer (``hierarchical=True``)
unless ``--independent``. Columns: wall time of ``fit`` (NUTS: ``chains`` x ``draws`` after ``tune``, the
chains in parallel on ``--cores`` processes; compilation included, warm PyTensor cache), the smallest bulk
ESS over every free variable the sampler moved (the ``unconstrained_posterior`` group) and that ESS per
second of fit, the CPU time of the fit (its process and the chains' processes: ``cpu_s``), the largest
r_hat, the number of divergences, the mean number of leapfrog steps per draw
and the machine's one-minute load average before and after the fit (the timings scale with it on a shared
machine), and the single-thread speed of a 187 x 187 matrix product before and after (``gflops``; about
32 GFlop/s on an idle core: the share of a core the benchmark got). Each case runs in its own subprocess with a
time limit; data are seeded.

Run from the repository root::

    python benchmarks/bench_nuts.py                                  # M=20, every grid and HP setting
    python benchmarks/bench_nuts.py --grids uncommon --hp common --no-em      # one row
    python benchmarks/bench_nuts.py --grids weight --hp different --m 100     # 100 children of `weight`
    python benchmarks/bench_nuts.py --draws 500 --tune 500 --output benchmarks/nuts.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

MARKER = "BENCH_RESULT "


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished children (the sampler's chains)."""
    import resource

    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def load_average() -> float:
    """One-minute load average of the machine (the benchmark shares it; the timings scale with it)."""
    return round(os.getloadavg()[0], 1)


def gemm_gflops(n: int = 187, seconds: float = 1.0) -> float:
    """Single-thread speed of an n x n matrix product now (GFlop/s): how much of a core this shared
    machine gives the benchmark at the moment (about 32 on an idle core of the reference machine)."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(n, n)), rng.normal(size=(n, n))
    with threadpool_limits(1):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            count += 1
    return round(2 * n**3 * count / (time.perf_counter() - start) / 1e9, 1)


def training_data(case: dict):
    import magma_pymc as mp

    if case["grid"] == "weight":  # the first `m` children of the bundled weight data
        weight = mp.datasets.load_weight()
        return weight[weight["ID"].isin(weight["ID"].unique()[: case["m"]])][["ID", "Input", "Output"]]
    return mp.simulate(case["m"], 30, common_grid=case["grid"] == "common", common_hp=case["common_hp"],
                       seed=case["seed"], scheme="smooth").data


def worker(case: dict) -> None:
    import warnings

    import arviz as az

    import magma_pymc as mp

    data = training_data(case)
    model = mp.Magma(common_hp=case["common_hp"], inducing=case.get("inducing"))
    load_before, speed_before = load_average(), gemm_gflops()
    start, cpu_start = time.perf_counter(), cpu_seconds()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if case["method"] == "em":
            model.fit(data)
        else:
            options = dict(hierarchical=case["hierarchical"]) if not case["common_hp"] else {}
            model.fit(data, method="nuts", draws=case["draws"], tune=case["tune"], chains=case["chains"],
                      cores=case["cores"], random_seed=case["seed"], compile_mode=case["mode"],
                      nuts_sampler=case["sampler"], thin=max(1, case["draws"] // 50), progressbar=False,
                      likelihood=case["likelihood"], init=case["init"], **options)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    result = dict(case, fit_s=round(seconds, 2), cpu_s=round(cpu, 1), n_grid=len(model.mean_process_grid),
                  load=f"{load_before}-{load_average()}", gflops=f"{speed_before}-{gemm_gflops()}")
    if case["method"] == "nuts":
        tree = model.idata_
        result["mean_steps"] = round(float(tree["sample_stats"]["n_steps"].mean()), 1)
        # Diagnostics over every free variable the sampler moved (log HP, population layer).
        names = list(tree["unconstrained_posterior"].data_vars)
        ess = min(float(v.min()) for v in az.ess(tree, group="unconstrained_posterior", var_names=names,
                                                 method="bulk").data_vars.values())
        rhat = max(float(v.max()) for v in az.rhat(tree, group="unconstrained_posterior",
                                                   var_names=names).data_vars.values())
        result.update(min_ess=round(ess), min_ess_per_s=round(ess / seconds, 1), max_rhat=round(rhat, 4),
                      divergences=int(tree["sample_stats"]["diverging"].sum()))
    print(MARKER + json.dumps(result), flush=True)


def run(case: dict, timeout: float) -> dict:
    try:
        out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(case)], capture_output=True,
                             text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(case, fit_s=f"timeout {timeout:.0f}")
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(MARKER)]
    if not lines:
        return dict(case, fit_s="error: " + out.stderr.strip().splitlines()[-1][:80])
    return json.loads(lines[-1][len(MARKER):])


COLUMNS = ["grid", "M", "N", "hp", "method", "sampler", "mode", "chains x (tune + draws)", "fit_s", "cpu_s", "min_ess",
           "min_ess_per_s", "max_rhat", "divergences", "mean steps", "load", "gflops"]


def row(r: dict) -> list[str]:
    nuts = r["method"] == "nuts"
    grid = r["grid"] + (f", G={r['inducing']}" if r.get("inducing") else "")
    hp = "common" if r["common_hp"] else ("different, population" if r.get("hierarchical") else "different")
    return [grid, str(r["m"]), str(r.get("n_grid", "-")), hp, r["method"],
            r["sampler"] if nuts else "-", r["mode"] if nuts else "CVM",
            f"{r['chains']} x ({r['tune']} + {r['draws']})" if nuts else "-", str(r["fit_s"]),
            str(r.get("cpu_s", "-")),
            *(str(r.get(k, "-")) for k in ("min_ess", "min_ess_per_s", "max_rhat", "divergences", "mean_steps",
                                            "load", "gflops"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--m", type=int, default=20)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--modes", default="CVM", help="compile modes of the sampler's log-density")
    parser.add_argument("--hp", default="common,different")
    parser.add_argument("--grids", default="common,uncommon,inducing",
                        help="comma-separated: common, uncommon (exact), inducing (uncommon, G points), "
                             "weight (the first M children of the bundled weight data)")
    parser.add_argument("--samplers", default="pymc", help="comma-separated NUTS implementations (pymc, nutpie)")
    parser.add_argument("--likelihood", default="closed_form", help="closed_form or autodiff")
    parser.add_argument("--init", default="auto", help="pm.sample's init (auto, jitter+adapt_full, ...)")
    parser.add_argument("--independent", action="store_true",
                        help="different HP: independent priors instead of the population layer")
    parser.add_argument("--no-em", action="store_true", help="skip the EM rows")
    parser.add_argument("--inducing", type=int, default=30, help="G of the 'inducing' grid")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    samplers = args.samplers.split(",")
    results = []
    for grid, hp in ((g, h) for g in args.grids.split(",") for h in args.hp.split(",")):
        base = dict(m=args.m, common_hp=hp == "common", seed=args.seed, draws=args.draws, tune=args.tune,
                    chains=args.chains, cores=args.cores, sampler="pymc", mode="CVM", likelihood=args.likelihood,
                    init=args.init, hierarchical=hp != "common" and not args.independent,
                    grid=grid if grid in ("common", "weight") else "uncommon",
                    inducing=args.inducing if grid == "inducing" else None)
        cases = [] if args.no_em else [dict(base, method="em")]
        cases += [dict(base, method="nuts", mode=mode, sampler=s) for mode in args.modes.split(",") for s in samplers]
        for case in cases:
            results.append(run(case, args.timeout))
            print(" | ".join(row(results[-1])), flush=True)
    table = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    table += ["| " + " | ".join(row(r)) + " |" for r in results]
    print("\n".join(table))
    if args.output:
        with open(args.output, "w") as fh:
            fh.write("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
