"""Meta-learners: meta-gradients against independent references, convergence to the
quadratic closed forms, no retracing, input validation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bayesmeta.meta as meta
from bayesmeta.inference.diagnostics import FitWarning
from bayesmeta.meta import quadratic as q

# ----------------------------------------------------------------------------- fixtures


def _tiny_loss(params, batch):
    """A nonlinear per-task loss, so that second-order terms matter."""
    pred = jnp.tanh(batch["x"] @ params["w"] + params["b"])
    return jnp.mean((pred - batch["y"]) ** 2)


def _tiny_tasks(seed=0, num_tasks=3, n=5):
    rng = np.random.default_rng(seed)

    def part():
        return {
            "x": jnp.asarray(rng.normal(size=(num_tasks, n, 2))),
            "y": jnp.asarray(rng.normal(size=(num_tasks, n))),
        }

    return {"support": part(), "query": part()}


def _tiny_params():
    return {"w": jnp.array([0.3, -0.7]), "b": jnp.array(0.1)}


@functools.lru_cache(maxsize=1)
def _quadratic_family():
    """Four random SPD quadratics in 3-d, eigenvalues in [0.5, 2] (well conditioned, so
    full-batch outer descent converges far below the 1e-4 tolerance)."""
    rng = np.random.default_rng(0)
    n, d = 4, 3
    hessians = []
    for _ in range(n):
        basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
        hessians.append(basis @ np.diag(rng.uniform(0.5, 2.0, size=d)) @ basis.T)
    return np.stack(hessians), 2.0 * rng.normal(size=(n, d))


def _reference_inner(params, batch, inner_lr, num_steps):
    """Independent inner loop: a Python loop of jax.grad steps (no lax.scan)."""
    for _ in range(num_steps):
        g = jax.grad(_tiny_loss)(params, batch)
        params = jax.tree.map(lambda p, gi: p - inner_lr * gi, params, g)
    return params


def _one_task(tasks, b):
    return jax.tree.map(lambda x: x[b], tasks)


def _step_gradient(learner, params, tasks):
    """The meta-gradient a learner's step applies: with optax.sgd(1) it is old - new."""
    state = learner.init(params)
    new_state, _ = learner.step(state, tasks)
    return jax.tree.map(lambda a, b: a - b, state.params, new_state.params)


# ----------------------------------------------------------------------------- gradients


def test_maml_meta_gradient_matches_finite_differences():
    tasks, params = _tiny_tasks(), _tiny_params()
    lr, k = 0.3, 2
    learner = meta.maml(_tiny_loss, optax.sgd(1.0), inner_lr=lr, num_inner_steps=k)
    grad = _step_gradient(learner, params, tasks)

    def objective(flat):
        p = {"w": flat[:2], "b": flat[2]}
        losses = []
        for b in range(3):
            task = _one_task(tasks, b)
            losses.append(_tiny_loss(_reference_inner(p, task["support"], lr, k), task["query"]))
        return float(np.mean(losses))

    flat = np.array([0.3, -0.7, 0.1])
    h = 1e-6
    fd = np.array(
        [(objective(flat + h * e) - objective(flat - h * e)) / (2 * h) for e in np.eye(3)]
    )
    got = np.concatenate([np.asarray(grad["w"]), [float(grad["b"])]])
    # central differences in float64: truncation O(h^2) ~ 1e-12, rounding ~ 1e-16 / h
    np.testing.assert_allclose(got, fd, rtol=1e-7, atol=1e-9)


def test_first_order_maml_gradient_is_query_gradient_at_adapted_params():
    tasks, params = _tiny_tasks(1), _tiny_params()
    lr, k = 0.3, 3
    learner = meta.maml(
        _tiny_loss, optax.sgd(1.0), inner_lr=lr, num_inner_steps=k, first_order=True
    )
    grad = _step_gradient(learner, params, tasks)
    expected = []
    for b in range(3):
        task = _one_task(tasks, b)
        phi = _reference_inner(params, task["support"], lr, k)
        expected.append(jax.grad(_tiny_loss)(phi, task["query"]))
    mean = jax.tree.map(lambda *g: np.mean(np.stack(g), axis=0), *expected)
    np.testing.assert_allclose(grad["w"], mean["w"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad["b"], mean["b"], rtol=1e-12, atol=1e-14)


def test_reptile_direction_is_theta_minus_adapted():
    tasks, params = _tiny_tasks(2), _tiny_params()
    learner = meta.reptile(_tiny_loss, optax.sgd(1.0), inner_lr=0.2, num_inner_steps=4)
    grad = _step_gradient(learner, params, tasks)
    phis = [_reference_inner(params, _one_task(tasks, b)["support"], 0.2, 4) for b in range(3)]
    mean_phi = jax.tree.map(lambda *p: np.mean(np.stack(p), axis=0), *phis)
    np.testing.assert_allclose(grad["w"], params["w"] - mean_phi["w"], rtol=1e-12)
    np.testing.assert_allclose(grad["b"], params["b"] - mean_phi["b"], rtol=1e-12)


def test_imaml_gradient_matches_exact_implicit_gradient_on_quadratics():
    hessians, optima = _quadratic_family()
    rng = np.random.default_rng(5)
    query_optima = optima + rng.normal(size=optima.shape)
    query_hessians = hessians[::-1].copy()
    batch = q.task_batch(hessians, optima, query_hessians, query_optima)
    lam, theta = 0.7, rng.normal(size=3)
    # inner rate 0.3 on curvature in [0.5 + lam, 2 + lam]: contraction <= 0.55 per step
    learner = meta.imaml(
        q.loss, optax.sgd(1.0), inner_lr=0.3, num_inner_steps=80, prox_weight=lam, num_cg_iters=3
    )
    grad = _step_gradient(learner, jnp.asarray(theta), batch)
    # exact: phi* = (A + lam I)^-1 (A theta* + lam theta), dphi*/dtheta = lam (A + lam I)^-1,
    # gradient = (dphi*/dtheta)^T A_q (phi* - theta_q*)   (implicit function theorem)
    expected = []
    eye = np.eye(3)
    for a, t, aq, tq in zip(hessians, optima, query_hessians, query_optima, strict=True):
        phi = np.linalg.solve(a + lam * eye, a @ t + lam * theta)
        jac = lam * np.linalg.inv(a + lam * eye)
        expected.append(jac.T @ aq @ (phi - tq))
    np.testing.assert_allclose(grad, np.mean(expected, axis=0), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- closed forms


def _train_full_batch(learner, num_steps):
    hessians, optima = _quadratic_family()
    batch = q.task_batch(hessians, optima)
    state, history = meta.train(
        learner, jnp.zeros(3), lambda key: batch, num_steps, progress_bar=False
    )
    return state, history


def _rel_error(got, ref):
    return float(np.max(np.abs(np.asarray(got) - ref)) / np.linalg.norm(ref))


@pytest.mark.parametrize("num_steps", [1, 3])
def test_trained_maml_reaches_k_step_optimum(num_steps):
    hessians, optima = _quadratic_family()
    learner = meta.maml(q.loss, optax.sgd(0.5), inner_lr=0.2, num_inner_steps=num_steps)
    state, _ = _train_full_batch(learner, 1000)
    ref = q.maml_optimum(hessians, optima, 0.2, num_steps)
    assert _rel_error(state.params, ref) < 1e-4
    # and the MAML optimum is not the average-loss optimum (the test can tell them apart)
    assert _rel_error(q.average_loss_optimum(hessians, optima), ref) > 1e-2


def test_trained_first_order_maml_and_reptile_reach_their_fixed_points():
    hessians, optima = _quadratic_family()
    fo = meta.maml(q.loss, optax.sgd(0.5), inner_lr=0.2, num_inner_steps=2, first_order=True)
    state, _ = _train_full_batch(fo, 1000)
    assert _rel_error(state.params, q.first_order_maml_optimum(hessians, optima, 0.2, 2)) < 1e-4
    rep = meta.reptile(q.loss, optax.sgd(0.5), inner_lr=0.2, num_inner_steps=3)
    state, _ = _train_full_batch(rep, 1000)
    assert _rel_error(state.params, q.reptile_optimum(hessians, optima, 0.2, 3)) < 1e-4


def test_trained_imaml_reaches_its_optimum():
    hessians, optima = _quadratic_family()
    learner = meta.imaml(
        q.loss, optax.sgd(0.5), inner_lr=0.3, num_inner_steps=60, prox_weight=1.0, num_cg_iters=3
    )
    state, _ = _train_full_batch(learner, 1000)
    assert _rel_error(state.params, q.imaml_optimum(hessians, optima, 1.0)) < 1e-4


def test_trained_meta_sgd_reaches_the_optimum_at_its_learned_rates():
    hessians, optima = _quadratic_family()
    learner = meta.meta_sgd(q.loss, optax.adam(0.01), inner_lr=0.2, num_inner_steps=1)
    state, history = _train_full_batch(learner, 3000)
    rates = np.asarray(state.params.inner_lr)
    assert not np.allclose(rates, 0.2)  # the rates were learned
    ref = q.maml_optimum(hessians, optima, rates, 1)
    assert _rel_error(state.params.init, ref) < 1e-4
    # the learned rates are a stationary point of the post-adaptation loss
    assert history["grad_norm"][-1] < 1e-8


# ----------------------------------------------------------------------------- tracing


def _learners_for_trace(loss):
    return {
        "maml": meta.maml(loss, optax.adam(1e-2), inner_lr=0.1, num_inner_steps=2),
        "fomaml": meta.maml(loss, optax.adam(1e-2), inner_lr=0.1, first_order=True),
        "reptile": meta.reptile(loss, optax.sgd(0.1), inner_lr=0.1, num_inner_steps=2),
        "imaml": meta.imaml(loss, optax.adam(1e-2), inner_lr=0.1, num_inner_steps=2),
        "meta_sgd": meta.meta_sgd(loss, optax.adam(1e-2), inner_lr=0.1),
        "abml": meta.abml(loss, optax.adam(1e-2), inner_lr=0.1, num_inner_steps=2),
    }


@pytest.mark.parametrize("name", ["maml", "fomaml", "reptile", "imaml", "meta_sgd", "abml"])
def test_jitted_step_traces_once(name):
    calls = {"loss": 0, "step": 0}

    def loss(params, batch):
        calls["loss"] += 1  # Python side effect: runs only while tracing
        return _tiny_loss(params, batch)

    learner = _learners_for_trace(loss)[name]

    def counted_step(state, batch, key):
        calls["step"] += 1
        # ABML's step is stochastic and takes its key; the others are deterministic
        return learner.step(state, batch, key) if name == "abml" else learner.step(state, batch)

    step = jax.jit(counted_step)
    state = learner.init(_tiny_params())
    state, _ = step(state, _tiny_tasks(0), jax.random.PRNGKey(0))
    after_first = dict(calls)
    for seed in range(1, 4):
        state, info = step(state, _tiny_tasks(seed), jax.random.PRNGKey(seed))
    assert calls == after_first
    assert after_first["step"] == 1
    assert int(state.count) == 4
    assert np.isfinite(float(info.loss))


def test_train_compiles_once_across_calls_and_resumes_the_task_stream():
    traces = []
    batch = _tiny_tasks(0)

    def sampler(key):
        traces.append(1)
        noise = 0.01 * jax.random.normal(key, batch["support"]["y"].shape)
        return {
            "support": {**batch["support"], "y": batch["support"]["y"] + noise},
            "query": batch["query"],
        }

    learner = meta.maml(_tiny_loss, optax.adam(1e-2), inner_lr=0.1)
    state, history = meta.train(
        learner, _tiny_params(), sampler, 10, progress_bar=False, chunk_size=4
    )
    n_traces = len(traces)
    assert set(history) == {"loss", "loss_before", "grad_norm"}
    assert history["loss"].shape == (10,) and np.all(np.isfinite(history["loss"]))
    state2, _ = meta.train(learner, state, sampler, 10, progress_bar=False, chunk_size=4)
    assert len(traces) == n_traces
    assert int(state2.count) == 20
    # 20 steps in one run == 10 + 10 resumed (same key stream, counted by state.count)
    full, _ = meta.train(learner, _tiny_params(), sampler, 20, progress_bar=False, chunk_size=4)
    np.testing.assert_allclose(full.params["w"], state2.params["w"], rtol=1e-12)


# ----------------------------------------------------------------------------- adapt/errors


def test_adapt_runs_the_shared_inner_loop():
    params = _tiny_params()
    support = _one_task(_tiny_tasks(3), 0)["support"]
    learner = meta.maml(_tiny_loss, inner_lr=0.2, num_inner_steps=1)
    phi = learner.adapt(learner.init(params), support, num_steps=5)
    ref = _reference_inner(params, support, 0.2, 5)
    np.testing.assert_allclose(phi["w"], ref["w"], rtol=1e-12)
    sgd = meta.meta_sgd(_tiny_loss, inner_lr=0.2)
    phi2 = sgd.adapt(sgd.init(params), support, num_steps=5)
    np.testing.assert_allclose(phi2["w"], ref["w"], rtol=1e-12)


def test_bad_inputs_raise_value_errors_naming_the_field():
    learner = meta.maml(_tiny_loss, inner_lr=0.1)
    state = learner.init(_tiny_params())
    tasks = _tiny_tasks()
    with pytest.raises(ValueError, match="task_batch"):
        learner.step(state, {"support": tasks["support"]})
    bad = {
        "support": tasks["support"],
        "query": {"x": tasks["query"]["x"][:2], "y": tasks["query"]["y"]},
    }
    with pytest.raises(ValueError, match="meta-batch size"):
        learner.step(state, bad)
    with pytest.raises(ValueError, match="inner_lr"):
        meta.maml(_tiny_loss, inner_lr=-0.1)
    with pytest.raises(ValueError, match="num_inner_steps"):
        meta.maml(_tiny_loss, num_inner_steps=0)
    with pytest.raises(ValueError, match="optimizer"):
        meta.maml(_tiny_loss, optimizer="adam")
    with pytest.raises(ValueError, match="prox_weight"):
        meta.imaml(_tiny_loss, prox_weight=0.0)
    with pytest.raises(ValueError, match="num_steps"):
        meta.train(learner, _tiny_params(), lambda k: tasks, 0)
    with pytest.raises(ValueError, match="inner_lr"):
        learner.adapt(state, _one_task(tasks, 0)["support"], inner_lr={"w": jnp.ones(3)})


def test_train_warns_when_the_loss_or_the_parameters_go_non_finite():
    """A diverging outer loop (sgd at rate 10 on a quadratic: |1 - 10 * 2| > 1 grows by 19x
    a step until it overflows) is reported, never returned silently."""
    loss = lambda p, b: jnp.sum((p - b) ** 2)  # noqa: E731
    data = jnp.array([[1.0], [3.0]], jnp.float32)
    sampler = lambda key: {"support": data, "query": data}  # noqa: E731
    learner = meta.maml(loss, optax.sgd(10.0), inner_lr=1e-3, num_inner_steps=1)
    with pytest.warns(FitWarning, match="non-finite loss .*first at step"):
        state, history = meta.train(
            learner, jnp.zeros((), jnp.float32), sampler, 200, progress_bar=False
        )
    assert not np.all(np.isfinite(history["loss"]))
