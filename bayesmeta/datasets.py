"""Small real data sets typed from published tables; the embedded defaults of the gallery.

- :func:`eight_schools`: Rubin (1981), "Estimation in parallel randomized experiments",
  J. Educational Statistics 6(4); as tabulated in Gelman et al., *Bayesian Data Analysis*,
  3rd ed. (2013), Table 5.2 / Section 5.5.
- :func:`bcg`: Colditz et al. (1994), "Efficacy of BCG vaccine in the prevention of
  tuberculosis", JAMA 271(9):698-702; the ``dat.bcg`` data of the R package metafor.
"""

from __future__ import annotations

import numpy as np

from bayesmeta.tasks import TaskSet

__all__ = ["eight_schools", "bcg", "bcg_table", "BCG_COLUMNS"]

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


def eight_schools() -> TaskSet:
    """Coaching effects on SAT-V in eight schools: one estimate and standard error each.

    >>> bm.datasets.eight_schools().labels  # doctest: +SKIP
    ('A', 'B', 'C', 'D', 'E', 'F', 'G', 'H')
    """
    return TaskSet.from_estimates(y=np.array(_SCHOOL_Y), se=np.array(_SCHOOL_SE), labels=_SCHOOLS)


def bcg_table() -> dict[str, np.ndarray]:
    """The 13 BCG trials as columns (``BCG_COLUMNS``): counts of tuberculosis cases
    (``tpos``/``cpos``) and non-cases (``tneg``/``cneg``) in the vaccinated and control arms,
    publication year and absolute latitude."""
    cols = list(zip(*_BCG, strict=True))
    return {name: np.array(col) for name, col in zip(BCG_COLUMNS, cols, strict=True)}


def _bcg_labels(t: dict) -> list[str]:
    return [f"{a} ({y})" for a, y in zip(t["author"], t["year"], strict=True)]


def bcg(kind: str = "logrr") -> TaskSet:
    """The BCG vaccine trials as a TaskSet.

    Args:
      kind: ``"logrr"`` (default): one log risk ratio per trial,
        ``y = log[(tpos/(tpos+tneg)) / (cpos/(cpos+cneg))]`` with sampling variance
        ``v = 1/tpos - 1/(tpos+tneg) + 1/cpos - 1/(cpos+cneg)`` (``se = sqrt(v)``);
        ``"counts"``: two rows per trial (vaccinated, control) for an exact binomial model,
        ``y`` = cases, ``x[:, 0]`` = arm size, ``x[:, 1]`` = 1 for the vaccinated arm.
    """
    t = bcg_table()
    labels = _bcg_labels(t)
    if kind == "logrr":
        nt, nc = t["tpos"] + t["tneg"], t["cpos"] + t["cneg"]
        y = np.log((t["tpos"] / nt) / (t["cpos"] / nc))
        v = 1.0 / t["tpos"] - 1.0 / nt + 1.0 / t["cpos"] - 1.0 / nc
        return TaskSet.from_estimates(y=y, se=np.sqrt(v), labels=labels)
    if kind == "counts":
        rows = []
        for i in range(len(labels)):
            rows.append((t["tpos"][i], t["tpos"][i] + t["tneg"][i], 1.0, i))
            rows.append((t["cpos"][i], t["cpos"][i] + t["cneg"][i], 0.0, i))
        y, n, treat, task = (np.array(c, dtype=float) for c in zip(*rows, strict=True))
        ts = TaskSet.from_arrays(
            y=y, x=np.stack([n, treat], axis=1), task=task.astype(int), labels=labels
        )
        ts.feature_names = ["trials", "vaccinated"]
        return ts
    raise ValueError(f"kind: must be 'logrr' or 'counts', got {kind!r}")
