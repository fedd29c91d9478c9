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
    laplace_nuts = bm.fit(model, tasks, method="laplace", hyper_sampler="nuts", seed=5, **opts)
    return tasks, laplace, nuts, laplace_nuts


def _distinct_ess(draws):
    """``N^2 / sum(c_i^2)`` per component, ``c_i`` the multiplicities of its distinct
    values among the ``N`` draws."""
    flat = draws.reshape(-1, *draws.shape[2:]).reshape(draws.shape[0] * draws.shape[1], -1)
    out = np.empty(flat.shape[1])
    for j in range(flat.shape[1]):
        _, counts = np.unique(flat[:, j], return_counts=True)
        out[j] = flat.shape[0] ** 2 / np.sum(counts.astype(float) ** 2)
    return out.reshape(draws.shape[2:])


@pytest.mark.parametrize("which", ["independence", "nuts"])
def test_laplace_agrees_with_full_nuts_within_monte_carlo_error(logistic_fits, which):
    """Hyperparameters and (importance-corrected) task parameters: posterior means within
    4 MCSE of the difference, with the hyperparameters drawn by the independence sampler
    (the default) or by NUTS. The MCSE of the corrected theta is the NUTS-style one of
    the resampled draws (resampling only adds to it)."""
    _, laplace, nuts, laplace_nuts = logistic_fits
    laplace = laplace if which == "independence" else laplace_nuts
    assert laplace.info["hyper_sampler"]["used"] == which
    assert laplace.method == "laplace" and laplace.info["laplace"]["all_converged"]
    for name in ("mu", "tau", "theta"):
        m1, sd1, se1, _ = _mcse_mean_sd(laplace.samples[name])
        if name == "theta":
            # resampled draws in random order repeat some draws, which the ESS of the
            # shuffled chain does not see: the mean of distinct iid values with
            # multiplicities c_i has variance sd^2 sum(c_i^2) / N^2
            se1 = np.maximum(se1, sd1 / np.sqrt(_distinct_ess(laplace.samples[name])))
        m2, _, se2, _ = _mcse_mean_sd(nuts.samples[name])
        bound = 4 * np.sqrt(se1**2 + se2**2)
        assert np.all(np.abs(m1 - m2) < bound), (name, np.max(np.abs(m1 - m2) / bound))
    if which == "independence":
        hs = laplace.info["hyper_sampler"]
        assert min(hs["acceptance"]) >= lap.MIN_IMH_ACCEPTANCE
        stats = laplace.to_arviz().sample_stats
        assert "acceptance_rate" in stats and not np.asarray(stats["diverging"]).any()


def test_independence_potential_is_numpyros(logistic_fits):
    """The independence sampler's log density (its own transforms and Jacobians, with the
    Laplace pieces recorded) is minus NumPyro's potential energy of the same model, and
    its value-and-gradient program agrees with both."""
    from numpyro.infer.util import potential_energy

    tasks, _, _, _ = logistic_fits
    model = _glm_model()
    built = model.build(tasks)
    data = lap._padded_data(model.likelihood, tasks)
    start = jnp.asarray(lap._start(model.likelihood, tasks, tuple(built.param_shape)))
    inputs = {"data": data, "start": start, "task_x": None}
    progs = lap._independence_programs(model, tuple(built.param_shape), None, 6, inputs)
    fn = lap._hyper_model(model, tuple(built.param_shape), None, 6)
    rng = np.random.default_rng(0)
    xs = rng.normal(scale=0.5, size=(lap._IMH_BLOCK, progs.x0.size))
    lp = np.asarray(progs("block", jnp.asarray(xs), jax.random.PRNGKey(0), inputs)["lp"])
    for i in range(3):
        params = {"mu": jnp.asarray(xs[i, :2]), "tau": jnp.asarray(xs[i, 2:])}
        pe = float(potential_energy(fn, (), inputs, params))
        np.testing.assert_allclose(lp[i], -pe, rtol=1e-10)
        v, _ = progs("value_and_grad", jnp.asarray(xs[i]), inputs)
        np.testing.assert_allclose(float(v), pe, rtol=1e-10)


def test_laplace_marginal_vmapped_over_hyperparameters_equals_one_at_a_time():
    """The Laplace marginal of 1,000 logistic tasks (20 rows, 4 features) in float32,
    vmapped over 4 hyperparameter values, against one value at a time. jaxlib 0.10.2
    miscompiled the row-wise form of the log-likelihood under this double vmap (up to
    119 nats off; every value but the first); the engine now reads a GLM's rows from
    ``x @ theta``."""
    rng = np.random.default_rng(0)
    num, rows, p = 1000, 20, 5
    task = np.repeat(np.arange(num), rows)
    x = rng.normal(size=(task.size, p - 1))
    theta = np.array([-0.5, 1.0, -0.6, 0.3, 0.0]) + 0.4 * rng.normal(size=(num, p))
    eta = theta[task, 0] + np.sum(x * theta[task, 1:], axis=1)
    y = (rng.uniform(size=task.size) < 1 / (1 + np.exp(-eta))).astype(float)
    tasks = bm.TaskSet.from_arrays(y=y, x=x, task=task)
    model = bm.Hierarchical(bm.likelihoods.LogisticRegression(), bm.populations.Normal(dim=p))
    with jax.enable_x64(False):
        built = model.build(tasks)
        ps = tuple(built.param_shape)
        data = jax.tree.map(
            lambda a: jnp.asarray(a, jnp.float32), lap._padded_data(model.likelihood, tasks)
        )
        start = jnp.asarray(lap._start(model.likelihood, tasks, ps), jnp.float32)
        vm, _ = lap._all_tasks(model.likelihood, model.population, ps, None, 6)

        def total(mu, tau):
            loc, chol = lap._population_pieces(
                model.population, {"mu": mu, "tau": tau}, ps, None, None, num
            )
            return jnp.sum(vm(start, {}, loc, chol, data)[0])

        mus = jnp.asarray(theta.mean(0) + 0.05 * rng.normal(size=(4, p)), jnp.float32)
        taus = jnp.asarray(np.exp(-1.0 + 0.1 * rng.normal(size=(4, p))), jnp.float32)
        one = jax.jit(total)
        each = np.array([float(one(mus[i], taus[i])) for i in range(4)])
        batched = np.asarray(jax.jit(jax.vmap(total))(mus, taus))
    # float32 sums of 1,000 tasks: a few 1e-3 nats of rounding
    np.testing.assert_allclose(batched, each, atol=0.05)


def test_laplace_posterior_has_the_sites_and_groups_of_full_nuts(logistic_fits):
    tasks, laplace, nuts, _ = logistic_fits
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
    with pytest.raises(ValueError, match="hyper_sampler: one of 'auto', 'independence'"):
        bm.fit(model, tasks, method="laplace", hyper_sampler="imh")
    st = bm.Hierarchical(bm.likelihoods.LogisticRegression(), bm.populations.StudentT())
    with pytest.raises(ValueError, match="not Normal or MvNormal"):
        bm.fit(st, tasks, method="laplace")
