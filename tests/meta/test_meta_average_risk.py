"""The average-risk (pooled) learner converges to the average-loss optimum."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bayesmeta as bm

q = bm.meta.quadratic


def test_average_risk_reaches_the_average_loss_optimum():
    # three 2-D quadratic tasks with different curvatures; the fixed point of pooled
    # gradient descent is the closed form (sum A_i)^-1 sum A_i theta_i* (quadratic.py)
    hessians = np.stack([np.diag([1.0, 4.0]), np.diag([3.0, 0.5]), [[2.0, 0.5], [0.5, 1.0]]])
    optima = np.array([[0.0, 1.0], [2.0, -1.0], [1.0, 3.0]])
    batch = q.task_batch(hessians, optima)
    learner = bm.meta.average_risk(q.loss, optax.sgd(0.2))
    state, history = bm.meta.train(
        learner, jnp.zeros(2), lambda key: batch, 400, progress_bar=False
    )
    expected = q.average_loss_optimum(hessians, optima)
    np.testing.assert_allclose(np.asarray(state.params), expected, atol=1e-4)
    # and it is not MAML's optimum (the weights differ), so the test can tell them apart
    assert np.max(np.abs(q.maml_optimum(hessians, optima, 0.3) - expected)) > 0.05
    assert history["loss"][-1] <= history["loss"][0]


def test_average_risk_adapt_is_gradient_descent():
    learner = bm.meta.average_risk(q.loss, inner_lr=0.25, num_inner_steps=2)
    batch = {"hessian": jnp.eye(1) * 2.0, "optimum": jnp.ones(1)}
    # two steps of 0.25 on 1/2 * 2 (x - 1)^2 from 0: 0 -> 0.5 -> 0.75
    assert float(learner.adapt(jnp.zeros(1), batch)[0]) == pytest.approx(0.75)
    assert float(learner.adapt(jnp.zeros(1), batch, num_steps=1)[0]) == pytest.approx(0.5)


def test_average_risk_bad_input():
    with pytest.raises(ValueError, match="loss_fn"):
        bm.meta.average_risk(None)
    with pytest.raises(ValueError, match="inner_lr"):
        bm.meta.average_risk(q.loss, inner_lr=-1.0)
    with pytest.raises(ValueError, match="num_inner_steps"):
        bm.meta.average_risk(q.loss, num_inner_steps=0)
    learner = bm.meta.average_risk(q.loss)
    with pytest.raises(ValueError, match="task_batch"):
        learner.step(learner.init(jnp.zeros(1)), {"support": jax.numpy.zeros((2, 1))})
