"""Checkpoints of long fits: ``bm.fit(..., checkpoint=path)``.

A checkpoint is one ``.npz`` file holding the sampler's state (every chain's NUTS state,
warmup adaptation included), the draws kept so far, how many iterations are done, and a
fingerprint of the fit (seed, options, model structure, data): rerunning the same fit with
the same path continues from the last checkpoint instead of starting again, and a
checkpoint of another fit is refused with a ValueError that says what differs. Files are
written atomically (:func:`bayesmeta.saving.atomic_write`: temporary file, fsync, rename),
so a crash or a SIGKILL leaves the previous complete checkpoint, never a partial one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from bayesmeta.saving import atomic_write, check_writable, digest

__all__ = ["fingerprint", "load", "peek", "save", "CHECKPOINT_VERSION"]

CHECKPOINT_VERSION = 1


def _hash_arrays(tree: Any) -> str:
    leaves, treedef = jax.tree.flatten(tree)
    arrays = {f"{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    return hashlib.sha256((str(treedef) + digest(arrays)).encode()).hexdigest()


def fingerprint(**parts: Any) -> dict[str, str]:
    """One short hash per named part of a fit (arrays hashed by value, anything else by
    its ``repr``), so a mismatch can name what differs."""
    out = {}
    for name, value in parts.items():
        if name == "data":
            out[name] = _hash_arrays(value)
        else:
            out[name] = hashlib.sha256(repr(value).encode()).hexdigest()
    return out


def save(path: str, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """Write the checkpoint atomically: ``meta`` (JSON-able) and named arrays."""
    payload = {f"a:{k}": np.asarray(v) for k, v in arrays.items()}
    payload["meta"] = np.frombuffer(
        json.dumps(dict(meta, version=CHECKPOINT_VERSION)).encode(), dtype=np.uint8
    )

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **payload)

    atomic_write(path, write, suffix=".npz")


def load(path: str, expected: Mapping[str, str]) -> tuple[dict, dict[str, np.ndarray]] | None:
    """``(meta, arrays)`` of the checkpoint at ``path``, or None when there is none yet.

    Raises:
      ValueError: the file is not a checkpoint, is damaged, or belongs to another fit
        (its fingerprint differs from ``expected``; the message names the parts).
    """
    if not os.path.exists(path):
        return None
    meta, arrays = _read(path)
    have = meta.get("fingerprint", {})
    differ = sorted(k for k in set(have) | set(expected) if have.get(k) != expected.get(k))
    if differ:
        raise ValueError(
            f"checkpoint: {path} belongs to another fit (it differs in: {', '.join(differ)}); "
            "rerun the fit that wrote it, delete it, or choose another path"
        )
    return meta, arrays


def peek(path: str) -> dict | None:
    """The metadata of the checkpoint at ``path`` (``done``, ``total``, ``target``, ...)
    without checking whose it is; None when there is none."""
    if not os.path.exists(path):
        return None
    return _read(path)[0]


def _read(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(f["meta"].tobytes().decode())
            arrays = {k[2:]: f[k] for k in f.files if k.startswith("a:")}
    except Exception as err:  # noqa: BLE001 (whatever np.load says, the file is unusable)
        raise ValueError(
            f"checkpoint: {path} is not a readable bayesmeta checkpoint ({err}); delete it or "
            "choose another path"
        ) from None
    if meta.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"checkpoint: {path} is checkpoint format {meta.get('version')!r}, this bayesmeta "
            f"writes {CHECKPOINT_VERSION}; delete it or choose another path"
        )
    return meta, arrays


def check_path(path: Any) -> str:
    """The checkpoint path, absolute, after checking that it can be written."""
    return check_writable(path, "checkpoint")
