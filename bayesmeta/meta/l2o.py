"""Learning the optimizer (L2O): a coordinate-wise recurrent network that maps gradients
to updates, meta-trained by truncated unrolled differentiation (Andrychowicz et al., 2016).

One small recurrent cell (LSTM or GRU, ``hidden_size`` units) is shared by every
coordinate of the optimizee's flattened parameters ``theta`` (``D`` of them): coordinate
``i`` at inner step ``t`` feeds the cell its gradient ``g_ti`` and, with ``momentum``, the
running mean ``m_ti = beta m_(t-1)i + (1 - beta) g_ti``, each preprocessed (with
``preprocess=True``) into the pair

    (log(|g|) / p, sign(g))   if |g| >= exp(-p),    (-1, exp(p) g)   otherwise   (p = 10)

and the update is ``theta_(t+1)i = theta_ti + output_scale * (w . h_ti + b)``. The
meta-objective of one truncation of ``T = num_unroll_steps`` steps from ``theta_0`` is the
mean of the task losses along the unroll,

    J = 1/T sum_(t=1..T) f(theta_t)      (or 1/T sum log f(theta_t), ``objective="log"``)

differentiated through the whole unroll (second order; ``first_order=True`` treats the
optimizee's gradients as constants, as in the paper). The optimizee's parameters, the
cell's hidden states and the tasks themselves are carried in the state from one outer
step to the next: ``num_truncations`` consecutive truncations continue the same tasks
(a horizon of ``num_truncations * T`` inner steps, gradients stopped at each truncation's
start), then the state resets to the next batch's tasks and starting points.

``task_batch = {"params": theta_0, "task": data}``: the optimizee's starting parameters
(any pytree) and the task data that ``loss_fn(params, task)`` reads, each with a leading
meta-batch axis ``B``. With ``stochastic=True`` the loss is ``loss_fn(params, task, key)``
(minibatches, gradient noise) and gets a fresh key at every inner step.

>>> import jax, jax.numpy as jnp, optax, bayesmeta as bm
>>> loss = lambda p, task: 0.5 * jnp.sum(task["scale"] * (p - task["opt"]) ** 2)
>>> batch = {"params": jnp.zeros((4, 3)),
...          "task": {"scale": jnp.ones((4, 3)), "opt": jnp.ones((4, 3))}}
>>> learner = bm.meta.l2o(loss, optax.adam(1e-2), num_unroll_steps=5, num_truncations=2)
>>> state = learner.init(learner.init_params(jax.random.key(0)), batch)
>>> state, info = jax.jit(learner.step)(state, batch)  # train() compiles it the same way
>>> int(state.unroll), info.task_losses.shape  # one truncation done of two; 4 tasks
(1, (4,))

Reference: Andrychowicz, Denil, Gomez, Hoffman, Pfau, Schaul, Shillingford & de Freitas
(2016) Learning to learn by gradient descent by gradient descent.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

from bayesmeta.meta._compiled import compiled
from bayesmeta.meta._inner import _tree_sqnorm
from bayesmeta.meta.learners import (
    _check_int,
    _check_loss_fn,
    _check_optimizer,
    _check_positive,
    _check_task_batch,
    _strong,
)

__all__ = ["L2O", "L2OState", "L2OInfo", "L2OConfig", "l2o", "build_l2o_loss"]

PyTree = Any

_PREPROCESS_P = 10.0


class L2OConfig(NamedTuple):
    """The learned optimizer's architecture (static, hashable).

    Fields:
      cell          # "lstm" or "gru"
      hidden_size   # units of the shared recurrent cell
      preprocess    # log-magnitude and sign inputs (Andrychowicz et al., 2016)
      momentum      # None, or beta in [0, 1): also feed the running mean of the gradient
      output_scale  # the update is output_scale * (w . h + b)

    >>> import bayesmeta as bm
    >>> bm.meta.L2OConfig("lstm", 20, True, 0.9, 0.1).num_inputs  # (g, m), two numbers each
    4
    """

    cell: str
    hidden_size: int
    preprocess: bool
    momentum: float | None
    output_scale: float

    @property
    def num_inputs(self) -> int:
        per = 2 if self.preprocess else 1
        return per * (1 if self.momentum is None else 2)

    @property
    def num_carry(self) -> int:
        """Rows of the per-coordinate recurrent carry: (h, c) for an LSTM, h for a GRU."""
        return 2 if self.cell == "lstm" else 1


class L2OState(NamedTuple):
    """Outer-loop state of the learned optimizer (``B`` tasks, ``D`` optimizee
    parameters, ``H`` hidden units, ``R`` = 2 for an LSTM, 1 for a GRU).

    Fields:
      params     # pytree: the recurrent network's weights (the meta-parameters)
      opt_state  # the outer optax optimizer's state
      count      # shape=(), int32: outer steps taken
      inner      # shape=(B, D): the optimizee's flattened parameters, carried
      carry      # shape=(B, D, R, H): the cell's state per coordinate
      moment     # shape=(B, D): running mean of the gradient (zeros without momentum)
      tasks      # pytree like task_batch["task"]: the tasks being optimized
      unroll     # shape=(), int32: truncations done on these tasks (0: reset next step)

    >>> import bayesmeta as bm
    >>> bm.meta.L2OState._fields[:3]
    ('params', 'opt_state', 'count')
    """

    params: PyTree
    opt_state: PyTree
    count: jax.Array
    inner: jax.Array
    carry: jax.Array
    moment: jax.Array
    tasks: PyTree
    unroll: jax.Array


class L2OInfo(NamedTuple):
    """Diagnostics of one outer step (never carried forward; ``B`` = meta-batch size).

    Fields:
      loss         # shape=(): the meta-objective J averaged over tasks
      loss_before  # shape=(): mean task loss at the truncation's start theta_0
      final_loss   # shape=(): mean task loss at the truncation's end theta_T
      task_losses  # shape=(B,): J per task
      grad_norm    # shape=(): norm of the meta-gradient
      reset        # shape=(), float: 1.0 when this step started new tasks, else 0.0

    >>> import bayesmeta as bm
    >>> bm.meta.L2OInfo._fields
    ('loss', 'loss_before', 'final_loss', 'task_losses', 'grad_norm', 'reset')
    """

    loss: jax.Array
    loss_before: jax.Array
    final_loss: jax.Array
    task_losses: jax.Array
    grad_norm: jax.Array
    reset: jax.Array


class L2O(NamedTuple):
    """A learned optimizer: pure functions in the style of the other meta-learners.

    init_params(key, dtype=None) -> network weights (random; a JAX PRNG key)
    init(net_params, task_batch) -> L2OState   (an L2OState is returned as it is)
    step(state, task_batch, key=None) -> (L2OState, L2OInfo)
    optimize(net_or_state, params, task, num_steps, *, key=None, loss_fn=None,
             eval_fn=None) -> (params, losses)   (run the learned optimizer on one task)

    >>> import jax.numpy as jnp, bayesmeta as bm
    >>> bm.meta.l2o(lambda p, t: jnp.sum((p - t) ** 2))._fields
    ('init_params', 'init', 'step', 'optimize', 'config')
    """

    init_params: Callable
    init: Callable
    step: Callable
    optimize: Callable
    config: L2OConfig


# ----------------------------------------------------------------------------- network


def _init_net(key: jax.Array, config: L2OConfig, dtype=jnp.float32) -> dict:
    h, n = config.hidden_size, config.num_inputs
    gates = 4 if config.cell == "lstm" else 3
    k1, k2, k3 = jax.random.split(key, 3)
    bias = jnp.zeros((gates * h,), dtype)
    if config.cell == "lstm":  # forget-gate bias 1 (remember by default)
        bias = bias.at[h : 2 * h].set(1.0)
    return {
        "w_in": jax.random.normal(k1, (n, gates * h), dtype) / math.sqrt(n),
        "w_h": jax.random.normal(k2, (h, gates * h), dtype) / math.sqrt(h),
        "b": bias,
        # small output weights: the untrained optimizer takes small steps
        "w_out": 0.1 * jax.random.normal(k3, (h,), dtype) / math.sqrt(h),
        "b_out": jnp.zeros((), dtype),
    }


def _preprocess(g: jax.Array) -> jax.Array:
    """``(..,) -> (.., 2)``: log-magnitude and sign, or the scaled value when tiny."""
    p = _PREPROCESS_P
    big = jnp.abs(g) >= math.exp(-p)
    log_mag = jnp.log(jnp.maximum(jnp.abs(g), math.exp(-p))) / p  # safe log (no NaN grads)
    first = jnp.where(big, log_mag, -1.0)
    second = jnp.where(big, jnp.sign(g), math.exp(p) * g)
    return jnp.stack([first, second], axis=-1)


def _features(config: L2OConfig, g: jax.Array, m: jax.Array) -> jax.Array:
    parts = [g] if config.momentum is None else [g, m]
    if config.preprocess:
        return jnp.concatenate([_preprocess(x) for x in parts], axis=-1)
    return jnp.stack(parts, axis=-1)


def _cell(config: L2OConfig, net: dict, x: jax.Array, carry: jax.Array):
    """One step of the shared cell for ``D`` coordinates: ``x`` ``(D, n)``, ``carry``
    ``(D, R, H)``; returns the new carry and the update ``(D,)``."""
    h_prev = carry[:, 0]
    hs = config.hidden_size
    if config.cell == "lstm":
        z = x @ net["w_in"] + h_prev @ net["w_h"] + net["b"]
        i, f, gg, o = (z[:, k * hs : (k + 1) * hs] for k in range(4))
        c = jax.nn.sigmoid(f) * carry[:, 1] + jax.nn.sigmoid(i) * jnp.tanh(gg)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        new = jnp.stack([h, c], axis=1)
    else:
        zx = x @ net["w_in"] + net["b"]
        zh = h_prev @ net["w_h"]
        r = jax.nn.sigmoid(zx[:, :hs] + zh[:, :hs])
        u = jax.nn.sigmoid(zx[:, hs : 2 * hs] + zh[:, hs : 2 * hs])
        n = jnp.tanh(zx[:, 2 * hs :] + r * zh[:, 2 * hs :])
        h = (1.0 - u) * n + u * h_prev
        new = h[:, None, :]
    update = config.output_scale * (h @ net["w_out"] + net["b_out"])
    return new, update


# ----------------------------------------------------------------------------- the unroll


def _value_and_grad(loss_fn, stochastic, unravel):
    def value(flat, task, key):
        params = unravel(flat)
        return loss_fn(params, task, key) if stochastic else loss_fn(params, task)

    return jax.value_and_grad(value)


def _learned_step(config, vg, first_order, net, state, task, key):
    """One learned step from ``state = (theta, carry, moment)``; returns the new state and
    the loss at the old ``theta`` (evaluated with ``key``, as its gradient)."""
    theta, carry, moment = state
    beta = 0.0 if config.momentum is None else config.momentum
    value, g = vg(theta, task, key)
    if first_order:
        g = lax.stop_gradient(g)
    moment = (beta * moment + (1.0 - beta) * g).astype(theta.dtype)
    x = _features(config, g, moment).astype(net["w_in"].dtype)
    new, update = _cell(config, net, x, carry)
    return (theta + update.astype(theta.dtype), new.astype(carry.dtype), moment), value


def _run(config, loss_fn, stochastic, first_order, unravel, net, theta, carry, moment, task, keys):
    """``len(keys)`` learned steps on one task from ``(theta, carry, moment)``; returns the
    final ``(theta, carry, moment)``, the losses at ``theta_0 .. theta_(n-1)`` (each with
    its step's key) and the loss at ``theta_n`` (with one more key, ``keys[-1]`` folded)."""
    vg = _value_and_grad(loss_fn, stochastic, unravel)

    def body(state, key):
        return _learned_step(config, vg, first_order, net, state, task, key)

    (theta, carry, moment), values = lax.scan(body, (theta, carry, moment), keys)
    last = vg(theta, task, jax.random.fold_in(keys[-1], 1))[0]
    return (theta, carry, moment), values, last


def _objective(values, last, objective):
    seq = jnp.concatenate([values[1:], last[None]])  # f(theta_1) .. f(theta_T)
    return jnp.mean(jnp.log(seq) if objective == "log" else seq)


def build_l2o_loss(
    loss_fn: Callable,
    config: L2OConfig,
    *,
    num_unroll_steps: int,
    unravel: Callable,
    objective: str = "mean",
    stochastic: bool = False,
    first_order: bool = False,
) -> Callable:
    """The truncated meta-objective of one task as a function of the network's weights.

    Returns ``task_loss(net, theta, carry, moment, task, key) -> (J, aux)`` with ``J`` as
    in the module doc over ``num_unroll_steps`` learned steps from the flat optimizee
    parameters ``theta`` ``(D,)`` (``unravel(theta)`` is what ``loss_fn`` gets), the cell
    state ``carry`` ``(D, R, H)`` and the gradient mean ``moment`` ``(D,)``;
    ``aux = ((theta_T, carry_T, moment_T), f(theta_0), f(theta_T))``. Differentiable in
    ``net`` (and in ``theta``); ``key`` is only read with ``stochastic=True``.

    >>> import jax, jax.numpy as jnp, bayesmeta as bm
    >>> from jax.flatten_util import ravel_pytree
    >>> loss = lambda p, t: 0.5 * jnp.sum((p - t) ** 2)
    >>> learner = bm.meta.l2o(loss, cell="gru", hidden_size=4, momentum=None)
    >>> _, unravel = ravel_pytree(jnp.zeros(2))
    >>> task_loss = bm.meta.build_l2o_loss(
    ...     loss, learner.config, num_unroll_steps=3, unravel=unravel
    ... )
    >>> net = learner.init_params(jax.random.key(0))
    >>> J, _ = jax.jit(task_loss)(
    ...     net, jnp.zeros(2), jnp.zeros((2, 1, 4)), jnp.zeros(2), jnp.ones(2), jax.random.key(1)
    ... )
    >>> J.shape
    ()
    """
    _check_int("num_unroll_steps", num_unroll_steps, 1)

    def task_loss(net, theta, carry, moment, task, key):
        keys = jax.random.split(key, num_unroll_steps)
        final, values, last = _run(
            config, loss_fn, stochastic, first_order, unravel, net, theta, carry, moment, task, keys
        )
        return _objective(values, last, objective), (final, values[0], last)

    return task_loss


# ----------------------------------------------------------------------------- checks


def _check_batch(task_batch: Any, name: str = "task_batch") -> int:
    size = _check_task_batch(
        task_batch,
        name,
        parts=("params", "task"),
        expected=(
            "keys 'params' (the optimizee's starting parameters) and 'task' (the task data), "
            "each with a leading meta-batch axis"
        ),
    )
    for leaf in jax.tree.leaves(task_batch["params"]):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise ValueError(
                f"{name}['params']: the optimizee's parameters must be floating point, got "
                f"{jnp.result_type(leaf)}"
            )
    return size


def _check_key(key: Any, stochastic: bool) -> jax.Array:
    if key is None:
        if stochastic:
            raise ValueError(
                "key: a stochastic loss needs a JAX PRNG key (jax.random.key(seed)); "
                "bayesmeta.meta.train passes one per step"
            )
        return jax.random.key(0)  # unread by a deterministic loss
    if isinstance(key, int | np.integer) or not hasattr(key, "dtype"):
        raise ValueError(f"key: expected a JAX PRNG key, got {type(key).__name__} {key!r}")
    return key


# ----------------------------------------------------------------------------- learner


def l2o(
    loss_fn: Callable,
    optimizer: optax.GradientTransformation | None = None,
    *,
    num_unroll_steps: int = 20,
    num_truncations: int = 5,
    cell: str = "lstm",
    hidden_size: int = 20,
    preprocess: bool = True,
    momentum: float | None = 0.9,
    output_scale: float = 0.1,
    objective: str = "mean",
    stochastic: bool = False,
    first_order: bool = False,
) -> L2O:
    """A learned coordinate-wise recurrent optimizer (Andrychowicz et al., 2016).

    Args:
      loss_fn: the optimizee's loss on one task, ``loss_fn(params, task)`` (or
        ``loss_fn(params, task, key)`` with ``stochastic=True``).
      optimizer: outer optax optimizer of the network's weights (default
        ``optax.adam(1e-3)``).
      num_unroll_steps: truncation length ``T``: learned steps per outer step, the
        meta-gradient flowing through all of them.
      num_truncations: consecutive truncations on the same tasks before a reset (horizon
        ``num_truncations * T``).
      cell: ``"lstm"`` or ``"gru"``, shared by every coordinate.
      hidden_size: units of the cell.
      preprocess: feed ``(log|g| / 10, sign g)`` instead of ``g`` (scale-free inputs).
      momentum: ``beta`` of the running gradient mean also fed to the cell, or None.
      output_scale: factor on the cell's output (the update).
      objective: ``"mean"`` (mean loss over the unroll) or ``"log"`` (mean log-loss; for
        positive losses spanning orders of magnitude).
      stochastic: the loss takes a key (fresh at every inner step).
      first_order: stop gradients through the optimizee's gradients (the paper's
        simplification); default the exact truncated meta-gradient.

    Returns:
      an :class:`L2O`. ``step`` is pure and not jitted: :func:`bayesmeta.meta.train` runs
      it compiled (``state = learner.init(net, sampler(key))`` first, then
      ``train(learner, state, sampler, n)``); ``optimize`` is compiled once per loss.

    >>> import jax, jax.numpy as jnp, optax, bayesmeta as bm
    >>> loss = lambda p, t: 0.5 * jnp.sum((p - t) ** 2)
    >>> learner = bm.meta.l2o(loss, optax.adam(1e-2), num_unroll_steps=5, hidden_size=8)
    >>> net = learner.init_params(jax.random.key(0))
    >>> theta, losses = learner.optimize(net, jnp.zeros(3), jnp.ones(3), 10)
    >>> theta.shape, losses.shape  # losses at theta_0 .. theta_10
    ((3,), (11,))
    """
    _check_loss_fn(loss_fn)
    optimizer = _check_optimizer(optimizer)
    _check_int("num_unroll_steps", num_unroll_steps, 1)
    _check_int("num_truncations", num_truncations, 1)
    _check_int("hidden_size", hidden_size, 1)
    if cell not in ("lstm", "gru"):
        raise ValueError(f"cell: expected 'lstm' or 'gru', got {cell!r}")
    if objective not in ("mean", "log"):
        raise ValueError(f"objective: expected 'mean' or 'log', got {objective!r}")
    if momentum is not None:
        try:
            beta = float(momentum)
        except (TypeError, ValueError):
            raise ValueError(
                f"momentum: expected None or a number in [0, 1), got {momentum!r}"
            ) from None
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"momentum: expected None or a number in [0, 1), got {momentum!r}")
        momentum = beta
    _check_positive("output_scale", output_scale)
    config = L2OConfig(cell, hidden_size, bool(preprocess), momentum, float(output_scale))
    stochastic, first_order = bool(stochastic), bool(first_order)

    def init_params(key, dtype=None):
        if key is None or isinstance(key, int | np.integer) or not hasattr(key, "dtype"):
            raise ValueError(f"key: expected a JAX PRNG key, got {key!r}")
        # the default float (float64 when JAX's x64 is on)
        return _init_net(key, config, jnp.asarray(0.0).dtype if dtype is None else dtype)

    def _check_net(net):
        expected = jax.tree.structure(_init_net(jax.random.key(0), config))
        if not isinstance(net, dict) or jax.tree.structure(net) != expected:
            raise ValueError(
                "net_params: expected the network weights of this learner (init_params(key)),"
                f" got {type(net).__name__}"
            )
        ref = jax.eval_shape(lambda: _init_net(jax.random.key(0), config))
        for name, leaf in net.items():
            if jnp.shape(leaf) != ref[name].shape:
                raise ValueError(
                    f"net_params['{name}']: shape {jnp.shape(leaf)}, expected "
                    f"{ref[name].shape} for cell={config.cell!r}, "
                    f"hidden_size={config.hidden_size}"
                )

    def _fresh(task_batch, dtype):
        """Flat starting parameters, zero carries and moments for a task batch."""
        flat = jax.vmap(lambda p: ravel_pytree(p)[0])(task_batch["params"])
        b, d = flat.shape
        carry = jnp.zeros((b, d, config.num_carry, config.hidden_size), dtype)
        return flat, carry, jnp.zeros((b, d), flat.dtype)

    def init(net_params, task_batch=None):
        if isinstance(net_params, L2OState):
            return net_params
        _check_net(net_params)
        if task_batch is None:
            raise ValueError(
                "task_batch: l2o's init needs a first task batch (its shapes fix the carried "
                "optimizee state): learner.init(net_params, task_sampler(key))"
            )
        _check_batch(task_batch)
        net = _strong(net_params)
        dtype = jax.tree.leaves(net)[0].dtype
        flat, carry, moment = _fresh(task_batch, dtype)
        return L2OState(
            net,
            optimizer.init(net),
            jnp.zeros((), jnp.int32),
            flat,
            carry,
            moment,
            _strong(task_batch["task"]),
            jnp.zeros((), jnp.int32),
        )

    def _unravel_of(task_batch):
        one = jax.tree.map(lambda x: x[0], task_batch["params"])
        return ravel_pytree(one)[1]

    def step(state: L2OState, task_batch: Mapping, key: jax.Array | None = None):
        if not isinstance(state, L2OState):
            raise ValueError(
                f"state: expected an L2OState (learner.init(net, task_batch)), got "
                f"{type(state).__name__}"
            )
        size = _check_batch(task_batch)
        if size != state.inner.shape[0]:
            raise ValueError(
                f"task_batch: meta-batch of {size} tasks, the state carries {state.inner.shape[0]}"
            )
        key = _check_key(key, stochastic)
        unravel = _unravel_of(task_batch)
        task_loss = build_l2o_loss(
            loss_fn,
            config,
            num_unroll_steps=num_unroll_steps,
            unravel=unravel,
            objective=objective,
            stochastic=stochastic,
            first_order=first_order,
        )
        # a reset takes the new batch's tasks and starting points; otherwise continue
        reset = state.unroll == 0
        flat, carry, moment = _fresh(task_batch, state.carry.dtype)
        if flat.shape != state.inner.shape:
            raise ValueError(
                f"task_batch['params']: {flat.shape[1]} parameters per task, the state "
                f"carries {state.inner.shape[1]}"
            )
        pick = lambda new, old: jnp.where(reset, new, old).astype(old.dtype)  # noqa: E731
        theta0 = pick(flat, state.inner)
        carry0 = pick(carry, state.carry)
        moment0 = pick(moment, state.moment)
        tasks = jax.tree.map(pick, task_batch["task"], state.tasks)
        # the truncation starts from the carried state as a constant
        theta0, carry0, moment0 = lax.stop_gradient((theta0, carry0, moment0))
        keys = jax.random.split(key, size)

        def meta_loss(net):
            js, aux = jax.vmap(task_loss, in_axes=(None, 0, 0, 0, 0, 0))(
                net, theta0, carry0, moment0, tasks, keys
            )
            return jnp.mean(js), (js, aux)

        (loss, (js, (final, before, last))), grads = jax.value_and_grad(meta_loss, has_aux=True)(
            state.params
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        net = optax.apply_updates(state.params, updates)
        net = jax.tree.map(lambda new, old: new.astype(old.dtype), net, state.params)
        theta, carry, moment = final
        new_state = L2OState(
            net,
            opt_state,
            state.count + 1,
            theta.astype(state.inner.dtype),
            carry.astype(state.carry.dtype),
            moment.astype(state.moment.dtype),
            tasks,
            (state.unroll + 1) % num_truncations,
        )
        info = L2OInfo(
            loss,
            jnp.mean(before),
            jnp.mean(last),
            js,
            jnp.sqrt(_tree_sqnorm(grads)),
            reset.astype(loss.dtype),
        )
        return new_state, info

    def _build_optimize(loss_ref, eval_ref, num_steps):
        @jax.jit
        def run(net, params, task, key):
            flat, unravel = ravel_pytree(params)
            d = flat.shape[0]
            carry = jnp.zeros(
                (d, config.num_carry, config.hidden_size), jax.tree.leaves(net)[0].dtype
            )
            keys = jax.random.split(key, num_steps)
            if eval_ref() is None:
                (theta, _, _), values, last = _run(
                    config,
                    loss_ref(),
                    stochastic,
                    False,
                    unravel,
                    net,
                    flat,
                    carry,
                    jnp.zeros_like(flat),
                    task,
                    keys,
                )
                return unravel(theta), jnp.concatenate([values, last[None]])

            # the clean losses along the same trajectory: replay it, evaluating each iterate
            vg = _value_and_grad(loss_ref(), stochastic, unravel)

            def body(state, k):
                new, _ = _learned_step(config, vg, False, net, state, task, k)
                return new, eval_ref()(unravel(state[0]), task)

            (th, _, _), evals = lax.scan(body, (flat, carry, jnp.zeros_like(flat)), keys)
            return unravel(th), jnp.concatenate([evals, eval_ref()(unravel(th), task)[None]])

        return run

    def optimize(net_or_state, params, task, num_steps, *, key=None, loss_fn=loss_fn, eval_fn=None):
        net = net_or_state.params if isinstance(net_or_state, L2OState) else net_or_state
        _check_net(net)
        _check_int("num_steps", num_steps, 1)
        _check_loss_fn(loss_fn)
        if eval_fn is not None and not callable(eval_fn):
            raise ValueError("eval_fn: expected None or a callable eval_fn(params, task)")
        for leaf in jax.tree.leaves(params):
            if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
                raise ValueError(
                    f"params: the optimizee's parameters must be floating point, got "
                    f"{jnp.result_type(leaf)}"
                )
        key = _check_key(key, stochastic)
        run = compiled(
            (loss_fn, eval_fn),
            (config, stochastic, num_steps),
            lambda loss_ref, eval_ref: _build_optimize(loss_ref, eval_ref, num_steps),
        )
        theta, losses = run(net, params, task, key)
        bad = np.flatnonzero(~np.isfinite(np.asarray(losses)))
        if bad.size:
            warnings.warn(
                f"l2o optimize: the loss is not finite from step {int(bad[0])} on (the learned "
                "optimizer diverged on this task)",
                RuntimeWarning,
                stacklevel=2,
            )
        return theta, losses

    return L2O(init_params, init, step, optimize, config)
