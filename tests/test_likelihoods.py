"""Every likelihood's row log-density against scipy.stats, through the built model (both
the gather path of ragged tasks and the batched path of equal-sized tasks), and NUTS
recovering known population means for Poisson, binomial and custom collections."""

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
import scipy.special
import scipy.stats
from numpyro.infer import log_likelihood

import bayesmeta as bm


def _tasks(counts, k, seed, y_fn):
    rng = np.random.default_rng(seed)
    task = np.repeat(np.arange(len(counts)), counts)
    x = rng.standard_normal((task.size, k))
    theta = rng.normal(0.0, 0.7, size=(len(counts), k + 1))
    eta = theta[task, 0] + np.sum(x * theta[task, 1:], axis=1)
    return task, x, theta, eta, y_fn(rng, eta)


def _pointwise(lik, tasks, theta):
    """log p(y_r | theta_t) for every row, through bm.unpooled(lik)'s built model."""
    built = bm.unpooled(lik).build(tasks)
    ll = log_likelihood(built.fn, {"theta": jnp.asarray(theta)[None]}, **built.data)
    return np.asarray(ll["y"])[0]


LAYOUTS = {"ragged": [3, 7, 5, 9], "equal": [6, 6, 6, 6]}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bernoulli_logit_rows_match_scipy(layout):
    task, x, theta, eta, y = _tasks(
        LAYOUTS[layout], 2, 0, lambda r, e: r.uniform(size=e.size) < scipy.special.expit(e)
    )
    tasks = bm.TaskSet.from_arrays(x=x, y=y.astype(float), task=task)
    got = _pointwise(bm.likelihoods.LogisticRegression(), tasks, theta)
    ref = scipy.stats.bernoulli.logpmf(y, scipy.special.expit(eta))
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_poisson_log_rows_match_scipy(layout):
    task, x, theta, eta, y = _tasks(LAYOUTS[layout], 2, 1, lambda r, e: r.poisson(np.exp(e)))
    tasks = bm.TaskSet.from_arrays(x=x, y=y.astype(float), task=task)
    got = _pointwise(bm.likelihoods.Poisson(), tasks, theta)
    np.testing.assert_allclose(got, scipy.stats.poisson.logpmf(y, np.exp(eta)), rtol=1e-10)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_binomial_logit_rows_match_scipy(layout):
    rng = np.random.default_rng(2)
    counts = LAYOUTS[layout]
    trials = rng.integers(1, 12, size=sum(counts)).astype(float)
    task, z, theta, eta, y = _tasks(
        counts, 1, 2, lambda r, e: r.binomial(trials.astype(int), scipy.special.expit(e))
    )
    tasks = bm.TaskSet.from_arrays(x=np.column_stack([trials, z]), y=y.astype(float), task=task)
    got = _pointwise(bm.likelihoods.Binomial(), tasks, theta)
    ref = scipy.stats.binom.logpmf(y, trials, scipy.special.expit(eta))
    np.testing.assert_allclose(got, ref, rtol=1e-10)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_linear_regression_rows_match_scipy(layout):
    task, x, theta, eta, y = _tasks(
        LAYOUTS[layout], 2, 3, lambda r, e: e + 0.5 * r.standard_normal(e.size)
    )
    tasks = bm.TaskSet.from_arrays(x=x, y=y, task=task, noise_scale=0.5)
    got = _pointwise(bm.likelihoods.LinearRegression(noise="known"), tasks, theta)
    np.testing.assert_allclose(got, scipy.stats.norm.logpdf(y, eta, 0.5), rtol=1e-10)


def test_normal_known_noise_rows_match_scipy():
    tasks = bm.datasets.eight_schools()
    theta = np.linspace(-3.0, 12.0, tasks.num_tasks)
    got = _pointwise(bm.likelihoods.NormalKnownNoise(), tasks, theta)
    ref = scipy.stats.norm.logpdf(tasks.y, theta, tasks.noise_scale)
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def _laplace_loglik(theta, x, y):
    # a Laplace (double-exponential) location model with scale 1, written for one task
    return jnp.sum(-jnp.abs(y - theta) - jnp.log(2.0))


@pytest.mark.parametrize("rowwise", [True, False])
def test_custom_log_density_is_the_users_function(rowwise):
    rng = np.random.default_rng(4)
    counts = [4, 6, 3]
    task = np.repeat(np.arange(3), counts)
    y = rng.laplace(size=task.size)
    tasks = bm.TaskSet.from_arrays(y=y, task=task)
    theta = np.array([0.3, -1.0, 2.0])
    if rowwise:
        lik = bm.likelihoods.Custom(_laplace_loglik)
        got = _pointwise(lik, tasks, theta)
        ref = scipy.stats.laplace.logpdf(y, theta[task])
    else:

        def per_task(theta, x, y, mask):
            return jnp.sum(jnp.where(mask, -jnp.abs(y - theta) - jnp.log(2.0), 0.0))

        lik = bm.likelihoods.Custom(per_task, rowwise=False)
        got = _pointwise(lik, tasks, theta)
        ref = np.bincount(task, scipy.stats.laplace.logpdf(y, theta[task]))
    np.testing.assert_allclose(got, ref, rtol=1e-10)


# --------------------------------------------------------------------- recovery by NUTS
def _recover(lik, tasks, mu_true, population=None):
    model = bm.Hierarchical(lik, population)
    post = bm.fit(
        model,
        tasks,
        seed=0,
        num_chains=2,
        num_warmup=400,
        num_samples=400,
        progress_bar=False,
        warn=False,
    )
    mean, sd = post.mean("mu"), post.sd("mu")
    # the truth is one draw: within 4 posterior sd (a failure here is a wrong likelihood,
    # e.g. a flipped sign or another link, not bad luck: P(|z| > 4) ~ 6e-5 per component)
    assert np.all(np.abs(mean - mu_true) < 4 * sd), (mean, sd, mu_true)
    assert post.info["diagnostics"]["divergences"] == 0
    return post


def _simulate(num_tasks, rows, mu, tau, seed):
    rng = np.random.default_rng(seed)
    theta = mu + tau * rng.standard_normal((num_tasks, len(mu)))
    task = np.repeat(np.arange(num_tasks), rows)
    z = rng.standard_normal((task.size, len(mu) - 1))
    eta = theta[task, 0] + np.sum(z * theta[task, 1:], axis=1)
    return rng, task, z, eta


def test_nuts_recovers_a_poisson_population():
    mu = np.array([0.8, -0.5])
    rng, task, z, eta = _simulate(40, 25, mu, np.array([0.3, 0.2]), 5)
    tasks = bm.TaskSet.from_arrays(x=z, y=rng.poisson(np.exp(eta)).astype(float), task=task)
    _recover(bm.likelihoods.Poisson(), tasks, mu)


def test_nuts_recovers_a_binomial_population():
    mu = np.array([-0.6, 0.9])
    rng, task, z, eta = _simulate(40, 15, mu, np.array([0.4, 0.3]), 6)
    trials = rng.integers(5, 20, size=task.size)
    y = rng.binomial(trials, scipy.special.expit(eta)).astype(float)
    tasks = bm.TaskSet.from_arrays(x=np.column_stack([trials, z]), y=y, task=task)
    _recover(bm.likelihoods.Binomial(), tasks, mu)


def test_nuts_recovers_a_custom_population():
    rng = np.random.default_rng(7)
    theta = 1.5 + 0.5 * rng.standard_normal(30)
    task = np.repeat(np.arange(30), 20)
    y = theta[task] + rng.laplace(size=task.size)
    tasks = bm.TaskSet.from_arrays(y=y, task=task)
    pop = bm.populations.Normal(loc=dist.Normal(0.0, 5.0), scale=dist.HalfNormal(2.0))
    _recover(bm.likelihoods.Custom(_laplace_loglik), tasks, 1.5, pop)


# ---------------------------------------------------------------------- varying / common
def _xy_tasks():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 2))
    return bm.TaskSet.from_arrays(
        y=rng.integers(0, 2, size=12).astype(float),
        task=np.repeat([0, 1, 2], 4),
        x=x,
        x_names=["floor", "age"],
    )


def test_varying_split_names_coefficients_and_shapes():
    tasks = _xy_tasks()
    lik = bm.likelihoods.LinearRegression(varying=["intercept"])
    lik.validate(tasks)
    assert lik.param_shape(tasks) == () and lik.common_names == ["floor", "age"]
    assert lik.nuisance_dims() == ({"beta": ["common"]}, {"common": ["floor", "age"]})
    lik = bm.likelihoods.LinearRegression(varying=["intercept", "age"])
    lik.validate(tasks)
    assert lik.param_shape(tasks) == (2,)
    assert lik.param_dim(tasks) == ("coef", ["intercept", "age"])
    assert lik.common_names == ["floor"]


def test_varying_split_linear_predictor_is_the_full_one():
    """eta from (varying theta, common beta) equals the all-varying eta with the same
    coefficients put back in place: an independent check of the column bookkeeping."""
    tasks = _xy_tasks()
    full = bm.likelihoods.LogisticRegression()
    full.validate(tasks)
    split = bm.likelihoods.LogisticRegression(varying=["age"])
    split.validate(tasks)
    data = {k: jnp.asarray(v) for k, v in split.data_arrays(tasks).items()}
    rng = np.random.default_rng(1)
    theta_age = rng.normal(size=tasks.num_obs)  # one value per row (already expanded)
    beta = jnp.asarray(rng.normal(size=2))  # intercept, floor
    eta_split = split._eta(jnp.asarray(theta_age), data, {"beta": beta})
    coef = np.stack(
        [np.full(tasks.num_obs, beta[0]), np.full(tasks.num_obs, beta[1]), theta_age], 1
    )
    eta_full = full._eta(jnp.asarray(coef), data)
    np.testing.assert_allclose(eta_split, eta_full, rtol=1e-12)


def test_varying_split_bad_input():
    tasks = _xy_tasks()
    with pytest.raises(
        ValueError, match=r"varying: 'flor' is not a coefficient .*\['intercept', 'floor', 'age'\]"
    ):
        bm.likelihoods.LinearRegression(varying=["flor"]).validate(tasks)
    with pytest.raises(ValueError, match="named twice"):
        bm.likelihoods.LinearRegression(varying=["age", "age"])
    with pytest.raises(ValueError, match="non-empty list"):
        bm.likelihoods.LogisticRegression(varying=[])
    with pytest.raises(ValueError, match="common_prior: expected a numpyro distribution"):
        bm.likelihoods.Poisson(varying=["intercept"], common_prior=2.0)
