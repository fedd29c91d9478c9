"""Fuzz suite: bad and extreme input at every public entry point.

Hypothesis draws cases in the categories of the reliability issue's probe (wrong types and
shapes, NaN/inf, empty input, huge and tiny magnitudes, duplicates, missing labels, complex
numbers, wrong widths, bad option values) for the TaskSet constructors, populations,
likelihoods, the options and seeds of every method, the estimators, adapt/predict and the
command line. The contract checked by :func:`_check` for every case:

- it works and the result is right (checked against the input), or
- it raises a ValueError (a usage error, exit code 2, on the command line) whose message
  names the field, and the task and row where the case has one;
- and an error comes before any XLA compilation (the compile fixture of conftest.py).

A case known to be bad must fail. Valid cases never run full fits: they stop at the
validation entry points (``model.build``, the option checks), except cheap exact fits.
The number of cases tried is printed at the end of the run (conftest.py). Runs are
derandomised (the same cases every run) so the suite cannot flake.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile

import numpy as np
import numpyro.distributions as dist
import pytest
from conftest import COMPILES, FUZZ_CASES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bayesmeta as bm
from bayesmeta.cli import main

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _check(category, thunk, fields, bad, where=(), verify=None):
    """Run one case; see the module docstring for the contract.

    Args:
      category: the count it is reported under.
      thunk: the case, called with no arguments.
      fields: the field names one of which an error must name (any of them).
      bad: True when the input is invalid and must raise.
      where: strings an error must also contain (the task label, the row).
      verify: called with the result of a case that works; asserts it is right.
    """
    FUZZ_CASES[category] += 1
    with COMPILES.watching() as seen:
        try:
            out = thunk()
        except ValueError as err:
            out, error = None, err
        else:
            error = None
    if error is None:
        assert not bad, f"{category}: invalid input accepted, returned {out!r}"
        if verify is not None:
            verify(out)
        return out
    msg = str(error)
    assert any(f in msg for f in fields), f"{category}: error names none of {fields}: {msg!r}"
    for w in where:
        assert w in msg, f"{category}: error does not say {w!r}: {msg!r}"
    assert seen["compiles"] == 0, f"{category}: {seen['compiles']} compile(s) before: {msg!r}"
    return error


def test_compile_fixture_sees_a_compile(compile_watch):
    """The fixture the contract relies on counts a fresh jit program (and nothing for
    plain numpy work), so "zero compiles before the error" can fail."""
    import jax

    with compile_watch.watching() as seen:
        np.linalg.inv(np.eye(3) * 2.0)
    assert seen["compiles"] == 0
    with compile_watch.watching() as seen:
        jax.jit(lambda v: v * 3.0 + 1.0)(np.arange(5.0))
    assert seen["compiles"] >= 1 and seen["traces"] >= 1


# ------------------------------------------------------------------ value strategies
moderate = st.floats(-1e3, 1e3, allow_nan=False, width=64)
non_finite = st.sampled_from([math.nan, math.inf, -math.inf])
labels_st = st.sampled_from(["a", "b", "c", "d"]) | st.integers(0, 3)


def _rows(min_size=1, max_size=8):
    return st.integers(min_size, max_size)


# ------------------------------------------------------------------ TaskSet.from_arrays
ARRAY_FAULTS = [
    None,
    "y_nonfinite",
    "y_complex",
    "y_none",
    "y_2d",
    "y_extreme",
    "y_text",
    "x_rows",
    "x_nonfinite",
    "x_complex",
    "noise_neg",
    "noise_nonfinite",
    "noise_2d",
    "task_none",
    "task_nan",
    "task_short",
    "empty",
    "labels_none",
    "labels_dup",
]


@st.composite
def array_cases(draw):
    n = draw(_rows())
    y = draw(st.lists(moderate, min_size=n, max_size=n))
    ids = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=n, max_size=n))
    x = draw(st.none() | st.lists(moderate, min_size=n, max_size=n))
    ns = draw(st.none() | st.lists(st.floats(0.1, 10.0), min_size=n, max_size=n))
    fault = draw(st.sampled_from(ARRAY_FAULTS))
    row = draw(st.integers(0, n - 1))
    return n, y, ids, x, ns, fault, row


def _task_of(ids, row):
    return repr(str(ids[row]))


@FUZZ
@given(array_cases())
def test_fuzz_from_arrays(case):
    n, y, ids, x, ns, fault, row = case
    y, ids = list(y), list(ids)
    kw = dict(y=y, task=ids, x=x, noise_scale=ns)
    fields, where, bad = ("y",), (), fault is not None
    if fault == "y_nonfinite":
        y[row] = math.nan
        where = (f"task {_task_of(ids, row)}", f"row {row}")
    elif fault == "y_complex":
        y[row] = complex(y[row], 1.0)
    elif fault == "y_none":
        y[row] = None
    elif fault == "y_2d":
        kw["y"] = [y, y]
    elif fault == "y_extreme":  # huge or tiny but finite: valid in the TaskSet (float64)
        y[row] = 1e300 if row % 2 else 1e-300
        bad = False
    elif fault == "y_text":
        y[row] = "one"
    elif fault == "x_rows":
        kw["x"] = [1.0] * (n + 1)
        fields = ("x",)
    elif fault == "x_nonfinite":
        kw["x"] = [0.0] * n
        kw["x"][row] = math.inf
        fields, where = ("x",), (f"task {_task_of(ids, row)}", f"row {row}")
    elif fault == "x_complex":
        kw["x"] = [1j] * n
        fields = ("x",)
    elif fault == "noise_neg":
        kw["noise_scale"] = [1.0] * n
        kw["noise_scale"][row] = -1.0
        fields, where = ("noise_scale",), (f"task {_task_of(ids, row)}", f"row {row}")
    elif fault == "noise_nonfinite":
        kw["noise_scale"] = [1.0] * n
        kw["noise_scale"][row] = math.nan
        fields = ("noise_scale",)
    elif fault == "noise_2d":
        kw["noise_scale"] = [[1.0] * n] * 2
        fields = ("noise_scale",)
    elif fault == "task_none":
        ids[row] = None
        fields, where = ("task",), (f"row {row}",)
    elif fault == "task_nan":
        ids[row] = math.nan
        fields, where = ("task",), (f"row {row}",)
    elif fault == "task_short":
        kw["task"] = ids[:-1] if n > 1 else []
        fields = ("task",)
    elif fault == "empty":
        kw = dict(y=[], task=[])
    elif fault == "labels_none":
        kw["task"] = [0] * n
        kw["labels"] = [None]
        fields = ("labels",)
    elif fault == "labels_dup":
        kw["task"] = [i % 2 for i in range(n)]
        kw["labels"] = ["same", "same"]
        fields = ("labels", "task")
    kw["y"] = y if kw["y"] is not None and fault not in ("y_2d", "empty") else kw["y"]

    def verify(tasks):
        assert tasks.num_obs == n
        assert tasks.labels == tuple(dict.fromkeys(map(str, ids)))
        for t, label in enumerate(tasks.labels):
            want = [y[i] for i in range(n) if str(ids[i]) == label]
            np.testing.assert_array_equal(tasks.y[tasks.task_index == t], want)

    _check("TaskSet.from_arrays", lambda: bm.TaskSet.from_arrays(**kw), fields, bad, where, verify)


# ------------------------------------------------------------------ TaskSet.from_estimates
ESTIMATE_FAULTS = [
    None,
    "y_nonfinite",
    "y_complex",
    "y_2d",
    "se_2d",
    "se_zero",
    "se_neg",
    "se_nonfinite",
    "se_complex",
    "se_short",
    "labels_none",
    "labels_dup",
    "labels_short",
    "empty",
    "extreme",
]


@FUZZ
@given(
    st.integers(1, 8).flatmap(
        lambda k: st.tuples(
            st.lists(moderate, min_size=k, max_size=k),
            st.lists(st.floats(0.01, 100.0), min_size=k, max_size=k),
            st.sampled_from(ESTIMATE_FAULTS),
            st.integers(0, k - 1),
        )
    )
)
def test_fuzz_from_estimates(case):
    y, se, fault, t = case
    y, se, k = list(y), list(se), len(y)
    labels = [f"s{i}" for i in range(k)]
    kw = dict(y=y, se=se, labels=labels)
    fields, where, bad = ("y",), (), fault is not None
    if fault == "y_nonfinite":
        y[t] = math.inf
        where = (f"task 's{t}'", f"row {t}")
    elif fault == "y_complex":
        y[t] = complex(1.0, 2.0)
    elif fault == "y_2d":
        kw["y"] = [y] * 2
    elif fault == "se_2d":  # the misleading "8 standard errors for 8 estimates"
        kw["se"] = [[s] for s in se]
        fields = ("se: expected a scalar or one standard error per task",)
    elif fault in ("se_zero", "se_neg", "se_nonfinite"):
        se[t] = {"se_zero": 0.0, "se_neg": -1.0, "se_nonfinite": math.nan}[fault]
        fields, where = ("se",), (f"task 's{t}'", f"row {t}")
        if fault == "se_nonfinite":
            fields = ("se", "noise_scale")
    elif fault == "se_complex":
        se[t] = 1j
        fields = ("se",)
    elif fault == "se_short":
        kw["se"] = se + [1.0]
        fields = ("se",)
    elif fault == "labels_none":
        labels[t] = None
        fields, where = ("labels",), (f"task {t}",)
    elif fault == "labels_dup":
        kw["labels"] = ["dup"] * k
        fields = ("labels",)
        bad = k > 1
    elif fault == "labels_short":
        kw["labels"] = labels[:-1]
        fields = ("labels",)
    elif fault == "empty":
        kw = dict(y=[], se=[])
    elif fault == "extreme":
        y[t], se[t] = 1e300, 1e-300
        bad = False

    def verify(tasks):
        np.testing.assert_array_equal(tasks.y, y)
        np.testing.assert_array_equal(tasks.noise_scale, se)
        assert tasks.is_estimates and tasks.num_tasks == k

    _check(
        "TaskSet.from_estimates",
        lambda: bm.TaskSet.from_estimates(**kw),
        fields,
        bad,
        where,
        verify,
    )


# ------------------------------------------------------------------ TaskSet.from_tasks
TASKS_FAULTS = [None, "empty_task", "x_rows", "x_width", "complex", "nan", "labels_none", "mixed_x"]


@FUZZ
@given(
    st.lists(st.integers(1, 4), min_size=1, max_size=5),
    st.booleans(),
    st.sampled_from(TASKS_FAULTS),
    st.randoms(use_true_random=False),
)
def test_fuzz_from_tasks(sizes, with_x, fault, rnd):
    items = []
    for n in sizes:
        y = [rnd.uniform(-5, 5) for _ in range(n)]
        items.append(([[rnd.uniform(-1, 1)] for _ in range(n)], y) if with_x else y)
    labels = [f"t{i}" for i in range(len(items))]
    t = rnd.randrange(len(items))
    fields, where, bad = ("y",), (), fault is not None
    if fault == "empty_task":
        items[t] = ([], []) if with_x else []
        fields, where = ("task",), (f"'t{t}'",)
    elif fault == "x_rows" and with_x:
        items[t] = (items[t][0] + [[0.0]], items[t][1])
        fields, where = ("x",), (f"'t{t}'",)
    elif fault == "x_width" and with_x and len(items) > 1:
        items[t] = ([[0.0, 1.0]] * len(items[t][1]), items[t][1])
        fields = ("x",)
    elif fault == "complex":
        y_t = list(items[t][1] if with_x else items[t])
        y_t[0] = 1 + 1j
        items[t] = (items[t][0], y_t) if with_x else y_t
        fields = ("y",)
    elif fault == "nan":
        y_t = list(items[t][1] if with_x else items[t])
        y_t[-1] = math.nan
        items[t] = (items[t][0], y_t) if with_x else y_t
        where = (f"task 't{t}'", f"row {len(y_t) - 1}")
    elif fault == "labels_none":
        labels[t] = None
        fields = ("labels",)
    elif fault == "mixed_x" and len(items) > 1:
        items[t] = items[t][1] if with_x else ([[0.0]] * len(items[t]), items[t])
        fields = ("x",)
    else:
        bad = False

    def verify(tasks):
        assert tasks.num_tasks == len(items)
        np.testing.assert_array_equal(tasks.counts, sizes)

    _check(
        "TaskSet.from_tasks",
        lambda: bm.TaskSet.from_tasks(items, labels=labels),
        fields,
        bad,
        where,
        verify,
    )


# ------------------------------------------------------------------ TaskSet.from_csv
CSV_FAULTS = [
    None,
    "dup_header",
    "extra_field",
    "missing_field",
    "text_cell",
    "nan_cell",
    "empty_task",
    "no_column",
    "no_rows",
]


@FUZZ
@given(
    st.lists(st.tuples(st.sampled_from("abc"), moderate, moderate), min_size=1, max_size=6),
    st.sampled_from(CSV_FAULTS),
    st.integers(0, 5),
)
def test_fuzz_from_csv(rows, fault, r):
    r = r % len(rows)
    line = r + 2  # the header is line 1
    header = ["g", "y", "x"]
    body = [[g, repr(y), repr(x)] for g, y, x in rows]
    fields, where, bad = ("y",), (), fault is not None
    y_col, x_col = "y", "x"
    if fault == "dup_header":
        header = ["g", "y", "y"]
        fields = ("appear more than once", "'y'")
        x_col = None
    elif fault == "extra_field":
        body[r] = body[r] + ["9"]
        fields, where = ("fields",), (f"line {line}",)
    elif fault == "missing_field":
        body[r] = body[r][:2]
        fields, where = ("fields",), (f"line {line}",)
    elif fault == "text_cell":
        body[r][1] = "abc"
        where = (f"line {line}", f"task '{rows[r][0]}'")
    elif fault == "nan_cell":
        body[r][2] = "nan"
        fields, where = ("x",), (f"task '{rows[r][0]}'", f"row {r}")
    elif fault == "empty_task":
        body[r][0] = " "
        fields, where = ("task",), (f"line {line}",)
    elif fault == "no_column":
        y_col = "missing"
        fields = ("y: column 'missing' not in",)
    elif fault == "no_rows":
        body = []
        fields = ("no data rows",)
    text = "\n".join(",".join(c) for c in [header, *body]) + "\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.csv")
        with open(path, "w") as fh:
            fh.write(text)

        def verify(tasks):
            assert tasks.num_obs == len(rows)
            assert tasks.feature_names == ("x",)
            for t, label in enumerate(tasks.labels):
                want = [y for g, y, _ in rows if g == label]
                np.testing.assert_array_equal(tasks.y[tasks.task_index == t], want)

        _check(
            "TaskSet.from_csv",
            lambda: bm.TaskSet.from_csv(path, task="g", y=y_col, x=x_col),
            fields,
            bad,
            where,
            verify,
        )


# ------------------------------------------------------------------ TaskSet.from_dataframe
@FUZZ
@given(
    st.lists(st.tuples(st.sampled_from("abc"), moderate), min_size=1, max_size=6),
    st.sampled_from([None, "task_none", "y_nan", "y_text", "no_column", "y_complex"]),
    st.integers(0, 5),
)
def test_fuzz_from_dataframe(rows, fault, r):
    import pandas as pd

    r = r % len(rows)
    g = [a for a, _ in rows]
    y = [b for _, b in rows]
    df = pd.DataFrame({"g": g, "y": y}, index=[f"r{i}" for i in range(len(rows))])
    col, fields, where, bad = "y", ("y",), (), fault is not None
    if fault == "task_none":
        df["g"] = df["g"].astype(object)
        df.iloc[r, 0] = None
        fields, where = ("task",), (f"'r{r}'",)
    elif fault == "y_nan":
        df.iloc[r, 1] = math.nan
        where = (f"task '{g[r]}'", f"row 'r{r}'")
    elif fault == "y_text":
        df["y"] = df["y"].astype(object)
        df.iloc[r, 1] = "x"
        where = (f"row 'r{r}'",)
    elif fault == "no_column":
        col = "nope"
    elif fault == "y_complex":
        df["y"] = df["y"].astype(complex) + 1j
    _check(
        "TaskSet.from_dataframe",
        lambda: bm.TaskSet.from_dataframe(df, task="g", y=col),
        fields,
        bad,
        where,
        lambda tasks: np.testing.assert_equal(tasks.num_obs, len(rows)),
    )


# ------------------------------------------------------------------ populations
HYPER_VALUES = [
    ("dist", lambda: dist.Normal(0.0, 5.0), False),
    ("positive dist", lambda: dist.HalfNormal(2.0), False),
    ("number", lambda: 1.5, False),
    ("array", lambda: np.array([1.0, 2.0]), False),
    ("tuple", lambda: (0, 5), True),
    ("list", lambda: [0.0, 5.0], True),
    ("nan", lambda: math.nan, True),
    ("inf", lambda: math.inf, True),
    ("text", lambda: "normal", True),
    ("complex", lambda: 1 + 2j, True),
    ("negative", lambda: -1.0, None),  # bad for a scale only
    ("zero", lambda: 0.0, None),
]


@FUZZ
@given(
    st.sampled_from(["Normal", "StudentT", "MvNormal"]),
    st.sampled_from(range(len(HYPER_VALUES))),
    st.sampled_from(["loc", "scale"]),
    st.sampled_from([None, 2, 0, -1, 2.5, "2"]),
    st.sampled_from([None, "ok", "2bad", 7]),
)
def test_fuzz_populations(family, which, field, dim, name):
    label, make, bad = HYPER_VALUES[which]
    value = make()
    if bad is None:
        bad = field == "scale"
    if label == "dist" and field == "scale":
        bad = True  # a scale prior on the real line (Normal) is refused
    if label == "complex":
        bad = True
    kw = {field: value, "dim": dim}
    if name is not None:
        kw["name"] = name
    fields = (field,)
    if dim in (0, -1, 2.5, "2"):
        fields, bad = ("dim",), True
    if name in ("2bad", 7):
        fields, bad = fields + ("name",), True
    pop_cls = getattr(bm.populations, family)
    # two-column inputs: theta has 2 components, so every family (MvNormal too) applies
    tasks = bm.TaskSet.from_arrays(
        y=[0.1, 0.4, -0.2, 0.3, 1.0, 0.2],
        x=[[1.0, 0.0], [1.0, 1.0], [1.0, 2.0], [1.0, 0.5], [1.0, 1.5], [1.0, 2.5]],
        task=["u", "u", "u", "v", "v", "v"],
    )

    def case():
        pop = pop_cls(**kw)
        model = bm.Hierarchical(bm.likelihoods.LinearRegression(intercept=False), pop)
        return model.build(tasks)  # the validation entry point of every engine

    _check(f"populations.{family}", case, fields, bad)


POP_EXTRA = [
    # (family, keyword, value, bad)
    ("MvNormal", "corr", 2.0, False),
    ("MvNormal", "corr", np.eye(2), False),
    ("MvNormal", "corr", [[1.0, 0.3], [0.3, 1.0]], False),
    ("MvNormal", "corr", [[1.0, 2.0], [2.0, 1.0]], True),  # not positive definite
    ("MvNormal", "corr", [[1.0, 0.3], [0.1, 1.0]], True),  # not symmetric
    ("MvNormal", "corr", np.eye(3), True),  # 3 x 3 for 2 coefficients
    ("MvNormal", "corr", "lkj", True),
    ("MvNormal", "corr", math.nan, True),
    ("MvNormal", "corr", -1.0, True),
    ("MvNormal", "corr", 1j, True),
    ("MvNormal", "corr", [[1.0, math.nan], [math.nan, 1.0]], True),
    ("StudentT", "df", dist.Gamma(2.0, 0.1), False),
    ("StudentT", "df", 4.0, False),
    ("StudentT", "df", -4.0, True),
    ("StudentT", "df", (2, 0.1), True),
    ("StudentT", "df", "t", True),
    ("Normal", "parameterization", "centered", False),
    ("Normal", "parameterization", "bogus", True),
    ("Normal", "parameterization", [True, False], False),  # a list of booleans is a mask
    ("Normal", "parameterization", np.array([True, False, True]), True),  # 3 masks, 2 tasks
    ("Normal", "parameterization", np.array([1, 0]), True),
    ("Normal", "task_covariates", ["missing"], True),
    ("Normal", "coef", dist.Normal(0.0, 1.0), True),  # coef without task_covariates
    ("Normal", "loc", np.array([1.0, 2.0, 3.0]), True),  # 3 fixed means, 2 coefficients
]


@settings(FUZZ, max_examples=40)
@given(st.sampled_from(range(len(POP_EXTRA))))
def test_fuzz_population_options(i):
    family, key, value, bad = POP_EXTRA[i]
    tasks = bm.TaskSet.from_arrays(
        y=[0.1, 0.4, -0.2, 0.3],
        x=[[1.0, 0.0], [1.0, 1.0], [1.0, 2.0], [1.0, 0.5]],
        task=["u", "u", "v", "v"],
    )

    def case():
        pop = getattr(bm.populations, family)(**{key: value})
        model = bm.Hierarchical(bm.likelihoods.LinearRegression(intercept=False), pop)
        return model.build(tasks)

    fields = (key, "task_covariates", "parameterization", "loc", "mu")
    _check(f"populations.{family} options", case, fields, bad)


# ------------------------------------------------------------------ likelihoods
def _lik_tasks(kind):
    if kind == "counts":
        return bm.TaskSet.from_arrays(y=[0.0, 3.0, 1.0, 2.0], task=["a", "a", "b", "b"])
    if kind == "negative counts":
        return bm.TaskSet.from_arrays(y=[0.0, -3.0, 1.0, 2.0], task=["a", "a", "b", "b"])
    if kind == "fractional counts":
        return bm.TaskSet.from_arrays(y=[0.0, 1.5, 1.0, 2.0], task=["a", "a", "b", "b"])
    if kind == "binary":
        return bm.TaskSet.from_arrays(
            y=[0.0, 1.0, 1.0, 0.0], x=[0.1, 0.2, 0.3, 0.4], task=["a", "a", "b", "b"]
        )
    if kind == "non-binary":
        return bm.TaskSet.from_arrays(
            y=[0.0, 2.0, 1.0, 0.0], x=[0.1, 0.2, 0.3, 0.4], task=["a", "a", "b", "b"]
        )
    if kind == "no x":
        return bm.TaskSet.from_arrays(y=[0.0, 1.0, 1.0, 0.0], task=["a", "a", "b", "b"])
    if kind == "binomial over":
        return bm.TaskSet.from_arrays(
            y=[3.0, 1.0], x=[[2.0], [4.0]], task=["a", "b"]
        )  # 3 successes of 2 trials
    if kind == "binomial ok":
        return bm.TaskSet.from_arrays(y=[1.0, 1.0], x=[[2.0], [4.0]], task=["a", "b"])
    if kind == "estimates":
        return bm.datasets.eight_schools()
    raise AssertionError(kind)


LIK_CASES = [
    # (constructor, tasks kind, bad, fields, where)
    (lambda: bm.likelihoods.Poisson(), "counts", False, (), ()),
    (lambda: bm.likelihoods.Poisson(), "negative counts", True, ("y",), ("task 'a'", "row 1")),
    (lambda: bm.likelihoods.Poisson(), "fractional counts", True, ("y",), ("task 'a'", "row 1")),
    (lambda: bm.likelihoods.LogisticRegression(), "binary", False, (), ()),
    (
        lambda: bm.likelihoods.LogisticRegression(),
        "non-binary",
        True,
        ("y",),
        ("task 'a'", "row 1"),
    ),
    (lambda: bm.likelihoods.LinearRegression(), "no x", True, ("x",), ()),
    (lambda: bm.likelihoods.Binomial(intercept=True), "binomial over", True, ("y",), ("task 'a'",)),
    (lambda: bm.likelihoods.Binomial(intercept=True), "binomial ok", False, (), ()),
    (lambda: bm.likelihoods.NormalKnownNoise(), "no x", True, ("noise_scale",), ()),
    (lambda: bm.likelihoods.NormalKnownNoise(), "estimates", False, (), ()),
    (lambda: bm.likelihoods.NormalKnownNoise(noise_scale=-1.0), "no x", True, ("noise_scale",), ()),
    (
        lambda: bm.likelihoods.NormalKnownNoise(noise_scale=[1.0, 2.0, 3.0]),
        "no x",
        True,
        ("noise_scale",),
        (),
    ),
    (
        lambda: bm.likelihoods.NormalKnownNoise(noise_scale=math.nan),
        "no x",
        True,
        ("noise_scale",),
        (),
    ),
    (lambda: bm.likelihoods.NormalKnownNoise(noise_scale=1j), "no x", True, ("noise_scale",), ()),
    (lambda: bm.likelihoods.Normal(noise="bogus"), "no x", True, ("noise",), ()),
    (  # a noise prior on the real line: refused at construction (hyperprior support)
        lambda: bm.likelihoods.Normal(noise_prior=dist.Normal(0, 1)),
        "no x",
        True,
        ("noise_prior",),
        (),
    ),
    (lambda: bm.likelihoods.Normal(noise_prior="wide"), "no x", True, ("noise_prior",), ()),
    (lambda: bm.likelihoods.Normal(), "no x", False, (), ()),
    (lambda: bm.likelihoods.LinearRegression(intercept="yes"), "binary", True, ("intercept",), ()),
    (lambda: bm.likelihoods.LinearRegression(varying=["nope"]), "binary", True, ("varying",), ()),
]


@FUZZ
@given(st.sampled_from(range(len(LIK_CASES))))
def test_fuzz_likelihoods(i):
    make, kind, bad, fields, where = LIK_CASES[i]
    tasks = _lik_tasks(kind)

    def case():
        return bm.Hierarchical(make()).build(tasks)

    _check("likelihoods", case, fields, bad, where)


# ------------------------------------------------------------------ fit options and seeds
def _schools_model():
    return bm.Hierarchical(
        bm.likelihoods.NormalKnownNoise(),
        bm.populations.Normal(loc=dist.Normal(0.0, 5.0), scale=dist.HalfCauchy(5.0)),
    )


def _logistic():
    model = bm.Hierarchical(bm.likelihoods.LogisticRegression())
    tasks = _lik_tasks("binary")
    return model, tasks


BAD_INT = [2.5, "2", 0, -1, True, None, math.nan, 1j]
BAD_OPTIONS = {
    "num_samples": BAD_INT + [2],  # 2 is too few for an MCMC chain (exact: fine)
    "num_chains": BAD_INT,
    "num_warmup": [-1, 1.5, "10", None, True],
    "target_accept": [0.0, 1.0, 1.5, -0.1, "high", math.nan, True],
    "max_tree_depth": [0, 2.5, "10"],
    "thinning": [0, -2, 1.5],
    "chain_method": ["bogus", 3, None],
    "chain_threads": [0, -1, 1.5, "2", True],
    "dense_mass": ["yes", 1],
    "init_strategy": ["bogus", 3, "init_to_median"],
    "progress_bar": ["no", 2],
    "warn": ["no", None],
    "theta_batch": [0, -1, 2.5, "8", None],
    "marginal": ["bogus", None, 1],
    "log_likelihood": ["yes", None],
    "newton_steps": [0, -1, 1.5],
    "importance": ["yes", None],
    "guide": ["bogus", None],
    "learning_rate": [0.0, -1.0, math.inf, math.nan, "fast", None],
    "num_steps": [0, 2.5, "100"],
    "num_particles": [0, 1.5],
    "optimizer": ["adam", 3],
    "convergence_tol": [0.0, -1.0, "tight"],
    "quantiles": [[0.0, 0.5], [1.5], "median", [], None],
    "rtol": [0.0, 1.0, -1e-3, "small", None],
    "max_panels": [0, 2.5, "9"],
    "not_an_option": [1],
}
BAD_SEEDS = [2**64, 2**32, -1, 1.5, "0", True, None, np.float64(3.0), 2**63]
GOOD_SEEDS = [0, 1, 2**32 - 1, np.int64(5), np.uint32(7), np.int8(3)]


def _option_cases():
    cases = []
    for method in bm.inference.METHODS:
        names = set(bm.inference.ENGINES[method].options) if method != "auto" else set()
        if method == "auto":
            names = set(bm.inference.ENGINES["nuts"].options)
        for name, values in BAD_OPTIONS.items():
            if name not in names and name != "not_an_option":
                continue
            for v in values:
                if method == "exact" and name == "num_samples" and v == 2:
                    continue  # exact draws are i.i.d.: two per chain are fine
                cases.append((method, name, v))
    return cases


OPTION_CASES = _option_cases()


def _fit_case(method):
    if method == "laplace":
        return _logistic()
    return _schools_model(), bm.datasets.eight_schools()


#: valid options that keep a fit tiny, merged under every bad option: should a check be
#: missing, the case fails (invalid input accepted) in a fraction of a second
TINY = {
    "nuts": dict(num_chains=1, num_warmup=5, num_samples=5, progress_bar=False),
    "collapsed": dict(num_chains=1, num_warmup=5, num_samples=5, progress_bar=False),
    "laplace": dict(num_chains=1, num_warmup=5, num_samples=5, progress_bar=False),
    "auto": dict(num_chains=1, num_warmup=5, num_samples=5, progress_bar=False),
    "vi": dict(num_steps=5, num_samples=5, progress_bar=False),
    "exact": dict(num_chains=1, num_samples=5),
    "chees": dict(num_chains=4, num_warmup=5, num_samples=5),
    "svi": dict(num_steps=5, num_samples=5, progress_bar=False, task_batch_size=4),
}


def _tiny(method, **bad):
    return dict(TINY[method], **bad)


def test_fit_options_probe_values():
    """Every listed bad value of every option of every method (the probe's values among
    them: ``num_samples=2.5``, ``num_chains="2"``, ``theta_batch=0``), and every bad seed
    under every method."""
    for method, name, value in OPTION_CASES:
        model, tasks = _fit_case(method)
        fields = ("options", "unknown option") if name == "not_an_option" else (name,)
        _check(
            f"fit options ({method})",
            lambda: bm.fit(model, tasks, method=method, **_tiny(method, **{name: value})),  # noqa: B023
            fields,
            True,
        )
    for method in bm.inference.METHODS:
        model, tasks = _fit_case(method)
        for seed in BAD_SEEDS:
            _check(
                f"seed ({method})",
                lambda: bm.fit(model, tasks, method=method, seed=seed, **TINY[method]),  # noqa: B023
                ("seed",),
                True,
            )


# generated bad values, by the kind of option
_text = st.text(max_size=6)
_junk = st.none() | st.booleans() | _text | st.complex_numbers(allow_nan=False, max_magnitude=10)
_non_integral = st.floats(allow_nan=True).filter(lambda v: not float(v).is_integer())
BAD_BY_KIND = {
    "count": st.integers(max_value=0) | _non_integral | _junk,
    "count0": st.integers(max_value=-1) | _non_integral | _junk,
    "prob": st.floats().filter(lambda v: not 0 < v < 1) | _junk,
    "positive": st.floats().filter(lambda v: not 0 < v < math.inf) | _junk,
    "unit": st.floats().filter(lambda v: not 0 < v < 1) | _junk,
    "bool": st.integers() | _text | st.none() | st.floats(),
    "bool_or_none": st.integers() | _text | st.floats(),
    "choice": _text.filter(
        lambda v: (
            v
            not in (
                "auto",
                "vectorized",
                "parallel",
                "sequential",
                "direct",
                "chebyshev",
                "normal",
                "lowrank",
                "multivariate",
            )
        )
    )
    | st.integers()
    | st.none(),
    "init": _text.filter(lambda v: v not in ("median", "mean", "uniform", "sample", "feasible"))
    | st.integers(),
    "levels": st.lists(st.floats(), min_size=1, max_size=3).filter(
        lambda v: not all(0 < x < 1 for x in v)
    )
    | _text
    | st.just([]),
}
OPTION_KIND = {
    "num_chains": "count",
    "num_samples": "count",
    "max_tree_depth": "count",
    "thinning": "count",
    "theta_batch": "count",
    "newton_steps": "count",
    "num_steps": "count",
    "num_particles": "count",
    "max_panels": "count",
    "num_warmup": "count0",
    "target_accept": "prob",
    "learning_rate": "positive",
    "convergence_tol": "positive",
    "rtol": "unit",
    "warn": "bool",
    "log_likelihood": "bool",
    "importance": "bool",
    "progress_bar": "bool_or_none",
    "chain_method": "choice",
    "marginal": "choice",
    "guide": "choice",
    "init_strategy": "init",
    "quantiles": "levels",
    "task_batch_size": "count",
    "encoder_width": "count",
    "local_steps": "count0",
    "local_learning_rate": "positive",
    "param_tol": "positive",
}


@st.composite
def bad_option(draw):
    method = draw(st.sampled_from(bm.inference.METHODS))
    engine = bm.inference.ENGINES["nuts" if method == "auto" else method]
    name = draw(st.sampled_from(sorted(n for n in engine.options if n in OPTION_KIND)))
    value = draw(BAD_BY_KIND[OPTION_KIND[name]])
    return method, name, value


@settings(FUZZ, max_examples=150)
@given(bad_option())
def test_fuzz_fit_options(case):
    method, name, value = case
    model, tasks = _fit_case(method)
    _check(
        f"fit options ({method})",
        lambda: bm.fit(model, tasks, method=method, **_tiny(method, **{name: value})),
        (name,),
        True,
    )


@settings(FUZZ, max_examples=60)
@given(
    st.sampled_from(bm.inference.METHODS),
    st.integers(min_value=2**32) | st.integers(max_value=-1) | st.floats() | _junk,
)
def test_fuzz_bad_seeds(method, seed):
    model, tasks = _fit_case(method)
    _check(
        f"seed ({method})",
        lambda: bm.fit(model, tasks, method=method, seed=seed, **TINY[method]),
        ("seed",),
        True,
    )


@settings(FUZZ, max_examples=30)
@given(
    st.sampled_from(GOOD_SEEDS),
    st.integers(1, 3),
    st.integers(1, 20),
    st.sampled_from([None, "flat tau", "fixed mu"]),
)
def test_fuzz_exact_fits(seed, chains, draws, variant):
    """Valid seeds and options: an exact fit (closed form, no compile) has the asked shape,
    and the same numpy-integer seed gives the same draws as the Python int."""
    loc = 0.5 if variant == "fixed mu" else dist.Normal(0.0, 5.0)
    scale = dist.HalfNormal(10.0) if variant == "flat tau" else dist.HalfCauchy(5.0)
    model = bm.Hierarchical(
        bm.likelihoods.NormalKnownNoise(), bm.populations.Normal(loc=loc, scale=scale)
    )
    tasks = bm.datasets.eight_schools()

    def verify(post):
        assert post.samples["theta"].shape == (chains, draws, 8)
        again = bm.fit(
            model, tasks, method="exact", seed=int(seed), num_chains=chains, num_samples=draws
        )
        np.testing.assert_array_equal(post.samples["theta"], again.samples["theta"])

    _check(
        "fit exact (valid)",
        lambda: bm.fit(
            model, tasks, method="exact", seed=seed, num_chains=chains, num_samples=draws
        ),
        ("seed",),
        False,
        verify=verify,
    )


EXACT_PRIORS = [
    # (keyword, value, bad)
    ("scale_prior", lambda: dist.HalfCauchy(5.0), False),
    ("scale_prior", lambda: dist.HalfCauchy(math.inf), True),  # was "math domain error"
    ("scale_prior", lambda: dist.HalfNormal(1e300), None),
    ("scale_prior", lambda: dist.Uniform(5.0, 1.0), True),
    ("scale_prior", lambda: dist.Uniform(-1.0, 1.0), True),
    ("scale_prior", lambda: dist.Normal(0.0, 1.0), True),
    ("scale_prior", lambda: -1.0, True),
    ("scale_prior", lambda: 0.0, False),  # tau fixed at 0: complete pooling
    ("scale_prior", lambda: "wide", True),
    ("loc_prior", lambda: dist.Normal(0.0, 1e-300), True),  # was a ZeroDivisionError
    ("loc_prior", lambda: dist.Normal(0.0, math.inf), True),
    ("loc_prior", lambda: dist.StudentT(3.0), True),
    ("loc_prior", lambda: "flat", False),
    ("loc_prior", lambda: "flatt", True),
    ("loc_prior", lambda: math.nan, True),
    ("loc_prior", lambda: 2.0, False),
]


@settings(FUZZ, max_examples=30)
@given(st.sampled_from(range(len(EXACT_PRIORS))), st.sampled_from([None, 1, 2**32]))
def test_fuzz_exact_solver(i, seed):
    key, make, bad = EXACT_PRIORS[i]
    tasks = bm.datasets.eight_schools()
    kw = {key: make(), "num_samples": 5, "num_chains": 1}
    fields = (key,)
    if seed is not None:
        kw["seed"] = seed
        if seed >= 2**32:
            fields, bad = ("seed",), True

    def verify(post):
        assert post.samples["theta"].shape == (1, 5, 8)
        assert np.all(np.isfinite(post.samples["theta"]))

    if bad is None:  # needs nan branch: huge prior scales (float range), either outcome
        bad = False
        verify = None
    _check(
        "exact.normal_normal",
        lambda: bm.exact.normal_normal(tasks, **kw),
        fields,
        bad,
        verify=verify,
    )


# ------------------------------------------------------------------ estimators
EST_FAULTS = [
    None,
    "y_nan",
    "se_zero",
    "se_neg",
    "se_nan",
    "complex",
    "shape",
    "se_2d",
    "empty",
    "one",
    "method",
    "level",
    "mods_rows",
    "mods_nan",
    "mods_collinear",
    "text",
]


@settings(FUZZ, max_examples=80)
@given(
    st.sampled_from(
        [
            "random_effects",
            "fixed_effect",
            "tau2_estimate",
            "james_stein",
            "complete_pooling",
            "no_pooling",
            "mean_of_estimates",
        ]
    ),
    st.integers(3, 8).flatmap(
        lambda k: st.tuples(
            st.lists(moderate, min_size=k, max_size=k),
            st.lists(st.floats(0.05, 20.0), min_size=k, max_size=k),
        )
    ),
    st.sampled_from(EST_FAULTS),
    st.sampled_from(bm.estimators.TAU2_METHODS),
)
def test_fuzz_estimators(fn_name, data, fault, method):
    y, se = (list(v) for v in data)
    k = len(y)
    fn = getattr(bm.estimators, fn_name)
    kw = {}
    fields, bad = ("y",), fault is not None
    if fault == "y_nan":
        y[0] = math.nan
    elif fault in ("se_zero", "se_neg", "se_nan"):
        se[1] = {"se_zero": 0.0, "se_neg": -2.0, "se_nan": math.nan}[fault]
        fields = ("se",)
    elif fault == "complex":
        y[0] = 1 + 1j
    elif fault == "shape":
        se = se[:-1]
        fields = ("se",)
    elif fault == "se_2d":
        se = [[s] for s in se]
        fields = ("se",)
    elif fault == "empty":
        y, se = [], []
    elif fault == "one":
        y, se = y[:1], se[:1]
        bad = fn_name not in ("complete_pooling", "no_pooling", "james_stein")
        if fn_name == "james_stein":
            bad = True
    elif fault == "text":
        y[0] = "big"
    elif fault == "method":
        if fn_name in ("random_effects", "tau2_estimate"):
            kw["method"] = "bogus"
            fields = ("method",)
        else:
            bad = False
    elif fault == "level":
        if fn_name == "tau2_estimate":
            bad = False
        else:
            kw["level"] = 1.5
            fields = ("level",)
    elif fault and fault.startswith("mods"):
        if fn_name != "random_effects":
            bad = False
        else:
            mods = [[float(i)] for i in range(k)]
            if fault == "mods_rows":
                mods = mods[:-1]
            elif fault == "mods_nan":
                mods[0] = [math.nan]
            else:
                mods = [[1.0, 2.0]] * k
            kw["mods"] = mods
            fields = ("mods",)
    if fn_name in ("random_effects", "tau2_estimate") and "method" not in kw:
        kw["method"] = method

    def verify(res):
        if fn_name == "tau2_estimate":
            assert np.all(np.isfinite(res)) and np.all(res >= 0)
        elif hasattr(res, "mu"):
            assert np.all(np.isfinite(np.asarray(res.mu)))

    _check(f"estimators.{fn_name}", lambda: fn(y, se, **kw), fields, bad, verify=verify)


@settings(FUZZ, max_examples=10)
@given(st.sampled_from(bm.estimators.TAU2_METHODS), st.sampled_from([1e300, 1e200]))
def test_fuzz_estimators_extreme(method, big):
    """Estimates whose squares leave float64: a ValueError naming y, never mu = nan."""
    _check(
        "estimators (extreme magnitudes)",
        lambda: bm.estimators.random_effects([big, -big, 0.0], [1.0, 1.0, 1.0], method=method),
        ("y", "se"),
        True,
        verify=lambda res: np.testing.assert_(np.isfinite(res.mu)),
    )


# ------------------------------------------------------------------ adapt / predict
@pytest.fixture(scope="module")
def exact_post():
    return bm.fit(_schools_model(), bm.datasets.eight_schools(), method="exact", num_samples=50)


@pytest.fixture(scope="module")
def linear_post():
    """A Posterior of a two-input linear regression with made-up draws (no fit, nothing
    compiled): the cases below are all rejected before the draws are used."""
    rng = np.random.default_rng(0)
    x = np.column_stack([np.ones(24), rng.normal(size=24)])
    y = x @ np.array([0.5, -1.0]) + rng.normal(size=24)
    tasks = bm.TaskSet.from_arrays(y=y, x=x, task=np.repeat(["p", "q", "r", "s"], 6))
    model = bm.Hierarchical(bm.likelihoods.LinearRegression(intercept=False, noise="shared"))
    built = model.build(tasks)
    samples = {
        "mu": rng.normal(size=(1, 20, 2)),
        "tau": rng.uniform(0.5, 1.0, size=(1, 20, 2)),
        "sigma": rng.uniform(0.5, 1.0, size=(1, 20)),
        "theta": rng.normal(size=(1, 20, 4, 2)),
    }
    return bm.posterior.Posterior(
        samples,
        method="made up",
        dims=built.dims,
        coords=built.coords,
        tasks=tasks,
        model=model,
        param_shape=(2,),
    )


PREDICT_CASES = [
    # (kwargs, fields, where); every one invalid
    (dict(x=np.ones((3, 3))), ("x",), ("2",)),
    (dict(x=np.ones(3)), ("x",), ()),
    (dict(x=np.ones((3, 1))), ("x",), ()),
    (dict(x=np.ones((2, 2, 2))), ("x",), ()),
    (dict(x=np.ones((3, 2)) * 1j), ("x",), ()),
    (dict(x=np.ones((0, 2))), ("x",), ()),
    (dict(x=5.0), ("x",), ()),
    (dict(x=np.ones((3, 2)), task="nope"), ("task",), ("nope",)),
    (dict(x=np.ones((3, 2)), task=17), ("task",), ()),
    (dict(num_obs=0), ("num_obs", "x"), ()),
    (dict(num_obs=2.5), ("num_obs", "x"), ()),
    (dict(seed=2**64), ("seed",), ()),
    (dict(seed=-3), ("seed",), ()),
    (dict(seed=1.5), ("seed",), ()),
    (dict(seed="1"), ("seed",), ()),
]
EXACT_PREDICT_CASES = [
    (dict(num_obs=3), ("noise_scale",), ()),  # known noise: new rows need their scale
    (dict(num_obs=3, noise_scale=-1.0), ("noise_scale",), ()),
    (dict(num_obs=3, noise_scale=[1.0, 2.0]), ("noise_scale",), ()),
    (dict(num_obs=3, noise_scale=math.nan), ("noise_scale",), ()),
    (dict(x=np.ones((3, 1)), noise_scale=1.0), ("x",), ()),
    (dict(num_obs=-1, noise_scale=1.0), ("num_obs",), ()),
    (dict(num_obs=3, noise_scale=1.0, task="Z"), ("task",), ("Z",)),
]


@settings(FUZZ, max_examples=40)
@given(st.sampled_from(range(len(PREDICT_CASES) + len(EXACT_PREDICT_CASES))))
def test_fuzz_predict(linear_post, exact_post, i):
    if i < len(PREDICT_CASES):
        post, (kw, fields, where) = linear_post, PREDICT_CASES[i]
    else:
        post, (kw, fields, where) = exact_post, EXACT_PREDICT_CASES[i - len(PREDICT_CASES)]
    _check("predict", lambda: post.predict(**kw), fields, True, where)


ADAPT_CASES = [
    (lambda: [1.0, 2.0], {}, ("new_tasks",)),
    (
        lambda: bm.TaskSet.from_arrays(y=[1.0], x=[[1.0, 2.0, 3.0]], task=["n"]),
        {},
        ("new_tasks", "x"),
    ),
    (lambda: bm.TaskSet.from_arrays(y=[1.0], task=["n"]), {}, ("x",)),
    (
        lambda: bm.TaskSet.from_arrays(y=[1.0], x=[[1.0, 2.0]], task=["n"]),
        {"method": "bogus"},
        ("method",),
    ),
    (
        lambda: bm.TaskSet.from_arrays(y=[1.0], x=[[1.0, 2.0]], task=["n"]),
        {"seed": 2**64},
        ("seed",),
    ),
    (lambda: bm.TaskSet.from_arrays(y=[1.0], x=[[1.0, 2.0]], task=["n"]), {"seed": 0.5}, ("seed",)),
    (
        lambda: bm.TaskSet.from_arrays(y=[1.0], x=[[1.0, 2.0]], task=["n"]),
        {"min_ess": "all"},
        ("min_ess",),
    ),
    (
        lambda: bm.TaskSet.from_arrays(y=[1.0], x=[[1.0, 2.0]], task=["n"]),
        {"num_warmup": -5},
        ("num_warmup",),
    ),
]


@settings(FUZZ, max_examples=20)
@given(st.sampled_from(range(len(ADAPT_CASES))))
def test_fuzz_adapt(linear_post, i):
    make, kw, fields = ADAPT_CASES[i]
    _check("adapt", lambda: linear_post.adapt(make(), **kw), fields, True)


# ------------------------------------------------------------------ command line
def _cli(argv):
    """``(exit code, stderr)`` of ``bayesmeta argv`` run in-process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


CLI_BAD = [
    [],
    ["bogus"],
    ["fit", "--chains", "0"],
    ["fit", "--chains", "two"],
    ["fit", "--chains", "1.5"],
    ["fit", "--draws", "2"],
    ["fit", "--draws", "-4"],
    ["fit", "--warmup", "-1"],
    ["fit", "--seed", str(2**64)],
    ["fit", "--seed", str(2**32)],
    ["fit", "--seed", "-1"],
    ["fit", "--seed", "x"],
    ["fit", "--method", "bogus"],
    ["fit", "/nonexistent/model.py"],
    ["fit", "--unknown-flag"],
    ["meta-analysis"],
    ["meta-analysis", "/nonexistent.csv", "--estimate", "y", "--se", "s"],
    ["meta-analysis", "{csv}", "--estimate", "nope", "--se", "s"],
    ["meta-analysis", "{csv}", "--estimate", "y", "--se", "nope"],
    ["meta-analysis", "{csv}", "--estimate", "y", "--se", "s", "--method", "bogus"],
    ["meta-analysis", "{csv}", "--estimate", "y", "--se", "s", "--level", "1.5"],
    ["meta-analysis", "{csv}", "--estimate", "y", "--se", "s", "--level", "zero"],
    ["meta-analysis", "{bad_csv}", "--estimate", "y", "--se", "s"],
    ["meta-analysis", "{dup_csv}", "--estimate", "y", "--se", "s"],
    ["meta-analysis", "{csv}", "--estimate", "y", "--se", "s", "--variance", "s"],
    ["study", "--num-tasks", "3"],
    ["study", "--seed", "-2"],
    ["study", "--seed", str(2**64), "--num-reps", "1", "--no-exact"],
    ["study", "--tau", "-1"],
    ["study", "--level", "2"],
]
CLI_GOOD = [
    ["meta-analysis", "{csv}", "--estimate", "y", "--se", "s"],
    ["meta-analysis", "{csv}", "--estimate", "y", "--se", "s", "--method", "DL", "--json"],
]


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    files = {
        "csv": "y,s\n0.1,0.2\n0.5,0.3\n-0.2,0.25\n0.3,0.1\n",
        "bad_csv": "y,s\n0.1,0.2\nabc,0.3\n0.3,0.1\n",
        "dup_csv": "y,s,s\n0.1,0.2,0.2\n0.5,0.3,0.3\n0.3,0.1,0.1\n",
    }
    out = {}
    for name, text in files.items():
        path = d / f"{name}.csv"
        path.write_text(text)
        out[name] = str(path)
    return out


@settings(FUZZ, max_examples=60)
@given(st.sampled_from(range(len(CLI_BAD) + len(CLI_GOOD))))
def test_fuzz_cli(cli_files, i):
    good = i >= len(CLI_BAD)
    argv = [a.format(**cli_files) for a in (CLI_GOOD[i - len(CLI_BAD)] if good else CLI_BAD[i])]
    FUZZ_CASES["command line"] += 1
    with COMPILES.watching() as seen:
        code, err = _cli(argv)
    assert "Traceback" not in err
    if good:
        assert code == 0, (argv, err)
        return
    assert code == 2, (argv, code, err)
    assert "error" in err and len(err.strip()) > 0, (argv, err)
    assert seen["compiles"] == 0, (argv, err)


# ------------------------------------------------------------------ the probe's defects
def test_init_strategy_by_name_and_largest_seed_under_nuts():
    """``init_strategy="median"`` (a TypeError before) and the largest documented seed
    (2**64 was an OverflowError under NUTS) both run; a numpy seed gives the same draws."""
    model, tasks = _schools_model(), bm.datasets.eight_schools()
    opts = dict(num_chains=1, num_warmup=30, num_samples=10, progress_bar=False, warn=False)
    post = bm.fit(model, tasks, seed=2**32 - 1, init_strategy="median", **opts)
    assert post.samples["theta"].shape == (1, 10, 8)
    assert np.all(np.isfinite(post.samples["theta"]))
    again = bm.fit(model, tasks, seed=np.uint32(2**32 - 1), init_strategy="median", **opts)
    np.testing.assert_array_equal(post.samples["theta"], again.samples["theta"])


def test_tuple_hyperprior_is_refused_with_the_way_out():
    """``Normal(loc=(0, 5))`` was silently a fixed mean [0, 5]; the message says how to
    give a prior and how to give fixed values, and the array form still fixes them."""
    with pytest.raises(ValueError, match=r"loc: got a tuple \(0, 5\).*dist\.Normal\(0, 5\)"):
        bm.populations.Normal(loc=(0, 5))
    with pytest.raises(ValueError, match=r"scale: got a list.*np\.array"):
        bm.populations.Normal(scale=[1.0, 2.0])
    pop = bm.populations.Normal(loc=np.array([0.0, 5.0]))
    np.testing.assert_array_equal(pop.loc, [0.0, 5.0])
