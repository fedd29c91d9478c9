"""Hypergradients: against finite differences, the closed-form best inner rate, and the
implicit derivative of ridge regression written out densely."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bayesmeta.meta as meta
from bayesmeta.meta import quadratic as q


def _loss(params, batch):
    return jnp.mean((jnp.tanh(batch["x"] @ params) - batch["y"]) ** 2)


def _tasks(seed=0):
    rng = np.random.default_rng(seed)

    def part():
        return {
            "x": jnp.asarray(rng.normal(size=(3, 6, 2))),
            "y": jnp.asarray(rng.normal(size=(3, 6))),
        }

    return {"support": part(), "query": part()}


def _family():
    rng = np.random.default_rng(11)
    hessians = []
    for _ in range(6):
        basis, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        hessians.append(basis @ np.diag(rng.uniform(0.5, 2.0, size=3)) @ basis.T)
    return np.stack(hessians), rng.normal(size=(6, 3))


def test_inner_lr_hypergradient_matches_finite_differences():
    tasks, params = _tasks(), jnp.array([0.4, -0.3])

    loss_at = jax.jit(
        lambda lr: meta.post_adaptation_loss(_loss, params, lr, tasks, num_inner_steps=3)
    )

    def f(lr):
        return float(loss_at(jnp.asarray(lr)))

    h = 1e-6
    g = meta.inner_lr_hypergradient(_loss, params, 0.2, tasks, num_inner_steps=3)
    np.testing.assert_allclose(float(g), (f(0.2 + h) - f(0.2 - h)) / (2 * h), rtol=1e-7)
    rates = jnp.array([0.2, 0.1])
    gv = meta.inner_lr_hypergradient(_loss, params, rates, tasks, num_inner_steps=3)
    fd = [(f(rates + h * e) - f(rates - h * e)) / (2 * h) for e in jnp.eye(2)]
    np.testing.assert_allclose(np.asarray(gv), fd, rtol=1e-7)


def test_learned_inner_rate_matches_closed_form_best_rate():
    hessians, optima = _family()
    batch = q.task_batch(hessians, optima)
    theta = jnp.array([1.0, -2.0, 0.5])
    best = q.best_inner_lr(hessians, optima, theta)
    lr, history = meta.learn_inner_lr(
        q.loss, theta, batch, init_lr=0.05, optimizer=optax.adam(0.01), num_steps=2000
    )
    assert abs(float(lr) - best) / best < 1e-4
    assert history["loss"][-1] < history["loss"][0]
    best_vec = q.best_inner_lr_per_parameter(hessians, optima, theta)
    lr_vec, _ = meta.learn_inner_lr(
        q.loss, theta, batch, init_lr=jnp.full(3, 0.05), optimizer=optax.adam(0.01), num_steps=2000
    )
    np.testing.assert_allclose(np.asarray(lr_vec), best_vec, rtol=1e-4)


def test_implicit_hypergradient_of_ridge_regression():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(20, 4)), rng.normal(size=20)
    xv, yv = rng.normal(size=(15, 4)), rng.normal(size=15)
    lam = 0.7

    def inner(w, log_lam):
        return 0.5 * jnp.sum((x @ w - y) ** 2) + 0.5 * jnp.exp(log_lam) * jnp.sum(w**2)

    def outer(w, log_lam):
        return 0.5 * jnp.sum((xv @ w - yv) ** 2)

    hess = x.T @ x + lam * np.eye(4)
    w_star = np.linalg.solve(hess, x.T @ y)
    got = meta.implicit_hypergradient(
        inner, outer, jnp.asarray(w_star), jnp.log(lam), num_cg_iters=4
    )
    # dw*/dlam = -(X^T X + lam I)^-1 w*; chain rule with d lam / d log lam = lam
    expected = (xv.T @ (xv @ w_star - yv)) @ (-np.linalg.solve(hess, w_star)) * lam
    np.testing.assert_allclose(float(got), expected, rtol=1e-9)
    # and against differentiating the closed-form solution directly
    direct = jax.grad(
        lambda ll: outer(jnp.linalg.solve(x.T @ x + jnp.exp(ll) * jnp.eye(4), x.T @ y), ll)
    )(jnp.log(lam))
    np.testing.assert_allclose(float(got), float(direct), rtol=1e-9)
