"""Sinusoid regression, the few-shot benchmark of MAML (Finn, Abbeel & Levine, 2017).

A task is ``y = A sin(x - phase)`` with amplitude ``A ~ U[0.1, 5]``, phase ``~ U[0, pi]``
and inputs ``x ~ U[-5, 5]``; a learner sees ``K`` support points and is scored by the mean
squared error on query points. The network is an MLP with two hidden layers of 40 ReLU
units. Everything here is plain JAX: ``sample_tasks`` / ``make_sampler`` give task batches
``{"support": {"x", "y"}, "query": {"x", "y"}}`` for ``bayesmeta.meta`` learners, and
``mse_loss(params, batch)`` is the per-task loss.

For ``bayesmeta fit models/sinusoid.py`` the file also defines the generative model itself
as a NumPyro model (amplitude and phase per task, observation noise ``NOISE_SCALE``), the
Bayes-optimal learner that a meta-learner tries to approximate, and ``tasks()``, a few
``K``-shot tasks as a ``TaskSet``.

>>> import jax
>>> batch = make_sampler(meta_batch_size=25, num_support=5)(jax.random.PRNGKey(0))
>>> batch["support"]["x"].shape, batch["query"]["y"].shape
((25, 5), (25, 5))
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

import bayesmeta as bm

AMPLITUDE_RANGE = (0.1, 5.0)
PHASE_RANGE = (0.0, math.pi)
INPUT_RANGE = (-5.0, 5.0)
HIDDEN = (40, 40)
NOISE_SCALE = 0.05  # noise sd of the NumPyro model below (the benchmark's data are noiseless)


def true_function(amplitude, phase, x):
    """``A sin(x - phase)``, broadcasting ``amplitude``/``phase`` of shape ``(T,)`` against
    ``x`` of shape ``(T, n)``."""
    return amplitude[..., None] * jnp.sin(x - phase[..., None])


def sample_task_params(key, num_tasks: int, dtype=jnp.float32):
    """Amplitudes and phases of ``num_tasks`` tasks, each of shape ``(num_tasks,)``."""
    k1, k2 = jax.random.split(key)
    amplitude = jax.random.uniform(k1, (num_tasks,), dtype, *AMPLITUDE_RANGE)
    phase = jax.random.uniform(k2, (num_tasks,), dtype, *PHASE_RANGE)
    return amplitude, phase


def sample_tasks(key, num_tasks: int, num_support: int, num_query: int, dtype=jnp.float32):
    """A task batch and its true parameters.

    Returns ``(task_batch, (amplitude, phase))`` with ``task_batch["support"]["x"]`` of
    shape ``(num_tasks, num_support)`` and ``task_batch["query"]["x"]`` of shape
    ``(num_tasks, num_query)``; inputs are drawn independently for support and query.
    """
    k_par, k_s, k_q = jax.random.split(key, 3)
    amplitude, phase = sample_task_params(k_par, num_tasks, dtype)
    xs = jax.random.uniform(k_s, (num_tasks, num_support), dtype, *INPUT_RANGE)
    xq = jax.random.uniform(k_q, (num_tasks, num_query), dtype, *INPUT_RANGE)
    batch = {
        "support": {"x": xs, "y": true_function(amplitude, phase, xs)},
        "query": {"x": xq, "y": true_function(amplitude, phase, xq)},
    }
    return batch, (amplitude, phase)


def make_sampler(
    meta_batch_size: int = 25, num_support: int = 5, num_query: int | None = None, dtype=jnp.float32
):
    """``sampler(key) -> task_batch`` for ``bm.meta.train`` (query size defaults to
    ``num_support``, as in the paper's meta-training)."""
    num_query = num_support if num_query is None else num_query

    def sampler(key):
        return sample_tasks(key, meta_batch_size, num_support, num_query, dtype)[0]

    return sampler


def init_mlp(key, hidden=HIDDEN, dtype=jnp.float32):
    """Parameters of a ``1 -> hidden... -> 1`` ReLU MLP: a tuple of ``{"w", "b"}`` layers,
    weights ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, biases zero."""
    sizes = (1, *hidden, 1)
    layers = []
    for fan_in, fan_out, k in zip(
        sizes[:-1], sizes[1:], jax.random.split(key, len(sizes) - 1), strict=True
    ):
        bound = 1.0 / math.sqrt(fan_in)
        layers.append(
            {
                "w": jax.random.uniform(k, (fan_in, fan_out), dtype, -bound, bound),
                "b": jnp.zeros((fan_out,), dtype),
            }
        )
    return tuple(layers)


def mlp(params, x):
    """Network output for inputs ``x`` of shape ``(n,)``; returns ``(n,)``."""
    h = x[:, None]
    for layer in params[:-1]:
        h = jax.nn.relu(h @ layer["w"] + layer["b"])
    return (h @ params[-1]["w"] + params[-1]["b"])[:, 0]


def predict(params, batch):
    """``mlp`` on a batch ``{"x", "y"}`` (the form LLAMA's Gauss-Newton curvature wants)."""
    return mlp(params, batch["x"])


def output_mse(outputs, batch):
    """Mean squared error of outputs against ``batch["y"]``."""
    return jnp.mean(jnp.square(outputs - batch["y"]))


def mse_loss(params, batch):
    """Per-task loss: mean squared error of the MLP on ``batch = {"x": (n,), "y": (n,)}``."""
    return output_mse(predict(params, batch), batch)


# --------------------------------------------------------------------------- gallery


def model(y=None, task_index=None, num_tasks=None, x=None, noise_scale=None):
    """The task family as a NumPyro model: per task amplitude and phase from their uniform
    priors, ``y ~ N(A sin(x - phase), NOISE_SCALE)``."""
    with numpyro.plate("task", num_tasks):
        amplitude = numpyro.sample("amplitude", dist.Uniform(*AMPLITUDE_RANGE))
        phase = numpyro.sample("phase", dist.Uniform(*PHASE_RANGE))
    xv = x[:, 0] if x.ndim == 2 else x
    mean = amplitude[task_index] * jnp.sin(xv - phase[task_index])
    numpyro.sample("y", dist.Normal(mean, NOISE_SCALE), obs=y)


def tasks(seed: int = 0, num_tasks: int = 8, num_support: int = 5):
    """``num_tasks`` ``num_support``-shot sinusoid tasks as a TaskSet (x of shape (N, 1))."""
    batch, _ = sample_tasks(jax.random.PRNGKey(seed), num_tasks, num_support, 1)
    x = np.asarray(batch["support"]["x"], dtype=float).ravel()
    y = np.asarray(batch["support"]["y"], dtype=float).ravel()
    task = np.repeat(np.arange(num_tasks), num_support)
    return bm.TaskSet.from_arrays(
        y=y, x=x[:, None], task=task, labels=[f"sin{i}" for i in range(num_tasks)]
    )


if __name__ == "__main__":
    batch = make_sampler()(jax.random.PRNGKey(0))
    params = init_mlp(jax.random.PRNGKey(1))
    losses = jax.vmap(mse_loss, in_axes=(None, 0))(params, batch["query"])
    print(f"25 tasks, untrained MLP: mean query MSE {float(losses.mean()):.3f}")
