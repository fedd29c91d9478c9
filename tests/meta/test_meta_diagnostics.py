"""Inner-loop curve (U-shape detection) and meta-overfitting gap."""

import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

import bayesmeta.meta as meta
from bayesmeta.meta import diagnostics as diag
from bayesmeta.meta import quadratic as q

matplotlib.use("Agg")


def _overfitting_family(num_tasks=6):
    """Support optimum (1, 3 + e_i), query optimum (1, 0): gradient descent on the support
    set first fixes the fast x-direction (query loss falls) and then drifts slowly along y
    (query loss rises): a U."""
    support_h = np.stack([np.diag([1.0, 0.05])] * num_tasks)
    shift = np.linspace(-0.2, 0.2, num_tasks)
    support_opt = np.stack([np.ones(num_tasks), 3.0 + shift], axis=1)
    query_opt = np.stack([np.ones(num_tasks), shift], axis=1)
    query_h = np.stack([np.eye(2)] * num_tasks)
    return q.task_batch(support_h, support_opt, query_h, query_opt), support_opt, query_opt


def test_inner_loop_curve_detects_u_shape_and_best_step():
    batch, s_opt, q_opt = _overfitting_family()
    alpha, max_steps = 0.5, 30
    curve = diag.inner_loop_curve(q.loss, jnp.zeros(2), batch, inner_lr=alpha, max_steps=max_steps)
    # closed form of the iterates: phi_j - s = (1 - alpha a)^j (0 - s) per coordinate
    j = np.arange(max_steps + 1)[:, None, None]
    a = np.array([1.0, 0.05])
    phi = s_opt[None] - (1 - alpha * a) ** j * s_opt[None]
    expected = 0.5 * np.sum((phi - q_opt[None]) ** 2, axis=-1).mean(axis=1)
    np.testing.assert_allclose(curve.query_loss, expected, rtol=1e-12)
    assert curve.recommended_steps == int(np.argmin(expected))
    assert 0 < curve.recommended_steps < max_steps
    assert curve.u_shaped


def test_monotone_curve_is_not_u_shaped():
    hessians = np.stack([np.eye(2) * c for c in (0.5, 1.0, 1.5)])
    optima = np.array([[1.0, 2.0], [0.0, 1.0], [2.0, -1.0]])
    curve = diag.inner_loop_curve(
        q.loss, jnp.zeros(2), q.task_batch(hessians, optima), inner_lr=0.3, max_steps=10
    )
    assert np.all(np.diff(curve.query_loss) < 0)
    assert not curve.u_shaped and curve.recommended_steps == 10
    ax = diag.plot_inner_loop_curve(curve)
    assert ax.get_xlabel() == "inner steps"


def test_meta_overfitting_gap():
    rng = np.random.default_rng(0)

    def family(n):
        hessians = np.stack([np.diag(rng.uniform(0.5, 2.0, size=2)) for _ in range(n)])
        return hessians, rng.normal(size=(n, 2))

    train_tasks = q.task_batch(*family(3))
    test_tasks = q.task_batch(*family(20))
    learner = meta.maml(q.loss, optax.sgd(0.3), inner_lr=0.1)
    gap = diag.meta_overfitting_gap(
        learner,
        q.loss,
        jnp.zeros(2),
        train_tasks,
        test_tasks,
        num_steps=60,
        meta_batch_size=3,
        eval_every=20,
    )
    np.testing.assert_array_equal(gap.steps, [0, 20, 40, 60])
    assert int(gap.state.count) == 60
    # at step 0 both losses are the post-adaptation losses at theta = 0 (closed form)
    for tasks, got in ((train_tasks, gap.train_loss[0]), (test_tasks, gap.test_loss[0])):
        a, t = np.asarray(tasks["support"]["hessian"]), np.asarray(tasks["support"]["optimum"])
        assert np.isclose(got, q.meta_loss(np.zeros(2), a, t, 0.1, 1), rtol=1e-12)
    # training on three tasks drives their loss to its minimum: the train curve falls
    # to the closed-form optimum of those three tasks
    a, t = (np.asarray(train_tasks["support"][k]) for k in ("hessian", "optimum"))
    best = q.meta_loss(q.maml_optimum(a, t, 0.1, 1), a, t, 0.1, 1)
    assert np.isclose(gap.train_loss[-1], best, rtol=1e-6)
    np.testing.assert_allclose(gap.gap, gap.test_loss - gap.train_loss)
    ax = diag.plot_meta_overfitting_gap(gap)
    assert ax.get_title() == "meta-overfitting gap"
