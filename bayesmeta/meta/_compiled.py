"""Compiled functions kept per user callable, without keeping the callable alive.

``compiled((fn, other_fn, ...), options, build)`` returns ``build(*refs)``, a compiled
function of ``fn`` and ``other_fn`` (each ``ref()`` returns the callable), and gives the
same object back on the next call with the same callables and options, so repeated calls
compile once. The store holds the callables weakly (nested
``weakref.WeakKeyDictionary``) and ``build`` gets weak references, so the compiled function
holds no strong reference to them either: when any of the callables is garbage collected,
its compiled functions (and the data their closures captured, baked into the programs as
constants) go with it. A callable that cannot be weakly referenced (or hashed) gets a
fresh, unkept compiled function on every call.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

__all__ = ["compiled"]

_PER_CALLABLES = 8  # option sets kept per combination of callables


class _Absent:
    """Stands for an absent (None) optional callable in the store."""


_ABSENT = _Absent()
_STORE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _strong(fn: Any) -> Callable[[], Any]:
    return lambda: fn


def compiled(
    callables: Sequence[Callable | None],
    options: Hashable,
    build: Callable[..., Callable],
) -> Callable:
    """``build(*refs)`` kept for ``callables`` (weakly) and ``options``; ``None`` entries
    of ``callables`` are optional callables left out (their ref returns None)."""
    try:
        level = _STORE
        for fn in callables[:-1]:
            level = level.setdefault(_ABSENT if fn is None else fn, weakref.WeakKeyDictionary())
        last = callables[-1]
        per = level.setdefault(_ABSENT if last is None else last, OrderedDict())
        refs = tuple(_strong(None) if fn is None else weakref.ref(fn) for fn in callables)
        hit = per.get(options)
    except TypeError:  # not weakly referenceable or not hashable: compile, keep nothing
        return build(*(_strong(fn) for fn in callables))
    if hit is not None:
        per.move_to_end(options)
        return hit
    fn = per[options] = build(*refs)
    while len(per) > _PER_CALLABLES:
        per.popitem(last=False)
    return fn
