"""Small real data sets from published tables; the embedded defaults of the gallery.

- :func:`eight_schools`: Rubin (1981), "Estimation in parallel randomized experiments",
  J. Educational Statistics 6(4); as tabulated in Gelman et al., *Bayesian Data Analysis*,
  3rd ed. (2013), Table 5.2 / Section 5.5.
- :func:`bcg`: Colditz et al. (1994), "Efficacy of BCG vaccine in the prevention of
  tuberculosis", JAMA 271(9):698-702; the ``dat.bcg`` data of the R package metafor. The
  trials carry absolute latitude (``ablat``) and ``year`` as task covariates.
- :func:`radon`: the Minnesota radon survey of Gelman and Hill (2007), *Data Analysis Using
  Regression and Multilevel/Hierarchical Models*, ch. 12 (from the EPA's national
  residential radon survey): 919 houses in 85 counties, shipped as ``data/radon.csv``.
- :func:`seeds`: Crowder (1978), "Beta-binomial anova for proportions", *Applied
  Statistics* 27:34-37, Table 3; the "Seeds" example of the BUGS manuals.

:func:`eight_schools` and :func:`bcg` return a :class:`~bayesmeta.TaskSet` (or a pandas
DataFrame with ``as_frame=True``); :func:`radon` and :func:`seeds` return DataFrames, to be
turned into tasks with :meth:`~bayesmeta.TaskSet.from_dataframe`.
"""

from __future__ import annotations

import csv
from importlib import resources
from typing import Any

import numpy as np

from bayesmeta.tasks import TaskSet

__all__ = ["eight_schools", "bcg", "bcg_table", "BCG_COLUMNS", "radon", "seeds"]

_SCHOOLS = ("A", "B", "C", "D", "E", "F", "G", "H")
_SCHOOL_Y = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)
_SCHOOL_SE = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)

BCG_COLUMNS = ("trial", "author", "year", "tpos", "tneg", "cpos", "cneg", "ablat")
_BCG = (
    (1, "Aronson", 1948, 4, 119, 11, 128, 44),
    (2, "Ferguson & Simes", 1949, 6, 300, 29, 274, 55),
    (3, "Rosenthal et al", 1960, 3, 228, 11, 209, 42),
    (4, "Hart & Sutherland", 1977, 62, 13536, 248, 12619, 52),
    (5, "Frimodt-Moller et al", 1973, 33, 5036, 47, 5761, 13),
    (6, "Stein & Aronson", 1953, 180, 1361, 372, 1079, 44),
    (7, "Vandiviere et al", 1973, 8, 2537, 10, 619, 19),
    (8, "TPT Madras", 1980, 505, 87886, 499, 87892, 13),
    (9, "Coetzee & Berjak", 1968, 29, 7470, 45, 7232, 27),
    (10, "Rosenthal et al", 1961, 17, 1699, 65, 1600, 42),
    (11, "Comstock et al", 1974, 186, 50448, 141, 27197, 18),
    (12, "Comstock & Webster", 1969, 5, 2493, 3, 2338, 33),
    (13, "Comstock et al", 1976, 27, 16886, 29, 17825, 33),
)

# Crowder (1978), Table 3: germinated seeds r out of n per plate; x1 seed type
# (0 = O. aegyptiaca 75, 1 = O. aegyptiaca 73), x2 root extract (0 = bean, 1 = cucumber)
_SEEDS_R = (10, 23, 23, 26, 17, 5, 53, 55, 32, 46, 10, 8, 10, 8, 23, 0, 3, 22, 15, 32, 3)
_SEEDS_N = (39, 62, 81, 51, 39, 6, 74, 72, 51, 79, 13, 16, 30, 28, 45, 4, 12, 41, 30, 51, 7)
_SEEDS_X1 = (0,) * 11 + (1,) * 10
_SEEDS_X2 = (0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1)

_RADON_COLUMNS = ("county", "floor", "log_radon", "log_uranium")


def _frame(columns: dict[str, Any]):
    import pandas as pd  # only the data-frame forms need pandas

    return pd.DataFrame(columns)


def eight_schools(as_frame: bool = False) -> Any:
    """Coaching effects on SAT-V in eight schools: one estimate and standard error each.

    Args:
      as_frame: return a pandas DataFrame with columns ``school`` (str), ``y`` and ``se``
        (float) instead of a TaskSet of estimates.

    >>> bm.datasets.eight_schools().labels  # doctest: +SKIP
    ('A', 'B', 'C', 'D', 'E', 'F', 'G', 'H')
    """
    if as_frame:
        return _frame(
            {
                "school": list(_SCHOOLS),
                "y": np.array(_SCHOOL_Y),
                "se": np.array(_SCHOOL_SE),
            }
        )
    return TaskSet.from_estimates(y=np.array(_SCHOOL_Y), se=np.array(_SCHOOL_SE), labels=_SCHOOLS)


def bcg_table() -> dict[str, np.ndarray]:
    """The 13 BCG trials as columns (``BCG_COLUMNS``): counts of tuberculosis cases
    (``tpos``/``cpos``) and non-cases (``tneg``/``cneg``) in the vaccinated and control arms,
    publication year and absolute latitude."""
    cols = list(zip(*_BCG, strict=True))
    return {name: np.array(col) for name, col in zip(BCG_COLUMNS, cols, strict=True)}


def _bcg_labels(t: dict) -> list[str]:
    return [f"{a} ({y})" for a, y in zip(t["author"], t["year"], strict=True)]


def _bcg_logrr(t: dict) -> tuple[np.ndarray, np.ndarray]:
    """Log risk ratio of every trial and its sampling variance."""
    nt, nc = t["tpos"] + t["tneg"], t["cpos"] + t["cneg"]
    y = np.log((t["tpos"] / nt) / (t["cpos"] / nc))
    v = 1.0 / t["tpos"] - 1.0 / nt + 1.0 / t["cpos"] - 1.0 / nc
    return y, v


def bcg(kind: str = "logrr", as_frame: bool = False) -> Any:
    """The BCG vaccine trials as a TaskSet (or a DataFrame).

    Args:
      kind: ``"logrr"`` (default): one log risk ratio per trial,
        ``y = log[(tpos/(tpos+tneg)) / (cpos/(cpos+cneg))]`` with sampling variance
        ``v = 1/tpos - 1/(tpos+tneg) + 1/cpos - 1/(cpos+cneg)`` (``se = sqrt(v)``);
        ``"counts"``: two rows per trial (vaccinated, control) for an exact binomial model,
        ``y`` = cases, ``x[:, 0]`` = arm size (``trials``), ``x[:, 1]`` = 1 for the
        vaccinated arm (``vaccinated``).
      as_frame: return the whole table as a pandas DataFrame, one row per trial: the
        columns of ``BCG_COLUMNS`` plus ``yi`` (the log risk ratio) and ``vi`` (its
        variance), the names of metafor's ``escalc``. ``kind`` is then ignored.

    Either TaskSet carries the task covariates ``ablat`` (absolute latitude, degrees) and
    ``year`` (``task_x``, in that order), for a meta-regression with
    ``bm.populations.Normal(task_covariates=["ablat"])``.

    >>> bm.datasets.bcg().task_x_names  # doctest: +SKIP
    ('ablat', 'year')
    """
    t = bcg_table()
    y, v = _bcg_logrr(t)
    if as_frame:
        return _frame({**{name: t[name] for name in BCG_COLUMNS}, "yi": y, "vi": v})
    labels = _bcg_labels(t)
    ablat, year = t["ablat"].astype(float), t["year"].astype(float)
    if kind == "logrr":
        return TaskSet.from_estimates(
            y=y, se=np.sqrt(v), labels=labels, task_x={"ablat": ablat, "year": year}
        )
    if kind == "counts":
        k = len(labels)
        # rows (vaccinated, control) of trial 0, then of trial 1, ...
        cases = np.stack([t["tpos"], t["cpos"]], axis=1).reshape(-1).astype(float)
        trials = np.stack([t["tpos"] + t["tneg"], t["cpos"] + t["cneg"]], axis=1).reshape(-1)
        vaccinated = np.tile([1.0, 0.0], k)
        task = np.repeat(np.arange(k), 2)
        return TaskSet.from_arrays(
            y=cases,
            x=np.stack([trials.astype(float), vaccinated], axis=1),
            task=task,
            labels=labels,
            task_x=np.stack([ablat[task], year[task]], axis=1),
            task_x_names=["ablat", "year"],
            x_names=["trials", "vaccinated"],
        )
    raise ValueError(f"kind: must be 'logrr' or 'counts', got {kind!r}")


def radon() -> Any:
    """The Minnesota radon survey: 919 houses in 85 counties, as a pandas DataFrame.

    Gelman and Hill (2007), *Data Analysis Using Regression and Multilevel/Hierarchical
    Models*, ch. 12, from the EPA's national residential radon survey; read from
    ``bayesmeta/data/radon.csv`` (the values exactly as stored there; its row-number
    column is dropped). One row per house, 1 to 116 houses per county:

    - ``county`` (str): the county's name, rows grouped by county in alphabetical order;
    - ``floor`` (int): the floor of the measurement, 0 = basement, 1 = first floor;
    - ``log_radon`` (float): log of the measured radon level;
    - ``log_uranium`` (float): log of the county's soil uranium, constant within a county
      (a county-level predictor).

    The classic models: varying intercepts by county with a common ``floor`` slope, the
    same with ``log_uranium`` predicting the county intercept (``models/radon.py``), and
    varying slopes.

    >>> df = bm.datasets.radon()  # doctest: +SKIP
    >>> tasks = bm.TaskSet.from_dataframe(  # doctest: +SKIP
    ...     df, task="county", y="log_radon", x=["floor"], task_x=["log_uranium"])
    """
    source = resources.files("bayesmeta").joinpath("data", "radon.csv")
    cols: dict[str, list] = {name: [] for name in _RADON_COLUMNS}
    with source.open("r", newline="") as fh:
        # Python's float() is correctly rounded, so every value is the stored decimal's
        # nearest double whatever pandas' parser does
        for row in csv.DictReader(fh):
            cols["county"].append(row["county"])
            cols["floor"].append(int(row["floor"]))
            cols["log_radon"].append(float(row["log_radon"]))
            cols["log_uranium"].append(float(row["log_uranium"]))
    return _frame(
        {
            "county": cols["county"],
            "floor": np.array(cols["floor"], dtype=np.int64),
            "log_radon": np.array(cols["log_radon"]),
            "log_uranium": np.array(cols["log_uranium"]),
        }
    )


def seeds() -> Any:
    """Crowder's seeds germination data: 21 plates, as a pandas DataFrame.

    Crowder (1978), "Beta-binomial anova for proportions", *Applied Statistics* 27:34-37,
    Table 3; the "Seeds" example of the BUGS manuals (also in Breslow and Clayton 1993).
    Columns (all int): ``plate`` (1..21), ``r`` germinated seeds out of ``n`` on the plate,
    ``x1`` seed type (0 = *O. aegyptiaca* 75, 1 = *O. aegyptiaca* 73), ``x2`` root extract
    (0 = bean, 1 = cucumber); a 2 x 2 factorial. The BUGS model is a random-effects logistic
    regression, ``logit p_i = a0 + a1 x1 + a2 x2 + a12 x1 x2 + b_i`` (``models/seeds.py``).
    """
    return _frame(
        {
            "plate": np.arange(1, len(_SEEDS_R) + 1, dtype=np.int64),
            "r": np.array(_SEEDS_R, dtype=np.int64),
            "n": np.array(_SEEDS_N, dtype=np.int64),
            "x1": np.array(_SEEDS_X1, dtype=np.int64),
            "x2": np.array(_SEEDS_X2, dtype=np.int64),
        }
    )
