"""Per-task random streams keyed by the task's label.

A task's draws come from its own stream, ``fold_in(fold_in(key, h0), h1)`` where
``(h0, h1)`` are the two 32-bit halves of a stable 64-bit hash of the label (:func:`label_hashes`;
never Python's salted ``hash``). So the draws of a task depend on the seed and
its label only, not on its position: reordering tasks reorders their draws, and a task keeps
its draws when other tasks are added or removed (given the same hyperparameter draws).
Two labels share a stream only if their 64-bit hashes collide (probability about
``T**2 / 2**65``, 3e-8 for a million tasks).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["label_hashes", "seed_key", "task_keys", "task_normals", "task_normals_f64"]


def label_hashes(labels: Sequence[str]) -> np.ndarray:
    """``(T, 2)`` uint32: a stable 64-bit hash of each label, in two halves.

    FNV-1a over the label's code points, then its length and the splitmix64 finaliser,
    vectorised over labels (one numpy pass per character position): the same in every
    process and version, unlike Python's salted ``hash``.

    >>> label_hashes(["a", "b"]).shape
    (2, 2)
    """
    strings = [str(label) for label in labels]
    out = np.empty((len(strings), 2), dtype=np.uint32)
    for start in range(0, len(strings), 65536):  # bounded memory for long labels
        part = strings[start : start + 65536]
        out[start : start + len(part)] = _hash_chunk(part)
    return out


def _hash_chunk(strings: list[str]) -> np.ndarray:
    text = np.asarray(strings, dtype=str)
    num, width = text.size, text.dtype.itemsize // 4
    # lengths from Python, so that trailing NULs (which numpy strips) still count
    h = np.full(num, 0xCBF29CE484222325, dtype=np.uint64)
    if width:
        codes = text.view(np.uint32).reshape(num, width)
        prime = np.uint64(0x100000001B3)
        for i in range(width):
            h = (h ^ codes[:, i].astype(np.uint64)) * prime
    h ^= np.fromiter(map(len, strings), dtype=np.uint64, count=num)
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        h = (h ^ (h >> np.uint64(shift))) * np.uint64(mult)
    h ^= h >> np.uint64(31)
    return np.stack([h & np.uint64(0xFFFFFFFF), h >> np.uint64(32)], axis=1).astype(np.uint32)


def task_keys(key: jax.Array, hashes: jax.Array) -> jax.Array:
    """One PRNG key per task: ``key`` folded with both halves of each label hash (JAX,
    traceable); ``hashes`` ``(T, 2)`` uint32 from :func:`label_hashes`."""
    return jax.vmap(lambda h: jax.random.fold_in(jax.random.fold_in(key, h[0]), h[1]))(hashes)


def task_normals(
    key: jax.Array, hashes: jax.Array, shape: tuple, dtype, task_major: bool = False
) -> jax.Array:
    """Standard normals ``(*shape[:1], T, *shape[1:])`` with task ``t``'s values drawn from
    its own stream (JAX, traceable): ``shape`` is the per-task shape, leading draw axis
    first. ``task_major``: ``(T, *shape)`` instead, the streams' own order (moving the
    task axis costs XLA on the CPU about as much as drawing the normals)."""
    keys = task_keys(key, hashes)
    z = jax.vmap(lambda k: jax.random.normal(k, shape, dtype))(keys)  # (T, *shape)
    return z if task_major else jnp.moveaxis(z, 0, 1)


@partial(jax.jit, static_argnames=("num",))
def _bits(key, hashes, num):
    keys = task_keys(key, hashes)
    return jax.vmap(lambda k: jax.random.bits(k, (4, num), jnp.uint32))(keys)  # (T, 4, num)


def task_normals_f64(seed_key: jax.Array, hashes: np.ndarray, num: int) -> np.ndarray:
    """``(num, T)`` float64 standard normals, task ``t`` from its own stream, whatever
    JAX's x64 setting: 53-bit uniforms from the stream's 32-bit words, then Box-Muller
    (numpy float64). Deterministic in ``seed_key`` and the labels."""
    num_tasks = len(hashes)
    # pad to a power of two so that few shapes are ever compiled (each stream is its own)
    padded = np.zeros((max(8, 1 << max(0, num_tasks - 1).bit_length()), 2), dtype=np.uint32)
    padded[:num_tasks] = hashes
    bits = np.asarray(_bits(seed_key, jnp.asarray(padded), int(num)))[:num_tasks]
    bits = bits.astype(np.uint64)
    scale = 1.0 / 9007199254740992.0  # 2**-53
    # numpy's recipe: 27 + 26 high bits of two words; u1 in (0, 1] so log(u1) is finite
    five, six, shift = np.uint64(5), np.uint64(6), np.uint64(26)
    u1 = 1.0 - (((bits[:, 0] >> five) << shift) + (bits[:, 1] >> six)) * scale
    u2 = (((bits[:, 2] >> five) << shift) + (bits[:, 3] >> six)) * scale
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return np.ascontiguousarray(z.T)


def seed_key(rng: np.random.Generator) -> jax.Array:
    """A JAX key from two 32-bit words of a numpy Generator (so any seed the Generator
    took, an int of any size or a JAX key, keys the per-task streams)."""
    words = rng.integers(0, 2**32, size=2, dtype=np.uint64).astype(np.uint32)
    key = jax.random.PRNGKey(0)
    return jax.random.fold_in(jax.random.fold_in(key, int(words[0])), int(words[1]))
