"""Doors: the model's methods whose work is done above it, in loading and analysis.

TransformerLens puts `from_pretrained`, `from_pretrained_no_processing` and
`load_and_process_state_dict` on the model class (lensutil adds `save_pretrained` and
`run_with_cache_from_cache`), but the model must know nothing of loading or analysis: those build
on it. So each such method calls through this table, and the module that does the work fills its
entry when it is imported (`import lensutil` imports them all, so the table is full before any
model exists). A plain import of the function from the method would be an import circle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import LensError

_DOORS: dict[str, Callable[..., Any]] = {}


def provide(name: str, fn: Callable[..., Any]) -> None:
    """Make `fn` the work behind door `name` ("HookedTransformer.from_pretrained", ...)."""
    _DOORS[name] = fn


def call(name: str, *args: Any, **kwargs: Any) -> Any:
    fn = _DOORS.get(name)
    if fn is None:  # only if lensutil's modules were imported one by one, around lensutil/__init__.py
        raise LensError(f"{name} is done by a lensutil module that has not been imported; `import lensutil` first.")
    return fn(*args, **kwargs)
