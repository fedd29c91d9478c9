"""The formula interface: a mixed-model formula and a DataFrame to a likelihood, a
population and a TaskSet (what :meth:`bayesmeta.Hierarchical.from_formula` returns).

The formula is read by `formulae <https://bambinos.github.io/formulae/>`_ (the optional
extra ``pip install "bayesmeta[formula]"``), so the syntax is Bambi's: common terms
``x1 + x2``, interactions ``x1 * x2`` / ``x1:x2``, categorical dummies (``c[level]``
columns), transforms (``scale(x)``, ``np.log(x)``, names seen from the caller's scope),
and group-specific terms ``(expr | g)``.

>>> import numpy as np, pandas as pd, bayesmeta as bm
>>> df = pd.DataFrame({"county": list("aabbcc"), "floor": [0, 1, 0, 1, 1, 0],
...                    "log_uranium": [0.1, 0.1, -0.3, -0.3, 0.5, 0.5],
...                    "log_radon": [1.2, 0.4, 0.9, 0.2, 1.8, 1.5]})
>>> model, tasks = bm.Hierarchical.from_formula(
...     "log_radon ~ floor + log_uranium + (1 | county)", df)
>>> model.likelihood.varying, model.population.task_covariates, tasks.task_x_names
(['intercept'], ['log_uranium'], ('log_uranium',))

**Rules.**

1. *One grouping factor*: the groups ``g`` are the tasks. ``(1 | g)`` is a varying
   intercept (``Normal`` population, scalar ``theta``); ``(1 + x | g)`` or ``(x | g)``
   correlated varying intercept and slope (``MvNormal`` population, ``theta`` a vector
   over dim ``coef``); ``(0 + x | g)`` a varying slope only. Several varying coefficients
   always get the correlated ``MvNormal`` (formulae reads ``(1 | g) + (0 + x | g)`` as the
   same terms as ``(1 + x | g)``). Several grouping factors, nested (``(1 | g / h)``) or
   crossed (``(1 | g) + (1 | h)``, ``(1 | g:h)``) terms are a ValueError: not supported.
2. *Varying, task-level, common.* Every group-specific term is a *varying* coefficient,
   drawn from the population; a common term of the same name is the same coefficient
   (its population mean ``mu`` plays the role of the common coefficient), and a varying
   coefficient has a learned mean whether or not it is also written as a common term
   (``y ~ (1 + x | g)`` is ``y ~ 1 + x + (1 + x | g)``). Of the other common terms, a
   term whose design columns are constant within every group is a *task-level* term: it
   enters the population regression of the varying intercept (``mu + B z_t``, site
   ``beta_task``; the population's ``task_covariates`` is the list of such columns when
   the intercept is the only varying coefficient, else ``{"intercept": [...]}``). Without
   a varying intercept it stays a common coefficient. All remaining terms are *common*
   coefficients of the likelihood (one value shared by all tasks, site ``beta`` over dim
   ``common``; ``varying=`` of the likelihood lists the varying ones). For the radon
   data, ``log_radon ~ floor + log_uranium + (1 | county)`` gives a varying intercept per
   county, a common ``floor`` coefficient (it varies within counties), and
   ``log_uranium`` (one value per county) in the population regression. An interaction
   with a within-group term (``floor:log_uranium``) varies within groups: common.
3. *Families*: ``"gaussian"`` (``LinearRegression`` with a learned shared noise scale;
   an intercept-only design gives ``likelihoods.Normal()``), ``"bernoulli"``
   (``LogisticRegression``; the response must be 0/1), ``"binomial"`` (the response
   written ``p(r, n)``, ``r`` successes out of ``n`` trials: ``Binomial``), ``"poisson"``
   (``Poisson``, log link). Without covariates the GLMs have a varying intercept alone.
4. *Names*: the TaskSet is built by ``TaskSet.from_dataframe`` from formulae's design
   columns, so coefficients carry formulae's names (``intercept``, ``floor``, ``x1:x2``,
   ``c[b]``), task covariates too (``intercept:log_uranium`` in ``beta_task``'s
   ``task_covariate`` coordinates when ``theta`` is a vector). Coefficients come in
   formulae's order of the common terms, then group-specific terms that are not also
   common; the task labels are the group values as ``str``, in order of first appearance.
5. *Bad input* is a ValueError before anything compiles, naming the column and, where it
   applies, the group and the row (the frame's index label): a column the formula uses
   that is not in the data; a missing value in any column the formula uses (checked on
   the raw columns: formulae would drop such rows silently); a grouping factor with a
   single level; for ``p(r, n)`` a non-integer or negative ``r`` or ``n``, ``n = 0`` or
   ``r > n``; a bernoulli response that is not 0/1; a poisson response that is not a
   non-negative integer count; collinear design columns (a coefficient that is not
   identified, e.g. a common intercept beside a full set of varying dummies
   ``(0 + c | g)``: every varying coefficient has its own mean), or task-level columns
   collinear over the groups; a non-finite design value (a transform's: ``np.log(0)``).

**Options** (keyword arguments, passed through): ``population=`` a dict of keyword
arguments of the population (``loc``, ``scale``, ``parameterization``, ``corr``, ``name``;
not ``task_covariates``, which the formula sets), ``common_prior=`` (the prior of each
common coefficient, default ``Normal(0, 5)``), ``noise_prior=`` (gaussian only: the prior
of the noise sd, default ``HalfNormal(5)``), ``coef=`` (the prior of each task-regression
coefficient, default ``Normal(0, 5)``). An option the formula gives no use for (a
``common_prior`` without common terms, a ``coef`` without task-level terms) is an error.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from bayesmeta import likelihoods as lk
from bayesmeta import populations as pops
from bayesmeta.tasks import TaskSet

__all__ = ["FAMILIES", "parse_formula"]

#: the ``family=`` names, each with the likelihood it builds
FAMILIES = {
    "gaussian": "LinearRegression (or Normal for an intercept-only design)",
    "bernoulli": "LogisticRegression",
    "binomial": "Binomial (response p(r, n))",
    "poisson": "Poisson",
}
_OPTIONS = ("population", "common_prior", "noise_prior", "coef")
_INTERCEPT = "intercept"


def _import_formulae():
    try:
        import formulae
    except ImportError:
        raise ImportError(
            "the formula interface (bm.Hierarchical.from_formula) needs the optional "
            'formulae package: pip install "bayesmeta[formula]"'
        ) from None
    return formulae


def parse_formula(formula: str, data: Any, family: str = "gaussian", **options):
    """``(likelihood, population, tasks)`` from a mixed-model formula and a DataFrame;
    the rules, families and options are those of the module docstring.

    Args:
      formula: e.g. ``"log_radon ~ floor + log_uranium + (1 | county)"``.
      data: a pandas DataFrame with every column the formula names.
      family: ``"gaussian"``, ``"bernoulli"``, ``"binomial"`` or ``"poisson"``.
      **options: ``population=`` (dict), ``common_prior=``, ``noise_prior=``, ``coef=``.
    """
    fm = _import_formulae()
    from formulae.environment import Environment

    if not isinstance(formula, str) or "~" not in formula:
        raise ValueError(f"formula: expected a string 'response ~ terms', got {formula!r}")
    if family not in FAMILIES:
        raise ValueError(f"family: must be one of {list(FAMILIES)}, got {family!r}")
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"options: unknown {unknown} (known: {list(_OPTIONS)})")
    if not hasattr(data, "columns") or not hasattr(data, "index") or not hasattr(data, "iloc"):
        raise ValueError(f"data: expected a pandas DataFrame, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError("data: the data frame has no rows")
    try:
        desc = fm.model_description(formula)
    except Exception as err:  # formulae's parse errors are of several types
        raise ValueError(f"formula: could not parse {formula!r} ({err})") from None
    if desc.response is None:
        raise ValueError(f"formula: {formula!r} has no response (write 'y ~ ...')")
    group = _grouping_factor(desc, formula)
    scope = _caller_scope()
    _check_columns(desc, data, scope)
    index = list(data.index)
    labels = _check_group(data, group, index)
    _check_missing(data, desc.var_names, group, labels, index)
    response = _response_spec(desc, family, formula)
    if response[0] == "proportion":
        _check_proportion(data, response[1], response[2], group, labels, index)
    try:
        env = Environment(scope) if scope else 0
        design = fm.design_matrices(formula, data, na_action="error", env=env)
    except KeyError as err:
        name = err.args[0] if err.args else err
        raise ValueError(
            f"formula: {name!r} is neither a column of the data frame nor a name in scope "
            f"(columns: {list(map(str, data.columns))})"
        ) from None

    where = _Where(group, labels, index)
    y, trials, y_name = _response_values(design.response, response, family, where)
    varying = _varying_columns(design.group, group)
    terms = _common_terms(design.common)
    for name, values in (col for term in terms for col in term):
        if name in varying and not np.array_equal(values, varying[name]):
            raise ValueError(
                f"formula: term {name!r} is coded differently among the common and the "
                "group-specific terms"
            )
    has_varying_intercept = _INTERCEPT in varying
    codes = _group_codes(labels)
    x_cols, task_cols, columns = [], [], {}
    for term in terms:
        if [name for name, _ in term] == [_INTERCEPT]:  # varying, or else a common one
            continue
        # a column that is also group-specific is that varying coefficient; the rest of
        # the term is task-level when constant within every group (and there is a
        # varying intercept for it to move)
        own = [values for name, values in term if name not in varying]
        task_level = has_varying_intercept and own and all(_constant_within(v, codes) for v in own)
        for name, values in term:
            (task_cols if task_level and name not in varying else x_cols).append(name)
            columns[name] = values
    for name, values in varying.items():
        if name != _INTERCEPT and name not in columns:
            x_cols.append(name)
            columns[name] = values
    intercept = has_varying_intercept or any(
        name == _INTERCEPT for term in terms for name, _ in term
    )
    coef_names = ([_INTERCEPT] if intercept else []) + x_cols
    for name, values in [(y_name, y), *((c, columns[c]) for c in x_cols + task_cols)]:
        bad = ~np.isfinite(values)
        if bad.any():  # a transform's value (np.log(0)); the raw columns have no gaps
            pos = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{name}: non-finite design value ({values[pos]}) at {where(pos)}")
    ones = np.ones(len(index))
    _check_identified(
        coef_names,
        [columns.get(c, ones) for c in coef_names],
        "design column",
        "every varying term has its own population mean, so a common intercept beside a "
        "full set of varying dummies is redundant: write '0 + ...'",
    )
    if task_cols:
        first = _first_rows(codes)
        task_values = [ones[first]] + [columns[c][first] for c in task_cols]
        _check_identified(
            [_INTERCEPT, *task_cols],
            task_values,
            "task-level column",
            "over the groups, beside the varying intercept's mean",
        )
    varying_names = [c for c in coef_names if c in varying]
    num_common = len(coef_names) - len(varying_names)

    tasks = _task_set(data, group, labels, y, y_name, trials, response, x_cols, task_cols, columns)
    likelihood = _likelihood(family, intercept, x_cols, varying_names, num_common, options)
    population = _population(varying_names, task_cols, options)
    return likelihood, population, tasks


# ---------------------------------------------------------------------- reading the formula
def _grouping_factor(desc, formula: str) -> str:
    """The one grouping factor's column name (a ValueError for none, several, or an
    interaction of factors)."""
    factors = []
    for term in desc.group_terms:
        name = ":".join(_component_name(c) for c in term.factor.components)
        if name not in factors:
            factors.append(name)
    if not factors:
        raise ValueError(
            f"formula: {formula!r} has no group-specific term; a hierarchical model needs one "
            "grouping factor, e.g. '(1 | g)' (in parentheses)"
        )
    if len(factors) > 1:
        raise ValueError(
            f"formula: several grouping factors {factors} (nested or crossed group-specific "
            "terms); only one grouping factor is supported"
        )
    comps = desc.group_terms[0].factor.components
    if len(comps) != 1 or type(comps[0]).__name__ != "Variable":
        raise ValueError(
            f"formula: the grouping factor {factors[0]!r} must be one column of the data "
            "(nested or crossed groups are not supported: make one column of the combined "
            "groups)"
        )
    return comps[0].name


def _component_name(component) -> str:
    return getattr(component, "name", None) or str(component)


def _caller_scope() -> list[dict]:
    """The namespaces (locals, globals) of the first caller outside bayesmeta, where the
    formula's functions and free names (``np.log``, a user's transform) are looked up, as
    formulae does for its own caller."""
    frame = sys._getframe(1)
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith("bayesmeta"):
        frame = frame.f_back
    return [] if frame is None else [frame.f_locals, frame.f_globals]


def _check_columns(desc, data, scope: list[dict]) -> None:
    """Every name of the formula is a column or a name in the caller's scope."""
    columns = set(data.columns)
    for name in sorted(desc.var_names):
        # formulae lists an empty name for a literal inside a call (np.log(y + 1))
        if not name or name in columns or any(name in ns for ns in scope):
            continue
        raise ValueError(
            f"formula: column {name!r} is not in the data frame "
            f"(columns: {list(map(str, data.columns))})"
        )


class _Where:
    """``group 'a', row 3`` of a position, in the frame's index labels."""

    def __init__(self, group: str, labels: np.ndarray, index: list):
        self.group, self.labels, self.index = group, labels, index

    def __call__(self, pos: int) -> str:
        return f"group {self.labels[pos]!r} of {self.group!r}, row {self.index[pos]!r}"


def _check_group(data, group: str, index: list) -> np.ndarray:
    """The group label (``str``) of every row; a missing group or one level is an error."""
    raw = data[group]
    missing = np.asarray(raw.isna())
    if missing.any():
        pos = int(np.flatnonzero(missing)[0])
        raise ValueError(
            f"{group}: the grouping factor has a missing value (NaN) at row {index[pos]!r}"
        )
    labels = np.array([str(v) for v in raw.tolist()], dtype=object)
    levels = list(dict.fromkeys(labels.tolist()))
    if len(levels) != raw.nunique():
        raise ValueError(f"{group}: two values of the grouping factor print the same label")
    if len(levels) < 2:
        raise ValueError(
            f"{group}: the grouping factor has one level ({levels[0]!r}); a hierarchical "
            "model needs at least two groups"
        )
    return labels


def _check_missing(data, var_names, group, labels, index) -> None:
    for col in data.columns:  # in the frame's order, so the first problem is reported
        if col not in var_names or col == group:
            continue
        missing = np.asarray(data[col].isna())
        if missing.any():
            pos = int(np.flatnonzero(missing)[0])
            raise ValueError(
                f"{col}: missing value (NaN) at group {labels[pos]!r} of {group!r}, "
                f"row {index[pos]!r}"
            )


def _response_spec(desc, family: str, formula: str) -> tuple:
    """``("plain", name)`` or ``("proportion", r, n)`` (each an argument of ``p(r, n)``:
    ``("column", name)``, ``("value", number)`` or ``("expr", text)``)."""
    comps = desc.response.term.components
    call = comps[0].call if len(comps) == 1 and hasattr(comps[0], "call") else None
    is_prop = call is not None and getattr(call, "callee", None) in ("p", "proportion")
    if family == "binomial":
        if not is_prop or len(call.args) != 2 or call.kwargs:
            raise ValueError(
                f"formula: family='binomial' needs the response written p(r, n) (r successes "
                f"out of n trials), got {formula.split('~')[0].strip()!r}"
            )
        return ("proportion", *(_arg(a) for a in call.args))
    if is_prop:
        raise ValueError(f"formula: a p(r, n) response is for family='binomial', not {family!r}")
    return ("plain", _component_name(comps[0]) if len(comps) == 1 else str(desc.response))


def _arg(arg) -> tuple:
    kind = type(arg).__name__
    if kind == "LazyVariable":
        return ("column", arg.name)
    if kind == "LazyValue":
        return ("value", arg.value)
    return ("expr", str(arg))


def _check_proportion(data, r_arg, n_arg, group, labels, index) -> None:
    """``p(r, n)`` on the raw columns (formulae's own checks name neither row nor group):
    integers, ``n >= 1``, ``0 <= r <= n``."""
    where = _Where(group, labels, index)
    values = {}
    for role, (kind, val) in (("r", r_arg), ("n", n_arg)):
        if kind == "expr":
            continue
        if kind == "value":
            arr, name = np.full(len(index), val, dtype=object), repr(val)
        else:
            arr, name = data[val].to_numpy(dtype=object), repr(val)
        nums = np.empty(len(arr))
        for pos, v in enumerate(arr):
            try:
                nums[pos] = float(v)
            except (TypeError, ValueError):
                raise ValueError(
                    f"p(r, n): {role} = {name} has {v!r}, not a number, at {where(pos)}"
                ) from None
        low = 1 if role == "n" else 0
        bad = (nums < low) | (nums != np.round(nums)) | ~np.isfinite(nums)
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            what = "trials must be positive" if role == "n" else "successes must be non-negative"
            raise ValueError(
                f"p(r, n): {role} = {name}: {what} integers, got {nums[pos]:g} at {where(pos)}"
            )
        values[role] = (nums, name)
    if len(values) == 2:
        (r, r_name), (n, n_name) = values["r"], values["n"]
        bad = r > n
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"p(r, n): {r[pos]:g} successes (r = {r_name}) exceed {n[pos]:g} trials "
                f"(n = {n_name}) at {where(pos)}"
            )


# ---------------------------------------------------------------------- design columns
def _response_values(resp, spec, family, where):
    """``(y, trials or None, y name)`` from formulae's response, checked for the family."""
    values = np.asarray(resp.design_matrix)
    name = str(resp.name)
    if spec[0] == "proportion":
        values = values.astype(float)
        return values[:, 0], values[:, 1], spec[1][1] if spec[1][0] == "column" else "r"
    if values.ndim != 1:
        raise ValueError(
            f"{name}: the response is categorical with {values.shape[1]} levels; give a "
            f"numeric column (or pick a level: '{name}[level] ~ ...')"
        )
    try:
        y = values.astype(float)
    except (TypeError, ValueError):
        pos = next(i for i, v in enumerate(values) if not _is_number(v))
        raise ValueError(
            f"{name}: the response has {values[pos]!r}, not a number, at {where(pos)}"
        ) from None
    if family == "bernoulli":
        bad = (y != 0) & (y != 1)
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{name}: family='bernoulli' needs a 0/1 response, got {y[pos]:g} at {where(pos)}"
            )
    if family == "poisson":
        bad = (y < 0) | (y != np.round(y))
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{name}: family='poisson' needs non-negative integer counts, got "
                f"{y[pos]:g} at {where(pos)}"
            )
    return y, None, name


def _is_number(v) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def _varying_columns(group_matrix, group: str) -> dict[str, np.ndarray]:
    """Each varying coefficient's per-row value, by name (``intercept`` for ``1|g``).

    formulae lays a group-specific column out per group (``x|g[a]``, ``x|g[b]``, ...),
    zero outside its group; the sum over the groups is the column's value in every row.
    The matrix may be sparse (rows x groups), so it is summed, never made dense."""
    matrix = group_matrix.design_matrix
    suffix = f"|{group}["
    members: dict[str, list[int]] = {}
    for term in group_matrix.terms.values():
        cols = group_matrix.slices[term.name]
        for j, label in zip(range(cols.start, cols.stop), term.labels, strict=True):
            name = label[: label.rfind(suffix)]
            _check_not_intercept(name)
            members.setdefault(_INTERCEPT if name == "1" else name, []).append(j)
    return {
        name: np.asarray(matrix[:, idx].sum(axis=1), dtype=float).reshape(-1)
        for name, idx in members.items()
    }


def _common_terms(common_matrix) -> list[list[tuple[str, np.ndarray]]]:
    """The common terms in formulae's order, each a list of its design columns
    ``(name, per-row value)`` (a categorical term has one column per dummy)."""
    if common_matrix is None:
        return []
    matrix = np.asarray(common_matrix.design_matrix, dtype=float)
    names = [str(n) for n in common_matrix.as_dataframe().columns]
    for name in names:
        _check_not_intercept(name)
    names = [_INTERCEPT if n == "Intercept" else n for n in names]
    return [
        [(names[j], matrix[:, j]) for j in range(cols.start, cols.stop)]
        for cols in common_matrix.slices.values()
    ]


def _check_not_intercept(name: str) -> None:
    if name == _INTERCEPT:
        raise ValueError(
            f"formula: a design column named {_INTERCEPT!r} would clash with the intercept "
            "coefficient (rename the column)"
        )


def _check_identified(names: list[str], values: list[np.ndarray], what: str, hint: str) -> None:
    """The columns are linearly independent, else a ValueError naming the first that
    the ones before it span (its coefficient would not be identified)."""
    matrix = np.stack(values, axis=1)
    if np.linalg.matrix_rank(matrix) == len(names):
        return
    for j in range(len(names)):
        if np.linalg.matrix_rank(matrix[:, : j + 1]) <= j:
            spanned = f"a linear combination of {names[:j]}" if j else "all zeros"
            raise ValueError(
                f"formula: the {what} {names[j]!r} is {spanned} (collinear terms: its "
                f"coefficient is not identified; {hint})"
            )


def _first_rows(codes: np.ndarray) -> np.ndarray:
    """The first row of every group, in the order of the group codes."""
    return np.unique(codes, return_index=True)[1]


def _group_codes(labels: np.ndarray) -> np.ndarray:
    _, codes = np.unique(labels.astype(str), return_inverse=True)
    return codes


def _constant_within(values: np.ndarray, codes: np.ndarray) -> bool:
    return bool(np.all(values == values[_first_rows(codes)][codes]))


def _task_set(data, group, labels, y, y_name, trials, spec, x_cols, task_cols, columns):
    """``TaskSet.from_dataframe`` on a frame of the design columns (formulae's names), the
    group and the response, indexed like ``data`` so errors name the caller's rows."""
    import pandas as pd

    taken = set(x_cols) | set(task_cols)

    def fresh(name: str) -> str:
        while name in taken:
            name = f"{name}_"
        taken.add(name)
        return name

    task_col, y_col = fresh(group), fresh(y_name)
    frame = {task_col: labels, y_col: y}
    trials_col = None
    if trials is not None:
        n_arg = spec[2]
        trials_col = fresh(str(n_arg[1]) if n_arg[0] != "value" else "trials")
        frame[trials_col] = trials
    for name in x_cols + task_cols:
        frame[name] = columns[name]
    df = pd.DataFrame(frame, index=data.index)
    return TaskSet.from_dataframe(
        df,
        task=task_col,
        y=y_col,
        x=x_cols or None,
        task_x=task_cols or None,
        trials=trials_col,
    )


# ---------------------------------------------------------------------- model pieces
def _likelihood(family, intercept, x_cols, varying_names, num_common, options):
    common_prior = options.get("common_prior")
    noise_prior = options.get("noise_prior")
    if common_prior is not None and num_common == 0:
        raise ValueError(
            "common_prior: the formula has no common coefficients (every term varies by "
            "group or is task-level)"
        )
    if noise_prior is not None and family != "gaussian":
        raise ValueError(f"noise_prior: only for family='gaussian' (got {family!r})")
    varying = varying_names if num_common else None
    if family == "gaussian":
        if not x_cols:
            return lk.Normal(noise="shared", noise_prior=noise_prior)
        return lk.LinearRegression(
            intercept=intercept,
            noise="shared",
            noise_prior=noise_prior,
            varying=varying,
            common_prior=common_prior,
        )
    cls = {"bernoulli": lk.LogisticRegression, "poisson": lk.Poisson}.get(family)
    if cls is None:
        return lk.Binomial(intercept=intercept, varying=varying, common_prior=common_prior)
    return cls(intercept=intercept, varying=varying, common_prior=common_prior)


def _population(varying_names, task_cols, options):
    kwargs = options.get("population") or {}
    if not isinstance(kwargs, dict):
        raise ValueError(
            f"population: expected a dict of keyword arguments, got {type(kwargs).__name__}"
        )
    kwargs = dict(kwargs)
    if "task_covariates" in kwargs:
        raise ValueError("population: task_covariates is set by the formula (its task-level terms)")
    coef = options.get("coef")
    if coef is not None:
        if "coef" in kwargs:
            raise ValueError("coef: given twice (as coef= and in population=)")
        kwargs["coef"] = coef
    if "coef" in kwargs and not task_cols:
        raise ValueError(
            "coef: the formula has no task-level terms, so there is no population "
            "regression for a coef prior"
        )
    if task_cols:
        vector = len(varying_names) > 1
        kwargs["task_covariates"] = {_INTERCEPT: list(task_cols)} if vector else list(task_cols)
    cls = pops.MvNormal if len(varying_names) > 1 else pops.Normal
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"population: {cls.__name__} {err}") from None
