"""Time per gradient of the exact marginal log-likelihood, as a sampler evaluates it, against its flop floor.

Rows: the Op with the closed-form gradient (``magma_pymc.likelihood``, ``op``) and PyTensor's
automatic differentiation of the E-step graph (``magma_pymc.hyperposterior.build_estep``,
``autodiff``, what NUTS used before), each compiled in the given modes; one function returning the
value and the gradient w.r.t. every log HP, evaluated at the data-scaled initial HP, one BLAS
thread. ``model``: the whole log-density and gradient NUTS evaluates (the model of
``Magma.fit(method="nuts")`` at EM's estimate: priors, population layer with different HP, kernels
and the Op; raveled input, as nutpie compiles it with ``mode="NUMBA"``), at the prior's initial point;
no floor. ``floor_ms``: the Op's flop count (``likelihood.flop_count``) at the single-thread dgemm
rate measured on this machine for an N x N product (``gflops``), i.e. what the evaluation would
take if every flop ran at matrix-product speed.

Run from the repository root::

    python benchmarks/bench_gradient.py
    python benchmarks/bench_gradient.py --modes CVM --cases uncommon-common
    python benchmarks/bench_gradient.py --modes CVM,NUMBA --gradients op,model --cpu  # NumPy vs Numba, CPU time
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pytensor
import pytensor.tensor as pt
from threadpoolctl import threadpool_limits

import magma_pymc as mp
from magma_pymc.data import as_training_data
from magma_pymc.hyperposterior import TrainingTensors, build_estep
from magma_pymc.kernels import SquaredExponential
from magma_pymc.likelihood import build_marginal_log_likelihood, flop_count

CASES = {
    "common-different": dict(grid="common", common_hp=False),
    "uncommon-common": dict(grid="uncommon", common_hp=True),
    "uncommon-different": dict(grid="uncommon", common_hp=False),
    "weight100-different": dict(grid="weight", common_hp=False),
}


def sampler_function(frame, common_hp: bool, mode: str):
    """The sampler's log-density and gradient as one function of the raveled free variables, and a point."""
    from pymc.pytensorf import join_nonshared_inputs

    from magma_pymc.sampling import build_marginal_model

    model = mp.Magma(common_hp=common_hp).fit(frame)
    pm_model = build_marginal_model(model._spec(model.data_), model._problem_, model._state.jitter,
                                    hierarchical=None)
    point = pm_model.initial_point()
    logp = pm_model.logp()
    grad = pt.concatenate([g.ravel() for g in pytensor.grad(logp, pm_model.value_vars)])
    [logp, grad], joined = join_nonshared_inputs(point, [logp, grad], pm_model.value_vars)
    fn = pytensor.function([joined], [logp, grad], mode=mode)
    return fn, np.concatenate([point[v.name].ravel() for v in pm_model.value_vars])


def data_for(case: dict, m: int, seed: int):
    if case["grid"] == "weight":
        weight = mp.datasets.load_weight()
        frame = weight[weight["ID"].isin(weight["ID"].unique()[:100])][["ID", "Input", "Output"]]
    else:
        frame = mp.simulate(m, 30, common_grid=case["grid"] == "common", common_hp=case["common_hp"], seed=seed).data
    train = as_training_data(frame)
    residuals = (train.outputs - train.outputs[train.mask > 0].mean()) * train.mask
    return train, (train.grid, train.inputs, residuals, train.mask, train.index), frame


#: Clock of the timings: wall time, or with ``--cpu`` this process's CPU time (one BLAS thread, so the
#: evaluation's own work; on a machine shared with other jobs the wall time also counts the waits).
CLOCK = time.perf_counter


def timed(fn, args, min_seconds: float) -> float:
    fn(*args)
    count, start = 0, CLOCK()
    while CLOCK() - start < min_seconds:
        fn(*args)
        count += 1
    return (CLOCK() - start) / count


def gemm_gflops(n: int) -> float:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(n, n)), rng.normal(size=(n, n))
    return 2 * n**3 / timed(np.matmul, (a, b), 0.5) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--modes", default="CVM", help="comma-separated PyTensor modes (CVM, NUMBA: nutpie's backend)")
    parser.add_argument("--gradients", default="op,autodiff", help="comma-separated: op, autodiff, model")
    parser.add_argument("--m", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum timing per row")
    parser.add_argument("--cpu", action="store_true", help="time by CPU time of the process (shared machine)")
    args = parser.parse_args()
    if args.cpu:
        global CLOCK
        CLOCK = time.process_time
    kernel = SquaredExponential()
    header = "| case | M | N | log HP | mode | gradient | ms / gradient | floor ms | gflops | x floor |"
    print(header + "\n" + "|---" * 10 + "|")
    with threadpool_limits(1):
        for name in args.cases.split(","):
            case = CASES[name]
            train, values, frame = data_for(case, args.m, args.seed)
            spread = float(np.var(train.outputs[train.mask > 0]))
            span = float(np.ptp(train.grid))
            mean_log = kernel.initial_log_params(span, spread)
            log_hp = np.append(kernel.initial_log_params(span, spread), np.log(0.1 * spread))
            if not case["common_hp"]:
                log_hp = np.tile(log_hp, (train.n_individuals, 1))
            n_grid = len(train.grid)
            floor_flops = flop_count(n_grid, train.n_points)
            gflops = gemm_gflops(max(n_grid, 30))
            data = TrainingTensors.symbolic()
            mean_var = pt.vector("mean_log")
            hp_var = pt.vector("log_hp") if case["common_hp"] else pt.matrix("log_hp")
            builders = {  # each built within this iteration: the loop variables are the ones meant
                "op": lambda: build_marginal_log_likelihood(kernel, kernel, mean_var, hp_var, data),  # noqa: B023
                "autodiff": lambda: build_estep(kernel, kernel, mean_var, hp_var, data).log_likelihood,  # noqa: B023
            }
            for mode in args.modes.split(","):
                for label in args.gradients.split(","):
                    if label == "model":
                        fn, point = sampler_function(frame, case["common_hp"], mode)
                        seconds = timed(fn, (point,), args.seconds)
                        print(f"| {name} | {train.n_individuals} | {n_grid} | {point.size} | {mode} | model "
                              f"| {seconds * 1e3:.3f} | - | - | - |", flush=True)
                        continue
                    build = builders[label]
                    value = build()
                    grads = pytensor.grad(value, [mean_var, hp_var])
                    fn = pytensor.function([mean_var, hp_var, *data], [value, *grads], mode=mode)
                    seconds = timed(fn, (mean_log, log_hp, *values, 1e-8 * spread), args.seconds)
                    floor = floor_flops / (gflops * 1e9)
                    print(f"| {name} | {train.n_individuals} | {n_grid} | {mean_log.size + log_hp.size} | {mode} "
                          f"| {label} | {seconds * 1e3:.3f} | {floor * 1e3:.3f} | {gflops:.1f} "
                          f"| {seconds / floor:.1f} |",
                          flush=True)


if __name__ == "__main__":
    main()
