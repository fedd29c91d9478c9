"""Task collections: ragged per-task data sets in one flat layout.

A :class:`TaskSet` holds ``num_obs`` rows, each belonging to one of ``num_tasks`` tasks.
Rows are stored *sorted by task* in flat arrays (the canonical layout): per-task sums are
segment sums over ``task_index``, and task ``t`` owns rows ``offsets[t]:offsets[t+1]``.
:meth:`TaskSet.padded` gives an equal-shape view with a mask for code that must ``vmap``
over tasks; padded rows carry a mask of ``False`` and never enter a log-density.

Meta-analysis data (one estimate and one standard error per task) is the special case of
one row per task with a known noise scale: :meth:`TaskSet.from_estimates`.

>>> import numpy as np, bayesmeta as bm
>>> tasks = bm.TaskSet.from_arrays(y=np.array([1.0, 2.0, 3.0]), task=np.array(["a", "b", "a"]))
>>> tasks.num_tasks, tasks.counts.tolist(), tasks.labels
(2, [2, 1], ('a', 'b'))
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from bayesmeta._checks import as_real_array

__all__ = ["TaskSet", "PaddedTasks"]


class PaddedTasks(NamedTuple):
    """Equal-shape view of a TaskSet: every task padded to ``max_count`` rows.

    Fields (``T = num_tasks``, ``M = max(counts)``):
      y            # shape=(T, M), padded with 0
      x            # shape=(T, M, *feature_shape) or None, padded with 0
      noise_scale  # shape=(T, M) or None, padded with 1
      mask         # shape=(T, M), bool, True on real rows

    >>> import bayesmeta as bm
    >>> padded = bm.TaskSet.from_arrays(y=[1.0, 2.0, 4.0], task=[0, 0, 1]).padded()
    >>> padded.y.tolist(), padded.mask.tolist()
    ([[1.0, 2.0], [4.0, 0.0]], [[True, True], [True, False]])
    """

    y: np.ndarray
    x: np.ndarray | None
    noise_scale: np.ndarray | None
    mask: np.ndarray


def _as_float_array(name: str, value: Any) -> np.ndarray:
    # complex input is refused (numpy would drop the imaginary part with a warning)
    return as_real_array(name, value)


def _label_strings(labels: Any) -> list[str]:
    """Task labels as strings; a missing label (None, NaN) is an error, not the task
    ``"None"``."""
    if isinstance(labels, str | bytes):
        raise ValueError(f"labels: expected a sequence of task labels, got the string {labels!r}")
    try:
        labels = list(labels)
    except TypeError:
        raise ValueError(
            f"labels: expected a sequence of task labels, got {type(labels).__name__}"
        ) from None
    for t, label in enumerate(labels):
        if label is None or (isinstance(label, float) and not np.isfinite(label)):
            raise ValueError(f"labels: missing label ({label}) for task {t}")
    return [str(label) for label in labels]


def _check_csv_header(path: str, header: Sequence[str]) -> None:
    """A CSV header whose names are all distinct (``csv.DictReader`` would silently keep
    the last of two equal names), or a ValueError naming them."""
    dup = sorted({c for c in header if list(header).count(c) > 1})
    if dup:
        raise ValueError(
            f"{path}: column(s) {dup} appear more than once in the header; rename them so "
            "that each column has one name"
        )


def _check_csv_row(path: str, header: Sequence[str], row: dict, line: int) -> None:
    """A ``csv.DictReader`` row with as many fields as the header (it would silently drop
    extra fields and fill missing ones with None), or a ValueError naming the line."""
    if None in row or None in row.values():
        extra = len(row.get(None) or [])
        missing = sum(v is None for k, v in row.items() if k is not None)
        width = len(header) + extra - missing
        raise ValueError(f"{path}: line {line} has {width} fields, the header has {len(header)}")


def _first_bad_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


class TaskSet:
    """A collection of ragged tasks in a flat, task-sorted layout.

    Attributes:
      y            # shape=(N,), float: the responses (or per-task estimates)
      x            # shape=(N, *feature_shape) or None: inputs
      task_index   # shape=(N,), int32: task of each row, non-decreasing
      noise_scale  # shape=(N,) or None: known observation noise sd per row
      labels       # tuple of str: one per task
      is_estimates # bool: True when built by from_estimates (one estimate + se per task)
      task_x       # shape=(T, q) or None: task-level covariates (one row per task)
      task_x_names # tuple of q str, or None: their names (``z0``.. when not given)
      feature_names # tuple of str or None: names of the columns of x (``x0``.. when None)
      row_ids      # shape=(N,): the caller's label of each row (a position, or a DataFrame's
                   # index label), for messages and the ArviZ ``row`` coordinate
      row_order    # shape=(N,), int: position of each stored row in the caller's input;
                   # ``np.argsort(row_order)`` (:attr:`input_order`) gives the caller's order

    Use the constructors (``from_arrays``, ``from_tasks``, ``from_estimates``,
    ``from_csv``, ``from_dataframe``) rather than ``__init__``; they validate their input
    and name the field, task and row of the first problem.

    >>> import bayesmeta as bm
    >>> tasks = bm.TaskSet.from_arrays(y=[1.0, 2.0, 4.0], task=["b", "a", "b"])
    >>> tasks.num_tasks, tasks.labels, tasks.counts.tolist()  # tasks in order of appearance
    (2, ('b', 'a'), [2, 1])
    >>> bm.TaskSet.from_estimates(y=[28.0, 8.0], se=[15.0, 10.0], labels=["A", "B"]).is_estimates
    True
    """

    def __init__(
        self,
        y: np.ndarray,
        task_index: np.ndarray,
        labels: Sequence[str],
        x: np.ndarray | None = None,
        noise_scale: np.ndarray | None = None,
        is_estimates: bool = False,
        row_ids: np.ndarray | None = None,
        task_x: np.ndarray | None = None,
        task_x_names: Sequence[str] | None = None,
        feature_names: Sequence[str] | None = None,
        row_order: np.ndarray | None = None,
    ):
        self.y = np.asarray(y, dtype=float)
        self.task_index = np.asarray(task_index, dtype=np.int32)
        self.labels = tuple(str(label) for label in labels)
        self.x = None if x is None else np.asarray(x, dtype=float)
        self.noise_scale = None if noise_scale is None else np.asarray(noise_scale, dtype=float)
        self.is_estimates = bool(is_estimates)
        # the caller's row number of each stored row, for error messages
        self.row_ids = np.arange(self.y.shape[0]) if row_ids is None else np.asarray(row_ids)
        # where each stored row sat in the caller's input (the stored rows are task-sorted)
        n = self.y.shape[0]
        self.row_order = np.arange(n) if row_order is None else np.asarray(row_order, dtype=int)
        if self.row_order.shape != self.y.shape[:1]:
            raise ValueError(f"row_order: expected {n} positions, got shape {self.row_order.shape}")
        self.task_x = None if task_x is None else np.asarray(task_x, dtype=float)
        self.task_x_names = None
        if self.task_x is not None:
            if self.task_x.ndim == 1:
                self.task_x = self.task_x[:, None]
            names = task_x_names or [f"z{i}" for i in range(self.task_x.shape[-1])]
            self.task_x_names = tuple(str(n) for n in names)
        elif task_x_names is not None:
            raise ValueError("task_x_names: given without task_x")
        self.feature_names = None if feature_names is None else tuple(map(str, feature_names))
        self._validate()

    # ------------------------------------------------------------------ validation
    def _where(self, row: int) -> str:
        label = self.row_ids[row]
        shown = int(label) if isinstance(label, int | np.integer) else repr(label)
        return f"task {self.labels[self.task_index[row]]!r}, row {shown}"

    def _validate(self) -> None:
        n = self.y.shape[0]
        if self.y.ndim != 1:
            raise ValueError(f"y: expected a 1-d array of responses, got shape {self.y.shape}")
        if n == 0:
            raise ValueError("y: the task set has no observations")
        if self.task_index.shape != (n,):
            raise ValueError(
                f"task: length {self.task_index.shape[0]} does not match y's length {n}"
            )
        if len(self.labels) == 0:
            raise ValueError("task: no tasks given")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels: task labels must be unique")
        if np.any(np.diff(self.task_index) < 0):
            raise ValueError("task_index: rows must be sorted by task (use a constructor)")
        if self.task_index.min() < 0 or self.task_index.max() >= len(self.labels):
            raise ValueError("task_index: out of range of the labels")
        counts = np.bincount(self.task_index, minlength=len(self.labels))
        if np.any(counts == 0):
            empty = self.labels[int(np.flatnonzero(counts == 0)[0])]
            raise ValueError(f"task {empty!r}: the task is empty (no rows)")
        bad = ~np.isfinite(self.y)
        if bad.any():
            row = _first_bad_row(bad)
            raise ValueError(f"y: non-finite value {self.y[row]} at {self._where(row)}")
        if self.x is not None:
            if self.x.shape[0] != n:
                raise ValueError(f"x: length {self.x.shape[0]} does not match y's length {n}")
            bad = ~np.isfinite(self.x.reshape(n, -1)).all(axis=1)
            if bad.any():
                row = _first_bad_row(bad)
                raise ValueError(f"x: non-finite value at {self._where(row)}")
        if self.noise_scale is not None:
            if self.noise_scale.shape != (n,):
                raise ValueError(
                    f"noise_scale: expected shape ({n},) (one per row), "
                    f"got {self.noise_scale.shape}"
                )
            field = "se" if self.is_estimates else "noise_scale"
            bad = ~np.isfinite(self.noise_scale)
            if bad.any():
                row = _first_bad_row(bad)
                raise ValueError(
                    f"{field}: non-finite value {self.noise_scale[row]} at {self._where(row)}"
                )
            bad = self.noise_scale <= 0
            if bad.any():
                row = _first_bad_row(bad)
                raise ValueError(
                    f"{field}: must be positive, got {self.noise_scale[row]} at {self._where(row)}"
                )

        if self.task_x is not None:
            t, q = self.task_x.shape if self.task_x.ndim == 2 else (None, None)
            if t != self.num_tasks:
                raise ValueError(
                    f"task_x: expected shape ({self.num_tasks}, q) (one row per task), "
                    f"got {self.task_x.shape}"
                )
            if len(self.task_x_names) != q:
                raise ValueError(f"task_x_names: {len(self.task_x_names)} names for {q} columns")
            if len(set(self.task_x_names)) != q:
                raise ValueError(f"task_x_names: names must be unique, got {self.task_x_names}")
            bad = ~np.isfinite(self.task_x)
            if bad.any():
                t, j = (int(i[0]) for i in np.nonzero(bad))
                raise ValueError(
                    f"task_x: column {self.task_x_names[j]!r} has non-finite value "
                    f"{self.task_x[t, j]} at task {self.labels[t]!r}"
                )
        if self.feature_names is not None:
            k = int(np.prod(self.feature_shape)) if self.x is not None else 0
            if len(self.feature_names) != k:
                raise ValueError(f"x_names: {len(self.feature_names)} names for {k} columns of x")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_arrays(
        cls,
        y: Any,
        task: Any,
        x: Any = None,
        noise_scale: Any = None,
        labels: Sequence[str] | None = None,
        task_x: Any = None,
        task_x_names: Sequence[str] | None = None,
        x_names: Sequence[str] | None = None,
    ) -> TaskSet:
        """Build from flat rows with a task id per row.

        Args:
          y: responses, shape ``(N,)``.
          task: task id of each row, shape ``(N,)`` (any hashable values; labels are
            ``str(id)`` in order of first appearance unless ``labels`` is given).
          x: optional inputs, shape ``(N,)`` or ``(N, *feature_shape)``; a 1-d ``x`` becomes
            one feature column.
          noise_scale: optional known noise sd, a scalar, shape ``(N,)`` (per row).
          labels: optional explicit task labels; then ``task`` must hold integer indices
            into ``labels``.
          task_x: optional task-level covariates given per row, shape ``(N,)`` or
            ``(N, q)``, or a dict ``name -> (N,)``; each must be constant within every task
            (a ValueError names the column, the task and the two rows that differ).
          task_x_names: names of the ``task_x`` columns (default ``z0``.., or the dict keys).
          x_names: names of the ``x`` columns (the coefficient coordinates of the
            regressions; default ``x0``..).
        """
        y_arr = _as_float_array("y", y)
        if y_arr.ndim != 1:
            raise ValueError(f"y: expected a 1-d array, got shape {y_arr.shape}")
        n = y_arr.shape[0]
        task_arr = np.asarray(task)
        if task_arr.ndim != 1 or task_arr.shape[0] != n:
            raise ValueError(
                f"task: expected {n} task ids (one per row of y), got shape {task_arr.shape}"
            )
        if labels is not None:
            labels = _label_strings(labels)
            try:
                index = task_arr.astype(np.int64)
            except (TypeError, ValueError):
                raise ValueError(
                    "task: with labels given, task must hold integer indices"
                ) from None
            if (
                np.any(index != task_arr)
                or index.min(initial=0) < 0
                or index.max(initial=0) >= len(labels)
            ):
                row = int(
                    np.flatnonzero((index < 0) | (index >= len(labels)) | (index != task_arr))[0]
                )
                raise ValueError(
                    f"task: row {row} has index {task_arr[row]!r}, not in 0..{len(labels) - 1}"
                )
        else:
            keys: dict[Any, int] = {}
            index = np.empty(n, dtype=np.int64)
            for row, value in enumerate(task_arr.tolist()):
                if value is None or (isinstance(value, float) and not np.isfinite(value)):
                    raise ValueError(f"task: missing task id ({value}) at row {row}")
                index[row] = keys.setdefault(value, len(keys))
            labels = [str(k) for k in keys]
            if len(set(labels)) != len(labels):
                raise ValueError("task: two task ids print the same label")
        x_arr = None
        if x is not None:
            x_arr = _as_float_array("x", x)
            if x_arr.ndim == 0 or x_arr.shape[0] != n:
                raise ValueError(
                    f"x: expected {n} rows (one per row of y), got shape {x_arr.shape}"
                )
            if x_arr.ndim == 1:
                x_arr = x_arr[:, None]
        ns_arr = None
        if noise_scale is not None:
            ns_arr = _as_float_array("noise_scale", noise_scale)
            if ns_arr.ndim == 0:
                ns_arr = np.full(n, float(ns_arr))
            if ns_arr.shape != (n,):
                raise ValueError(
                    f"noise_scale: expected a scalar or {n} values (one per row), "
                    f"got shape {ns_arr.shape}"
                )
        order = np.argsort(index, kind="stable")
        tx, tx_names = None, task_x_names
        if task_x is not None:
            tx, tx_names = _task_x_from_rows(task_x, task_x_names, index, n, labels)
        return cls(
            y=y_arr[order],
            task_index=index[order],
            labels=labels,
            x=None if x_arr is None else x_arr[order],
            noise_scale=None if ns_arr is None else ns_arr[order],
            row_ids=order,
            row_order=order,
            task_x=tx,
            task_x_names=tx_names,
            feature_names=x_names,
        )

    @classmethod
    def from_tasks(
        cls,
        tasks: Sequence[Any],
        labels: Sequence[str] | None = None,
        noise_scale: Any = None,
        task_x: Any = None,
        task_x_names: Sequence[str] | None = None,
    ) -> TaskSet:
        """Build from a list of per-task data: each item a tuple ``(x, y)``, or ``y`` alone
        (a list or array; only a *tuple* of two is read as ``(x, y)``).

        ``noise_scale`` may be a scalar, one value per task, or a list of per-row arrays.
        ``task_x`` gives task-level covariates, one row per task (``(T,)``, ``(T, q)`` or a
        dict ``name -> (T,)``).
        """
        if len(tasks) == 0:
            raise ValueError("tasks: no tasks given")
        if labels is None:
            labels = [str(i) for i in range(len(tasks))]
        labels = _label_strings(labels)
        if len(labels) != len(tasks):
            raise ValueError(f"labels: {len(labels)} labels for {len(tasks)} tasks")
        ys, xs, ids, scales = [], [], [], []
        has_x = None
        for t, item in enumerate(tasks):
            if isinstance(item, tuple) and len(item) == 2:
                x_t, y_t = item
            else:
                x_t, y_t = None, item
            y_t = _as_float_array(f"y (task {labels[t]!r})", y_t).reshape(-1)
            if y_t.shape[0] == 0:
                raise ValueError(f"task {labels[t]!r}: the task is empty (no rows)")
            if has_x is None:
                has_x = x_t is not None
            elif has_x != (x_t is not None):
                raise ValueError(f"x: task {labels[t]!r} has no x while others do (or vice versa)")
            if x_t is not None:
                x_t = _as_float_array(f"x (task {labels[t]!r})", x_t)
                if x_t.ndim == 1:
                    x_t = x_t[:, None]
                if x_t.shape[0] != y_t.shape[0]:
                    raise ValueError(
                        f"x: task {labels[t]!r} has {x_t.shape[0]} rows of x but "
                        f"{y_t.shape[0]} of y"
                    )
                if xs and x_t.shape[1:] != xs[0].shape[1:]:
                    raise ValueError(
                        f"x: task {labels[t]!r} has feature shape {x_t.shape[1:]}, "
                        f"others {xs[0].shape[1:]}"
                    )
                xs.append(x_t)
            ys.append(y_t)
            ids.append(np.full(y_t.shape[0], t))
            if noise_scale is not None:
                if np.ndim(noise_scale) == 0:
                    scales.append(np.full(y_t.shape[0], float(noise_scale)))
                else:
                    s_t = _as_float_array("noise_scale", noise_scale[t]).reshape(-1)
                    if s_t.shape[0] == 1:
                        s_t = np.full(y_t.shape[0], float(s_t[0]))
                    if s_t.shape[0] != y_t.shape[0]:
                        raise ValueError(
                            f"noise_scale: task {labels[t]!r} has {s_t.shape[0]} values for "
                            f"{y_t.shape[0]} rows"
                        )
                    scales.append(s_t)
        row_ids = np.concatenate([np.arange(len(y)) for y in ys])
        tx, tx_names = None, task_x_names
        if task_x is not None:
            num = len(tasks)
            tx, tx_names = _task_x_from_rows(task_x, task_x_names, np.arange(num), num, labels)
        return cls(
            y=np.concatenate(ys),
            task_index=np.concatenate(ids),
            labels=labels,
            x=np.concatenate(xs) if has_x else None,
            noise_scale=np.concatenate(scales) if scales else None,
            row_ids=row_ids,
            task_x=tx,
            task_x_names=tx_names,
        )

    @classmethod
    def from_estimates(
        cls,
        y: Any,
        se: Any,
        labels: Sequence[str] | None = None,
        task_x: Any = None,
        task_x_names: Sequence[str] | None = None,
    ) -> TaskSet:
        """One estimate ``y[t]`` with standard error ``se[t]`` per task (meta-analysis).

        ``task_x``: optional task covariates (moderators), shape ``(k,)`` or ``(k, q)`` or a
        dict ``name -> (k,)``, named by ``task_x_names`` (default ``z0``.. or the keys)."""
        y_arr = _as_float_array("y", y).reshape(-1) if np.ndim(y) <= 1 else None
        if y_arr is None:
            raise ValueError(f"y: expected one estimate per task (1-d), got shape {np.shape(y)}")
        se_arr = _as_float_array("se", se)
        if se_arr.ndim == 0:
            se_arr = np.full(y_arr.shape[0], float(se_arr))
        if se_arr.ndim != 1:
            raise ValueError(
                f"se: expected a scalar or one standard error per task (1-d), got shape "
                f"{se_arr.shape}"
            )
        if se_arr.shape != y_arr.shape:
            raise ValueError(
                f"se: {se_arr.shape[0]} standard errors for {y_arr.shape[0]} estimates"
            )
        if y_arr.shape[0] == 0:
            raise ValueError("y: no estimates given")
        if labels is None:
            labels = [str(i) for i in range(y_arr.shape[0])]
        labels = _label_strings(labels)
        if len(labels) != y_arr.shape[0]:
            raise ValueError(f"labels: {len(labels)} labels for {y_arr.shape[0]} estimates")
        tx, tx_names = None, task_x_names
        if task_x is not None:
            k = y_arr.shape[0]
            tx, tx_names = _task_x_from_rows(task_x, task_x_names, np.arange(k), k, labels)
        return cls(
            y=y_arr,
            task_index=np.arange(y_arr.shape[0]),
            labels=labels,
            noise_scale=se_arr,
            is_estimates=True,
            task_x=tx,
            task_x_names=tx_names,
        )

    @classmethod
    def from_csv(
        cls,
        path: str,
        task: str,
        y: str,
        x: Sequence[str] | str | None = None,
        noise_scale: str | None = None,
        task_x: Sequence[str] | str | None = None,
    ) -> TaskSet:
        """Read a CSV file with a header: a task column, a response column, optional input
        columns, an optional noise-scale column and optional task-level covariate columns
        (constant within each task). Errors name the CSV line. Column names are kept."""
        x_cols = [x] if isinstance(x, str) else list(x or [])
        tx_cols = [task_x] if isinstance(task_x, str) else list(task_x or [])
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            _check_csv_header(path, header)
            for field, col in (
                [("task", task), ("y", y), ("noise_scale", noise_scale)]
                + [("x", c) for c in x_cols]
                + [("task_x", c) for c in tx_cols]
            ):
                if col is not None and col not in header:
                    raise ValueError(f"{field}: column {col!r} not in {path} (columns: {header})")
            ids, ys, xs, ns, txs = [], [], [], [], []
            for row in reader:
                line = reader.line_num
                _check_csv_row(path, header, row, line)

                def num(col: str, field: str, _row=row, _line=line) -> float:
                    raw = (_row[col] or "").strip()
                    try:
                        return float(raw)
                    except ValueError:
                        raise ValueError(
                            f"{field}: column {col!r} has {raw!r}, not a number, at "
                            f"task {_row[task]!r}, line {_line} of {path}"
                        ) from None

                if not row[task].strip():
                    raise ValueError(
                        f"task: column {task!r} is empty (a missing task id) at line {line} "
                        f"of {path}"
                    )
                ids.append(row[task])
                ys.append(num(y, "y"))
                if x_cols:
                    xs.append([num(c, "x") for c in x_cols])
                if noise_scale is not None:
                    ns.append(num(noise_scale, "noise_scale"))
                if tx_cols:
                    txs.append([num(c, "task_x") for c in tx_cols])
        if not ys:
            raise ValueError(f"{path}: no data rows")
        return cls.from_arrays(
            y=np.array(ys),
            task=np.array(ids, dtype=object),
            x=np.array(xs) if x_cols else None,
            noise_scale=np.array(ns) if noise_scale is not None else None,
            task_x=np.array(txs) if tx_cols else None,
            task_x_names=tx_cols or None,
            x_names=x_cols or None,
        )

    @classmethod
    def from_dataframe(
        cls,
        df: Any,
        task: str,
        y: str,
        x: Sequence[str] | str | None = None,
        task_x: Sequence[str] | str | None = None,
        noise_scale: str | None = None,
        trials: str | None = None,
    ) -> TaskSet:
        """Build from a pandas DataFrame, keeping its column names.

        Args:
          df: the table, one row per observation.
          task: the grouping column (task labels are ``str`` of its values, in order of
            first appearance).
          y: the response column.
          x: input columns; they name the regression coefficients (``intercept``,
            ``floor``, ...).
          task_x: task-level covariate columns, constant within each task.
          noise_scale: a column of known noise sds.
          trials: the column of binomial trials; it becomes ``x[:, 0]`` (the layout of
            ``bm.likelihoods.Binomial``), followed by the ``x`` columns.

        A missing column, a non-numeric column, a missing value or a covariate that varies
        within a task is a ValueError naming the column, the task and the row (the frame's
        index label).

        >>> import pandas as pd, bayesmeta as bm
        >>> df = pd.DataFrame({"g": ["a", "a", "b"], "y": [1.0, 2.0, 3.0], "u": [1, 1, 2]})
        >>> bm.TaskSet.from_dataframe(df, task="g", y="y", task_x="u").task_x_names
        ('u',)
        """
        if not hasattr(df, "columns") or not hasattr(df, "index"):
            raise ValueError(f"df: expected a pandas DataFrame, got {type(df).__name__}")
        x_cols = [x] if isinstance(x, str) else list(x or [])
        tx_cols = [task_x] if isinstance(task_x, str) else list(task_x or [])
        fields = [("task", task), ("y", y), ("noise_scale", noise_scale), ("trials", trials)]
        fields += [("x", c) for c in x_cols] + [("task_x", c) for c in tx_cols]
        columns = list(df.columns)
        for field, col in fields:
            if col is not None and col not in columns:
                raise ValueError(
                    f"{field}: column {col!r} not in the data frame (columns: {columns})"
                )
        index = list(df.index)
        task_ids = df[task].to_numpy(dtype=object)
        for row, value in enumerate(task_ids):
            if value is None or (isinstance(value, float) and not np.isfinite(value)):
                raise ValueError(f"task: column {task!r} has a missing value at row {index[row]!r}")

        def numeric(field: str, col: str) -> np.ndarray:
            raw = df[col].to_numpy()
            if np.iscomplexobj(raw):
                raise ValueError(f"{field}: column {col!r} holds complex numbers (not supported)")
            try:
                arr = np.asarray(raw, dtype=float)
            except (TypeError, ValueError):
                for row, value in enumerate(raw):
                    try:
                        float(value)
                    except (TypeError, ValueError):
                        raise ValueError(
                            f"{field}: column {col!r} has {value!r}, not a number, at task "
                            f"{str(task_ids[row])!r}, row {index[row]!r}"
                        ) from None
                raise
            bad = ~np.isfinite(arr)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"{field}: column {col!r} has a missing or non-finite value ({arr[row]}) "
                    f"at task {str(task_ids[row])!r}, row {index[row]!r}"
                )
            return arr

        y_arr = numeric("y", y)
        x_names = ([trials] if trials is not None else []) + x_cols
        xs = [numeric("trials" if c == trials else "x", c) for c in x_names]
        tx = {c: numeric("task_x", c) for c in tx_cols}
        try:
            tasks = cls.from_arrays(
                y=y_arr,
                task=task_ids,
                x=np.stack(xs, axis=1) if xs else None,
                noise_scale=numeric("noise_scale", noise_scale) if noise_scale else None,
                task_x=tx or None,
                x_names=x_names or None,
            )
        except ValueError as err:
            # row numbers of from_arrays are positions; name the frame's index labels
            raise ValueError(_index_labels(str(err), index)) from None
        # later messages (a likelihood's validate) and the ArviZ "row" coordinate name
        # the frame's own index labels
        tasks.row_ids = np.asarray(df.index)[tasks.row_ids]
        return tasks

    # ------------------------------------------------------------------ properties
    @property
    def num_tasks(self) -> int:
        return len(self.labels)

    @property
    def num_obs(self) -> int:
        return int(self.y.shape[0])

    @property
    def counts(self) -> np.ndarray:
        """Rows per task, shape ``(num_tasks,)``."""
        return np.bincount(self.task_index, minlength=self.num_tasks)

    @property
    def offsets(self) -> np.ndarray:
        """Start row of each task and the end, shape ``(num_tasks + 1,)``."""
        return np.concatenate([[0], np.cumsum(self.counts)])

    @property
    def input_order(self) -> np.ndarray:
        """Stored-row indices in the caller's order: ``tasks.y[tasks.input_order]`` are the
        responses as they were given (rows of a CSV file or DataFrame, or of ``from_arrays``;
        ``from_tasks`` and ``from_estimates`` give them in task order already).

        >>> ts = TaskSet.from_arrays(y=[1.0, 2.0, 3.0], task=["b", "a", "b"])
        >>> ts.y.tolist(), ts.y[ts.input_order].tolist()
        ([1.0, 3.0, 2.0], [1.0, 2.0, 3.0])
        """
        return np.argsort(self.row_order, kind="stable")

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return () if self.x is None else tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return self.num_tasks

    def __repr__(self) -> str:
        c = self.counts
        kind = "estimates" if self.is_estimates else "rows"
        return (
            f"TaskSet(num_tasks={self.num_tasks}, num_obs={self.num_obs} {kind}, "
            f"rows/task {c.min()}..{c.max()}, "
            f"x={self.feature_shape if self.x is not None else None}"
            f", noise_scale={'known' if self.noise_scale is not None else None}"
            + (f", task_x={list(self.task_x_names)}" if self.task_x is not None else "")
            + ")"
        )

    def task_rows(self, t: int) -> slice:
        off = self.offsets
        return slice(int(off[t]), int(off[t + 1]))

    def task_data(self, t: int | str) -> tuple[np.ndarray | None, np.ndarray]:
        """``(x, y)`` of one task by index or label."""
        t = self._index_of(t)
        rows = self.task_rows(t)
        return (None if self.x is None else self.x[rows]), self.y[rows]

    def _index_of(self, t: int | str) -> int:
        if isinstance(t, str):
            try:
                return self.labels.index(t)
            except ValueError:
                raise ValueError(f"task: no task labelled {t!r}") from None
        t = int(t)
        if not 0 <= t < self.num_tasks:
            raise ValueError(f"task: index {t} out of range 0..{self.num_tasks - 1}")
        return t

    # ------------------------------------------------------------------ operations
    def _take_rows(
        self,
        rows: np.ndarray,
        new_index: np.ndarray,
        labels: Sequence[str],
        task_ids: Sequence[int] | None = None,
    ) -> TaskSet:
        """Rows ``rows`` re-indexed as tasks ``new_index``; ``task_ids`` are the old
        indices of the new tasks (for their covariates; None: the same tasks)."""
        task_x = self.task_x
        if task_x is not None and task_ids is not None:
            task_x = task_x[np.asarray(task_ids, int)]
        return TaskSet(
            y=self.y[rows],
            task_index=new_index,
            labels=labels,
            x=None if self.x is None else self.x[rows],
            noise_scale=None if self.noise_scale is None else self.noise_scale[rows],
            is_estimates=self.is_estimates,
            row_ids=self.row_ids[rows],
            task_x=task_x,
            task_x_names=self.task_x_names,
            feature_names=self.feature_names,
            row_order=self.row_order[rows],
        )

    def subset(self, tasks: Sequence[int | str]) -> TaskSet:
        """The tasks named by labels or indices, in the order given."""
        idx = [self._index_of(t) for t in tasks]
        if not idx:
            raise ValueError("subset: no tasks selected")
        if len(set(idx)) != len(idx):
            raise ValueError("subset: a task is selected twice")
        off = self.offsets
        rows = np.concatenate([np.arange(off[t], off[t + 1]) for t in idx])
        new_index = np.concatenate([np.full(off[t + 1] - off[t], i) for i, t in enumerate(idx)])
        return self._take_rows(rows, new_index, [self.labels[t] for t in idx], idx)

    def split_tasks(self, key: Any, test_fraction: float = 0.2) -> tuple[TaskSet, TaskSet]:
        """Random split of whole tasks into (train, test); labels are kept."""
        if not 0.0 < float(test_fraction) < 1.0:
            raise ValueError(f"test_fraction: must be in (0, 1), got {test_fraction}")
        num_test = int(round(test_fraction * self.num_tasks))
        if num_test == 0 or num_test == self.num_tasks:
            raise ValueError(
                f"test_fraction: {test_fraction} of {self.num_tasks} tasks leaves an empty side"
            )
        perm = _permutation(key, self.num_tasks)
        test_idx, train_idx = np.sort(perm[:num_test]), np.sort(perm[num_test:])
        return self.subset(train_idx.tolist()), self.subset(test_idx.tolist())

    def split_shots(self, key: Any, num_support: int) -> tuple[TaskSet, TaskSet]:
        """Per task, a random ``num_support`` rows as support and the rest as query.

        Every task must have more than ``num_support`` rows, so both sides keep every task.
        """
        num_support = int(num_support)
        if num_support < 1:
            raise ValueError(f"num_support: must be >= 1, got {num_support}")
        counts = self.counts
        short = np.flatnonzero(counts <= num_support)
        if short.size:
            t = int(short[0])
            raise ValueError(
                f"num_support: task {self.labels[t]!r} has {counts[t]} rows, needs more than "
                f"{num_support} to leave a query set"
            )
        off = self.offsets
        sup_rows, qry_rows = [], []
        keys = _split_key(key, self.num_tasks)
        for t in range(self.num_tasks):
            perm = _permutation(keys[t], int(counts[t])) + off[t]
            sup_rows.append(np.sort(perm[:num_support]))
            qry_rows.append(np.sort(perm[num_support:]))
        sup, qry = np.concatenate(sup_rows), np.concatenate(qry_rows)
        return (
            self._take_rows(sup, self.task_index[sup], self.labels),
            self._take_rows(qry, self.task_index[qry], self.labels),
        )

    def padded(self, max_count: int | None = None) -> PaddedTasks:
        """Equal-shape arrays plus a mask (see :class:`PaddedTasks`)."""
        counts = self.counts
        m = int(counts.max()) if max_count is None else int(max_count)
        if m < counts.max():
            raise ValueError(f"max_count: {m} is less than the largest task ({counts.max()} rows)")
        pos = np.arange(self.num_obs) - self.offsets[self.task_index]
        t = self.task_index
        y = np.zeros((self.num_tasks, m))
        y[t, pos] = self.y
        mask = np.zeros((self.num_tasks, m), dtype=bool)
        mask[t, pos] = True
        x = None
        if self.x is not None:
            x = np.zeros((self.num_tasks, m, *self.feature_shape))
            x[t, pos] = self.x
        ns = None
        if self.noise_scale is not None:
            ns = np.ones((self.num_tasks, m))
            ns[t, pos] = self.noise_scale
        return PaddedTasks(y=y, x=x, noise_scale=ns, mask=mask)

    def per_task_estimates(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-task estimate of the mean response and its standard error.

        For estimates data these are ``y`` and ``se``. For raw rows: the (inverse-variance
        weighted, when noise scales are known) mean of each task's rows; its standard error
        uses the known noise scales, or else the pooled within-task standard deviation
        (so single-row tasks still get one). Shapes ``(num_tasks,)``.
        """
        if self.is_estimates:
            return self.y.copy(), self.noise_scale.copy()
        t = self.task_index
        if self.noise_scale is not None:
            w = 1.0 / self.noise_scale**2
            sw = np.bincount(t, weights=w, minlength=self.num_tasks)
            est = np.bincount(t, weights=w * self.y, minlength=self.num_tasks) / sw
            return est, 1.0 / np.sqrt(sw)
        n = self.counts.astype(float)
        est = np.bincount(t, weights=self.y, minlength=self.num_tasks) / n
        resid = self.y - est[t]
        dof = self.num_obs - self.num_tasks
        if dof < 1:
            raise ValueError(
                "noise_scale: every task has one row and no noise scale is known; "
                "per-task standard errors cannot be estimated"
            )
        s2 = float(np.sum(resid**2) / dof)
        if s2 <= 0:
            raise ValueError("y: no within-task variation; per-task standard errors would be 0")
        return est, np.sqrt(s2 / n)

    def with_noise_scale(self, noise_scale: Any) -> TaskSet:
        """A copy with a known noise scale (scalar or per row)."""
        ns = _as_float_array("noise_scale", noise_scale)
        if ns.ndim == 0:
            ns = np.full(self.num_obs, float(ns))
        return TaskSet(
            self.y,
            self.task_index,
            self.labels,
            self.x,
            ns,
            self.is_estimates,
            self.row_ids,
            self.task_x,
            self.task_x_names,
            self.feature_names,
            self.row_order,
        )

    def with_task_x(self, task_x: Any, names: Sequence[str] | None = None) -> TaskSet:
        """A copy with task-level covariates ``task_x`` ``(num_tasks, q)`` (or a dict
        ``name -> (num_tasks,)``), one row per task in label order."""
        tx, names = _task_x_from_rows(
            task_x, names, np.arange(self.num_tasks), self.num_tasks, self.labels
        )
        return TaskSet(
            self.y,
            self.task_index,
            self.labels,
            self.x,
            self.noise_scale,
            self.is_estimates,
            self.row_ids,
            tx,
            names,
            self.feature_names,
            self.row_order,
        )

    def with_y(self, y: Any) -> TaskSet:
        """A copy with new responses ``y`` ``(num_obs,)`` in the stored row order and
        everything else (tasks, rows, ``x``, noise scales / standard errors, covariates)
        kept: simulated data shaped like this TaskSet, validated as any TaskSet.

        >>> import bayesmeta as bm
        >>> bm.datasets.eight_schools().with_y([0.0] * 8).y[:3]
        array([0., 0., 0.])
        """
        y_arr = _as_float_array("y", y)
        if y_arr.shape != (self.num_obs,):
            raise ValueError(
                f"y: expected shape ({self.num_obs},) (one value per row), got {y_arr.shape}"
            )
        return TaskSet(
            y_arr,
            self.task_index,
            self.labels,
            self.x,
            self.noise_scale,
            self.is_estimates,
            self.row_ids,
            self.task_x,
            self.task_x_names,
            self.feature_names,
        )


def _index_labels(message: str, index: list) -> str:
    """Rewrite ``row N`` (a position) in ``message`` as the DataFrame's index label."""
    import re

    def label(match: re.Match) -> str:
        pos = int(match.group(1))
        return f"row {index[pos]!r}" if 0 <= pos < len(index) else match.group(0)

    return re.sub(r"row (\d+)", label, message)


def _task_x_from_rows(
    task_x: Any,
    names: Sequence[str] | None,
    index: np.ndarray,
    n: int,
    labels: Sequence[str],
) -> tuple[np.ndarray, list[str]]:
    """Per-row task covariates (row ``r`` belongs to task ``index[r]``) to one row per
    task; a column that is not constant within a task is an error naming it, the task and
    the two rows."""
    if isinstance(task_x, dict):
        if names is not None:
            raise ValueError("task_x_names: not with a dict task_x (its keys are the names)")
        names = [str(k) for k in task_x]
        cols = [_as_float_array(f"task_x[{k!r}]", v) for k, v in task_x.items()]
        for k, c in zip(names, cols, strict=True):
            if c.shape != (n,):
                raise ValueError(f"task_x: column {k!r} has shape {c.shape}, expected ({n},)")
        arr = np.stack(cols, axis=1) if cols else np.zeros((n, 0))
    else:
        arr = _as_float_array("task_x", task_x)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or arr.shape[0] != n:
            raise ValueError(f"task_x: expected {n} rows (one per row of y), got shape {arr.shape}")
    q = arr.shape[1]
    names = [f"z{i}" for i in range(q)] if names is None else [str(v) for v in names]
    if len(names) != q:
        raise ValueError(f"task_x_names: {len(names)} names for {q} columns")
    if q == 0:
        raise ValueError("task_x: no columns")
    bad = ~np.isfinite(arr)
    if bad.any():
        row, j = (int(i[0]) for i in np.nonzero(bad))
        raise ValueError(
            f"task_x: column {names[j]!r} has non-finite value {arr[row, j]} at "
            f"task {labels[index[row]]!r}, row {row}"
        )
    num_tasks = len(labels)
    first = np.full(num_tasks, -1)
    # the first row of every task (rows in the caller's order)
    seen = np.unique(index, return_index=True)
    first[seen[0]] = seen[1]
    varies = arr != arr[first[index]]
    if varies.any():
        row, j = (int(i[0]) for i in np.nonzero(varies))
        t = int(index[row])
        raise ValueError(
            f"task_x: column {names[j]!r} varies within task {labels[t]!r}: "
            f"{arr[first[t], j]} at row {int(first[t])}, {arr[row, j]} at row {row} "
            "(a task-level covariate must be constant within each task)"
        )
    return arr[first], names


def _key_data(key: Any) -> np.ndarray:
    import jax

    if isinstance(key, int | np.integer):
        key = jax.random.PRNGKey(int(key))
    return key


def _permutation(key: Any, n: int) -> np.ndarray:
    import jax

    return np.asarray(jax.random.permutation(_key_data(key), n))


def _split_key(key: Any, n: int) -> list:
    import jax

    return list(jax.random.split(_key_data(key), n))
