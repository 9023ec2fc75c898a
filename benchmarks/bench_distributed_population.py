"""Client-side cost of a distributed fit's population of the individual HP (different HP): marginal vs random effects.

One ``DistributedMagma(common_hp=False, inducing=G)`` fit of M simulated individuals on a ``LocalCluster`` of
single-thread worker processes; then, on the fitted state, the population step (``DistributedMagma._population``)
under each estimate (:data:`magma_pymc.predictive.POPULATION_ESTIMATE`), timed on the client (wall and client CPU),
with the bytes it receives. Prints a table.

    PYTHONPATH=. python benchmarks/bench_distributed_population.py --individuals 2000 --points 10 --workers 2
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

import numpy as np


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--individuals", type=int, default=2000)
    parser.add_argument("--points", type=int, default=10)
    parser.add_argument("--inducing", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-iter", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from dask import distributed

    import magma_pymc as mp
    import magma_pymc.predictive as predictive
    from magma_pymc.distributed import DistributedMagma

    warnings.simplefilter("ignore")
    data = mp.simulate(args.individuals, args.points, common_hp=False, seed=args.seed, scheme="smooth").data
    captured = {}
    original = DistributedMagma._population

    def keep(method, state, problem, last):  # the fit's own population step, its inputs kept for the timings
        captured.update(method=method, state=state, problem=problem, last=last)
        return original(method, state, problem, last)

    DistributedMagma._population = staticmethod(keep)
    with distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
        start = time.perf_counter()
        model = DistributedMagma(common_hp=False, inducing=args.inducing, max_iter=args.max_iter)
        model.fit(data, client=client)
        fit_seconds = time.perf_counter() - start
        rows = []
        for estimate in ("random_effects", "marginal"):
            predictive.POPULATION_ESTIMATE = estimate
            problem = captured["problem"]
            received = problem.communication.received[-1]
            wall, cpu = time.perf_counter(), _cpu()
            mean, cov = original(captured["method"], captured["state"], problem, captured["last"])
            rows.append((estimate, time.perf_counter() - wall, _cpu() - cpu,
                         (problem.communication.received[-1] - received) / 2**20, np.sqrt(np.diag(cov))))
    print(f"M = {args.individuals} individuals x {args.points} points, inducing = {args.inducing}, "
          f"{args.workers} workers, fit ({args.max_iter} EM iterations, population included): {fit_seconds:.1f} s")
    print("| estimate | wall (s) | client CPU (s) | received (MiB) | population sd of the log HP |")
    print("|---|---|---|---|---|")
    for estimate, wall, cpu, mib, sd in rows:
        print(f"| {estimate} | {wall:.2f} | {cpu:.2f} | {mib:.2f} | {np.array2string(sd, precision=3)} |")


if __name__ == "__main__":
    main()
