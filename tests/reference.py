"""Dense NumPy/SciPy references: MAGMA as one joint Gaussian process over all observations.

Independent of the library's linear algebra: stack every observation, build

    cov((t, i), (t', j)) = k0(t, t') + delta_ij (c_i(t, t') + sigma_i^2 delta_tt')

and condition with ``numpy.linalg.solve`` / ``scipy.stats.multivariate_normal``. Only small
problems. Kernels are squared exponential, written out here (not taken from PyMC).
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def central_differences(value, x, eps=1e-6):
    """Central finite differences of the scalar ``value(x)`` with respect to every entry of ``x`` (any shape)."""
    x = np.asarray(x, dtype=float)
    grad = np.empty_like(x)
    for k in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[k] = eps
        grad[k] = (value(x + step) - value(x - step)) / (2 * eps)
    return grad


def se(x1, x2, variance, lengthscale):
    x1, x2 = np.atleast_2d(x1.T).T, np.atleast_2d(x2.T).T
    d2 = ((x1[:, None, :] - x2[None, :, :]) ** 2).sum(-1)
    return variance * np.exp(-0.5 * d2 / lengthscale**2)


class JointGP:
    """Dense joint GP of a MAGMA model with SE kernels.

    ``individuals``: list of (inputs (n,), outputs (n,)); ``hp0`` = (v0, l0); ``hps``: list of
    (v, l, noise) per individual; ``m0``: constant prior mean.
    """

    def __init__(self, individuals, hp0, hps, m0=0.0):
        self.t = [np.asarray(t, float) for t, _ in individuals]
        self.y = np.concatenate([np.asarray(y, float) for _, y in individuals])
        self.hp0, self.hps, self.m0 = hp0, hps, m0
        self.t_all = np.concatenate(self.t)
        self.owner = np.concatenate([np.full(len(t), i) for i, t in enumerate(self.t)])
        cov = se(self.t_all, self.t_all, *hp0)
        for i, t in enumerate(self.t):
            block = np.ix_(self.owner == i, self.owner == i)
            v, l, s2 = hps[i]
            cov[block] += se(t, t, v, l) + s2 * np.eye(len(t))
        self.cov = cov

    def log_likelihood(self) -> float:
        return stats.multivariate_normal(np.full(len(self.y), self.m0), self.cov).logpdf(self.y)

    def mean_process(self, s):
        """Exact posterior of mu0 at s given all observations."""
        k_sy = se(s, self.t_all, *self.hp0)
        mean = self.m0 + k_sy @ np.linalg.solve(self.cov, self.y - self.m0)
        cov = se(s, s, *self.hp0) - k_sy @ np.linalg.solve(self.cov, k_sy.T)
        return mean, cov

    def predict(self, t_obs, y_obs, t_pred, hp_new):
        """Exact posterior of mu0 + f_new at t_pred given training data and the new individual's points.

        Returns (mean, latent cov); the predictive cov adds hp_new[2] on the diagonal.
        """
        v, l, s2 = hp_new
        t_obs = np.asarray(t_obs, float)
        n = len(self.y)
        k_oy = se(t_obs, self.t_all, *self.hp0)
        big = np.block(
            [
                [self.cov, k_oy.T],
                [k_oy, se(t_obs, t_obs, *self.hp0) + se(t_obs, t_obs, v, l) + s2 * np.eye(len(t_obs))],
            ]
        )
        cross = np.hstack([se(t_pred, self.t_all, *self.hp0), se(t_pred, t_obs, *self.hp0) + se(t_pred, t_obs, v, l)])
        resid = np.concatenate([self.y, y_obs]) - self.m0
        mean = self.m0 + cross @ np.linalg.solve(big, resid)
        prior = se(t_pred, t_pred, *self.hp0) + se(t_pred, t_pred, v, l)
        assert big.shape[0] == n + len(t_obs)
        return mean, prior - cross @ np.linalg.solve(big, cross.T)

    def new_individual_nll(self, t_obs, y_obs, log_hp) -> float:
        """-log N(y*; mhat(t*), Khat(t*, t*) + C(t*, t*) + s2 I): the new individual's HP likelihood."""
        mhat, khat = self.mean_process(t_obs)
        v, l, s2 = np.exp(log_hp)
        cov = khat + se(t_obs, t_obs, v, l) + s2 * np.eye(len(t_obs))
        return -stats.multivariate_normal(mhat, cov).logpdf(y_obs)


class ProjectedJointGP(JointGP):
    """Dense joint GP of the projected model: mu0(t) = k0(t, g) k0(g, g)^{-1} mu0(g) on inducing points g.

    The mean process contributes ``k0(t, g) k0(g, g)^{-1} k0(g, t')`` (formed with
    ``numpy.linalg.solve``) instead of ``k0(t, t')``; the posterior of mu0 at new inputs s is the
    Gaussian conditional given mu0(g), ``k0(s, s) - k0(s, g) k0(g, g)^{-1} k0(g, s)``, plus the
    projection of mu0(g)'s posterior.
    """

    def __init__(self, individuals, hp0, hps, inducing, m0=0.0):
        super().__init__(individuals, hp0, hps, m0)
        self.g = np.asarray(inducing, float)
        k_gg = se(self.g, self.g, *hp0)
        k_gt = se(self.g, self.t_all, *hp0)
        self.cov = self.cov - se(self.t_all, self.t_all, *hp0) + k_gt.T @ np.linalg.solve(k_gg, k_gt)

    def mean_process(self, s):
        k_gg = se(self.g, self.g, *self.hp0)
        k_sg = se(s, self.g, *self.hp0)
        cross = k_sg @ np.linalg.solve(k_gg, se(self.g, self.t_all, *self.hp0))  # cov(mu0(s), y)
        mean = self.m0 + cross @ np.linalg.solve(self.cov, self.y - self.m0)
        cov = se(s, s, *self.hp0) - cross @ np.linalg.solve(self.cov, cross.T)
        return mean, cov


def clustered_prediction(log_weights, cluster_posterior, hp, t_obs, y_obs, t_pred):
    """Brute-force Type I prediction of a clustered MAGMA model: one Gaussian per cluster, reweighted.

    ``cluster_posterior(k, s)`` is the (mean, cov) of cluster ``k``'s mean process at inputs ``s``;
    ``hp`` = (variance, lengthscale, noise) of the individual SE kernel. Returns the cluster
    probabilities given ``y_obs``, and each cluster's predictive means and variances at ``t_pred``.
    """
    v, ls, s2 = hp
    s = np.concatenate([t_obs, t_pred])
    n = len(t_obs)
    means, variances, logits = [], [], []
    for k in range(len(log_weights)):
        mean_s, cov_s = cluster_posterior(k, s)
        gamma = cov_s + se(s, s, v, ls)
        gamma_oo = gamma[:n, :n] + s2 * np.eye(n)
        logits.append(log_weights[k] + stats.multivariate_normal(mean_s[:n], gamma_oo).logpdf(y_obs))
        gain = np.linalg.solve(gamma_oo, gamma[:n, n:]).T
        means.append(mean_s[n:] + gain @ (y_obs - mean_s[:n]))
        variances.append(np.diag(gamma[n:, n:] - gain @ gamma[:n, n:]) + s2)
    logits = np.array(logits)
    weights = np.exp(logits - logits.max())
    return weights / weights.sum(), np.array(means), np.array(variances)
