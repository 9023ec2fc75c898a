r"""MagmaClust with each cluster's mean process on inducing points (``MagmaClust(inducing=...)``).

MAGMA's projected model (theory page, *Large union grids*) for every cluster: on G inducing points
:math:`g` (``problem.grid``), with :math:`L_k = \mathrm{chol}(K_k(g, g) + jI)`,

.. math::

    \mu_k(t_i) - m(t_i) = S_{ik} z_k,\qquad S_{ik} = K_k(t_i, g) L_k^{-\top},\qquad z_k \sim \mathcal N(0, I_G),

so the loadings :math:`S_{ik}` replace :math:`P_i L_k` of the exact model and every step of
:mod:`magma_pymc.cluster.vem` keeps its form, at :math:`O(G^3 + \sum_i N_i^3 + G^2\sum_i N_i)` per cluster
instead of :math:`O(N^3)`:

- :math:`q(z_k) = \mathcal N(\alpha_k, B_k^{-1})`, :math:`B_k = I + \sum_i\tau_{ik} S_{ik}^\top\Psi_i^{-1}S_{ik}`,
  :math:`\alpha_k = B_k^{-1} c_k`, :math:`c_k = \sum_i \tau_{ik} S_{ik}^\top \Psi_i^{-1} r_i`; hence
  :math:`q(\mu_k(g)) = \mathcal N(m + L_k\alpha_k, L_k B_k^{-1} L_k^\top)`, a
  :class:`~magma_pymc.cluster.linalg.ClusterPosterior` on :math:`g`, and at new inputs the exact conditional
  given :math:`\mu_k(g)` (:func:`magma_pymc.cluster.predict.cluster_means_at`, unchanged);
- :math:`E_{ik}` from the deviations :math:`r_i - S_{ik}\alpha_k` and blocks :math:`S_{ik}B_k^{-1}S_{ik}^\top`;
  :math:`\mathrm{KL}(q(z_k)\,\|\,\mathcal N(0, I))` as the exact model's with :math:`G` for :math:`N`;
- the mean-process step (ECME) maximises the collapsed bound of each cluster

  .. math::

      \log\int \mathcal N(z; 0, I)\prod_i \mathcal N(r_i; S_{ik} z, \Psi_i)^{\tau_{ik}} dz
      = -\tfrac12\Big(\sum_i \tau_{ik}\|A_i r_i\|^2 - \|L_{B_k}^{-1}c_k\|^2\Big) - \log|L_{B_k}|
        - \sum_i\tau_{ik}\big(\tfrac12\log|\Psi_i| + \tfrac{N_i}2\log 2\pi\big),

  :math:`A_i = L_{\Psi_i}^{-1}`. The data depend on :math:`\gamma_k` through :math:`S_{ik}` as well, so the
  information form on a grid of the exact model does not apply: the bound is a PyTensor graph (MAGMA's
  :func:`~magma_pymc.hyperposterior.build_loadings` and
  :func:`~magma_pymc.hyperposterior.finish_estep_matrices` with the responsibility-weighted
  :math:`\sqrt{\tau_{ik}} A_i S_{ik}`) and its gradient ``pytensor.grad`` through the loadings.

With :math:`\tau_{i1} = 1` the bound is MAGMA's projected marginal likelihood, and with :math:`g` the union
grid the exact model's (up to the jitter).
"""

from __future__ import annotations

import functools

import numpy as np
import pytensor
import pytensor.tensor as pt
from scipy.linalg import solve_triangular

from magma_pymc.cluster.linalg import IndividualTerms, expected_from_deviations, posterior_from_factors
from magma_pymc.hyperposterior import EStep, TrainingTensors, build_loadings, finish_estep_matrices
from magma_pymc.kernels import Kernel

__all__ = ["build_projected_bound", "projected_estep", "projected_mean_objectives"]


def _symbolic_inputs() -> list:
    """``(mean_hp, grid, inputs, mask, inverse_factor, whitened, tau, half_logdet, n_points, jitter)``."""
    return [
        pt.vector("mean_log_params", dtype="float64"), pt.matrix("grid", dtype="float64"),
        pt.tensor3("inputs", dtype="float64"), pt.matrix("mask", dtype="float64"),
        pt.tensor3("inverse_factor", dtype="float64"), pt.matrix("whitened", dtype="float64"),
        pt.vector("tau", dtype="float64"), pt.vector("half_logdet", dtype="float64"),
        pt.vector("n_points", dtype="float64"), pt.scalar("jitter", dtype="float64"),
    ]


def build_projected_bound(mean_kernel: Kernel, mean_log_params, grid, inputs, mask, inverse_factor, whitened, tau,
                          half_logdet, n_points, jitter) -> EStep:
    r"""Symbolic :math:`q(z_k)` and collapsed bound of one cluster (module docstring) at responsibilities ``tau`` (M,).

    ``inverse_factor`` :math:`A_i` (M, n, n) and ``whitened`` :math:`A_i r_i` (M, n) are the individuals'
    factorisations (:class:`~magma_pymc.cluster.linalg.IndividualTerms`, identity and zero on padded slots);
    ``log_likelihood`` of the result is the bound, ``loadings`` the :math:`S_{ik}` (M, n, G).
    """
    data = TrainingTensors(grid, inputs, None, mask, None, jitter)
    chol_prior, loadings = build_loadings(mean_kernel, mean_log_params, data, projected=True)
    weight = pt.sqrt(tau)
    weighted = weight[:, None, None] * (inverse_factor @ loadings)                  # sqrt(tau_i) A_i S_i
    flat = weighted.reshape((-1, loadings.shape[-1]))
    gram = flat.T @ flat
    shift = flat.T @ (weight[:, None] * whitened).reshape((-1,))                     # c_k
    b_matrix = pt.eye(loadings.shape[-1]) + gram
    estep = finish_estep_matrices(chol_prior, b_matrix, shift, tau @ (whitened**2).sum(axis=1), tau @ half_logdet,
                                  tau @ n_points)
    return estep._replace(loadings=loadings)


@functools.cache
def _estep_function(mean_kernel: Kernel, mode: str):
    """``(<symbolic inputs>) -> (chol_prior, chol_b, alpha, loadings, bound)``, compiled once per kernel and mode."""
    inputs = _symbolic_inputs()
    estep = build_projected_bound(mean_kernel, *inputs)
    outputs = [estep.chol_prior, estep.chol_b, estep.alpha, estep.loadings, estep.log_likelihood]
    return pytensor.function(inputs, outputs, mode=mode)


@functools.cache
def _bound_function(mean_kernel: Kernel, mode: str):
    """``(<symbolic inputs>) -> (-bound, d(-bound)/d mean_log_params)``: the objective of the mean-process step."""
    inputs = _symbolic_inputs()
    value = -build_projected_bound(mean_kernel, *inputs).log_likelihood
    return pytensor.function(inputs, [value, pytensor.grad(value, inputs[0])], mode=mode)


def _data_arguments(problem, terms: IndividualTerms, tau_k: np.ndarray) -> tuple:
    return (problem.grid, problem.inputs, problem.mask, terms.inverse_factor, terms.whitened, tau_k,
            terms.half_logdet, terms.n_points.astype(float))


def projected_estep(problem, mean_log_params: np.ndarray, terms: IndividualTerms, tau: np.ndarray, jitter: float):
    r""":math:`q(\mu_k)` on the inducing points for all clusters, with :math:`E_{ik}` and what the M-step needs.

    Returns ``(posterior, expected, deviations, blocks, bounds)``: the
    :class:`~magma_pymc.cluster.linalg.ClusterPosterior` on ``problem.grid``, :math:`E_{ik}` (M, K), the
    deviations :math:`r_i - S_{ik}\alpha_k` (K, M, n), the blocks :math:`S_{ik}B_k^{-1}S_{ik}^\top` (K, M, n, n) and
    each cluster's collapsed bound (K,). A failed factorisation gives NaN (the caller raises the jitter).
    """
    function = _estep_function(problem.graphs.mean_kernel, problem.graphs.mode)
    parts = [function(row, *_data_arguments(problem, terms, tau_k), jitter)
             for row, tau_k in zip(mean_log_params, tau.T, strict=True)]
    chol_prior, chol_b, alpha, loadings, bounds = (np.stack([np.asarray(p[j]) for p in parts]) for j in range(5))
    posterior = posterior_from_factors(chol_prior, chol_b, alpha)
    deviations = (problem.residuals[None] - (loadings @ alpha[:, None, :, None])[..., 0]) * problem.mask[None]
    n_clusters, n_grid = loadings.shape[0], loadings.shape[-1]
    # S_ik L_Bk^{-T}: one triangular solve per cluster for all individuals' rows
    reduced = solve_triangular(chol_b, loadings.reshape(n_clusters, -1, n_grid).mT, lower=True, check_finite=False)
    reduced = reduced.mT.reshape(loadings.shape)
    blocks = reduced @ reduced.mT
    return posterior, expected_from_deviations(terms, deviations, blocks), deviations, blocks, bounds


def projected_mean_objectives(problem, tau: np.ndarray, terms: IndividualTerms, jitter: float) -> list:
    """One ``(value, grad)`` function of the mean-process log HP per cluster: minus its collapsed bound.

    ``terms`` are the individuals' factorisations at the (new) individual HP (ECME, module docstring).
    """
    function = _bound_function(problem.graphs.mean_kernel, problem.graphs.mode)
    return [
        functools.partial(_call, function, _data_arguments(problem, terms, np.ascontiguousarray(tau_k)), jitter)
        for tau_k in tau.T
    ]


def _call(function, arguments: tuple, jitter: float, mean_log_params: np.ndarray):
    value, grad = function(mean_log_params, *arguments, jitter)
    return float(value), np.asarray(grad)

