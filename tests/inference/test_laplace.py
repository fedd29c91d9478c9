"""Nested Laplace (method="laplace") against exact collapsing, finite differences and
full NUTS, and its trust rule."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from test_fit import _mcse_mean_sd

import bayesmeta as bm
from bayesmeta.inference import _gaussian as gauss
from bayesmeta.inference import _resolve
from bayesmeta.inference import laplace as lap


def _total_marginal(model, tasks, steps=30):
    """``phi -> sum_t log p~(y_t | phi)`` for a Normal population (mu, tau) and the
    likelihood's shared parameters, through the engine's own per-task pieces."""
    built = model.build(tasks)
    param_shape = tuple(built.param_shape)
    vmapped, _ = lap._all_tasks(model.likelihood, model.population, param_shape, None, steps)
    data = lap._padded_data(model.likelihood, tasks)
    start = jnp.asarray(lap._start(model.likelihood, tasks, param_shape))

    def total(mu, tau, extras):
        hyper = {"mu": mu, "tau": tau}
        loc, chol = lap._population_pieces(
            model.population, hyper, param_shape, None, None, tasks.num_tasks
        )
        lm, _, _, _ = vmapped(start, extras, loc, chol, data)
        return jnp.sum(lm)

    # one compiled program (the same arithmetic) instead of op-by-op dispatch
    return jax.jit(total)


def _linear_tasks(seed=0):
    rng = np.random.default_rng(seed)
    task = np.repeat(np.arange(6), [3, 5, 4, 8, 2, 6])
    x = rng.normal(size=task.size)
    theta = np.array([0.3, -0.5]) + 0.7 * rng.normal(size=(6, 2))
    y = theta[task, 0] + theta[task, 1] * x + 0.5 * rng.normal(size=task.size)
    return bm.TaskSet.from_arrays(y=y, x=x, task=task)


def test_laplace_is_exact_collapsing_for_a_gaussian_likelihood():
    """For Gaussian rows the Laplace marginal is the exact marginal (the collapsed
    engine's linear-Gaussian algebra), and so is its gradient."""
    tasks = _linear_tasks()
    model = bm.Hierarchical(bm.likelihoods.LinearRegression(), bm.populations.Normal())
    total = _total_marginal(model, tasks)
    stats = gauss.task_stats(model.likelihood, tasks)

    @jax.jit
    def exact(mu, tau, extras):
        h = gauss.population_hyper(model.population, {"mu": mu, "tau": tau}, (2,), extras["sigma"])
        return jnp.sum(gauss.log_marginal(stats, h))

    grad_lap = jax.jit(jax.grad(total, argnums=(0, 1, 2)))
    grad_ex = jax.jit(jax.grad(exact, argnums=(0, 1, 2)))
    rng = np.random.default_rng(1)
    for _ in range(3):
        mu = jnp.asarray(rng.normal(size=2))
        tau = jnp.asarray(rng.uniform(0.3, 2.0, size=2))
        extras = {"sigma": jnp.asarray(rng.uniform(0.3, 1.5))}
        np.testing.assert_allclose(total(mu, tau, extras), exact(mu, tau, extras), rtol=1e-10)
        g_lap = grad_lap(mu, tau, extras)
        g_ex = grad_ex(mu, tau, extras)
        for a, b in zip(jax.tree.leaves(g_lap), jax.tree.leaves(g_ex), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


def test_laplace_marginal_gradient_matches_finite_differences():
    """The implicit-function gradient of the logistic Laplace marginal in (mu, tau)
    against central differences (step 1e-5, float64: error ~1e-9)."""
    model, tasks = bm.load_model("models/hier_logistic.py")
    total = _total_marginal(model, tasks)
    mu, tau = jnp.array([-0.3, 0.8]), jnp.array([0.6, 0.4])
    g_mu, g_tau = jax.jit(jax.grad(total, argnums=(0, 1)))(mu, tau, {})
    h = 1e-5
    for k in range(2):
        e = jnp.zeros(2).at[k].set(h)
        fd_mu = (total(mu + e, tau, {}) - total(mu - e, tau, {})) / (2 * h)
        fd_tau = (total(mu, tau + e, {}) - total(mu, tau - e, {})) / (2 * h)
        np.testing.assert_allclose(g_mu[k], fd_mu, rtol=1e-6)
        np.testing.assert_allclose(g_tau[k], fd_tau, rtol=1e-6)


@pytest.fixture(scope="module")
def logistic_fits():
    model, tasks = bm.load_model("models/hier_logistic.py")
    opts = dict(num_warmup=500, num_samples=1000, num_chains=2)
    laplace = bm.fit(model, tasks, method="laplace", seed=3, **opts)
    nuts = bm.fit(model, tasks, method="nuts", seed=4, **opts)
    return tasks, laplace, nuts


def test_laplace_agrees_with_full_nuts_within_monte_carlo_error(logistic_fits):
    """Hyperparameters and (importance-corrected) task parameters: posterior means within
    4 MCSE of the difference. The MCSE of the corrected theta is the NUTS-style one of
    the resampled draws (resampling only adds to it)."""
    _, laplace, nuts = logistic_fits
    assert laplace.method == "laplace" and laplace.info["laplace"]["all_converged"]
    for name in ("mu", "tau", "theta"):
        m1, _, se1, _ = _mcse_mean_sd(laplace.samples[name])
        m2, _, se2, _ = _mcse_mean_sd(nuts.samples[name])
        bound = 4 * np.sqrt(se1**2 + se2**2)
        assert np.all(np.abs(m1 - m2) < bound), (name, np.max(np.abs(m1 - m2) / bound))


def test_laplace_posterior_has_the_sites_and_groups_of_full_nuts(logistic_fits):
    tasks, laplace, nuts = logistic_fits
    assert set(laplace.samples) == {k for k in nuts.samples if k != "theta_raw"}
    assert laplace.samples["theta"].shape == nuts.samples["theta"].shape
    assert laplace.dims["theta"] == nuts.dims["theta"]
    data = laplace.to_arviz()
    groups = bm.arviz.group_names(data)
    for g in ("posterior", "sample_stats", "observed_data", "log_likelihood"):
        assert g in groups
    ess = laplace.info["laplace"]["ess"]
    assert set(ess) == set(tasks.labels) and min(ess.values()) > 100


def _separable_tasks(num_tasks=12, rows=12, seed=0):
    """Logistic tasks, one of them perfectly separated by x."""
    rng = np.random.default_rng(seed)
    task = np.repeat(np.arange(num_tasks), rows)
    x = rng.normal(size=task.size)
    y = (rng.uniform(size=task.size) < 1 / (1 + np.exp(-(0.2 + 0.8 * x)))).astype(float)
    first = task == 0
    y[first] = (x[first] > 0).astype(float)
    return bm.TaskSet.from_arrays(y=y, x=x, task=task)


def _glm_model():
    return bm.Hierarchical(
        bm.likelihoods.LogisticRegression(),
        bm.populations.Normal(loc=dist.Normal(0.0, 2.0), scale=dist.HalfNormal(1.0)),
    )


def test_trust_rule_flags_separable_and_two_row_tasks_and_auto_falls_back():
    model = _glm_model()
    sep = _separable_tasks()
    trust = lap.laplace_trust(model, sep)
    assert not trust["ok"] and "0" in trust["tasks_failing"]
    name, record = _resolve("auto", model, sep)
    assert name == "nuts" and "'0'" in record["why"]

    rng = np.random.default_rng(1)
    task = np.repeat(np.arange(20), 2)
    two = bm.TaskSet.from_arrays(
        y=rng.integers(0, 2, size=40).astype(float), x=rng.normal(size=40), task=task
    )
    trust = lap.laplace_trust(model, two)
    assert not trust["ok"] and len(trust["tasks_failing"]) == 20
    assert _resolve("auto", model, two)[0] == "nuts"


def test_auto_picks_laplace_where_the_pilot_trusts_it(monkeypatch):
    model, tasks = bm.load_model("models/hier_logistic.py")
    name, record = _resolve("auto", model, tasks)
    # off by default (slower than full NUTS as measured): the verdict is still recorded
    assert name == "nuts" and record["ok"] and "not yet faster" in record["why"]
    monkeypatch.setattr(lap, "AUTO_PICKS_LAPLACE", True)
    name, record = _resolve("auto", model, tasks)
    assert name == "laplace", record["why"]
    # Gaussian likelihoods stay collapsed
    lin = bm.Hierarchical(bm.likelihoods.LinearRegression(), bm.populations.Normal())
    assert _resolve("auto", lin, _linear_tasks())[0] == "collapsed"


def test_laplace_bad_input():
    model, tasks = bm.load_model("models/hier_logistic.py")
    with pytest.raises(ValueError, match="newton_steps: must be a positive integer"):
        bm.fit(model, tasks, method="laplace", newton_steps=0)
    st = bm.Hierarchical(bm.likelihoods.LogisticRegression(), bm.populations.StudentT())
    with pytest.raises(ValueError, match="not Normal or MvNormal"):
        bm.fit(st, tasks, method="laplace")
