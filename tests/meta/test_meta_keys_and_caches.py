"""Explicit keys and no hidden state: ABML's step takes its key, and the compiled functions
kept for repeated calls (train, inner_loop_curve, llama/implied_prior) neither keep the
user's functions (and the data they capture) alive nor compile twice while they live."""

import gc
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bayesmeta.meta as meta
from bayesmeta.meta import diagnostics


def _closure_loss(traces):
    """A per-task loss closing over an array, counting its traces in ``traces``."""
    offset = jnp.full((2,), 0.5)

    def loss(params, batch):
        traces.append(1)
        return jnp.mean((batch["x"] @ (params + offset) - batch["y"]) ** 2)

    return loss


def _tasks(seed=0, num_tasks=4, n=6):
    rng = np.random.default_rng(seed)

    def part():
        return {
            "x": jnp.asarray(rng.normal(size=(num_tasks, n, 2))),
            "y": jnp.asarray(rng.normal(size=(num_tasks, n))),
        }

    return {"support": part(), "query": part()}


def _sampler_of(tasks):
    def sampler(key):
        noise = 0.01 * jax.random.normal(key, tasks["support"]["y"].shape)
        return {
            "support": {**tasks["support"], "y": tasks["support"]["y"] + noise},
            "query": tasks["query"],
        }

    return sampler


def _is_collected(ref) -> bool:
    gc.collect()
    return ref() is None


# ----------------------------------------------------------------------------- no leaks


def test_train_keeps_neither_the_loss_nor_the_sampler_alive():
    traces = []
    loss = _closure_loss(traces)
    sampler = _sampler_of(_tasks())
    learner = meta.maml(loss, optax.sgd(0.1), inner_lr=0.1)
    state, _ = meta.train(learner, jnp.zeros(2), sampler, 6, progress_bar=False, chunk_size=3)
    n_traces = len(traces)
    state, _ = meta.train(learner, state, sampler, 6, progress_bar=False, chunk_size=3)
    assert len(traces) == n_traces  # the second call reused the compiled loop
    refs = weakref.ref(loss), weakref.ref(sampler), weakref.ref(learner.step)
    del loss, sampler, learner, state
    assert all(_is_collected(r) for r in refs)


def test_inner_loop_curve_keeps_the_loss_alive_only_while_the_caller_does():
    traces = []
    loss = _closure_loss(traces)
    tasks = _tasks()
    meta.diagnostics.inner_loop_curve(loss, jnp.zeros(2), tasks, inner_lr=0.1, max_steps=3)
    n_traces = len(traces)
    curve = diagnostics.inner_loop_curve(loss, jnp.zeros(2), tasks, inner_lr=0.1, max_steps=3)
    assert len(traces) == n_traces and curve.query_loss.shape == (4,)
    ref = weakref.ref(loss)
    del loss
    assert _is_collected(ref)


def test_llama_and_implied_prior_keep_the_loss_alive_only_while_the_caller_does():
    traces = []
    scale = jnp.asarray(1.0)

    def nll(params, batch):
        traces.append(1)
        return scale * meta.linear_gaussian_nll(params, batch)

    rng = np.random.default_rng(1)
    support = {
        "x": jnp.asarray(rng.normal(size=(3, 5, 2))),
        "y": jnp.asarray(rng.normal(size=(3, 5))),
        "noise_scale": jnp.ones((3, 5)),
    }
    kw = dict(inner_lr=0.01, num_inner_steps=2, num_draws=10)
    meta.llama(nll, jnp.zeros(2), support, **kw)
    n_traces = len(traces)
    meta.llama(nll, jnp.zeros(2), support, **kw)
    assert len(traces) == n_traces  # the per-task numerics were reused
    meta.implied_prior(nll, jnp.zeros(2), support, **kw)
    ref = weakref.ref(nll)
    del nll
    assert _is_collected(ref)


# ----------------------------------------------------------------------------- ABML keys


def _abml():
    return meta.abml(meta.linear_gaussian_nll, optax.adam(1e-2), inner_lr=0.01, num_inner_steps=2)


def _linear_tasks(seed=0):
    rng = np.random.default_rng(seed)
    part = {
        "x": jnp.asarray(rng.normal(size=(4, 5, 2))),
        "y": jnp.asarray(rng.normal(size=(4, 5))),
        "noise_scale": jnp.ones((4, 5)),
    }
    return {"support": part, "query": part}


def test_abml_step_draws_from_the_key_it_is_given():
    learner = _abml()
    state = learner.init(jnp.zeros(2))
    tasks = _linear_tasks()
    step = jax.jit(learner.step)
    a, info_a = step(state, tasks, jax.random.PRNGKey(0))
    b, info_b = step(state, tasks, jax.random.PRNGKey(0))
    c, info_c = step(state, tasks, jax.random.PRNGKey(1))
    assert float(info_a.loss) == float(info_b.loss)
    assert float(info_a.loss) != float(info_c.loss)
    np.testing.assert_array_equal(a.params.mean, b.params.mean)
    with pytest.raises(TypeError):
        learner.step(state, tasks)  # no hidden seed to fall back on
    with pytest.raises(ValueError, match="key: expected a JAX PRNG key"):
        learner.step(state, tasks, 0)
    support = jax.tree.map(lambda x: x[0], tasks["support"])
    with pytest.raises(ValueError, match="key: ABML's adaptation draws Monte Carlo noise"):
        learner.adapt(state, support)
    with pytest.raises(ValueError, match="key"):
        learner.gaussians(state, tasks["support"], key=3)
    # the friendly posterior takes an integer seed
    post = learner.posterior(state, tasks["support"], num_draws=5, seed=2)
    assert post.samples["theta"].shape == (1, 5, 4, 2)


def test_train_passes_abml_a_key_per_step_from_its_seed():
    learner = _abml()
    sampler = _sampler_of(_linear_tasks())
    kw = dict(progress_bar=False, chunk_size=4)
    full, hist = meta.train(learner, jnp.zeros(2), sampler, 8, seed=3, **kw)
    again, _ = meta.train(learner, jnp.zeros(2), sampler, 8, seed=3, **kw)
    assert np.all(np.isfinite(hist["loss"]))
    np.testing.assert_array_equal(full.params.mean, again.params.mean)
    # with a sampler that ignores its key, only the step keys differ between seeds
    tasks = _linear_tasks()

    def fixed(key):
        return tasks

    one, _ = meta.train(learner, jnp.zeros(2), fixed, 8, seed=3, **kw)
    two, _ = meta.train(learner, jnp.zeros(2), fixed, 8, seed=4, **kw)
    assert not np.allclose(one.params.log_scale, two.params.log_scale)
    # the keys follow state.count: 4 + 4 resumed steps equal 8 in one run
    half, _ = meta.train(learner, jnp.zeros(2), sampler, 4, seed=3, **kw)
    resumed, _ = meta.train(learner, half, sampler, 4, seed=3, **kw)
    np.testing.assert_allclose(resumed.params.mean, full.params.mean, rtol=1e-12)
    np.testing.assert_allclose(resumed.params.log_scale, full.params.log_scale, rtol=1e-12)
