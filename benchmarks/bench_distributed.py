"""Distributed EM (Dask) vs in-process EM: time, peak memory, communication; a projection to larger M.

Each configuration runs in its own process so that peak memory is its own:

- in process: ``Magma(common_hp=True, inducing=G).fit(frame)``;
- distributed: ``DistributedMagma(...).fit(frame, client=...)`` on a ``LocalCluster`` of W single-thread
  worker processes, the frame split into 2 W partitions of whole individuals.

Both first fit a small data set of the same structure (compiling the graphs), then the timed one;
peak memory (VmHWM, reset after the warm-up) is the growth during the timed fit. Both run the same EM
iterations (the fits are equal). Per-task compute times come from Dask's task stream; a projection
to M individuals on W' workers assumes the measured per-individual costs, the measured per-round-trip
overhead, and ``--bandwidth`` for the partitions' results.

    python benchmarks/bench_distributed.py --sizes 10000 30000 --workers 2 --max-iter 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np


def _peak_reset() -> None:
    """Reset this process's peak resident memory (Linux: VmHWM)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds() -> float:
    """CPU time of this process (user + system): the work done, whatever the machine's load."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _data(n_individuals: int, n_points: int, seed: int):
    import magma_pymc as mp

    # A 1001-point input grid: union grids of about 1000 inputs, where inducing points pay off.
    return mp.simulate(n_individuals, n_points, seed=seed, grid=np.linspace(0.0, 10.0, 1001)).data


def run_in_process(args) -> dict:
    import magma_pymc as mp

    model = dict(common_hp=True, inducing=args.inducing, max_iter=args.max_iter)
    mp.Magma(**model).fit(_data(200, args.points, seed=1))  # compile
    frame = _data(args.m, args.points, seed=args.seed)
    base = _rss_mib()
    _peak_reset()
    start, cpu = time.perf_counter(), _cpu_seconds()
    fitted = mp.Magma(**model).fit(frame)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "cpu_seconds": _cpu_seconds() - cpu, "iterations": fitted.n_iter_,
            "peak_growth_mib": _peak_mib() - base,
            "base_mib": base, "log_likelihood": fitted.log_likelihood_,
            "hp": fitted.hyperparameters_.individual.to_numpy().ravel().tolist()}


#: Dask settings of ``--quiet-dask``: the workers' statistical profiler off and slower periodic callbacks. Measured on
#: an idle LocalCluster of this benchmark: 0.5 % of a core per worker process instead of 4.0 %, 1.0 % instead of 5.3 %
#: for the client's process (which holds the scheduler).
QUIET_DASK = {"distributed.worker.profile.enabled": False, "distributed.admin.tick.interval": "1s",
              "distributed.admin.system-monitor.interval": "5s", "distributed.worker.memory.monitor-interval": "1s"}


def run_distributed(args) -> dict:
    import dask
    from dask.distributed import Client, LocalCluster, get_task_stream

    from magma_pymc.distributed import DistributedMagma

    model = dict(common_hp=True, inducing=args.inducing, max_iter=args.max_iter)
    with dask.config.set(QUIET_DASK if args.quiet_dask else {}), LocalCluster(
        n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0", memory_limit=None
    ) as cluster, Client(cluster) as client:
        DistributedMagma(**model).fit(_data(200, args.points, seed=1), client=client)  # compile on the workers
        # Dask's own work in idle processes (CPU seconds per wall second): it runs during the fit too.
        idle_start, idle_workers, idle_client = time.perf_counter(), client.run(_cpu_seconds), _cpu_seconds()
        time.sleep(args.idle_seconds)
        idle_wall = time.perf_counter() - idle_start
        idle = {w: (t - idle_workers[w]) / idle_wall for w, t in client.run(_cpu_seconds).items()}
        idle_client = (_cpu_seconds() - idle_client) / idle_wall
        frame = _data(args.m, args.points, seed=args.seed)
        n_partitions = 2 * args.workers
        base = client.run(_rss_mib)
        client.run(_peak_reset)
        client_base = _rss_mib()
        _peak_reset()
        worker_cpu, client_cpu = client.run(_cpu_seconds), _cpu_seconds()
        with get_task_stream(client) as stream:
            start = time.perf_counter()
            fitted = DistributedMagma(**model).fit(frame, client=client, n_partitions=n_partitions)
            seconds = time.perf_counter() - start
        peaks = client.run(_peak_mib)
        worker_cpu = {w: t - worker_cpu[w] for w, t in client.run(_cpu_seconds).items()}
        client_cpu = _cpu_seconds() - client_cpu
        compute = defaultdict(list)
        for task in stream.data:
            for interval in task["startstops"]:
                if interval["action"] == "compute":
                    compute[task["key"][0] if isinstance(task["key"], tuple) else task["key"].rsplit("-", 1)[0]].append(
                        interval["stop"] - interval["start"])
        comm = fitted.communication_
        return {
            "seconds": seconds, "iterations": fitted.n_iter_, "n_partitions": n_partitions,
            "worker_cpu_seconds": [worker_cpu[w] for w in sorted(worker_cpu)], "client_cpu_seconds": client_cpu,
            "worker_peak_growth_mib": [peaks[w] - base[w] for w in sorted(peaks)],
            "worker_base_mib": [base[w] for w in sorted(base)],
            "client_peak_growth_mib": _peak_mib() - client_base,
            "log_likelihood": fitted.log_likelihood_,
            "hp": fitted.hyperparameters_.individual.to_numpy().ravel().tolist(),
            "iteration_seconds": fitted.iteration_seconds_[1:],
            "sent": comm.sent, "received": comm.received, "round_trips": comm.round_trips,
            "task_compute": {name: [len(v), float(np.sum(v))] for name, v in compute.items()},
            "idle_worker_cpu_per_second": [idle[w] for w in sorted(idle)], "idle_client_cpu_per_second": idle_client,
            "quiet_dask": bool(args.quiet_dask),
        }


def _child(mode: str, args, m: int) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--m", str(m), "--workers", str(args.workers),
               "--max-iter", str(args.max_iter), "--inducing", str(args.inducing), "--points", str(args.points),
               "--seed", str(args.seed), "--idle-seconds", str(args.idle_seconds)]
    command += ["--quiet-dask"] if args.quiet_dask else []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout's magma_pymc
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(command, capture_output=True, text=True, check=False, cwd=root, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{mode} M={m} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"# {mode} M={m}: {result['seconds']:.1f} s, {result['iterations']} iterations", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000])
    parser.add_argument("--points", type=int, default=30)
    parser.add_argument("--inducing", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-iter", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--project-m", type=float, default=1e7)
    parser.add_argument("--project-workers", type=int, default=100)
    parser.add_argument("--bandwidth", type=float, default=1e9, help="bytes/s assumed for the projection")
    parser.add_argument("--quiet-dask", action="store_true",
                        help="run the cluster with the workers' profiler off and slower periodic callbacks")
    parser.add_argument("--idle-seconds", type=float, default=10.0,
                        help="measure the idle cluster's CPU for this long before the timed fit")
    parser.add_argument("--child", choices=["in_process", "distributed"])
    parser.add_argument("--m", type=int)
    parser.add_argument("--json", help="also write the raw measurements here")
    parser.add_argument("--from-json", help="print the tables of measurements saved with --json (same options)")
    args = parser.parse_args()
    if args.from_json:  # reprint the tables of saved measurements
        with open(args.from_json) as f:
            raw = json.load(f)
        rows = []
        for m, pair in raw.items():
            local, dist = pair["in_process"], pair["distributed"]
            gap = float(np.max(np.abs(np.subtract(dist["hp"], local["hp"])) / np.abs(local["hp"])))
            rows.append((int(m), local, dist, gap))
        _report(rows, args)
        return
    if args.child:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        result = run_in_process(args) if args.child == "in_process" else run_distributed(args)
        print(json.dumps(result))
        return

    rows, raw = [], {}
    for m in args.sizes:
        local = _child("in_process", args, m)
        dist = _child("distributed", args, m)
        raw[m] = {"in_process": local, "distributed": dist}
        hp_gap = float(np.max(np.abs(np.subtract(dist["hp"], local["hp"])) / np.abs(local["hp"])))
        rows.append((m, local, dist, hp_gap))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f)
    _report(rows, args)


def _report(rows, args) -> None:
    g = args.inducing
    print(f"\nM individuals x {args.points} points, common HP, inducing G = {g}, "
          f"{args.workers} worker processes x 1 thread, EM max_iter = {args.max_iter}\n")
    print("| M | iterations | in process: wall (s) | CPU (s) | distributed: wall (s) | CPU per worker (s) "
          "| client CPU (s) | in-process peak growth (MiB) | per-worker peak growth (MiB) "
          "| client peak growth (MiB) | max rel. HP gap |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for m, local, dist, gap in rows:
        workers = " / ".join(f"{v:.0f}" for v in dist["worker_peak_growth_mib"])
        cpus = " / ".join(f"{v:.0f}" for v in dist["worker_cpu_seconds"])
        print(f"| {m} | {local['iterations']} | {local['seconds']:.1f} | {local['cpu_seconds']:.1f} | "
              f"{dist['seconds']:.1f} | {cpus} | {dist['client_cpu_seconds']:.1f} | {local['peak_growth_mib']:.0f} | "
              f"{workers} | {dist['client_peak_growth_mib']:.0f} | {gap:.1e} |")

    print("\nCommunication per EM iteration (payload bytes of task arguments and results, mean over iterations)\n")
    print("| M | partitions | round trips | sent (KiB) | received (KiB) | received per partition per round trip (KiB) "
          "| E-step terms per partition: (G^2 + G + 3) x 8 B (KiB) |")
    print("|---|---|---|---|---|---|---|")
    for m, _, dist, _ in rows:
        p, trips = dist["n_partitions"], np.mean(dist["round_trips"][1:])
        sent, received = np.mean(dist["sent"][1:]) / 1024, np.mean(dist["received"][1:]) / 1024
        print(f"| {m} | {p} | {trips:.0f} | {sent:.0f} | {received:.0f} | {received / p / trips:.1f} | "
              f"{(g * g + g + 3) * 8 / 1024:.1f} |")

    m, _, dist, _ = rows[-1]
    for m, _, dist, _ in rows:
        if "idle_worker_cpu_per_second" in dist:
            idle = " / ".join(f"{100 * v:.1f}" for v in dist["idle_worker_cpu_per_second"])
            work = " / ".join(f"{1e3 * (c - v * dist['seconds']) / (m / args.workers) / dist['iterations']:.2f}"
                              for c, v in zip(dist["worker_cpu_seconds"], dist["idle_worker_cpu_per_second"],
                                              strict=True))
            print(f"\nM = {m}: idle cluster (Dask's own work, {'quiet' if dist['quiet_dask'] else 'default'} "
                  f"settings): {idle} % of a core per worker, {100 * dist['idle_client_cpu_per_second']:.1f} % for "
                  f"the client; worker CPU per individual per iteration less that idle share over the fit's wall "
                  f"time: {work} ms")

    print(f"\nPer-task compute (from Dask's task stream, M = {m}, {dist['n_partitions']} partitions)\n")
    print("| task | calls | total (s) | per call (s) | per individual per call (us) |")
    print("|---|---|---|---|---|")
    per_individual = {}
    for name, (calls, total) in sorted(dist["task_compute"].items(), key=lambda kv: -kv[1][1]):
        each = m / dist["n_partitions"]
        per_individual[name] = total / calls / each
        print(f"| {name} | {calls} | {total:.2f} | {total / calls:.3f} | {1e6 * per_individual[name]:.1f} |")

    # Projection: each worker's CPU time per individual (the work, whatever the machine's load;
    # the timed fit's iterations plus its first E-step and the validation), plus a fixed overhead
    # per round trip (scheduling, transfers, the client's share): wall time minus task compute.
    iterations = dist["iterations"]
    wall = float(np.sum(dist["iteration_seconds"]))
    compute_per_iteration = sum(
        total for name, (calls, total) in dist["task_compute"].items() if name not in ("validate", "summarise",
        "prepare", "output_square_deviation", "identity")) / iterations / args.workers
    trips = float(np.mean(dist["round_trips"][1:]))
    overhead_per_trip = max(wall / iterations - compute_per_iteration, 0.0) / trips
    per_worker = args.project_m / args.project_workers
    per_individual_iteration = max(dist["worker_cpu_seconds"]) / (m / args.workers) / iterations
    received = float(np.mean(dist["received"][1:])) / dist["n_partitions"] * args.project_workers
    projected = per_individual_iteration * per_worker + trips * overhead_per_trip + received / args.bandwidth
    growth = max(dist["worker_peak_growth_mib"]) / (m / args.workers)
    print(f"\nProjection (not a measurement): M = {args.project_m:.0e} on {args.project_workers} workers, one "
          f"partition of {per_worker:.0e} individuals each")
    print(f"- worker CPU per individual per EM iteration: {1e6 * per_individual_iteration:.1f} us -> "
          f"{per_individual_iteration * per_worker:.1f} s per iteration per worker")
    print(f"- overhead per round trip (measured wall - compute): {1e3 * overhead_per_trip:.1f} ms x {trips:.0f} "
          f"round trips = {trips * overhead_per_trip:.1f} s")
    print(f"- results to the client: {received / 1e6:.1f} MB per iteration at {args.bandwidth / 1e9:g} GB/s = "
          f"{received / args.bandwidth:.2f} s")
    print(f"- about {projected:.0f} s per EM iteration; worker memory about {growth * per_worker / 1024:.1f} GiB "
          f"(measured {1024 * growth:.1f} KiB per individual)")


if __name__ == "__main__":
    main()
