"""Benchmark of ragged data and large predictions: time and memory per EM iteration, prediction memory.

Cases (each in its own subprocess, data seeded; one BLAS thread, the library's default):

* ``long+short``: one individual of 2,000 points on [0, 10] and ten of 3 random points (the union
  grid has 2,030 inputs, so the exact E-step is O(2030^3) whatever the layout).
* ``swimmers``: the bundled real panel (3,456 swimmers, 16 to 61 results each, 994 distinct ages).
* ``predict-20k``: a fit on 20 x 30 points, then ``predict`` of a new individual at 20,000 inputs
  with ``full_cov=False``.

Layouts: ``buckets`` (default: individuals padded to their size bucket's longest,
:mod:`magma_pymc.batches`) and ``padded`` (every individual padded to the longest, forced by
``magma_pymc.batches.WASTE = inf``), the layout before buckets.

Columns: ``iter_s`` is one EM iteration, measured as the time of ``fit(max_iter=1)`` minus that of
``fit(max_iter=0)`` (the setup and the first E-step), after a warm-up fit compiled the graphs;
``peak_MiB`` the growth of the worker's peak resident memory (``ru_maxrss``) over the fits, above
what imports and the warm-up used; ``predict_s``/``predict_MiB`` the same for one prediction.

Run (from the repository root)::

    python benchmarks/bench_ragged.py                  # all cases, both layouts
    python benchmarks/bench_ragged.py --cases long+short --layouts buckets
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings

CASES = ("long+short", "swimmers", "predict-20k")
LAYOUTS = ("buckets", "padded")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _data(case: str):
    import numpy as np

    import magma_pymc as mp

    rng = np.random.default_rng(0)
    if case == "long+short":
        t = np.linspace(0.0, 10.0, 2000)
        data = {"long": (t, np.sin(t) + rng.normal(0.0, 0.1, t.size))}
        for k in range(10):
            s = np.sort(rng.uniform(0.0, 10.0, 3))
            data[f"short{k}"] = (s, np.sin(s) + rng.normal(0.0, 0.1, 3))
        return data
    if case == "swimmers":
        frame = mp.datasets.load_swimmers()
        return frame[["ID", "Input", "Output"]]
    return mp.simulate(n_individuals=20, n_points=30, seed=1, n_new=1)


def worker(case: str, layout: str) -> dict:
    import numpy as np

    import magma_pymc as mp
    import magma_pymc.batches as batches

    warnings.simplefilter("ignore")
    if layout == "padded":
        batches.WASTE = float("inf")
    data = _data(case)
    row = {"case": case, "layout": layout}
    if case == "predict-20k":
        model = mp.Magma(max_iter=5).fit(data.data)
        observed, _ = mp.split_observed(data.new, 20)
        inputs = np.linspace(0.0, 10.0, 20_000)
        model.predict(observed, inputs[:10])  # compile the prediction graphs
        before = _peak_mib()
        start = time.perf_counter()
        pred = model.predict(observed, inputs)
        row.update(predict_s=time.perf_counter() - start, predict_MiB=_peak_mib() - before,
                   finite=bool(np.isfinite(pred["variance"].values).all()))
        return row
    mp.Magma(max_iter=0).fit(data)  # warm-up: compiles the graphs
    before = _peak_mib()
    start = time.perf_counter()
    mp.Magma(max_iter=0).fit(data)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    model = mp.Magma(max_iter=1).fit(data)
    row.update(iter_s=time.perf_counter() - start - setup, setup_s=setup, peak_MiB=_peak_mib() - before,
               log_likelihood=model.log_likelihood_)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    rows = []
    for case in args.cases.split(","):
        for layout in args.layouts.split(","):
            if case == "predict-20k" and layout == "padded":
                continue
            try:
                out = subprocess.run([sys.executable, __file__, "--worker", case, layout], capture_output=True,
                                     text=True, timeout=args.timeout, check=True)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            except subprocess.TimeoutExpired:
                rows.append({"case": case, "layout": layout, "iter_s": f"timeout {args.timeout:.0f}"})
            except subprocess.CalledProcessError as err:
                rows.append({"case": case, "layout": layout, "iter_s": "error: " + err.stderr.strip()[-200:]})
    columns = ["case", "layout", "iter_s", "peak_MiB", "setup_s", "predict_s", "predict_MiB"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [f"{row[c]:.3g}" if isinstance(row.get(c), float) else str(row.get(c, "-")) for c in columns]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
