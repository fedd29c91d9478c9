"""Gaussian mixed models (common coefficients and a population regression on task
covariates) by collapsed and full NUTS against dense-matrix conjugate algebra.

With the noise and the population scales fixed, the model is linear-Gaussian in
``gamma = (mu, beta_task, beta)`` with independent ``N(0, 5^2)`` priors:

    y_t = X_t (mu + B z_t) + W_t beta + e_t,   e_t ~ N(0, X_t Sigma X_t' + sigma^2 S_t^2)

so ``gamma | y`` is Gaussian (precision ``sum_t H_t' V_t^-1 H_t + I / 25``) and
``E[theta_t | y]`` is linear in ``gamma``: the references below are that algebra on dense
matrices, written out here, independent of the package's sufficient-statistics route.
"""

import numpy as np
import numpyro.distributions as dist
import pytest
from test_fit import _mcse_mean_sd

import bayesmeta as bm
from bayesmeta.arviz import group_arrays

SIGMA = 0.7
TAU = np.array([0.8, 0.5])
PRIOR_SD = 5.0


def _data(seed=3, num_tasks=6):
    rng = np.random.default_rng(seed)
    counts = rng.integers(3, 9, size=num_tasks)
    task = np.repeat(np.arange(num_tasks), counts)
    z = rng.normal(size=num_tasks)
    x = rng.normal(size=task.size)
    w = rng.normal(size=task.size)
    theta = np.array([0.5, -1.0]) + np.array([0.7, 0.0]) * z[:, None]
    theta = theta + TAU * rng.normal(size=(num_tasks, 2))
    y = theta[task, 0] + theta[task, 1] * x + 1.3 * w + SIGMA * rng.normal(size=task.size)
    tasks = bm.TaskSet.from_arrays(
        y=y,
        task=task,
        x=np.stack([x, w], axis=1),
        noise_scale=SIGMA,
        task_x={"z": z[task]},
        x_names=["x", "w"],
    )
    return tasks


def _model():
    return bm.Hierarchical(
        bm.likelihoods.LinearRegression(
            noise="known", varying=["intercept", "x"], common_prior=dist.Normal(0, PRIOR_SD)
        ),
        bm.populations.Normal(
            loc=dist.Normal(0, PRIOR_SD),
            scale=TAU,
            task_covariates={"intercept": ["z"]},
            coef=dist.Normal(0, PRIOR_SD),
        ),
    )


def _dense_reference(tasks):
    """Posterior mean and covariance of gamma = (mu_0, mu_1, beta_task, beta), and
    E[theta_t | y] for every task, by dense matrices."""
    x, w = tasks.x[:, 0], tasks.x[:, 1]
    prec = np.eye(4) / PRIOR_SD**2
    rhs = np.zeros(4)
    pieces = []
    for t in range(tasks.num_tasks):
        rows = tasks.task_rows(t)
        xv = np.stack([np.ones(rows.stop - rows.start), x[rows]], axis=1)
        z_t = tasks.task_x[t, 0]
        h = np.column_stack([xv, xv[:, 0] * z_t, w[rows]])
        v = xv @ np.diag(TAU**2) @ xv.T + SIGMA**2 * np.eye(len(xv))
        vinv = np.linalg.inv(v)
        prec += h.T @ vinv @ h
        rhs += h.T @ vinv @ tasks.y[rows]
        pieces.append((xv, h, vinv, z_t, rows))
    cov = np.linalg.inv(prec)
    mean = cov @ rhs
    theta = []
    for xv, h, vinv, z_t, rows in pieces:
        loc = mean[:2] + np.array([mean[2] * z_t, 0.0])
        gain = np.diag(TAU**2) @ xv.T @ vinv
        theta.append(loc + gain @ (tasks.y[rows] - h @ mean))
    return mean, cov, np.array(theta)


@pytest.fixture(scope="module")
def fits():
    tasks = _data()
    model = _model()
    opts = dict(num_warmup=600, num_samples=1500, num_chains=2)
    collapsed = bm.fit(model, tasks, method="auto", seed=1, **opts)
    nuts = bm.fit(model, tasks, method="nuts", seed=2, **opts)
    return tasks, collapsed, nuts


def _gamma(post):
    return np.concatenate(
        [post["mu"], post["beta_task"], post["beta"]], axis=-1
    )  # (chain, draw, 4)


def test_auto_chooses_collapsed_for_a_gaussian_mixed_model(fits):
    _, collapsed, _ = fits
    assert collapsed.method == "collapsed"


@pytest.mark.parametrize("which", ["collapsed", "nuts"])
def test_mixed_model_matches_dense_conjugate_algebra(fits, which):
    tasks, collapsed, nuts = fits
    post = collapsed if which == "collapsed" else nuts
    mean, cov, theta_ref = _dense_reference(tasks)
    gamma = _gamma(post)
    est, sd, se_mean, se_sd = _mcse_mean_sd(gamma)
    assert np.all(np.abs(est - mean) < 4 * se_mean), (est, mean, se_mean)
    assert np.all(np.abs(sd - np.sqrt(np.diag(cov))) < 4 * se_sd), (sd, np.diag(cov) ** 0.5)
    th_mean, _, th_se, _ = _mcse_mean_sd(post["theta"])
    assert np.all(np.abs(th_mean - theta_ref) < 4 * th_se), (th_mean, theta_ref)


def test_mixed_sites_dims_and_coords(fits):
    _, collapsed, _ = fits
    data = collapsed.to_arviz()
    post = data.posterior if hasattr(data, "posterior") else data["posterior"]
    assert list(post["beta"].coords["common"].values) == ["w"]
    assert list(post["beta_task"].coords["task_covariate"].values) == ["intercept:z"]
    assert list(post["theta"].coords["coef"].values) == ["intercept", "x"]
    obs = group_arrays(data, "observed_data")
    assert obs["y"].shape == (collapsed.tasks.num_obs,)


def test_population_and_adapt_use_task_covariates(fits):
    tasks, collapsed, _ = fits
    # the population of a new task is centred at mu + B z: its mean by sampling against
    # the posterior means of mu and beta_task (the mixture's mean is their average)
    import jax

    z = 1.7
    pop = collapsed.population(task_x={"z": z})
    draws = np.asarray(pop.sample(jax.random.PRNGKey(0), (20000,)))
    expect = collapsed.mean("mu") + np.array([collapsed.mean("beta_task")[0] * z, 0.0])
    sd = draws.std(axis=0) / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(axis=0) - expect) < 5 * sd)
    with pytest.raises(ValueError, match="task covariates"):
        collapsed.population()
    # adapting the fitted tasks from their own data reproduces their posteriors
    sub = tasks.subset([0, 3])
    adapted = collapsed.adapt(sub, method="conjugate")
    np.testing.assert_allclose(adapted.mean("theta"), collapsed.mean("theta")[[0, 3]], atol=0.05)
    no_x = bm.TaskSet.from_arrays(
        y=sub.y, task=sub.task_index, x=sub.x, noise_scale=SIGMA, x_names=["x", "w"]
    )
    with pytest.raises(ValueError, match="lacks \\['z'\\]"):
        collapsed.adapt(no_x)
