"""Conversion of posterior draws to ArviZ, for both ArviZ lines.

ArviZ 0.x stores results in an ``arviz.InferenceData``; ArviZ 1.x (``arviz_base``,
``arviz_stats``, ``arviz_plots``) stores them in an ``xarray.DataTree``. Both are built here
through ArviZ's own dictionary converter (``arviz.from_dict``), so group layout, default
dimension names and attributes are exactly what ArviZ itself produces. Everything else in
bayesmeta talks to ArviZ through this module only.

Layout of the input, for every method:

* ``posterior``, ``log_likelihood``, ``posterior_predictive``, ``sample_stats``: arrays of
  shape ``(chain, draw, *shape)`` with the posterior's ``(chain, draw)``;
* ``prior``, ``prior_predictive``: ``(chain, draw, *shape)`` with their own ``(chain, draw)``,
  often ``(1, draw)``;
* ``observed_data``, ``constant_data``: arrays without sample dimensions.

``dims`` names the dimensions after ``(chain, draw)``, per variable name, and is shared by all
groups (the observed ``y`` and its pointwise log-likelihood ``y`` use one entry). Dimensions
left unnamed get ArviZ's default names (``<var>_dim_<k>``). Sample statistics use NumPyro's
names and are renamed as ArviZ's own NumPyro converter renames them.

>>> import numpy as np
>>> from bayesmeta.arviz import to_arviz, posterior_group
>>> draws = {"mu": np.zeros((2, 10)), "theta": np.zeros((2, 10, 3))}
>>> data = to_arviz(draws, dims={"theta": ["task"]}, coords={"task": ["a", "b", "c"]})
>>> posterior_group(data)["theta"].shape
(2, 10, 3)
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "SUMMARY_COLUMNS",
    "arviz_major",
    "ess_rhat",
    "group_arrays",
    "group_names",
    "interval_columns",
    "library_attrs",
    "loo",
    "plot_forest",
    "posterior_group",
    "summary",
    "to_arviz",
]

#: Columns of :func:`summary` with its defaults, in order, on both ArviZ lines (the interval
#: columns follow ``ci_prob`` and ``ci_kind``: see :func:`interval_columns`).
SUMMARY_COLUMNS = (
    "mean",
    "sd",
    "hdi_3%",
    "hdi_97%",
    "mcse_mean",
    "mcse_sd",
    "ess_bulk",
    "ess_tail",
    "r_hat",
)

# NumPyro's extra-field names -> ArviZ's sample_stats names, as ArviZ's NumPyro converter
# (``from_numpyro``) renames them on both lines; ``potential_energy`` is negated into ``lp``.
_SAMPLE_STATS_RENAME = {
    "potential_energy": "lp",
    "adapt_state.step_size": "step_size",
    "num_steps": "n_steps",
    "accept_prob": "acceptance_rate",
}

_SAMPLE_DIMS = ("chain", "draw")


@functools.cache
def _az():
    # Imported on first use: ArviZ pulls in xarray, pandas (and matplotlib on 0.x), which
    # a fit that never exports should not pay for.
    return importlib.import_module("arviz")


def arviz_major() -> int:
    """Major version of the installed ArviZ: 0 (``InferenceData``) or 1 (``DataTree``).

    >>> arviz_major() in (0, 1)
    True
    """
    return int(str(_az().__version__).split(".")[0])


# --------------------------------------------------------------------------- validation


def _as_arrays(group: str, mapping: Any) -> dict[str, np.ndarray]:
    if not isinstance(mapping, Mapping):
        raise ValueError(f"{group}: expected a dict of arrays, got {type(mapping).__name__}")
    out = {}
    for name, value in mapping.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{group}: variable names must be non-empty strings, got {name!r}")
        array = np.asarray(value)
        if array.dtype == object:
            raise ValueError(f"{group}['{name}']: expected a numeric array, got dtype object")
        out[name] = array
    return out


def _check_sampled(
    group: str, arrays: dict[str, np.ndarray], lead: tuple[int, int] | None
) -> tuple[int, int]:
    """Every array has at least (chain, draw) and, when ``lead`` is given, exactly that."""
    for name, array in arrays.items():
        if array.ndim < 2:
            raise ValueError(
                f"{group}['{name}']: expected shape (chain, draw, ...), got {array.shape}"
            )
        if array.shape[0] < 1 or array.shape[1] < 1:
            raise ValueError(f"{group}['{name}']: empty chain or draw axis, shape {array.shape}")
        if lead is None:
            lead = (array.shape[0], array.shape[1])
        elif array.shape[:2] != lead:
            raise ValueError(
                f"{group}['{name}']: leading (chain, draw) = {array.shape[:2]}, expected {lead}"
            )
    return lead


def _check_dims(
    group: str,
    arrays: dict[str, np.ndarray],
    dims: dict[str, list[str]],
    coords: dict[str, list],
    num_sample_dims: int,
) -> None:
    """Named dims fit the shapes, agree with coords and with each other inside a group."""
    sizes: dict[str, tuple[int, str]] = {}
    for name, array in arrays.items():
        shape = array.shape[num_sample_dims:]
        names = dims.get(name, [])
        if len(names) > len(shape):
            if group != "log_likelihood":
                raise ValueError(
                    f"dims['{name}']: {len(names)} names {names} for {group}['{name}'] which has "
                    f"{len(shape)} dims after the sample dims (shape {array.shape})"
                )
            # Pointwise log-likelihoods drop the event dims of a multivariate observation,
            # as ArviZ does (``skip_event_dims``).
            names = names[: len(shape)]
        for dim, size in zip(names, shape, strict=False):
            if dim in coords and len(coords[dim]) != size:
                raise ValueError(
                    f"coords['{dim}']: {len(coords[dim])} labels, but {group}['{name}'] has "
                    f"size {size} along dim '{dim}'"
                )
            if dim in sizes and sizes[dim][0] != size:
                other = sizes[dim][1]
                raise ValueError(
                    f"dims: dim '{dim}' has size {size} in {group}['{name}'] but "
                    f"{sizes[dim][0]} in {group}['{other}']"
                )
            sizes.setdefault(dim, (size, name))


def _rename_sample_stats(stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    source: dict[str, str] = {}
    for name, value in stats.items():
        new = _SAMPLE_STATS_RENAME.get(name, name)
        if new in out:
            raise ValueError(
                f"sample_stats['{name}']: both it and sample_stats['{source[new]}'] "
                f"become ArviZ's '{new}'"
            )
        out[new] = -value if name == "potential_energy" else value
        source[new] = name
    if "n_steps" in out and "tree_depth" not in out:
        num_steps = out["n_steps"]
        if not np.issubdtype(num_steps.dtype, np.number) or np.any(num_steps < 1):
            raise ValueError("sample_stats['num_steps']: expected positive step counts")
        # Same formula as ArviZ's NumPyro converter: a tree of depth d takes < 2**d steps.
        out["tree_depth"] = np.log2(num_steps).astype(int) + 1
    return out


# --------------------------------------------------------------------------- conversion


def to_arviz(
    posterior: Mapping[str, Any],
    *,
    dims: Mapping[str, Sequence[str]] | None = None,
    coords: Mapping[str, Sequence] | None = None,
    sample_stats: Mapping[str, Any] | None = None,
    log_likelihood: Mapping[str, Any] | None = None,
    observed_data: Mapping[str, Any] | None = None,
    prior: Mapping[str, Any] | None = None,
    prior_predictive: Mapping[str, Any] | None = None,
    posterior_predictive: Mapping[str, Any] | None = None,
    constant_data: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
    obs_coords: Mapping[str, Sequence] | None = None,
    predictions: Mapping[str, Any] | None = None,
    predictions_constant_data: Mapping[str, Any] | None = None,
    pred_dims: Mapping[str, Sequence[str]] | None = None,
    pred_coords: Mapping[str, Sequence] | None = None,
    pred_obs_coords: Mapping[str, Sequence] | None = None,
):
    """Convert draws to ``arviz.InferenceData`` (ArviZ 0.x) or ``xarray.DataTree`` (1.x).

    Args:
      posterior: ``{name: array (chain, draw, *shape)}``; all share ``(chain, draw)``.
      dims: ``{name: [dim, ...]}``, names of the dims after ``(chain, draw)`` (or of all dims
        for ``observed_data``/``constant_data``), e.g. ``{"theta": ["task"], "y": ["task"]}``.
        Shared by all groups. Trailing dims left out get ArviZ's default names
        (``theta_dim_0`` on 1.x; 0.x counts the position, ``theta_dim_1``). Names given for a
        log-likelihood beyond its rank are dropped (event dims of a multivariate observation).
      coords: ``{dim: labels}``, e.g. ``{"task": list(tasks.labels)}``; other dims are
        labelled ``0..n-1``.
      sample_stats: ``{name: array (chain, draw)}`` with NumPyro's names, renamed as ArviZ
        renames them: ``diverging``, ``energy``, ``tree_depth``, ``step_size`` stay,
        ``adapt_state.step_size -> step_size``, ``num_steps -> n_steps`` (and
        ``tree_depth = floor(log2(num_steps)) + 1`` when not given),
        ``accept_prob -> acceptance_rate``, ``potential_energy -> lp = -potential_energy``;
        other names are kept.
      log_likelihood: pointwise ``{name: array (chain, draw, *obs_shape)}``, as needed by
        ``az.loo``; use the observed variable's name.
      observed_data, constant_data: ``{name: array}`` without sample dims.
      prior: ``{name: array (chain, draw, *shape)}``; its own ``(chain, draw)``, e.g. ``(1, S)``.
      prior_predictive: ``{name: array (chain, draw, *obs_shape)}``, the prior's
        ``(chain, draw)`` when ``prior`` is given.
      posterior_predictive: ``{name: array (chain, draw, *obs_shape)}``.
      attrs: attributes, e.g. ``{"method": "nuts"}``, written on the root and on every
        group, next to ``creation_library`` (``"bayesmeta"``),
        ``creation_library_version`` (bayesmeta's version), ``creation_library_language``,
        ``inference_library`` (``"numpyro"``) and ``inference_library_version``, which
        ``attrs`` may override; ArviZ adds ``created_at`` (and, on 0.x, ``arviz_version``).
      obs_coords: extra (non-index) coordinates along the ``obs`` dim of the
        ``observed_data``, ``log_likelihood``, ``posterior_predictive`` and
        ``constant_data`` groups, e.g. ``{"task": label of each row, "row": the caller's
        row number}``, so each row maps back to its task.
      predictions: ``{name: array (chain, draw, *shape)}``, draws at new rows (out of
        sample), with the posterior's ``(chain, draw)``.
      predictions_constant_data: ``{name: array}``, the new rows' inputs.
      pred_dims, pred_coords: ``dims`` and ``coords`` of the two prediction groups (their
        own, e.g. an ``obs`` dim of the new rows' size).
      pred_obs_coords: as ``obs_coords``, for the two prediction groups.

    Returns:
      ``arviz.InferenceData`` under ArviZ 0.x, ``xarray.DataTree`` under ArviZ 1.x, with the
      groups given (empty or ``None`` groups are left out).

    Raises:
      ValueError: naming the group, variable and dim when shapes, dims or coords disagree.

    >>> import numpy as np
    >>> data = to_arviz({"mu": np.zeros((1, 4))}, attrs={"method": "exact"})
    >>> group_names(data)
    ['posterior']
    """
    dims_ = _as_dims(dims)
    coords_ = _as_coords(coords)

    groups: dict[str, dict[str, np.ndarray]] = {}
    groups["posterior"] = _as_arrays("posterior", posterior)
    if not groups["posterior"]:
        raise ValueError("posterior: no variables")
    lead = _check_sampled("posterior", groups["posterior"], None)
    sampled = {
        "sample_stats": sample_stats,
        "log_likelihood": log_likelihood,
        "posterior_predictive": posterior_predictive,
    }
    for group, mapping in sampled.items():
        if mapping:
            arrays = _as_arrays(group, mapping)
            _check_sampled(group, arrays, lead)
            if group == "sample_stats":
                arrays = _rename_sample_stats(arrays)
            groups[group] = arrays
    prior_lead = None
    if prior:
        groups["prior"] = _as_arrays("prior", prior)
        prior_lead = _check_sampled("prior", groups["prior"], None)
    if prior_predictive:
        groups["prior_predictive"] = _as_arrays("prior_predictive", prior_predictive)
        _check_sampled("prior_predictive", groups["prior_predictive"], prior_lead)
    for group, mapping in (("observed_data", observed_data), ("constant_data", constant_data)):
        if mapping:
            groups[group] = _as_arrays(group, mapping)
    for group, arrays in groups.items():
        num_sample_dims = 0 if group.endswith("_data") else 2
        _check_dims(group, arrays, dims_, coords_, num_sample_dims)
    pred_dims_ = _as_dims(pred_dims)
    pred_coords_ = _as_coords(pred_coords)
    pred_groups: dict[str, dict[str, np.ndarray]] = {}
    if predictions:
        pred_groups["predictions"] = _as_arrays("predictions", predictions)
        _check_sampled("predictions", pred_groups["predictions"], lead)
    if predictions_constant_data:
        arrays = _as_arrays("predictions_constant_data", predictions_constant_data)
        pred_groups["predictions_constant_data"] = arrays
    for group, arrays in pred_groups.items():
        num_sample_dims = 0 if group.endswith("_data") else 2
        _check_dims(group, arrays, pred_dims_, pred_coords_, num_sample_dims)

    attrs_ = {**library_attrs(), **dict(attrs or {})}
    data = _from_dict(groups, dims_, coords_, attrs_)
    if obs_coords:
        _add_obs_coords(data, obs_coords)
    if pred_groups:
        # built apart: the new rows have their own ``obs`` dim, and ArviZ 0.x would apply
        # prediction coords to every group
        extra = _from_dict(pred_groups, pred_dims_, pred_coords_, attrs_)
        if pred_obs_coords:
            _add_obs_coords(extra, pred_obs_coords, tuple(pred_groups))
        if arviz_major() == 0:
            data.extend(extra)
        else:
            for group in pred_groups:
                data[group] = extra[group]
    return data


def _from_dict(groups, dims, coords, attrs):
    """ArviZ's own dictionary converter on either line, ``attrs`` on the root and groups."""
    az = _az()
    if arviz_major() == 0:
        return az.from_dict(
            **groups,
            dims=dims,
            coords=coords,
            attrs=dict(attrs),
            **{f"{group}_attrs": dict(attrs) for group in groups},
        )
    group_attrs = {"/": dict(attrs)}
    for group in groups:
        group_attrs[group] = dict(attrs)
    # ArviZ 1.x reads the prediction groups' dims and coords from pred_dims/pred_coords
    return az.from_dict(
        groups,
        dims=dims,
        coords=coords,
        pred_dims=dims,
        pred_coords=coords,
        attrs=group_attrs,
    )


def library_attrs() -> dict[str, str]:
    """The attributes naming who made an export: bayesmeta (creation) and NumPyro (inference).

    >>> library_attrs()["creation_library"], library_attrs()["inference_library"]
    ('bayesmeta', 'numpyro')
    """
    import numpyro

    # the package root is always imported before this module; read, not imported, so this
    # low layer does not depend on the top one
    version = importlib.import_module("bayesmeta").__version__
    return {
        "creation_library": "bayesmeta",
        "creation_library_version": str(version),
        "creation_library_language": "Python",
        "inference_library": "numpyro",
        "inference_library_version": str(numpyro.__version__),
    }


def _as_dims(dims: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    out = {}
    for name, names in (dims or {}).items():
        if isinstance(names, str) or not all(isinstance(d, str) for d in names):
            raise ValueError(f"dims['{name}']: expected a list of dim names, got {names!r}")
        if set(names) & set(_SAMPLE_DIMS):
            raise ValueError(f"dims['{name}']: name only the dims after (chain, draw): {names}")
        out[name] = list(names)
    return out


def _as_coords(coords: Mapping[str, Sequence] | None) -> dict[str, list]:
    out = {}
    for dim, labels in (coords or {}).items():
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"coords['{dim}']: expected a 1-D list of labels")
        if len(np.unique(labels)) != len(labels):
            raise ValueError(f"coords['{dim}']: labels are not unique")
        out[dim] = labels.tolist()
    return out


_OBS_GROUPS = ("observed_data", "log_likelihood", "posterior_predictive", "constant_data")


def _add_obs_coords(
    data, obs_coords: Mapping[str, Sequence], groups: Sequence[str] = _OBS_GROUPS
) -> None:
    """Attach non-index coordinates along ``obs`` to the groups that have that dim."""
    for group in groups:
        if group not in group_names(data):
            continue
        ds = data[group] if arviz_major() else getattr(data, group)
        if arviz_major():
            ds = ds.to_dataset()
        if "obs" not in ds.dims:
            continue
        extra = {}
        for name, values in obs_coords.items():
            values = np.asarray(values)
            if values.shape != (ds.sizes["obs"],):
                raise ValueError(
                    f"obs_coords['{name}']: {values.shape[0]} values for {ds.sizes['obs']} rows"
                )
            extra[name] = ("obs", values)
        ds = ds.assign_coords(extra)
        if arviz_major():
            data[group] = ds
        else:
            setattr(data, group, ds)


# --------------------------------------------------------------------------- reading back


def group_names(data) -> list[str]:
    """Names of the groups of an ``InferenceData`` or ``DataTree``, in stored order.

    >>> import numpy as np
    >>> group_names(to_arviz({"mu": np.zeros((1, 4))}, prior={"mu": np.zeros((1, 4))}))
    ['posterior', 'prior']
    """
    if hasattr(data, "groups") and callable(data.groups) and not hasattr(data, "children"):
        return list(data.groups())  # InferenceData
    return list(data.children)  # DataTree


def group_arrays(data, group: str = "posterior") -> dict[str, np.ndarray]:
    """Variables of one group as ``{name: numpy array}``, dims in stored order.

    Sampled groups come back as ``(chain, draw, *shape)``, the inverse of :func:`to_arviz`.

    >>> import numpy as np
    >>> data = to_arviz({"mu": np.arange(6.0).reshape(2, 3)})
    >>> group_arrays(data, "posterior")["mu"].tolist()
    [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    """
    names = group_names(data)
    if group not in names:
        raise ValueError(f"group: '{group}' not in the data; groups are {names}")
    node = data[group]
    return {str(name): np.asarray(node[name].values) for name in node.data_vars}


def posterior_group(data) -> dict[str, np.ndarray]:
    """``{name: array (chain, draw, *shape)}`` of the posterior group; see :func:`group_arrays`."""
    return group_arrays(data, "posterior")


# --------------------------------------------------------------------------- statistics


def interval_columns(ci_prob: float = 0.94, ci_kind: str = "hdi") -> tuple[str, str]:
    """ArviZ 0.x's names of the two interval columns of a summary at ``ci_prob``.

    >>> interval_columns()
    ('hdi_3%', 'hdi_97%')
    >>> interval_columns(0.9, "eti")
    ('eti_5%', 'eti_95%')
    """
    tail = 100 * (1 - ci_prob) / 2
    return f"{ci_kind}_{tail:g}%", f"{ci_kind}_{100 - tail:g}%"


def _check_round_to(round_to) -> None:
    if round_to is None or (isinstance(round_to, str) and round_to.lower() == "none"):
        return
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 0:
        raise ValueError(f"round_to: expected None, an int >= 0 or 'none', got {round_to!r}")


def _round_summary(df, round_to):
    """Round as ArviZ 0.x's ``az.summary`` does: ``None`` -> 3 decimals, ESS whole, R-hat 2
    decimals; an int -> that many decimals everywhere; ``"none"`` -> raw numbers."""
    if isinstance(round_to, str):
        return df
    if round_to is None:
        decimals = {c: 0 if c.startswith("ess") else 2 if c == "r_hat" else 3 for c in df.columns}
        return df.round(decimals)
    return df.round(round_to)


def summary(
    data,
    var_names: Sequence[str] | None = None,
    *,
    group: str = "posterior",
    ci_prob: float = 0.94,
    ci_kind: str = "hdi",
    round_to: int | str | None = None,
):
    """``az.summary`` with the same columns, defaults and rounding on both ArviZ lines.

    Returns a ``pandas.DataFrame`` with one row per scalar (``"theta[A]"``, ``"beta[A, 0]"``)
    and the columns ``mean``, ``sd``, the two interval bounds, ``mcse_mean``, ``mcse_sd``,
    ``ess_bulk``, ``ess_tail``, ``r_hat`` (:data:`SUMMARY_COLUMNS` with the defaults).

    ``mean``, ``sd`` (``ddof=1``); the ``ci_prob`` credible interval, named as ArviZ 0.x
    names it (:func:`interval_columns`: ``hdi_3%``/``hdi_97%`` by default, ``eti_5%``/
    ``eti_95%`` for a 90% ETI), ``ci_kind="hdi"`` (highest density) or ``"eti"`` (equal
    tails, ``np.quantile`` at ``(1 -+ ci_prob) / 2``); ``mcse_mean``, ``mcse_sd``,
    ``ess_bulk``, ``ess_tail``, ``r_hat`` (rank-normalised split R-hat; NaN with one chain).
    ``df.attrs`` records ``ci_prob``, ``ci_kind`` and ``ci_columns``. The defaults are fixed
    here (ArviZ 1.x's own default is an 89% ETI) so that both lines give the same table.

    ``round_to`` rounds as ArviZ 0.x does: ``None`` (default) gives 3 decimals, whole ESS
    and R-hat to 2 decimals; an int that many decimals; ``"none"`` the raw numbers (use it
    when computing with the table).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> data = to_arviz({"mu": rng.normal(size=(2, 100))})
    >>> list(summary(data).columns) == list(SUMMARY_COLUMNS)
    True
    >>> list(summary(data, ci_prob=0.9, ci_kind="eti").columns[2:4])
    ['eti_5%', 'eti_95%']
    """
    if ci_kind not in ("hdi", "eti"):
        raise ValueError(f"ci_kind: expected 'hdi' or 'eti', got {ci_kind!r}")
    if not 0.0 < ci_prob < 1.0:
        raise ValueError(f"ci_prob: expected a probability in (0, 1), got {ci_prob!r}")
    if group not in group_names(data):
        raise ValueError(f"group: '{group}' not in the data; groups are {group_names(data)}")
    _check_round_to(round_to)
    az = _az()
    common = {"var_names": var_names, "group": group, "round_to": "none"}
    if arviz_major() == 0:
        df = az.summary(data, hdi_prob=ci_prob, **common)
        if ci_kind == "eti":
            # ArviZ 0.x reports equal-tailed intervals only next to the median.
            eti = az.summary(data, kind="stats", stat_focus="median", hdi_prob=ci_prob, **common)
            bounds = [c for c in eti.columns if c.startswith("eti_")]
            df[[c for c in df.columns if c.startswith("hdi_")]] = eti[bounds].to_numpy()
        bounds = [c for c in df.columns if c.startswith("hdi_")]
    else:
        df = az.summary(data, ci_prob=ci_prob, ci_kind=ci_kind, kind="all", **common)
        bounds = [c for c in df.columns if c.endswith("_lb") or c.endswith("_ub")]
    names = interval_columns(ci_prob, ci_kind)
    df = df.rename(columns=dict(zip(bounds, names, strict=True)))
    columns = [*SUMMARY_COLUMNS[:2], *names, *SUMMARY_COLUMNS[4:]]
    df = _round_summary(df[columns].astype(float), round_to)
    df.attrs = {"ci_prob": float(ci_prob), "ci_kind": ci_kind, "ci_columns": names}
    return df


def ess_rhat(samples: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Bulk and tail ESS and rank-normalised split R-hat of ``(chain, draw, *shape)`` draws.

    Computed by ArviZ (``az.ess``, ``az.rhat``; Vehtari et al. 2021, "Rank-normalization,
    folding, and localization"). Returns ``{"ess_bulk": {name: array shape},
    "ess_tail": {...}, "r_hat": {...}}``; R-hat is NaN with a single chain.

    >>> import numpy as np
    >>> d = ess_rhat({"mu": np.random.default_rng(0).normal(size=(4, 200))})
    >>> bool(abs(d["r_hat"]["mu"] - 1.0) < 0.05)
    True
    """
    data = to_arviz(samples)
    az = _az()
    num_chains = next(iter(posterior_group(data).values())).shape[0]
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, method in (("ess_bulk", "bulk"), ("ess_tail", "tail")):
        result = az.ess(data, method=method)
        out[key] = {name: np.asarray(result[name].values) for name in samples}
    if num_chains >= 2:
        result = az.rhat(data)
        out["r_hat"] = {name: np.asarray(result[name].values) for name in samples}
    else:
        shapes = {name: np.shape(value)[2:] for name, value in samples.items()}
        out["r_hat"] = {name: np.full(shape, np.nan) for name, shape in shapes.items()}
    return out


def loo(data, var_name: str | None = None) -> dict[str, Any]:
    """PSIS-LOO (``az.loo``, Vehtari, Gelman and Gabry 2017) as a plain dict on both lines.

    Needs a ``log_likelihood`` group with pointwise values ``(chain, draw, *obs_shape)``;
    ``var_name`` picks the variable when there are several. Returns ``{"elpd": float,
    "se": float, "p": float (effective number of parameters), "n_samples": int,
    "n_data_points": int, "elpd_i": array obs_shape, "pareto_k": array obs_shape,
    "good_k": float (k above this is unreliable), "warning": bool}``, on the log scale
    (``elpd = sum(elpd_i)``, larger is better).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> data = to_arviz({"mu": rng.normal(size=(2, 200))},
    ...                 log_likelihood={"y": rng.normal(-1.0, 0.1, size=(2, 200, 5))})
    >>> out = loo(data)
    >>> bool(np.isclose(out["elpd"], out["elpd_i"].sum()))
    True
    """
    if "log_likelihood" not in group_names(data):
        raise ValueError("data: no log_likelihood group; pass log_likelihood= to to_arviz")
    result = _az().loo(data, var_name=var_name, pointwise=True)
    if arviz_major() == 0:
        elpd, p, elpd_i = result["elpd_loo"], result["p_loo"], result["loo_i"]
    else:
        elpd, p, elpd_i = result.elpd, result.p, result.elpd_i
    return {
        "elpd": float(elpd),
        "se": float(result.se),
        "p": float(p),
        "n_samples": int(result.n_samples),
        "n_data_points": int(result.n_data_points),
        "elpd_i": np.asarray(elpd_i.values),
        "pareto_k": np.asarray(result.pareto_k.values),
        "good_k": float(result.good_k),
        "warning": bool(result.warning),
    }


# --------------------------------------------------------------------------- plots


def _is_arviz_data(obj) -> bool:
    if arviz_major() == 0:
        return isinstance(obj, _az().InferenceData)
    return isinstance(obj, importlib.import_module("xarray").DataTree)


def plot_forest(
    data,
    path=None,
    *,
    var_names: Sequence[str] | None = None,
    ci_prob: float = 0.94,
    combined: bool = True,
):
    """Forest plot (``az.plot_forest``) of one posterior or several, as a matplotlib Figure.

    ``data`` is one ``InferenceData``/``DataTree`` or ``{label: data}`` to overlay methods
    (e.g. ``{"nuts": ..., "vi": ...}``). Thin lines are the ``ci_prob`` highest density
    interval, thick lines the central 50% (ArviZ 0.x: interquartile range; 1.x: 50% HDI),
    points are medians. ``combined=False`` draws one line per chain. When ``path`` is given
    the figure is also saved there (``bbox_inches="tight"``). Needs matplotlib.

    >>> import numpy as np
    >>> data = to_arviz({"mu": np.random.default_rng(0).normal(size=(2, 50))})
    >>> fig = plot_forest({"a": data, "b": data}, var_names=["mu"])  # doctest: +SKIP
    >>> fig.savefig("forest.png")  # doctest: +SKIP
    """
    if not 0.0 < ci_prob < 1.0:
        raise ValueError(f"ci_prob: expected a probability in (0, 1), got {ci_prob!r}")
    if isinstance(var_names, str):
        var_names = [var_names]
    az = _az()
    # InferenceData and DataTree are Mappings themselves (of groups), so a dict of several
    # results is recognised by its values.
    several = isinstance(data, Mapping) and not _is_arviz_data(data)
    if several and not all(_is_arviz_data(value) for value in data.values()):
        raise ValueError("data: expected InferenceData/DataTree or {label: InferenceData/DataTree}")
    if arviz_major() == 0:
        if several:
            kwargs = {"data": list(data.values()), "model_names": [str(k) for k in data]}
        else:
            kwargs = {"data": data}
        axes = az.plot_forest(**kwargs, var_names=var_names, combined=combined, hdi_prob=ci_prob)
        fig = np.ravel(axes)[0].figure
    else:
        plot_collection = az.plot_forest(
            dict(data) if several else data,
            var_names=var_names,
            combined=combined,
            ci_kind="hdi",
            ci_probs=(0.5, ci_prob),
            point_estimate="median",  # what ArviZ 0.x always draws
            backend="matplotlib",
        )
        fig = plot_collection.get_viz("figure")
    if path is not None:
        fig.savefig(path, bbox_inches="tight")
    return fig
