r"""The population distribution of the individual HP by Monte Carlo EM on the individuals' likelihoods.

With different HP, the individuals' log HP :math:`x_i` are draws from a population
:math:`\mathcal N(m, S)`, which a new individual's prediction integrates over
(:mod:`magma_pymc.hp_integration`). :mod:`magma_pymc.population` estimates :math:`(m, S)` from
the EM estimates :math:`\hat x_i` treated as Gaussian measurements :math:`\mathcal N(x_i, V_i)`,
:math:`V_i` a Laplace covariance. From a few points that measurement model is poor: the
likelihood of a variance seen through one long-lengthscale curve is flat on one side and steep
on the other, and the spread of the :math:`\hat x_i` then overstates :math:`S` (measured on real
tree, pig and swimmer panels: new individuals' 50 % intervals covered 24-46 % of their points).
Here :math:`(m, S)` maximise the individuals' marginal likelihood itself,

.. math::

    \sum_i \log \int p(y_i \mid x)\, \mathcal N(x; m, S)\, dx, \qquad
    p(y_i \mid x) = \mathcal N\big(y_i;\ \hat m_{-i}(t_i),\ \hat K_{-i}(t_i, t_i) + \Psi_x(t_i)\big),

:math:`\mu_0` integrated over its hyper-posterior without individual :math:`i` (below), by EM
over the :math:`x_i`: the E-step takes the posterior moments of each :math:`x_i` under the current
:math:`(m, S)` by self-normalised importance sampling, the M-step sets

.. math::

    m = \tfrac1M \sum_i \mathbb E[x_i], \qquad S = \tfrac1M \sum_i \mathbb E[(x_i - m)(x_i - m)^\top].

Each individual's draws come from a Student-t (5 degrees of freedom) proposal, first centred on the
Gaussian combination of :math:`\mathcal N(\hat x_i, V_i)` with the random-effects population, then
refitted to its weighted draws (adaptive importance sampling) for :data:`ROUNDS` rounds of
:data:`N_DRAWS` draws; within a round EM runs to convergence on fixed draws. Individuals with more
than :data:`LAPLACE_POINTS` points (whose likelihood is close to Gaussian, and costly to evaluate
at hundreds of draws) keep the measurement model: their posterior moments are the closed form of
:math:`\mathcal N(\hat x_i; x, V_i)\,\mathcal N(x; m, S)`. At most :data:`MAX_INDIVIDUALS`
individuals (a seeded subset) enter the estimate.

*Leaving individual i out of* :math:`\mu_0`. The hyper-posterior at :math:`t_i` given all the data
is that given the others updated by :math:`y_i \sim \mathcal N(\mu_0(t_i), \Psi_i)` at the fitted
:math:`\Psi_i`, so it is undone in closed form: with :math:`r = y_i - \hat m(t_i)`,
:math:`\hat K = \hat K(t_i, t_i)` and :math:`D = \Psi_i - \hat K` (positive definite),

.. math::

    \hat K_{-i} = \hat K + \hat K D^{-1} \hat K, \qquad y_i - \hat m_{-i}(t_i) = r + \hat K D^{-1} r .

Without it the residuals are shrunk towards 0 by the individual's own pull on :math:`\mu_0`, and
the likelihood favours small variances.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from scipy.linalg import cho_factor, cho_solve, solve_triangular
from scipy.special import gammaln

from magma_pymc.em import Problem
from magma_pymc.hp_integration import batched_cholesky, floored_inverse, kernel_on_batches
from magma_pymc.kernels import Kernel

__all__ = ["IndividualTerms", "leave_one_out", "individual_terms", "real_points", "terms_of_points", "monte_carlo_em",
           "N_DRAWS", "ROUNDS", "LAPLACE_POINTS", "MAX_INDIVIDUALS"]

#: Importance draws per individual and round.
N_DRAWS = 200
#: Rounds of proposal refitting; the estimate is that of the last round.
ROUNDS = 6
#: Individuals with more points than this keep the Gaussian measurement model (module docstring).
LAPLACE_POINTS = 100
#: Largest number of individuals entering the estimate (a seeded subset beyond it).
MAX_INDIVIDUALS = 100
#: EM on fixed draws stops when no entry of (m, S) moves by more than this.
INNER_TOL = 1e-6
INNER_MAX_ITER = 25
#: Finite-difference step (log-HP units), iteration cap and step tolerance of the batched Newton search
#: for the individuals' posterior modes.
NEWTON_STEP = 1e-3
NEWTON_MAX_ITER = 20
NEWTON_TOL = 1e-4
NEWTON_MAX_STEP = 2.0
_STUDENT_DF = 5.0
#: Matrix entries per batched likelihood evaluation (about 200 MB of float64 with its factors).
CHUNK_ENTRIES = 8_000_000
_LOG_2PI = float(np.log(2 * np.pi))


class IndividualTerms(NamedTuple):
    r"""What an individual's likelihood :math:`p(y_i \mid x)` needs.

    Its ``(n, d)`` inputs, the ``(n,)`` residuals :math:`y_i - \hat m_{-i}(t_i)` and the ``(n, n)``
    covariance :math:`\hat K_{-i}(t_i, t_i)`.
    """

    inputs: np.ndarray
    residuals: np.ndarray
    cov: np.ndarray


def leave_one_out(residuals: np.ndarray, cov: np.ndarray, psi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Residuals and covariance of :math:`\mu_0` at :math:`t_i` without individual :math:`i` (module docstring).

    ``residuals`` :math:`y_i - \hat m(t_i)`, ``cov`` :math:`\hat K(t_i, t_i)` and ``psi``
    :math:`\Psi_i` (noise and jitter included). Where :math:`\Psi_i - \hat K` does not factorise
    (an individual that alone determines :math:`\mu_0` there) the inputs are returned unchanged.
    """
    try:
        factor = cho_factor(psi - cov, lower=True)
    except np.linalg.LinAlgError:
        return residuals, cov
    update = cov @ cho_solve(factor, np.column_stack([cov, residuals]))   # K D^{-1} [K, r]
    loo_cov = cov + update[:, :-1]
    return residuals + update[:, -1], 0.5 * (loo_cov + loo_cov.T)


def individual_terms(problem: Problem, estep_result: tuple, rows: Sequence[int], *,
                     max_points: int | None = None) -> list[IndividualTerms]:
    r""":class:`IndividualTerms` of the training individuals ``rows`` (``None`` where :func:`real_points` is).

    ``estep_result`` is the ``(current, state)`` of :func:`magma_pymc.em.estep` at the fit's state;
    ``max_points``: that of :func:`real_points` (default :data:`LAPLACE_POINTS`).
    """
    max_points = LAPLACE_POINTS if max_points is None else max_points
    wanted = {int(r): k for k, r in enumerate(rows)}
    current, state = estep_result
    graphs, x = problem.graphs, np.asarray(state.log_params)
    if problem.batches is not None:
        pieces = [(row, b.inputs[j], dev[j], blocks[j], b.mask[j])
                  for b, (dev, blocks) in zip(problem.batches, zip(current.deviations, current.cov_blocks,
                                                                   strict=True), strict=True)
                  for j, row in enumerate(b.rows)]
    else:
        args = problem.data_args
        pieces = [(i, args.inputs[i], current.deviations[i], current.cov_blocks[i], args.mask[i])
                  for i in range(len(x))]
    points: list[tuple | None] = [None] * len(wanted)
    for row, *padded in pieces:
        if int(row) in wanted:
            points[wanted[int(row)]] = real_points(*padded, max_points=max_points)
    return terms_of_points(graphs.individual_kernel, graphs.mode, x[np.asarray(rows, dtype=int)], state.jitter,
                           points)


def real_points(inputs: np.ndarray, deviations: np.ndarray, cov_block: np.ndarray, mask: np.ndarray,
                max_points: int = LAPLACE_POINTS) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    r"""An individual's padded E-step slots cut to its real points: inputs, :math:`y_i - \hat m(t_i)`, :math:`\hat K`.

    ``None`` for an individual of more than ``max_points`` points, which keeps the measurement
    model (its :math:`O(n^2)` block is neither needed nor, in a distributed fit, sent).
    """
    n = int(np.asarray(mask).sum())   # real slots come first
    if n > max_points:
        return None
    return np.asarray(inputs[:n]), np.asarray(deviations[:n]), np.asarray(cov_block[:n, :n])


def terms_of_points(kernel: Kernel, mode: str, log_params: np.ndarray, jitter: float,
                    points: Sequence[tuple | None]) -> list[IndividualTerms | None]:
    r""":class:`IndividualTerms` of individuals with log HP ``log_params`` ``(K, P + 1)``, :math:`\mu_0` left out.

    ``points``: each individual's :func:`real_points` at the fit's last E-step (``None`` stays ``None``);
    :math:`\Psi_i` is the individual's kernel plus noise and ``jitter`` (:func:`leave_one_out`).
    """
    covariances = kernel_on_batches(kernel, mode)
    terms: list[IndividualTerms | None] = []
    for row, point in zip(np.asarray(log_params), points, strict=True):
        if point is None:
            terms.append(None)
            continue
        inputs, residuals, cov = point
        psi = covariances(inputs[None], row[None, :-1])[0]
        psi[np.diag_indices(len(inputs))] += np.exp(row[-1]) + jitter
        terms.append(IndividualTerms(inputs, *leave_one_out(residuals, cov, psi)))
    return terms


def batched_log_likelihoods(kernel: Kernel, terms: Sequence[IndividualTerms], draws: np.ndarray, jitter: float,
                            mode: str, chunk: int = CHUNK_ENTRIES) -> np.ndarray:
    r""":math:`\log p(y_i \mid x)` ``(K, n_draws)`` at the draws ``(K, n_draws, P + 1)`` of individuals ``terms``.

    :math:`\log\mathcal N(r_i; 0, \hat K_{-i} + C_x(t_i) + (\sigma_x^2 + j) I)` (:class:`IndividualTerms`),
    individuals of one size evaluated together, in chunks of about ``chunk`` matrix entries; ``-inf``
    where a covariance does not factorise.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # a draw far out: -inf, not an error
        return _batched_log_likelihoods(kernel, terms, draws, jitter, mode, chunk)


def _batched_log_likelihoods(kernel, terms, draws, jitter, mode, chunk):
    covariances = kernel_on_batches(kernel, mode)
    out = np.empty(draws.shape[:2])
    sizes = np.array([len(t.residuals) for t in terms])
    for n in np.unique(sizes):
        group = np.flatnonzero(sizes == n)
        inputs = np.stack([terms[k].inputs for k in group])
        residuals = np.stack([terms[k].residuals for k in group])
        cov = np.stack([terms[k].cov for k in group])
        per_chunk = max(1, chunk // (n * n * draws.shape[1]))
        for start in range(0, len(group), per_chunk):
            part = slice(start, start + per_chunk)
            x = draws[group[part]]                                      # (g, S, P + 1)
            g, n_draws, p = x.shape
            gamma = covariances(np.repeat(inputs[part], n_draws, axis=0), x.reshape(-1, p)[:, :-1])
            gamma = gamma.reshape(g, n_draws, n, n) + cov[part][:, None]
            gamma[..., np.arange(n), np.arange(n)] += (np.exp(x[..., -1]) + jitter)[..., None]
            chol, ok = batched_cholesky(gamma)
            white = np.linalg.solve(chol, np.broadcast_to(residuals[part][:, None, :, None], (g, n_draws, n, 1)))
            log_det = np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(axis=-1)
            values = -0.5 * (white[..., 0] ** 2).sum(axis=-1) - log_det - 0.5 * n * _LOG_2PI
            out[group[part]] = np.where(ok & np.isfinite(values), values, -np.inf)
    return out


def _mahalanobis(centred: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis norms of the rows ``(..., p)`` of ``centred`` under ``cov`` (Cholesky solve)."""
    # ||L^{-1} d||^2 with L = chol(cov): the p x p whitening solve once, then one product for all rows.
    whitening = solve_triangular(np.linalg.cholesky(cov), np.eye(len(cov)), lower=True)
    return ((centred @ whitening.T) ** 2).sum(axis=-1)


def _posterior_moments_gaussian(estimates, covariances, mean, cov):
    r"""Posterior means and covariances of :math:`x` under :math:`\mathcal N(\hat x; x, V)\,\mathcal N(x; m, S)`.

    Batched over the rows: :math:`m + S (S + V)^{-1} (\hat x - m)` and :math:`S - S (S + V)^{-1} S`.
    """
    total = cov + covariances
    gain = np.linalg.solve(total, np.broadcast_to(cov, total.shape))      # (S + V)^{-1} S
    post_mean = mean + np.einsum("kqp,kq->kp", gain, estimates - mean)     # S (S + V)^{-1} (xhat - m)
    post_cov = cov - cov @ gain
    return post_mean, 0.5 * (post_cov + post_cov.mT)


def monte_carlo_em(
    log_likelihood: Callable[[np.ndarray], np.ndarray],
    sampled: np.ndarray,
    estimates: np.ndarray,
    covariances: np.ndarray,
    start_mean: np.ndarray,
    start_cov: np.ndarray,
    *,
    n_draws: int = N_DRAWS,
    rounds: int = ROUNDS,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Maximum marginal-likelihood :math:`(m, S)` of the module docstring, and each sampled individual's ESS.

    ``log_likelihood`` maps points ``(K, n, p)`` of the K individuals where ``sampled`` ``(M,)`` is
    true (in order) to :math:`\log p(y_i \mid x)` ``(K, n)`` (``-inf`` where undefined); the others
    keep the measurement model :math:`\mathcal N(\hat x_i; x, V_i)` (``estimates`` ``(M, p)``,
    ``covariances`` ``(M, p, p)``). EM starts from ``(start_mean, start_cov)``; each round draws
    from Student-t proposals at the individuals' posterior modes under the current population,
    with their Laplace covariances (:func:`_posterior_modes`), then runs EM on those fixed draws.
    Returns ``(m, S, ess)``, ``ess`` the last round's effective sample sizes of the sampled
    individuals (NaN for the others).
    """
    rng = np.random.default_rng(seed)
    n_individuals, p = estimates.shape
    sampled = np.asarray(sampled, dtype=bool)
    rows = np.flatnonzero(sampled)
    mean, cov = np.asarray(start_mean, float).copy(), np.asarray(start_cov, float).copy()
    modes = np.asarray(estimates[rows], dtype=float).copy()
    ess = np.full(n_individuals, np.nan)
    if not len(rows):  # every individual on the measurement model: no draws, one EM on closed forms
        log_likelihood, rounds = (lambda points: np.empty(points.shape[:2])), 1
    for _ in range(rounds):
        modes, laplace_covs = _posterior_modes(log_likelihood, modes, mean, cov)
        draws = np.empty((len(rows), n_draws, p))
        log_q = np.empty((len(rows), n_draws))
        n_own = int(0.7 * n_draws)
        for k, (centre, spread) in enumerate(zip(modes, laplace_covs, strict=True)):
            # Defensive mixture: most draws at the individual's Laplace approximation, the rest from
            # the population itself, which bounds the weights where the approximation is too narrow.
            draws[k] = np.concatenate([_student_t_draws(rng, centre, 1.5 * spread, (n_own,)),
                                       _student_t_draws(rng, mean, cov, (n_draws - n_own,))])
            log_q[k] = np.logaddexp(np.log(0.7) + _student_t_log_density(draws[k], centre, 1.5 * spread),
                                    np.log(0.3) + _student_t_log_density(draws[k], mean, cov))
        base = np.asarray(log_likelihood(draws)) - log_q   # log p(y_i | x) - log q_i(x)
        base = np.where(np.isfinite(base), base, -np.inf)
        for _ in range(INNER_MAX_ITER if len(rows) else 10 * INNER_MAX_ITER):
            weights = _weights(draws, base, mean, cov)
            post_means = np.einsum("kn,knp->kp", weights, draws)
            centred = draws - post_means[:, None]
            post_covs = np.einsum("kn,knp,knq->kpq", weights, centred, centred)
            fixed_means, fixed_covs = _posterior_moments_gaussian(estimates[~sampled], covariances[~sampled],
                                                                  mean, cov)
            all_means = np.concatenate([post_means, fixed_means])
            all_covs = np.concatenate([post_covs, fixed_covs])
            new_mean = all_means.mean(axis=0)
            spread = all_means - new_mean
            new_cov = all_covs.mean(axis=0) + spread.T @ spread / n_individuals + 1e-10 * np.eye(p)
            moved = max(np.abs(new_mean - mean).max(), np.abs(new_cov - cov).max())
            mean, cov = new_mean, new_cov
            if moved < INNER_TOL:
                break
        ess[rows] = 1.0 / (weights**2).sum(axis=1)
    return mean, cov, ess


def _stencil(p: int, step: float) -> np.ndarray:
    """Offsets ``(1 + 2p + 2p(p - 1), p)`` of central differences for a gradient and a Hessian."""
    eye = step * np.eye(p)
    points = [np.zeros(p), *eye, *(-eye)]
    for i in range(p):
        for j in range(i + 1, p):
            points += [eye[i] + eye[j], eye[i] - eye[j], -eye[i] + eye[j], -eye[i] - eye[j]]
    return np.array(points)


def _posterior_modes(log_likelihood, start: np.ndarray, mean: np.ndarray, cov: np.ndarray):
    r"""Modes of :math:`\log p(y_i \mid x) + \log\mathcal N(x; m, S)` for all K individuals at once.

    Returns the modes and the inverse Hessians there (eigenvalues of the Hessian floored at the
    population precision's smallest, so that a proposal is never wider than the population).
    Damped Newton from ``start`` ``(K, p)``: value, gradient and Hessian by central differences
    (one batched call of ``log_likelihood`` per step), then the best of four step lengths.
    """
    k, p = start.shape
    if k == 0:
        return start, np.empty((0, p, p))
    floor = 1.0 / np.linalg.eigvalsh(cov).max()

    def log_post(points):
        return np.asarray(log_likelihood(points)) - 0.5 * _mahalanobis(points - mean, cov)

    offsets = _stencil(p, NEWTON_STEP)
    x = start.copy()
    for iteration in range(NEWTON_MAX_ITER + 1):
        f = -log_post(x[:, None] + offsets)                         # (K, 1 + 2p + 2p(p-1))
        f = np.where(np.isfinite(f), f, np.inf)
        centre, plus, minus = f[:, 0], f[:, 1:p + 1], f[:, p + 1:2 * p + 1]
        gradient = (plus - minus) / (2 * NEWTON_STEP)
        hessian = np.zeros((k, p, p))
        hessian[:, np.arange(p), np.arange(p)] = (plus - 2 * centre[:, None] + minus) / NEWTON_STEP**2
        pair = 2 * p + 1
        for i in range(p):
            for j in range(i + 1, p):
                a, b, c, d = (f[:, pair + q] for q in range(4))
                hessian[:, i, j] = hessian[:, j, i] = (a - b - c + d) / (4 * NEWTON_STEP**2)
                pair += 4
        hessian = np.where(np.isfinite(hessian), hessian, 0.0)
        inverse = floored_inverse(hessian, floor)
        if iteration == NEWTON_MAX_ITER:
            break
        direction = -np.einsum("kpq,kq->kp", inverse, np.where(np.isfinite(gradient), gradient, 0.0))
        # A trust region of NEWTON_MAX_STEP log units: far from the mode the quadratic model means little.
        direction *= np.minimum(1.0, NEWTON_MAX_STEP / np.maximum(np.abs(direction).max(axis=1), 1e-300))[:, None]
        lengths = np.array([1.0, 0.5, 0.25, 0.125])
        trial = x[:, None] + lengths[None, :, None] * direction[:, None]
        values = np.where(np.isfinite(tried := -log_post(trial)), tried, np.inf)
        best = values.argmin(axis=1)
        better = values[np.arange(k), best] < centre
        x = np.where(better[:, None], trial[np.arange(k), best], x)
        if np.abs(np.where(better[:, None], lengths[best][:, None] * direction, 0.0)).max() < NEWTON_TOL:
            break
    return x, inverse


def _student_t_draws(rng: np.random.Generator, centre: np.ndarray, cov: np.ndarray, shape: tuple) -> np.ndarray:
    """Draws ``(*shape, p)`` of a multivariate Student-t with :data:`_STUDENT_DF` degrees of freedom."""
    z = rng.standard_normal((*shape, len(centre))) @ np.linalg.cholesky(cov).T
    return centre + np.sqrt(_STUDENT_DF / rng.chisquare(_STUDENT_DF, size=shape))[..., None] * z


def _student_t_log_density(x: np.ndarray, centre: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Log density at the rows of ``x`` of the Student-t of :func:`_student_t_draws`."""
    p, df = len(centre), _STUDENT_DF
    chol = np.linalg.cholesky(cov)
    maha = (np.linalg.solve(chol, (x - centre).T) ** 2).sum(axis=0)
    return (gammaln((df + p) / 2) - gammaln(df / 2) - 0.5 * p * np.log(df * np.pi) - np.log(np.diag(chol)).sum()
            - 0.5 * (df + p) * np.log1p(maha / df))


def _weights(draws: np.ndarray, base: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Self-normalised importance weights ``(K, n)`` of the draws under the population ``N(mean, cov)``."""
    centred = draws - mean
    log_w = base - 0.5 * _mahalanobis(centred, cov)
    top = log_w.max(axis=1, keepdims=True)
    # An individual whose draws are all impossible contributes its draws uniformly (no information).
    weights = np.where(np.isfinite(top), np.exp(log_w - np.where(np.isfinite(top), top, 0.0)), 1.0)
    return weights / weights.sum(axis=1, keepdims=True)
