"""Load a gallery model file (``models/NAME.py``): it defines ``model`` and ``tasks()``."""

from __future__ import annotations

import importlib.util
import os

__all__ = ["load_model"]


def load_model(path: str):
    """Execute a model file and return ``(model, tasks)``.

    The file must define ``model`` (a ``bm.Hierarchical`` or a NumPyro model function) and
    ``tasks()`` returning a ``bm.TaskSet``; it may define ``FIT_OPTIONS`` (a dict of default
    ``bm.fit`` options), available as ``load_model.last_options``.

    >>> import os, tempfile, bayesmeta as bm
    >>> path = os.path.join(tempfile.mkdtemp(), "two_schools.py")
    >>> lines = [
    ...     "import bayesmeta as bm",
    ...     "model = bm.Hierarchical(bm.likelihoods.NormalKnownNoise(), bm.populations.Normal())",
    ...     "def tasks():",
    ...     "    return bm.TaskSet.from_estimates(y=[28.0, 8.0], se=[15.0, 10.0])",
    ... ]
    >>> with open(path, "w") as f:
    ...     print(*lines, sep=chr(10), file=f)
    >>> model, tasks = bm.load_model(path)
    >>> type(model).__name__, tasks.num_tasks
    ('Hierarchical', 2)
    """
    if not os.path.isfile(path):
        raise ValueError(f"model file: {path!r} does not exist")
    name = "bayesmeta_gallery_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"model file: {path!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for attr in ("model", "tasks"):
        if not hasattr(module, attr):
            raise ValueError(f"model file: {path!r} defines no {attr!r}")
    if not callable(module.tasks):
        raise ValueError(f"model file: {path!r}: tasks must be a function returning a TaskSet")
    return module.model, module.tasks()


def load_options(path: str) -> dict:
    """The ``FIT_OPTIONS`` dict of a model file (empty when it defines none)."""
    spec = importlib.util.spec_from_file_location("bayesmeta_gallery_opts", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(getattr(module, "FIT_OPTIONS", {}))
