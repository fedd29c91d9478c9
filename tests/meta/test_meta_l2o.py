"""The learned optimizer (bm.meta.l2o): its meta-gradient against central finite
differences, the carried state across truncations and resets, no retracing, bad input.

The suite runs with JAX's float64 on (tests/conftest.py), so the finite differences are
taken in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bayesmeta.meta as meta

D, B = 3, 2


def _loss(params, task):
    """A nonconvex (quartic) loss, so the optimizee's Hessian varies along the unroll and
    second-order terms matter."""
    r = params["w"] - task["opt"]
    return 0.5 * jnp.sum(task["scale"] * r**2) + 0.25 * jnp.sum(r**4) + 0.1 * params["b"] ** 2


def _batch(seed, num_tasks=B):
    rng = np.random.default_rng(seed)
    return {
        "params": {
            "w": jnp.asarray(rng.normal(size=(num_tasks, D - 1))),
            "b": jnp.asarray(rng.normal(size=(num_tasks,))),
        },
        "task": {
            "opt": jnp.asarray(rng.normal(size=(num_tasks, D - 1))),
            "scale": jnp.asarray(rng.uniform(0.5, 3.0, size=(num_tasks, D - 1))),
        },
    }


def _learner(opt=None, **kw):
    kw = {"num_unroll_steps": 3, "num_truncations": 2, "hidden_size": 4, **kw}
    return meta.l2o(_loss, optax.sgd(1.0) if opt is None else opt, **kw)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_meta_gradient_matches_central_finite_differences(cell):
    # output_scale 0.3: the steps are large enough that the unroll moves (the gradient of
    # J through theta_1 .. theta_T is not negligible)
    learner = _learner(cell=cell, output_scale=0.3)
    net = learner.init_params(jax.random.key(0))
    batch = _batch(0)
    state = learner.init(net, batch)
    step = jax.jit(learner.step)
    new_state, info = step(state, batch)
    # with optax.sgd(1.0) the update is minus the meta-gradient
    grad = jax.tree.map(lambda a, b: a - b, net, new_state.params)
    flat_grad, unravel = jax.flatten_util.ravel_pytree(grad)

    def objective(flat):
        return step(state._replace(params=unravel(flat)), batch)[1].loss

    flat_net = jax.flatten_util.ravel_pytree(net)[0]
    rng = np.random.default_rng(1)
    eps = 1e-5
    for _ in range(4):
        v = rng.normal(size=flat_net.shape)
        v /= np.linalg.norm(v)
        fd = (objective(flat_net + eps * v) - objective(flat_net - eps * v)) / (2 * eps)
        np.testing.assert_allclose(float(flat_grad @ v), float(fd), rtol=1e-6, atol=1e-9)
    assert float(jnp.linalg.norm(flat_grad)) > 1e-3  # a real gradient, not a vanishing one


def test_first_order_differs_from_the_exact_meta_gradient():
    batch = _batch(0)
    grads = []
    for first_order in (False, True):
        learner = _learner(output_scale=0.3, first_order=first_order)
        net = learner.init_params(jax.random.key(0))
        state = learner.init(net, batch)
        new, _ = jax.jit(learner.step)(state, batch)
        grads.append(jax.flatten_util.ravel_pytree(new.params)[0])
    assert not np.allclose(grads[0], grads[1], rtol=1e-3)


@pytest.mark.parametrize("cell,rows", [("lstm", 2), ("gru", 1)])
def test_state_shapes_and_dtypes(cell, rows):
    learner = _learner(cell=cell)
    state = learner.init(learner.init_params(jax.random.key(0)), _batch(0))
    assert isinstance(state, meta.L2OState)
    assert state.inner.shape == (B, D) and state.moment.shape == (B, D)
    assert state.carry.shape == (B, D, rows, 4)
    assert state.count.dtype == jnp.int32 and state.unroll.dtype == jnp.int32
    assert int(state.count) == 0 and int(state.unroll) == 0
    assert state.inner.dtype == jnp.float64 and state.carry.dtype == jnp.float64
    # the starting points, flattened in pytree order (b before w)
    b0 = _batch(0)["params"]
    np.testing.assert_array_equal(state.inner[:, 0], b0["b"])
    np.testing.assert_array_equal(state.inner[:, 1:], b0["w"])
    assert learner.init(state) is state  # a state passes through (train resumes from it)


def _take(tree, t):
    return jax.tree.map(lambda x: x[t], tree)


def test_truncations_continue_the_same_tasks_then_reset():
    # a frozen network (outer rate 0): two truncations of 3 steps must be exactly 6 steps
    # of the learned optimizer on the first batch's tasks, whatever batch step 2 is given
    learner = _learner(opt=optax.sgd(0.0))
    net = learner.init_params(jax.random.key(3))
    a, b, c = _batch(0), _batch(1), _batch(2)
    step = jax.jit(learner.step)
    state = learner.init(net, a)
    state, info1 = step(state, a)
    state, info2 = step(state, b)
    assert (float(info1.reset), float(info2.reset)) == (1.0, 0.0)
    assert int(state.unroll) == 0  # the next step resets
    np.testing.assert_array_equal(state.tasks["opt"], a["task"]["opt"])
    after3 = []
    for t in range(B):
        final, losses = learner.optimize(net, _take(a["params"], t), _take(a["task"], t), 6)
        np.testing.assert_allclose(
            state.inner[t], jax.flatten_util.ravel_pytree(final)[0], rtol=1e-12
        )
        after3.append(float(losses[3]))
    # the second truncation starts where the first stopped (after 3 of the 6 steps)
    np.testing.assert_allclose(float(info2.loss_before), np.mean(after3), rtol=1e-12)
    state, info3 = step(state, c)
    assert float(info3.reset) == 1.0 and int(state.unroll) == 1
    np.testing.assert_array_equal(state.tasks["opt"], c["task"]["opt"])
    start = jnp.mean(jax.vmap(_loss)(c["params"], c["task"]))
    np.testing.assert_allclose(float(info3.loss_before), float(start), rtol=1e-12)


def test_jitted_step_traces_once_across_resets():
    calls = {"loss": 0, "step": 0}

    def loss(params, task):
        calls["loss"] += 1  # Python side effect: runs only while tracing
        return _loss(params, task)

    learner = meta.l2o(loss, optax.adam(1e-2), num_unroll_steps=2, num_truncations=2, hidden_size=4)

    def counted(state, batch):
        calls["step"] += 1
        return learner.step(state, batch)

    step = jax.jit(counted)
    state = learner.init(learner.init_params(jax.random.key(0)), _batch(0))
    state, _ = step(state, _batch(0))
    after_first = dict(calls)
    for seed in range(1, 5):  # crosses two resets
        state, info = step(state, _batch(seed))
    assert calls == after_first and after_first["step"] == 1
    assert int(state.count) == 5 and np.isfinite(float(info.loss))


def test_train_runs_compiled_once_and_records_resets():
    learner = _learner(opt=optax.adam(1e-2))
    sampler_traces = []

    def sampler(key):
        sampler_traces.append(1)
        batch = _batch(0)
        noise = 0.1 * jax.random.normal(key, batch["task"]["opt"].shape)
        return {
            "params": batch["params"],
            "task": {**batch["task"], "opt": batch["task"]["opt"] + noise},
        }

    state = learner.init(learner.init_params(jax.random.key(0)), sampler(jax.random.key(0)))
    state, history = meta.train(learner, state, sampler, 4, progress_bar=False, chunk_size=2)
    n = len(sampler_traces)
    assert set(history) == {"loss", "loss_before", "final_loss", "grad_norm", "reset"}
    np.testing.assert_array_equal(history["reset"], [1.0, 0.0, 1.0, 0.0])
    assert np.all(np.isfinite(history["loss"]))
    state, _ = meta.train(learner, state, sampler, 4, progress_bar=False, chunk_size=2)
    assert len(sampler_traces) == n and int(state.count) == 8


def test_stochastic_loss_needs_a_key_and_uses_it():
    def noisy(params, task, key):
        noise = jax.random.normal(key, (D - 1,))
        return _loss(params, task) + jnp.sum(noise * params["w"])

    learner = meta.l2o(noisy, optax.sgd(1.0), num_unroll_steps=2, hidden_size=4, stochastic=True)
    net = learner.init_params(jax.random.key(0))
    state = learner.init(net, _batch(0))
    with pytest.raises(ValueError, match="key"):
        learner.step(state, _batch(0))
    step = jax.jit(learner.step)
    one = step(state, _batch(0), jax.random.key(1))[1].loss
    same = step(state, _batch(0), jax.random.key(1))[1].loss
    other = step(state, _batch(0), jax.random.key(2))[1].loss
    assert float(one) == float(same) and float(one) != float(other)
    p0, task = _take(_batch(0)["params"], 0), _take(_batch(0)["task"], 0)
    _, clean = learner.optimize(net, p0, task, 4, key=jax.random.key(5), eval_fn=_loss)
    assert float(clean[0]) == pytest.approx(float(_loss(p0, task)), rel=1e-12)


def test_optimize_warns_when_the_loss_diverges():
    blowup = lambda p, t: jnp.exp(jnp.sum(p * t))  # noqa: E731
    learner = meta.l2o(blowup, num_unroll_steps=2, hidden_size=4, output_scale=1e3)
    net = learner.init_params(jax.random.key(0))
    net = {**net, "b_out": jnp.asarray(5.0)}  # a constant step of 5000 per coordinate
    with pytest.warns(RuntimeWarning, match="not finite"):
        learner.optimize(net, jnp.zeros(2), jnp.ones(2), 5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"cell": "rnn"}, "cell"),
        ({"num_unroll_steps": 0}, "num_unroll_steps"),
        ({"num_truncations": 0}, "num_truncations"),
        ({"hidden_size": 1.5}, "hidden_size"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": "fast"}, "momentum"),
        ({"output_scale": -1.0}, "output_scale"),
        ({"objective": "median"}, "objective"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        meta.l2o(_loss, **kwargs)


def test_bad_inputs_before_compiling():
    learner = _learner()
    net = learner.init_params(jax.random.key(0))
    with pytest.raises(ValueError, match="loss_fn"):
        meta.l2o("loss")
    with pytest.raises(ValueError, match="optimizer"):
        meta.l2o(_loss, "adam")
    with pytest.raises(ValueError, match="key"):
        learner.init_params(0)
    with pytest.raises(ValueError, match="task_batch"):
        learner.init(net)
    with pytest.raises(ValueError, match="'params'"):
        learner.init(net, {"task": _batch(0)["task"]})
    with pytest.raises(ValueError, match="meta-batch size"):
        learner.init(net, {"params": _batch(0)["params"], "task": _batch(0, 3)["task"]})
    with pytest.raises(ValueError, match="floating point"):
        learner.init(net, {"params": jnp.zeros((B, 2), jnp.int32), "task": _batch(0)["task"]})
    with pytest.raises(ValueError, match=r"net_params\['w_h'\]"):
        learner.init({**net, "w_h": jnp.zeros((5, 16))}, _batch(0))
    with pytest.raises(ValueError, match="net_params"):
        learner.init([1.0], _batch(0))
    state = learner.init(net, _batch(0))
    with pytest.raises(ValueError, match="meta-batch of 3"):
        learner.step(state, _batch(0, 3))
    with pytest.raises(ValueError, match="state"):
        learner.step(net, _batch(0))
    with pytest.raises(ValueError, match="num_steps"):
        learner.optimize(net, jnp.zeros(2), _take(_batch(0)["task"], 0), 0)
    with pytest.raises(ValueError, match="eval_fn"):
        learner.optimize(net, jnp.zeros(2), None, 2, eval_fn="clean")
