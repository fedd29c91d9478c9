"""unrolled_hypergradient: against the closed-form derivative of ridge regression, against
implicit_hypergradient, and its input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bayesmeta as bm


def _ridge():
    rng = np.random.default_rng(3)
    x, xv = jnp.asarray(rng.normal(size=(8, 3))), jnp.asarray(rng.normal(size=(10, 3)))
    y, yv = jnp.asarray(rng.normal(size=8)), jnp.asarray(rng.normal(size=10))

    def inner(w, h):
        return 0.5 * jnp.sum((x @ w - y) ** 2) + 0.5 * h * jnp.sum(w**2)

    def outer(w, h):
        return 0.5 * jnp.sum((xv @ w - yv) ** 2)

    return x, y, xv, yv, inner, outer


def test_unrolled_matches_closed_form_ridge_derivative():
    x, y, xv, yv, inner, outer = _ridge()
    h = 0.7
    gram = np.asarray(x.T @ x) + h * np.eye(3)
    w = np.linalg.solve(gram, np.asarray(x.T @ y))
    # dw/dh = -(X'X + h I)^-1 w (differentiating (X'X + h I) w = X'y), by hand
    dw = -np.linalg.solve(gram, w)
    exact = float((np.asarray(xv.T @ (xv @ w - yv))) @ dw)
    step = 1.0 / np.linalg.eigvalsh(gram)[-1]
    g, w_t = bm.meta.unrolled_hypergradient(
        inner, outer, jnp.zeros(3), jnp.asarray(h), num_steps=3000, step_size=step
    )
    np.testing.assert_allclose(np.asarray(w_t), w, rtol=1e-9)
    np.testing.assert_allclose(float(g), exact, rtol=1e-8)
    implicit = bm.meta.implicit_hypergradient(inner, outer, jnp.asarray(w), jnp.asarray(h))
    np.testing.assert_allclose(float(g), float(implicit), rtol=1e-8)
    # a short loop has not converged: its hypergradient differs
    short, _ = bm.meta.unrolled_hypergradient(
        inner, outer, jnp.zeros(3), jnp.asarray(h), num_steps=3, step_size=step
    )
    assert abs(float(short) - exact) > 1e-3 * abs(exact)


def test_unrolled_under_jit_with_traced_step():
    _, _, _, _, inner, outer = _ridge()
    fn = jax.jit(
        lambda h, s: bm.meta.unrolled_hypergradient(
            inner, outer, jnp.zeros(3), h, num_steps=5, step_size=s
        )[0]
    )
    eager = bm.meta.unrolled_hypergradient(
        inner, outer, jnp.zeros(3), jnp.asarray(0.7), num_steps=5, step_size=0.01
    )[0]
    np.testing.assert_allclose(float(fn(jnp.asarray(0.7), 0.01)), float(eager), rtol=1e-10)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_steps": 0, "step_size": 0.1}, "num_steps"),
        ({"num_steps": 3, "step_size": -1.0}, "step_size"),
    ],
)
def test_unrolled_bad_input(kwargs, field):
    _, _, _, _, inner, outer = _ridge()
    with pytest.raises(ValueError, match=f"^{field}:"):
        bm.meta.unrolled_hypergradient(inner, outer, jnp.zeros(3), jnp.asarray(0.7), **kwargs)
