"""Saved posteriors and atomic files: the format of ``Posterior.save`` / ``bm.load_posterior``.

A saved posterior is one NetCDF-4 (HDF5) file that ArviZ reads as it reads any other
(``arviz.from_netcdf``: posterior, sample_stats, log_likelihood, observed_data, ... under
either ArviZ line), plus one group of its own, ``bayesmeta``, which holds what ArviZ's
groups cannot: the model's description (the ``bm.Hierarchical`` object, pickled without its
compiled programs), the TaskSet the draws condition on, the engine's ``info`` record, the
names, shapes and dtypes of every array and a SHA-256 digest of their bytes, and the
format version (:data:`FORMAT_VERSION`). ``load_posterior`` rebuilds the ``Posterior``
from the ArviZ groups and that record, so ``population()``, ``adapt()`` and ``predict()``
work after a restart, and it refuses, with a ValueError saying why, a file that is
truncated, was not written by ``Posterior.save``, was written in another format version,
or whose arrays do not match their digest.

The model is stored with :mod:`pickle`: load files only from sources you trust, as with
any pickle.

Every file is written atomically (:func:`atomic_write`): to a temporary file in the same
folder, flushed and fsynced, then renamed over the final path, so a crash or a kill never
leaves a partial file under the final name. The checkpoints of long fits use the same
function.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "atomic_write",
    "check_writable",
    "digest",
    "write_posterior",
    "read_posterior",
]

#: the version of the saved-posterior format; a file of another version is refused
FORMAT_VERSION = 1
_GROUP = "bayesmeta"
_ENGINE = "h5netcdf"


def check_writable(path: str, field: str = "path") -> str:
    """``path`` as an absolute path, after checking that its folder exists and is writable
    and that it is not a folder itself (so a long run never fails only at its end)."""
    if not isinstance(path, str | os.PathLike) or not str(path):
        raise ValueError(f"{field}: expected a file path, got {path!r}")
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise ValueError(f"{field}: {path} is a folder, not a file")
    if not os.path.isdir(folder):
        raise ValueError(f"{field}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{field}: the folder {folder} is not writable")
    return path


def _fsync_dir(folder: str) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str, write: Callable[[str], None], suffix: str = "") -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, fsync it and rename it to
    ``path``: readers see the old file or the complete new one, never a partial one. The
    temporary file is removed when ``write`` fails."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(folder)


def digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of named arrays: names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _picklable(obj: Any) -> bool:
    try:
        pickle.dumps(obj)
    except Exception:  # noqa: BLE001 (any failure means: not storable)
        return False
    return True


def write_posterior(path: str, data: Any, arrays: Mapping[str, Mapping[str, Any]], state: dict):
    """Write the ArviZ ``data`` (InferenceData or DataTree) and the ``bayesmeta`` group to
    ``path``, atomically.

    ``arrays``: group -> {name: array} for the groups whose arrays the posterior is rebuilt
    from (``posterior``, ``sample_stats``, ``log_likelihood``); their names, shapes, dtypes
    and digest go into the record. ``state``: the rest of the posterior (pickled).
    """
    import xarray as xr

    from bayesmeta._version import __version__

    path = check_writable(path)
    arrays = {g: {k: np.asarray(v) for k, v in a.items()} for g, a in arrays.items()}
    layout = {
        g: {k: (tuple(v.shape), v.dtype.str) for k, v in a.items()} for g, a in arrays.items()
    }
    flat = {f"{g}/{k}": v for g, a in arrays.items() for k, v in a.items()}
    record = dict(state, layout=layout, digest=digest(flat))
    blob = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
    meta = xr.Dataset(
        {"record": ("byte", np.frombuffer(blob, dtype=np.uint8))},
        attrs={
            "written_by": "bayesmeta",
            "format_version": FORMAT_VERSION,
            "bayesmeta_version": __version__,
        },
    )

    def write(tmp: str) -> None:
        data.to_netcdf(tmp, engine=_ENGINE)
        meta.to_netcdf(tmp, mode="a", group=_GROUP, engine=_ENGINE)

    atomic_write(path, write, suffix=".nc")


def read_posterior(path: str) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """``(record, arrays by group)`` of a file written by :func:`write_posterior`; a
    ValueError naming the file and the reason for anything else."""
    import xarray as xr

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"path: no such file {path}")
    try:
        with xr.open_dataset(path, group=_GROUP, engine=_ENGINE) as meta:
            attrs = dict(meta.attrs)
            blob = np.asarray(meta["record"].values, dtype=np.uint8).tobytes()
    except OSError as err:
        if "group" in str(err).lower() and _GROUP in str(err):
            raise ValueError(
                f"path: {path} was not written by Posterior.save (it has no '{_GROUP}' "
                "group); arviz.from_netcdf reads it as plain ArviZ data"
            ) from None
        raise ValueError(
            f"path: {path} is not a readable NetCDF-4 file ({err}); it may be truncated or "
            "of another format"
        ) from None
    except (KeyError, ValueError) as err:
        raise ValueError(f"path: {path} has no readable bayesmeta record ({err})") from None
    if attrs.get("written_by") != "bayesmeta" or "format_version" not in attrs:
        raise ValueError(f"path: {path} was not written by Posterior.save")
    version = int(attrs["format_version"])
    if version != FORMAT_VERSION:
        raise ValueError(
            f"path: {path} is in saved-posterior format {version} (written by bayesmeta "
            f"{attrs.get('bayesmeta_version', '?')}); this bayesmeta reads format "
            f"{FORMAT_VERSION}; load it with the version that wrote it, or read its draws "
            "with arviz.from_netcdf"
        )
    try:
        record = pickle.loads(blob)
    except Exception as err:  # noqa: BLE001 (a damaged record, whatever the error)
        raise ValueError(f"path: {path} has a damaged bayesmeta record ({err})") from None
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for group, names in record["layout"].items():
        try:
            with xr.open_dataset(path, group=group, engine=_ENGINE) as ds:
                arrays[group] = {k: np.asarray(ds[k].values) for k in names}
        except (OSError, KeyError, ValueError) as err:
            raise ValueError(f"path: {path} group {group!r} could not be read ({err})") from None
        for name, (shape, dtype) in names.items():
            a = arrays[group][name]
            if a.shape != tuple(shape) or a.dtype.str != dtype:
                raise ValueError(
                    f"path: {path} {group}/{name} has shape {a.shape} {a.dtype.str}, the "
                    f"record says {tuple(shape)} {dtype}"
                )
    flat = {f"{g}/{k}": v for g, a in arrays.items() for k, v in a.items()}
    if digest(flat) != record["digest"]:
        raise ValueError(f"path: {path}: the draws do not match their digest (a damaged file)")
    return record, arrays
