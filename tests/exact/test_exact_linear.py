"""Exact linear-Gaussian tasks against dense-matrix algebra and scipy.

References: the marginal of task t is y_t ~ N(X_t mu, X_t Sigma X_t^T + sigma^2 diag(s_t^2))
(scipy.stats.multivariate_normal on the full stacked covariance); the posterior of theta_t
and the predictive are the textbook Gaussian conditioning formulas on the dense joint
covariance; empirical Bayes is checked against scipy.optimize maximising the dense
log-likelihood from a different starting point.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, stats
from scipy import stats as st

import bayesmeta as bm
from bayesmeta.exact import (
    GaussianPosterior,
    LinearHyper,
    fit_linear_gaussian,
    linear_gaussian,
    linear_log_marginal,
    linear_new_task,
    linear_predictive,
    linear_sufficient_stats,
    linear_task_posterior,
)
from bayesmeta.tasks import TaskSet

# jitted once per shape: eager dispatch of many small ops is what costs time in tests
_log_marginal = jax.jit(linear_log_marginal)
_task_posterior = jax.jit(linear_task_posterior)


def _simulate(seed, num_tasks, counts, p, noise=0.5, with_scale=False):
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=p)
    a = rng.normal(size=(p, p))
    cov = a @ a.T / p + 0.3 * np.eye(p)
    theta = rng.multivariate_normal(mu, cov, size=num_tasks)
    ids = np.repeat(np.arange(num_tasks), counts)
    x = rng.normal(size=(ids.size, p))
    scale = rng.uniform(0.5, 2.0, ids.size) if with_scale else np.ones(ids.size)
    y = np.sum(x * theta[ids], axis=1) + noise * scale * rng.normal(size=ids.size)
    return x, y, ids, (scale if with_scale else None), mu, cov


def _dense_task(x, y, ids, scale, t, mu, cov, noise):
    rows = ids == t
    xt, yt = x[rows], y[rows]
    st = np.ones(rows.sum()) if scale is None else scale[rows]
    c = xt @ cov @ xt.T + noise**2 * np.diag(st**2)
    return xt, yt, st, c


def _hyper(mu, cov, noise):
    return LinearHyper(jnp.asarray(mu), jnp.asarray(np.linalg.cholesky(cov)), jnp.asarray(noise))


@pytest.mark.parametrize("with_scale", [False, True])
def test_log_marginal_and_posterior_match_dense_algebra(with_scale):
    counts = [4, 1, 7, 2, 5]  # includes tasks with fewer rows than inputs
    x, y, ids, scale, mu, cov = _simulate(0, 5, counts, 3, with_scale=with_scale)
    noise = 0.7
    stats_ = linear_sufficient_stats(x, y, ids, 5, scale)
    hyper = _hyper(mu, cov, noise)
    logm = _log_marginal(stats_, hyper)
    post = _task_posterior(stats_, hyper)
    for t in range(5):
        xt, yt, st, c = _dense_task(x, y, ids, scale, t, mu, cov, noise)
        ref = stats.multivariate_normal(xt @ mu, c).logpdf(yt)
        np.testing.assert_allclose(logm[t], ref, rtol=1e-12)
        # Gaussian conditioning on the joint (theta, y_t)
        gain = cov @ xt.T @ np.linalg.inv(c)
        np.testing.assert_allclose(post.mean[t], mu + gain @ (yt - xt @ mu), rtol=1e-10)
        np.testing.assert_allclose(post.cov[t], cov - gain @ xt @ cov, rtol=1e-10, atol=1e-13)
        # and the precision form
        prec = np.linalg.inv(cov) + xt.T @ np.diag(1 / (noise * st) ** 2) @ xt
        np.testing.assert_allclose(np.linalg.inv(prec), post.cov[t], rtol=1e-10, atol=1e-13)


def test_singular_population_covariance():
    # Sigma of rank 1: theta lies on a line; the dense conditioning formula still applies
    x, y, ids, _, mu, _ = _simulate(1, 3, [5, 5, 5], 2)
    v = np.array([1.0, -2.0])
    cov = np.outer(v, v)
    hyper = LinearHyper(jnp.asarray(mu), jnp.asarray([[1.0, 0.0], [-2.0, 0.0]]), jnp.asarray(0.4))
    stats_ = linear_sufficient_stats(x, y, ids, 3)
    post = _task_posterior(stats_, hyper)
    logm = _log_marginal(stats_, hyper)
    for t in range(3):
        xt, yt, _, c = _dense_task(x, y, ids, None, t, mu, cov, 0.4)
        gain = cov @ xt.T @ np.linalg.inv(c)
        np.testing.assert_allclose(post.mean[t], mu + gain @ (yt - xt @ mu), rtol=1e-10)
        np.testing.assert_allclose(post.cov[t], cov - gain @ xt @ cov, atol=1e-12)
        np.testing.assert_allclose(
            logm[t], stats.multivariate_normal(xt @ mu, c).logpdf(yt), rtol=1e-12
        )


def test_new_task_and_predictive_match_dense_conditioning():
    x, y, ids, _, mu, cov = _simulate(2, 1, [6], 2)
    noise = 0.3
    hyper = _hyper(mu, cov, noise)
    post = linear_new_task(hyper, x, y)
    x_new = np.array([[1.0, 0.5], [-0.3, 2.0], [0.0, 0.0]])
    # joint Gaussian of (y, y_new) given the population, conditioned on y
    xa = np.vstack([x, x_new])
    joint = xa @ cov @ xa.T + noise**2 * np.eye(len(xa))
    n = len(y)
    k11, k12, k22 = joint[:n, :n], joint[:n, n:], joint[n:, n:]
    cond_mean = x_new @ mu + k12.T @ np.linalg.solve(k11, y - x @ mu)
    cond_cov = k22 - k12.T @ np.linalg.solve(k11, k12)
    pred = linear_predictive(post, x_new, noise=noise)
    np.testing.assert_allclose(pred.mean, cond_mean, rtol=1e-10)
    np.testing.assert_allclose(pred.cov, cond_cov, rtol=1e-10, atol=1e-13)
    f = linear_predictive(post, x_new)
    np.testing.assert_allclose(f.cov, cond_cov - noise**2 * np.eye(3), rtol=1e-9, atol=1e-12)
    # the new-task posterior equals that task's posterior inside a collection
    inside = linear_task_posterior(linear_sufficient_stats(x, y, ids, 1), hyper)
    np.testing.assert_allclose(post.mean, inside.mean[0], rtol=1e-13)
    # no data: the population itself
    empty = linear_new_task(hyper, np.zeros((0, 2)), np.zeros(0))
    np.testing.assert_allclose(empty.mean, mu, rtol=1e-14)
    np.testing.assert_allclose(empty.cov, cov, rtol=1e-12)


def test_gradients_and_jit():
    x, y, ids, _, mu, cov = _simulate(3, 4, [3, 4, 5, 6], 2)
    stats_ = linear_sufficient_stats(x, y, ids, 4)

    def f(m, log_noise):
        return jnp.sum(
            linear_log_marginal(
                stats_, LinearHyper(m, jnp.asarray(np.linalg.cholesky(cov)), jnp.exp(log_noise))
            )
        )

    g = jax.jit(jax.grad(f, argnums=(0, 1)))(jnp.asarray(mu), 0.1)
    f = jax.jit(f)
    h = 1e-6
    e0 = np.array([h, 0.0])
    fd0 = (f(mu + e0, 0.1) - f(mu - e0, 0.1)) / (2 * h)
    np.testing.assert_allclose(g[0][0], fd0, rtol=1e-6)
    np.testing.assert_allclose(g[1], (f(mu, 0.1 + h) - f(mu, 0.1 - h)) / (2 * h), rtol=1e-6)


# --------------------------------------------------------------------------- empirical Bayes
def _dense_loglik(x, y, ids, num_tasks, mu, cov, noise):
    total = 0.0
    for t in range(num_tasks):
        xt, yt, _, c = _dense_task(x, y, ids, None, t, mu, cov, noise)
        r = yt - xt @ mu
        sign, logdet = np.linalg.slogdet(c)
        total += -0.5 * (len(yt) * np.log(2 * np.pi) + logdet + r @ np.linalg.solve(c, r))
    return total


@pytest.fixture(scope="module")
def eb_problem():
    num_tasks = 25
    x, y, ids, _, mu, cov = _simulate(4, num_tasks, [8] * num_tasks, 2, noise=0.5)
    stats_ = linear_sufficient_stats(x, y, ids, num_tasks)
    return x, y, ids, num_tasks, stats_


def _unpack(v):
    L = np.array([[v[2], 0.0], [v[3], v[4]]])
    return v[:2], L @ L.T, np.exp(v[5])


def test_empirical_bayes_matches_scipy_maximisation(eb_problem):
    x, y, ids, num_tasks, stats_ = eb_problem
    hyper, info = fit_linear_gaussian(stats_)
    assert info["converged"] and info["fitted"] == ("mu", "scale_tril", "noise")

    def neg(v):
        mu, cov, noise = _unpack(v)
        return -_dense_loglik(x, y, ids, num_tasks, mu, cov, noise)

    ref = optimize.minimize(
        neg, np.array([0.0, 0.0, 1.0, 0.0, 1.0, 0.0]), method="BFGS", options={"gtol": 1e-8}
    )
    mu_ref, cov_ref, noise_ref = _unpack(ref.x)
    ll = _dense_loglik(
        x, y, ids, num_tasks, np.asarray(hyper.mu), np.asarray(hyper.cov), float(hyper.noise)
    )
    np.testing.assert_allclose(info["log_marginal_likelihood"], ll, rtol=1e-12)
    # the library's optimum is at least as high, and they agree
    assert ll >= -ref.fun - 1e-9
    np.testing.assert_allclose(ll, -ref.fun, rtol=1e-10)
    np.testing.assert_allclose(hyper.mu, mu_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(hyper.cov, cov_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(hyper.noise, noise_ref, rtol=1e-4)
    assert np.all(np.diag(hyper.scale_tril) >= 0)


def test_empirical_bayes_with_fixed_parts(eb_problem):
    x, y, ids, num_tasks, stats_ = eb_problem
    hyper, info = fit_linear_gaussian(stats_, mu=[0.5, -0.5], noise=0.5)
    assert info["fitted"] == ("scale_tril",)
    np.testing.assert_allclose(hyper.mu, [0.5, -0.5])

    def neg(v):
        L = np.array([[v[0], 0.0], [v[1], v[2]]])
        return -_dense_loglik(x, y, ids, num_tasks, np.array([0.5, -0.5]), L @ L.T, 0.5)

    ref = optimize.minimize(neg, np.array([1.0, 0.0, 1.0]), method="BFGS", options={"gtol": 1e-8})
    np.testing.assert_allclose(info["log_marginal_likelihood"], -ref.fun, rtol=1e-10)


def test_linear_gaussian_friendly_api():
    x, y, ids, scale, _, _ = _simulate(5, 6, [5] * 6, 2, with_scale=True)
    tasks = TaskSet.from_arrays(x=x, y=y, task=[f"t{i}" for i in ids], noise_scale=scale)
    res = linear_gaussian(tasks)
    # known per-row noise: sigma stays at 1
    assert res.info["fitted"] == ("mu", "scale_tril") and float(res.hyper.noise) == 1.0
    assert res.task_mean.shape == (6, 2) and res.task_cov.shape == (6, 2, 2)
    np.testing.assert_allclose(res.cov, res.hyper.scale_tril @ res.hyper.scale_tril.T)
    pred = res.predict(np.array([[1.0, 0.0]]), task="t2")
    np.testing.assert_allclose(pred.mean, res.task_mean[2, :1], rtol=1e-12)
    np.testing.assert_allclose(pred.cov[0, 0], res.task_cov[2, 0, 0] + 1.0, rtol=1e-12)
    pop = res.predict(np.eye(2), observation=False)
    np.testing.assert_allclose(pop.cov, res.cov, rtol=1e-12)
    assert isinstance(res.new_task(x[:3], y[:3]), GaussianPosterior)
    # fully fixed hyperparameters: nothing fitted, the exact answer for them
    fixed = linear_gaussian(tasks, mu=[0.0, 1.0], cov=[[2.0, 0.5], [0.5, 1.0]], noise=1.0)
    assert fixed.info["fitted"] == ()
    np.testing.assert_allclose(fixed.cov, [[2.0, 0.5], [0.5, 1.0]], rtol=1e-12)


def test_bad_input():
    tasks = TaskSet.from_arrays(y=np.ones(4), task=np.array([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="x:"):
        linear_gaussian(tasks)
    tasks = TaskSet.from_arrays(x=np.ones((4, 2)), y=np.ones(4), task=np.array([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="cov"):
        linear_gaussian(tasks, cov=[[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="mu"):
        linear_gaussian(tasks, mu=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="noise"):
        linear_gaussian(tasks, noise=-1.0)
    hyper = LinearHyper(jnp.zeros(2), jnp.eye(2), jnp.asarray(1.0))
    with pytest.raises(ValueError, match="x"):
        linear_new_task(hyper, np.ones((3, 3)), np.ones(3))


# ---------------------------------------------------------------------- mixed models
def _mixed_tasks(seed=4, num_tasks=7):
    """Varying (intercept, x), a common w, one task covariate z."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(3, 9, size=num_tasks)
    task = np.repeat(np.arange(num_tasks), counts)
    z = rng.normal(size=num_tasks)
    x, w = rng.normal(size=task.size), rng.normal(size=task.size)
    theta = np.array([0.5, -1.0]) + np.outer(z, [0.7, 0.2]) + rng.normal(size=(num_tasks, 2))
    y = theta[task, 0] + theta[task, 1] * x + 1.3 * w + 0.6 * rng.normal(size=task.size)
    return TaskSet.from_arrays(
        y=y,
        task=task,
        x=np.stack([np.ones(task.size), x, w], axis=1),
        task_x={"z": z[task]},
        x_names=["one", "x", "w"],
    )


def test_mixed_linear_gaussian_at_fixed_variances_is_dense_gls_and_blup():
    """With Sigma and sigma given, gamma = (mu, B, beta) is the generalised least-squares
    solution and each task's mean its BLUP: both by dense matrices here."""
    tasks = _mixed_tasks()
    sigma_t = np.array([[0.8, 0.0], [0.3, 0.5]])  # L, Sigma = L L'
    noise = 0.6
    res = linear_gaussian(
        tasks, scale_tril=sigma_t, noise=noise, common=["w"], task_covariates=["z"]
    )
    cov_theta = sigma_t @ sigma_t.T
    hs, vinvs, ys, xvs = [], [], [], []
    for t in range(tasks.num_tasks):
        rows = tasks.task_rows(t)
        xv, w = tasks.x[rows][:, :2], tasks.x[rows][:, 2:]
        z = tasks.task_x[t, 0]
        # gamma = (mu_0, mu_1, B_00, B_10, beta): theta_t = mu + B z_t
        h = np.column_stack([xv, xv[:, 0] * z, xv[:, 1] * z, w])
        v = xv @ cov_theta @ xv.T + noise**2 * np.eye(len(xv))
        hs.append(h), vinvs.append(np.linalg.inv(v)), ys.append(tasks.y[rows]), xvs.append(xv)
    lhs = sum(h.T @ vi @ h for h, vi in zip(hs, vinvs, strict=True))
    rhs = sum(h.T @ vi @ y for h, vi, y in zip(hs, vinvs, ys, strict=True))
    gamma = np.linalg.solve(lhs, rhs)
    np.testing.assert_allclose(res.hyper.mu, gamma[:2], rtol=1e-9)
    np.testing.assert_allclose(res.beta_task[:, 0], gamma[2:4], rtol=1e-9)
    np.testing.assert_allclose(res.beta, gamma[4:], rtol=1e-9)
    for t in range(tasks.num_tasks):
        loc = gamma[:2] + gamma[2:4] * tasks.task_x[t, 0]
        blup = loc + cov_theta @ xvs[t].T @ vinvs[t] @ (ys[t] - hs[t] @ gamma)
        np.testing.assert_allclose(res.task_mean[t], blup, rtol=1e-8, atol=1e-10)
        post_cov = cov_theta - cov_theta @ xvs[t].T @ vinvs[t] @ xvs[t] @ cov_theta
        np.testing.assert_allclose(res.task_cov[t], post_cov, rtol=1e-8, atol=1e-12)


def test_mixed_linear_gaussian_matches_statsmodels_mixedlm_ml():
    """Empirical Bayes of the radon varying-intercept model (common floor slope, county
    uranium in the intercept's mean) against statsmodels' MixedLM maximum likelihood.

    statsmodels is fitted with ``method="powell"``: its default (BFGS) stops at a worse
    point on these data (llf -1024.467, ``converged=False``; Powell reaches -1024.0043)."""
    pytest.importorskip("statsmodels")
    import warnings

    import statsmodels.formula.api as smf

    import bayesmeta as bm

    df = bm.datasets.radon()
    df = df.assign(one=1.0)
    tasks = TaskSet.from_dataframe(
        df, task="county", y="log_radon", x=["one", "floor"], task_x=["log_uranium"]
    )
    res = linear_gaussian(tasks, common=["floor"], task_covariates=["log_uranium"])
    assert res.info["converged"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = smf.mixedlm("log_radon ~ floor + log_uranium", df, groups=df["county"]).fit(
            reml=False, method="powell"
        )
    assert ref.converged
    np.testing.assert_allclose(float(res.log_marginal_likelihood), ref.llf, rtol=1e-8)
    np.testing.assert_allclose(float(res.hyper.mu[0]), ref.params["Intercept"], rtol=1e-5)
    np.testing.assert_allclose(float(res.beta[0]), ref.params["floor"], rtol=1e-5)
    np.testing.assert_allclose(float(res.beta_task[0, 0]), ref.params["log_uranium"], rtol=1e-5)
    np.testing.assert_allclose(float(res.cov[0, 0]), ref.cov_re.values[0, 0], rtol=1e-3)
    np.testing.assert_allclose(float(res.hyper.noise) ** 2, ref.scale, rtol=1e-5)


def test_mixed_linear_gaussian_bad_input():
    tasks = _mixed_tasks()
    with pytest.raises(ValueError, match="common: 'v' is not a column of x"):
        linear_gaussian(tasks, common=["v"])
    with pytest.raises(ValueError, match="task_covariates: 'u' is not a task covariate"):
        linear_gaussian(tasks, task_covariates=["u"])
    with pytest.raises(ValueError, match="every column is common"):
        linear_gaussian(tasks, common=[0, 1, 2])
    with pytest.raises(ValueError, match="mu: cannot be fixed"):
        linear_gaussian(tasks, mu=[0.0, 0.0], common=["w"])


# ------------------------------------------------------ normal-inverse-gamma (Student-t)
def _nig_problem(seed=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(9, 2))
    task = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    y = x @ np.array([0.7, -1.2]) + 0.4 * rng.normal(size=9)
    scale = rng.uniform(0.5, 2.0, size=9)  # per-row relative noise scales
    stats = bm.exact.linear_sufficient_stats(x, y, task, 2, noise_scale=scale)
    tril = np.array([[0.8, 0.0], [-0.3, 0.5]])
    hyper = bm.exact.LinearHyper(jnp.array([0.2, -0.4]), jnp.asarray(tril), jnp.asarray(0.6))
    return x, y, task, scale, stats, hyper


def test_student_t_marginal_matches_scipy_and_an_integral_over_the_scale():
    """Two independent references: scipy's multivariate t on the dense covariance, and the
    Gaussian marginal integrated numerically against the InverseGamma density of s^2."""
    from scipy import integrate

    x, y, task, scale, stats, hyper = _nig_problem()
    a, b = 2.5, 0.7
    got = np.asarray(bm.exact.linear_log_marginal_t(stats, hyper, a, b))
    cov = np.asarray(hyper.cov)
    for t in range(2):
        rows = task == t
        xt, yt = x[rows], y[rows]
        k = xt @ cov @ xt.T + 0.6**2 * np.diag(scale[rows] ** 2)
        mean = xt @ np.asarray(hyper.mu)
        ref = st.multivariate_t(mean, (b / a) * k, df=2 * a).logpdf(yt)
        np.testing.assert_allclose(got[t], ref, rtol=1e-10)

        def integrand(s2, xt=xt, yt=yt, k=k, mean=mean):
            dens = st.multivariate_normal(mean, s2 * k).pdf(yt)
            return dens * st.invgamma(a, scale=b).pdf(s2)

        value, _ = integrate.quad(integrand, 0, np.inf, epsabs=0, epsrel=1e-11, limit=200)
        np.testing.assert_allclose(got[t], np.log(value), rtol=1e-7)


def test_student_t_posterior_matches_the_dense_conjugate_update():
    """Textbook normal-inverse-gamma update in dense numpy (precision form, no Woodbury)."""
    x, y, task, scale, stats, hyper = _nig_problem()
    a, b = 1.5, 0.3
    post = bm.exact.linear_task_posterior_t(stats, hyper, a, b)
    cov0, mu0 = np.asarray(hyper.cov), np.asarray(hyper.mu)
    for t in range(2):
        rows = task == t
        xt, yt = x[rows], y[rows]
        w = 1.0 / (0.6**2 * scale[rows] ** 2)
        prec = np.linalg.inv(cov0) + xt.T @ (w[:, None] * xt)
        cov = np.linalg.inv(prec)
        mean = cov @ (np.linalg.solve(cov0, mu0) + xt.T @ (w * yt))
        # b' = b + (y'Wy + mu0' cov0^-1 mu0 - mean' prec mean) / 2
        quad = yt @ (w * yt) + mu0 @ np.linalg.solve(cov0, mu0) - mean @ prec @ mean
        np.testing.assert_allclose(post.mean[t], mean, rtol=1e-9)
        np.testing.assert_allclose(post.cov[t], cov, rtol=1e-9)
        np.testing.assert_allclose(post.concentration[t], a + rows.sum() / 2, rtol=1e-12)
        np.testing.assert_allclose(post.rate[t], b + quad / 2, rtol=1e-9)
    marginal = post.marginal()
    np.testing.assert_allclose(marginal.df, 2 * (a + np.array([4, 5]) / 2))
    np.testing.assert_allclose(
        marginal.scale, (post.rate / post.concentration)[:, None, None] * post.cov
    )


@pytest.mark.parametrize(
    "a,b", [(0.0, 1.0), (1.0, -1.0), (np.nan, 1.0), (np.ones(2), 1.0), (1.0, np.inf)]
)
def test_student_t_rejects_bad_scale_priors(a, b):
    _, _, _, _, stats, hyper = _nig_problem()
    with pytest.raises(ValueError, match="concentration|rate"):
        bm.exact.linear_log_marginal_t(stats, hyper, a, b)
    with pytest.raises(ValueError, match="concentration|rate"):
        bm.exact.linear_task_posterior_t(stats, hyper, a, b)
