"""How far adaptation moves a network: representation similarity and weight change.

Two measures of "rapid learning or feature reuse" (Raghu, Raghu, Bengio & Vinyals, 2020):

* :func:`linear_cka`: linear centred kernel alignment (Kornblith et al., 2019) between two
  representations of the same ``n`` inputs, ``X (n, p)`` and ``Y (n, q)``, each centred
  over the inputs::

      CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

  1 when ``Y`` is ``X`` up to an orthogonal map and an isotropic scaling (the features did
  not move), towards 0 as they become unrelated.
* :func:`relative_change`: ``||after - before|| / ||before||`` per layer of a parameter
  pytree (the Euclidean norm over all of a layer's leaves).

>>> import numpy as np, bayesmeta as bm
>>> x = np.random.default_rng(0).normal(size=(50, 4))
>>> round(bm.meta.linear_cka(x, 3.0 * x), 6)  # a rescaled copy: the same features
1.0
>>> bm.meta.relative_change({"w": np.ones(4)}, {"w": np.array([1.0, 1.0, 1.0, 3.0])})
{'w': 1.0}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

__all__ = ["linear_cka", "relative_change"]


def _representation(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected an array (n, features), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: representations must be finite")
    return arr


def linear_cka(x: Any, y: Any) -> float:
    """Linear CKA between two representations of the same inputs (module docstring).

    Args:
      x: ``(n, p)`` features of ``n`` inputs (a 1-d array is one feature).
      y: ``(n, q)`` features of the same ``n`` inputs, in the same order.

    Returns:
      a float in [0, 1]; ``nan`` when either representation is constant over the inputs
      (no variance to align).

    >>> import numpy as np, bayesmeta as bm
    >>> rng = np.random.default_rng(1)
    >>> x = rng.normal(size=(200, 3))
    >>> q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    >>> round(bm.meta.linear_cka(x, x @ q), 6)  # rotated features: CKA is 1
    1.0
    >>> bm.meta.linear_cka(x, rng.normal(size=(200, 3))) < 0.1  # unrelated features
    True
    """
    x, y = _representation("x", x), _representation("y", y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"y: expected the same number of inputs (rows) as x, got {y.shape[0]} and {x.shape[0]}"
        )
    if x.shape[0] < 2:
        raise ValueError(f"x: need at least 2 inputs (rows), got {x.shape[0]}")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.sum((y.T @ x) ** 2)
    norm = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    if norm == 0.0:
        return float("nan")
    return float(cross / norm)


def _sqnorm(tree: Any) -> float:
    return float(sum(np.sum(np.asarray(leaf, dtype=float) ** 2) for leaf in jax.tree.leaves(tree)))


def relative_change(before: Any, after: Any) -> dict[str, float]:
    """Relative change ``||after - before|| / ||before||`` of each layer of a network.

    Args:
      before: parameters before adaptation; a mapping ``layer name -> pytree`` gives one
        entry per layer, any other pytree one entry ``"all"``.
      after: the adapted parameters, the same structure and shapes.

    Returns:
      ``{layer: relative change}`` (``inf`` for a layer whose ``before`` is all zero and
      that moved, 0 when it did not move).

    >>> import numpy as np, bayesmeta as bm
    >>> before = {"body": {"w": np.ones((2, 2))}, "head": np.array([3.0, 4.0])}
    >>> after = {"body": {"w": np.ones((2, 2))}, "head": np.array([3.0, 4.5])}
    >>> bm.meta.relative_change(before, after)  # 0.5 / 5
    {'body': 0.0, 'head': 0.1}
    """
    if jax.tree.structure(before) != jax.tree.structure(after):
        raise ValueError(
            f"after: expected the structure of before ({jax.tree.structure(before)}), got "
            f"{jax.tree.structure(after)}"
        )
    for b, a in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        if np.shape(b) != np.shape(a):
            raise ValueError(f"after: a leaf of shape {np.shape(a)} for {np.shape(b)} in before")
    layers = dict(before) if isinstance(before, Mapping) else {"all": before}
    moved = dict(after) if isinstance(after, Mapping) else {"all": after}
    out = {}
    for name, b in layers.items():
        diff = _sqnorm(jax.tree.map(lambda p, q: np.asarray(q) - np.asarray(p), b, moved[name]))
        base = _sqnorm(b)
        if base == 0.0:
            out[name] = 0.0 if diff == 0.0 else float("inf")
        else:
            out[name] = float(np.sqrt(diff / base))
    return out
