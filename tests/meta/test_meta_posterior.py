"""MAML as a posterior: the implied prior, LLAMA and ABML against exact Gaussian posteriors
computed here by dense conjugate algebra (Bayesian linear regression with known noise:
prior N(m0, S0), likelihood precision H = X^T X / sigma^2, posterior precision H + S0^-1,
posterior mean (H + S0^-1)^-1 (X^T y / sigma^2 + S0^-1 m0))."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bayesmeta.meta as meta

SIGMA = 0.7


@functools.lru_cache(maxsize=4)
def _linear_tasks(seed=0, num_tasks=3, n=6, d=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_tasks, n, d))
    y = x @ rng.normal(size=d) + SIGMA * rng.normal(size=(num_tasks, n))
    return x, y


def _batch(x, y):
    return {"x": jnp.asarray(x), "y": jnp.asarray(y), "noise_scale": jnp.full(y.shape, SIGMA)}


def _conjugate(x, y, prior_mean, prior_cov):
    """Exact posterior of one task (dense algebra)."""
    prec = x.T @ x / SIGMA**2 + np.linalg.inv(prior_cov)
    cov = np.linalg.inv(prec)
    mean = cov @ (x.T @ y / SIGMA**2 + np.linalg.solve(prior_cov, prior_mean))
    return mean, cov


def _gradient_descent(x, y, theta0, rates, num_steps):
    """k explicit gradient steps on the NLL 1/2 ||y - x theta||^2 / sigma^2."""
    theta = np.array(theta0, dtype=float)
    for _ in range(num_steps):
        theta = theta - rates * (x.T @ (x @ theta - y) / SIGMA**2)
    return theta


@pytest.mark.parametrize(
    "rates, num_steps, n",
    [
        (0.02, 1, 6),
        (0.02, 5, 6),
        (0.005, 20, 6),
        (0.03, 3, 2),  # n=2 < d: singular H
        (np.array([0.01, 0.03, 0.02]), 4, 6),
    ],  # per-parameter (Meta-SGD)
)
def test_gradient_steps_equal_posterior_mean_under_implied_prior(rates, num_steps, n):
    x_all, y_all = _linear_tasks()
    theta0 = np.array([0.5, -1.0, 2.0])
    for x, y in zip(x_all[:, :n], y_all[:, :n], strict=True):
        sigma0 = meta.implied_prior_cov(x.T @ x / SIGMA**2, rates, num_steps)
        mean, _ = _conjugate(x, y, theta0, sigma0)
        np.testing.assert_allclose(
            mean, _gradient_descent(x, y, theta0, rates, num_steps), rtol=0, atol=1e-8
        )


def test_implied_prior_cov_limits_and_overshoot():
    # no curvature: the prior variance is k * alpha (the limit of ((1-al)^-k - 1)/l)
    np.testing.assert_allclose(
        meta.implied_prior_cov(np.zeros((2, 2)), 0.1, 3), 0.3 * np.eye(2), rtol=1e-12
    )
    # one step of size 1/lambda lands on the optimum: infinite prior variance -> no prior
    with pytest.raises(ValueError, match="inner_lr"):
        meta.implied_prior_cov(np.diag([1.0, 2.0]), 0.5, 1)
    # an even number of overshooting steps still implies a prior ((1 - 1.5)^2 > 0)
    cov = meta.implied_prior_cov(np.diag([1.5]), 1.0, 2)
    np.testing.assert_allclose(cov, [[((1 - 1.5) ** -2 - 1) / 1.5]], rtol=1e-12)
    # but beyond alpha * lambda = 2 the steps diverge: (1 - 2.5)^2 > 1, negative variance
    with pytest.raises(ValueError, match="inner_lr"):
        meta.implied_prior_cov(np.diag([2.5]), 1.0, 2)
    # negative curvature still implies a prior: ((1 + 0.5)^-3 - 1) / (-0.5) > 0
    np.testing.assert_allclose(
        meta.implied_prior_cov(np.diag([-0.5]), 1.0, 3), [[(1.5**-3 - 1) / -0.5]], rtol=1e-12
    )


def test_tasks_without_a_valid_gaussian_raise_or_become_nan():
    x, y = _linear_tasks(5)
    x = x.copy()
    x[1] *= 10.0  # task 1 has 100x the curvature of the others
    l_max = [np.linalg.eigvalsh(xt.T @ xt / SIGMA**2).max() for xt in x]
    alpha = 1.5 / l_max[1]  # one step: alpha * lambda = 1.5 on task 1, < 0.1 elsewhere
    assert max(l_max[0], l_max[2]) * alpha < 0.1
    with pytest.raises(ValueError, match="task 1"):
        meta.llama_gaussians(
            meta.linear_gaussian_nll, jnp.zeros(3), _batch(x, y), inner_lr=alpha, num_inner_steps=1
        )
    g = meta.llama_gaussians(
        meta.linear_gaussian_nll,
        jnp.zeros(3),
        _batch(x, y),
        inner_lr=alpha,
        num_inner_steps=1,
        on_invalid="nan",
    )
    assert np.all(np.isnan(g.mean[1])) and np.all(np.isfinite(g.mean[[0, 2]]))
    for t in (0, 2):
        prior_cov = meta.implied_prior_cov(x[t].T @ x[t] / SIGMA**2, alpha, 1)
        mean, cov = _conjugate(x[t], y[t], np.zeros(3), prior_cov)
        np.testing.assert_allclose(g.mean[t], mean, atol=1e-8)
        np.testing.assert_allclose(g.cov()[t], cov, atol=1e-10)


def test_implied_prior_posterior_object():
    x, y = _linear_tasks()
    theta0 = np.array([0.5, -1.0, 2.0])
    post = meta.implied_prior(
        meta.linear_gaussian_nll,
        jnp.asarray(theta0),
        _batch(x, y),
        inner_lr=0.02,
        num_inner_steps=5,
        num_draws=4000,
        seed=1,
        labels=["a", "b", "c"],
        param_dim=("coef", ["c0", "c1", "c2"]),
    )
    assert post.method == "implied_prior"
    assert post.samples["theta"].shape == (1, 4000, 3, 3)
    assert post.dims["theta"] == ["task", "coef"] and post.coords["task"] == ["a", "b", "c"]
    g = post.info["gaussians"]
    for t in range(3):
        gd = _gradient_descent(x[t], y[t], theta0, 0.02, 5)
        np.testing.assert_allclose(post.info["adapted"][t], gd, atol=1e-10)
        mean, cov = _conjugate(x[t], y[t], theta0, post.info["prior_cov"][t])
        np.testing.assert_allclose(g.mean[t], mean, atol=1e-8)
        np.testing.assert_allclose(g.cov()[t], cov, atol=1e-10)
        # draws: sample mean within 5 Monte Carlo standard errors of the Gaussian's mean
        draws = post.samples["theta"][0, :, t]
        se = np.sqrt(np.diag(cov) / draws.shape[0])
        assert np.all(np.abs(draws.mean(axis=0) - mean) < 5 * se)


def test_llama_with_implied_prior_is_the_exact_posterior():
    x, y = _linear_tasks(1)
    theta0 = np.array([0.1, 0.2, -0.3])
    post = meta.llama(
        meta.linear_gaussian_nll,
        jnp.asarray(theta0),
        _batch(x, y),
        inner_lr=0.01,
        num_inner_steps=7,
        num_draws=10,
    )
    g = post.info["gaussians"]
    for t in range(3):
        prior_cov = meta.implied_prior_cov(x[t].T @ x[t] / SIGMA**2, 0.01, 7)
        mean, cov = _conjugate(x[t], y[t], theta0, prior_cov)
        np.testing.assert_allclose(g.mean[t], mean, atol=1e-8)
        np.testing.assert_allclose(g.cov()[t], cov, atol=1e-10)


@pytest.mark.parametrize("hessian", ["full", "ggn"])
def test_llama_with_fixed_prior_precision_is_the_exact_posterior(hessian):
    x, y = _linear_tasks(2)
    theta0 = np.array([0.3, 0.0, -0.5])
    lam = 2.0
    # proximal gradient descent converges geometrically at rate 1 - (l_min + lam)/(l_max + lam)
    curv = [np.linalg.eigvalsh(xt.T @ xt / SIGMA**2) for xt in x]
    l_min, l_max = min(c.min() for c in curv), max(c.max() for c in curv)
    rate = 1.0 / (l_max + lam)
    steps = int(np.ceil(np.log(1e-14) / np.log(1 - (l_min + lam) * rate)))

    def predict(params, batch):
        return batch["x"] @ params

    def output_loss(out, batch):
        return 0.5 * jnp.sum(((batch["y"] - out) / batch["noise_scale"]) ** 2)

    g = meta.llama_gaussians(
        meta.linear_gaussian_nll,
        jnp.asarray(theta0),
        _batch(x, y),
        inner_lr=rate,
        num_inner_steps=steps,
        prior_precision=lam,
        hessian=hessian,
        predict_fn=predict,
        output_loss_fn=output_loss,
    )
    for t in range(3):
        mean, cov = _conjugate(x[t], y[t], theta0, np.eye(3) / lam)
        np.testing.assert_allclose(g.mean[t], mean, atol=1e-8)
        np.testing.assert_allclose(g.cov()[t], cov, atol=1e-10)
        np.testing.assert_allclose(g.variance()[t], np.diag(cov), atol=1e-10)


def test_llama_diagonal_curvature():
    x, y = _linear_tasks(3)
    lam = 1.5
    g = meta.llama_gaussians(
        meta.linear_gaussian_nll,
        jnp.zeros(3),
        _batch(x, y),
        inner_lr=0.01,
        num_inner_steps=0,
        prior_precision=lam,
        hessian="diag",
    )
    expected = 1.0 / (np.einsum("tni,tni->ti", x, x) / SIGMA**2 + lam)
    np.testing.assert_allclose(g.variance(), expected, rtol=1e-12)
    np.testing.assert_allclose(g.mean, 0.0)


def test_pytree_parameters_become_one_site_per_leaf():
    x, y = _linear_tasks()

    def nll(params, batch):
        pred = batch["x"][:, :2] @ params["w"] + params["b"]
        return 0.5 * jnp.sum(((batch["y"] - pred) / batch["noise_scale"]) ** 2)

    init = {"w": jnp.zeros(2), "b": jnp.zeros(())}
    post = meta.llama(nll, init, _batch(x, y), inner_lr=0.01, num_inner_steps=2, num_draws=50)
    assert set(post.samples) == {"w", "b"}
    assert post.samples["w"].shape == (1, 50, 3, 2)
    assert post.dims == {"w": ["task", "w_dim"], "b": ["task"]}


@pytest.mark.arviz
def test_meta_posterior_exports_to_arviz():
    from bayesmeta.arviz import posterior_group

    x, y = _linear_tasks()
    post = meta.llama(
        meta.linear_gaussian_nll,
        jnp.zeros(3),
        _batch(x, y),
        inner_lr=0.01,
        num_inner_steps=2,
        num_draws=20,
        labels=["a", "b", "c"],
    )
    group = posterior_group(post.to_arviz())
    assert group["theta"].shape == (1, 20, 3, 3)


def test_abml_meta_gradient_matches_finite_differences():
    """ABML's objective is a deterministic function of the prior for a fixed step key (the
    Monte Carlo noise comes from the key passed to step); its autodiff meta-gradient through
    the stochastic inner loop must match central differences of that function."""
    x, y = _linear_tasks(4)
    batch = _batch(x, y)
    tasks = {"support": batch, "query": batch}
    learner = meta.abml(
        meta.linear_gaussian_nll, optax.sgd(1.0), inner_lr=0.01, num_inner_steps=3, num_mc_samples=2
    )
    prior = meta.GaussianPrior(jnp.array([0.1, -0.2, 0.3]), jnp.array([-1.0, -0.5, -0.8]))
    state = learner.init(prior)
    step = jax.jit(learner.step)
    key = jax.random.PRNGKey(0)
    new_state, _ = step(state, tasks, key)
    grad = jax.tree.map(lambda a, b: a - b, state.params, new_state.params)

    def objective(p):
        return float(step(state._replace(params=p), tasks, key)[1].loss)

    h = 1e-6
    for field in ("mean", "log_scale"):
        for i in range(3):
            e = jnp.zeros(3).at[i].set(h)
            up = prior._replace(**{field: getattr(prior, field) + e})
            down = prior._replace(**{field: getattr(prior, field) - e})
            fd = (objective(up) - objective(down)) / (2 * h)
            np.testing.assert_allclose(float(getattr(grad, field)[i]), fd, rtol=1e-6, atol=1e-8)


def test_abml_adaptation_reaches_the_exact_posterior_of_a_normal_mean():
    """One scalar parameter, prior N(0, 1), 10 observations with sigma = 0.7: the ELBO's
    optimum over Gaussians is the exact posterior. Replicated noisy inner loops (independent
    keys) must agree with it within 4 standard errors of their spread."""
    rng = np.random.default_rng(7)
    yv = 1.0 + SIGMA * rng.normal(size=10)
    support = {"x": jnp.ones((10, 1)), "y": jnp.asarray(yv), "noise_scale": jnp.full(10, SIGMA)}
    learner = meta.abml(
        meta.linear_gaussian_nll, inner_lr=0.005, num_inner_steps=1500, num_mc_samples=64
    )
    prior = meta.GaussianPrior(jnp.zeros(1), jnp.zeros(1))
    keys = jax.random.split(jax.random.PRNGKey(0), 16)
    qs = jax.jit(jax.vmap(lambda k: learner.adapt(prior, support, key=k)))(keys)
    prec = 10 / SIGMA**2 + 1.0
    exact_mean, exact_sd = (yv.sum() / SIGMA**2) / prec, prec**-0.5
    means, sds = np.asarray(qs.mean[:, 0]), np.exp(np.asarray(qs.log_scale[:, 0]))
    n_rep = len(keys)
    assert abs(means.mean() - exact_mean) < 4 * means.std(ddof=1) / np.sqrt(n_rep)
    assert abs(sds.mean() - exact_sd) < 4 * sds.std(ddof=1) / np.sqrt(n_rep)
    post = learner.posterior(prior, jax.tree.map(lambda a: a[None], support), num_draws=30)
    assert post.method == "abml" and post.samples["theta"].shape == (1, 30, 1, 1)


def test_posterior_input_errors():
    x, y = _linear_tasks()
    with pytest.raises(ValueError, match="hessian"):
        meta.llama(
            meta.linear_gaussian_nll,
            jnp.zeros(3),
            _batch(x, y),
            inner_lr=0.01,
            num_inner_steps=1,
            hessian="kfac",
        )
    with pytest.raises(ValueError, match="predict_fn"):
        meta.llama(
            meta.linear_gaussian_nll,
            jnp.zeros(3),
            _batch(x, y),
            inner_lr=0.01,
            num_inner_steps=1,
            hessian="ggn",
        )
    with pytest.raises(ValueError, match="inner_lr: task"):
        meta.llama(
            meta.linear_gaussian_nll, jnp.zeros(3), _batch(x, y), inner_lr=10.0, num_inner_steps=1
        )
    with pytest.raises(ValueError, match="labels"):
        meta.llama(
            meta.linear_gaussian_nll,
            jnp.zeros(3),
            _batch(x, y),
            inner_lr=0.01,
            num_inner_steps=1,
            labels=["a"],
        )
    with pytest.raises(ValueError, match="prior_precision"):
        meta.llama(
            meta.linear_gaussian_nll,
            jnp.zeros(3),
            _batch(x, y),
            inner_lr=0.01,
            num_inner_steps=1,
            prior_precision="flat",
        )
