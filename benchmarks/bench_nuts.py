"""Benchmark of the full-Bayesian mode: EM vs NUTS on M individuals x 30 points.

One row per (input grid, HP setting, method, sampler, compile mode): ``grid`` is ``common`` (every
individual observed on the same 30 inputs, N = 30), ``uncommon`` (30 inputs each drawn from a
201-point grid, union N of about 190) or ``uncommon, G=30`` (uncommon inputs with ``Magma(inducing=30)``:
mu0 on 30 inducing points, theory page *Large union grids*). Columns: wall time of ``fit`` (NUTS:
``chains`` x ``draws`` after ``tune``, chains run in parallel processes by PyMC; compile times included, warm
PyTensor cache), the smallest bulk ESS over all log hyper-parameters divided by the fit time
(``min_ess_per_s``), the largest r_hat, the number of divergences and the mean number of
leapfrog steps per draw. Each case runs in its own subprocess with a time limit; data are seeded.

Run from the repository root::

    python benchmarks/bench_nuts.py                                  # M=20, every grid and HP setting
    python benchmarks/bench_nuts.py --grids common --hp common --modes NUMBA   # the quickest rows
    python benchmarks/bench_nuts.py --draws 500 --tune 500 --output benchmarks/nuts.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

MARKER = "BENCH_RESULT "


def worker(case: dict) -> None:
    import warnings

    import arviz as az

    import magma_pymc as mp

    sim = mp.simulate(case["m"], 30, common_grid=case["grid"] == "common", common_hp=case["common_hp"],
                      seed=case["seed"], scheme="smooth")
    model = mp.Magma(common_hp=case["common_hp"], inducing=case.get("inducing"))
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if case["method"] == "em":
            model.fit(sim.data)
        else:
            model.fit(sim.data, method="nuts", draws=case["draws"], tune=case["tune"], chains=case["chains"],
                      random_seed=case["seed"], compile_mode=case["mode"], nuts_sampler=case["sampler"],
                      thin=max(1, case["draws"] // 50))
    seconds = time.perf_counter() - start
    result = dict(case, fit_s=round(seconds, 2), n_grid=len(model.mean_process_grid))
    if case["method"] == "nuts":
        tree = model.idata_
        result["mean_steps"] = round(float(tree["sample_stats"]["n_steps"].mean()), 1)
        names = ["log_mu0_hp", "log_hp"]
        ess = min(float(v.min()) for v in az.ess(tree, var_names=names, method="bulk").data_vars.values())
        rhat = max(float(v.max()) for v in az.rhat(tree, var_names=names).data_vars.values())
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


COLUMNS = ["grid", "N", "hp", "method", "sampler", "mode", "chains x draws", "fit_s", "min_ess_per_s", "max_rhat",
           "divergences", "mean steps"]


def row(r: dict) -> list[str]:
    nuts = r["method"] == "nuts"
    grid = r["grid"] + (f", G={r['inducing']}" if r.get("inducing") else "")
    return [grid, str(r.get("n_grid", "-")), "common" if r["common_hp"] else "different", r["method"],
            r["sampler"] if nuts else "-", r["mode"] if nuts else "CVM",
            f"{r['chains']} x {r['draws']}" if nuts else "-", str(r["fit_s"]),
            *(str(r.get(k, "-")) for k in ("min_ess_per_s", "max_rhat", "divergences", "mean_steps"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--m", type=int, default=20)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--modes", default="CVM,NUMBA", help="compile modes of the sampler's log-density")
    parser.add_argument("--hp", default="common,different")
    parser.add_argument("--grids", default="common,uncommon,inducing",
                        help="comma-separated: common, uncommon (exact), inducing (uncommon, G points)")
    parser.add_argument("--inducing", type=int, default=30, help="G of the 'inducing' grid")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    samplers = ["pymc"]
    try:
        import nutpie  # noqa: F401

        samplers.append("nutpie")
    except ImportError:
        print("nutpie not installed: default sampler only")
    results = []
    for grid, hp in ((g, h) for g in args.grids.split(",") for h in args.hp.split(",")):
        base = dict(m=args.m, common_hp=hp == "common", seed=args.seed, draws=args.draws, tune=args.tune,
                    chains=args.chains, sampler="pymc", mode="CVM",
                    grid="common" if grid == "common" else "uncommon",
                    inducing=args.inducing if grid == "inducing" else None)
        cases = [dict(base, method="em")]
        cases += [dict(base, method="nuts", mode=mode) for mode in args.modes.split(",")]
        cases += [dict(base, method="nuts", sampler=s, mode="NUMBA") for s in samplers[1:]]
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
