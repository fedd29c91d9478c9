"""``Posterior.info``: what a fit reports besides its draws, one typed record per engine.

Every record reads as its fields (``post.info.timing``) and as a read-mostly mapping
(``post.info["timing"]``, ``"retried" in post.info``, ``post.info.get("elbo")``); a field
that an engine did not fill (None) is absent from the mapping. Values without a field of
their own (a user's or a subclass's extras) live in ``extra`` and read the same way.

=====================  =====================================================================
record                 fields (beyond ``options``, ``diagnostics``, ``extra``)
=====================  =====================================================================
:class:`NUTSInfo`      ``timing`` (trace_s, compile_s, sampling_s, first_posterior_s,
                       compiled), ``chain_method``, ``target_accept``, ``retried``
:class:`CollapsedInfo` ``compiled`` ("new"/"reused"), ``marginal`` (form, degree, error)
:class:`LaplaceInfo`   ``laplace`` (per task: Newton convergence, importance ESS),
                       ``hyper_sampler`` (which sampler drew the hyperparameters, why), and
                       ``timing``, ``chain_method``, ``target_accept``, ``retried`` as NUTS
:class:`VIInfo`        ``elbo`` (per step), ``converged``, ``elbo_change``,
                       ``guide_params``, ``convergence`` (the criterion's values)
:class:`ExactInfo`     ``exact`` (the :class:`~bayesmeta.exact.NormalNormalResult`)
:class:`AdaptInfo`     ``adapt`` (per task: method, ESS, ...)
:class:`MetaInfo`      ``gaussians`` (per-task Gaussians), ``prior``
=====================  =====================================================================

``diagnostics`` (MCMC engines) holds ``divergences``, ``rhat`` and ``ess_bulk`` by site,
``e_bfmi`` per chain, ``problems``, ``bad_chains`` (chains with non-finite draws or a
frozen parameter), ``frozen`` (site -> chains) when a chain never moved, and after a
funnel-shaped fit ``advice`` and ``suggested_parameterization``. Any engine whose draws hold
NaN or infinite values in some chains gets ``nonfinite`` (site -> count, chains, task labels)
and ``bad_chains`` (:mod:`bayesmeta.inference.assemble`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FitInfo",
    "NUTSInfo",
    "CollapsedInfo",
    "LaplaceInfo",
    "VIInfo",
    "ExactInfo",
    "AdaptInfo",
    "MetaInfo",
    "info_from",
]


@dataclass
class FitInfo(Mapping):
    """Fields every engine may fill: its resolved ``options`` and its ``diagnostics``."""

    options: dict | None = None
    diagnostics: dict | None = None
    extra: dict = field(default_factory=dict)

    def _names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if f.name != "extra"]

    def __getitem__(self, key: str) -> Any:
        if key in self._names():
            value = getattr(self, key)
            if value is None:
                raise KeyError(key)
            return value
        return self.extra[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self._names():
            setattr(self, key, value)
        else:
            self.extra[key] = value

    def __iter__(self) -> Iterator[str]:
        yield from (n for n in self._names() if getattr(self, n) is not None)
        yield from self.extra

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}=..." if k == "exact" else k for k in self)
        return f"{type(self).__name__}({shown})"


@dataclass
class NUTSInfo(FitInfo):
    timing: dict | None = None
    chain_method: str | None = None
    target_accept: float | None = None
    retried: dict | None = None


@dataclass
class CollapsedInfo(FitInfo):
    compiled: str | None = None
    marginal: dict | None = None
    hyper_sampler: dict | None = None


@dataclass
class LaplaceInfo(NUTSInfo):
    laplace: dict | None = None
    hyper_sampler: dict | None = None


@dataclass
class VIInfo(FitInfo):
    elbo: Any = None
    converged: bool | None = None
    elbo_change: float | None = None
    guide_params: dict | None = None
    convergence: dict | None = None


@dataclass
class ExactInfo(FitInfo):
    exact: Any = None


@dataclass
class AdaptInfo(FitInfo):
    adapt: Any = None


@dataclass
class MetaInfo(FitInfo):
    gaussians: Any = None
    prior: Any = None


def info_from(values: Mapping[str, Any] | None, kind: type[FitInfo] = FitInfo) -> FitInfo:
    """A ``kind`` record from a plain mapping: known names fill fields, the rest ``extra``."""
    if isinstance(values, FitInfo) and type(values) is kind:
        return values
    out = kind()
    for key, value in dict(values or {}).items():
        out[key] = value
    return out
