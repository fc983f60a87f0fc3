"""The opt-in that lets third-party code written for TransformerLens 2.x import lensutil instead.

`use_as_transformer_lens()` puts an import finder at the front of `sys.meta_path`: from then on, in
this process, `import transformer_lens` and `import transformer_lens.X` give the very module objects
of `lensutil.transformer_lens` and `lensutil.transformer_lens.X` (one object under two names, so
`isinstance` and monkeypatches agree whichever name was used). Nothing of this happens on import of
lensutil: the finder changes how every later import of a name resolves, which is process-wide state,
so it is only ever installed by an explicit call.

A real `transformer_lens` already imported cannot be replaced: code already holds its classes, and
mixing its objects with lensutil's would fail far from the cause. That is refused.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

from ..errors import LensError

_REAL = "transformer_lens"
_OURS = "lensutil.transformer_lens"


class _AliasLoader(importlib.abc.Loader):
    """Loads `transformer_lens.X` as the already-imported `lensutil.transformer_lens.X`."""

    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self._own = (module.__spec__, module.__loader__)
        return module

    def exec_module(self, module) -> None:
        # The module ran when lensutil imported it under its own name; running it again would define
        # its classes a second time. The import system has just stamped the alias's spec on it: give
        # it back its own, so reloads and lensutil's name for it keep working.
        module.__spec__, module.__loader__ = self._own


class TransformerLensAlias(importlib.abc.MetaPathFinder):
    """Resolves `transformer_lens[.X]` to `lensutil.transformer_lens[.X]`, and nothing else."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _REAL and not fullname.startswith(_REAL + "."):
            return None
        ours = _OURS + fullname[len(_REAL):]
        try:
            found = importlib.util.find_spec(ours)
        except ModuleNotFoundError:
            found = None
        if found is None:
            return None  # an absent submodule: the import fails as it would with TransformerLens
        return importlib.util.spec_from_loader(
            fullname, _AliasLoader(ours), is_package=found.submodule_search_locations is not None
        )


def _installed_finder() -> TransformerLensAlias | None:
    return next((f for f in sys.meta_path if isinstance(f, TransformerLensAlias)), None)


def use_as_transformer_lens() -> None:
    """Make `import transformer_lens` (and its submodules) give lensutil's TransformerLens 2.x surface.

    For code written for TransformerLens 2.x (tutorials, libraries) that this process runs: call it
    before that code imports transformer_lens. Idempotent. Raises LensError when a real
    transformer_lens is already imported; undo with `stop_using_as_transformer_lens()`.
    """
    loaded = sys.modules.get(_REAL)
    if loaded is not None and not getattr(loaded, "__name__", "").startswith(_OURS):
        where = getattr(loaded, "__file__", None) or "an unknown location"
        raise LensError(
            f"transformer_lens is already imported in this process (from {where}), so lensutil cannot stand in "
            "for it: objects of the two would meet. Call lensutil.transformer_lens.use_as_transformer_lens() "
            "before anything imports transformer_lens (first thing in the script or notebook; restart the "
            "kernel first), or import lensutil's classes directly: "
            "`from lensutil.transformer_lens import HookedTransformer`."
        )
    # The submodules lensutil.transformer_lens has imported get their alias now: imported later through
    # the finder, `transformer_lens.HookedTransformer` (a module) would be set as an attribute of the
    # package, over the class of that name.
    ours = importlib.import_module(_OURS)
    for name, module in list(sys.modules.items()):
        if name == _OURS or name.startswith(_OURS + "."):
            sys.modules.setdefault(_REAL + name[len(_OURS):], module)
    assert sys.modules[_REAL] is ours
    if _installed_finder() is None:
        sys.meta_path.insert(0, TransformerLensAlias())


def stop_using_as_transformer_lens() -> None:
    """Undo `use_as_transformer_lens()`: remove the finder and the `transformer_lens` aliases it made."""
    finder = _installed_finder()
    if finder is not None:
        sys.meta_path.remove(finder)
    for name in [n for n in sys.modules if n == _REAL or n.startswith(_REAL + ".")]:
        if getattr(sys.modules[name], "__name__", "").startswith(_OURS):
            del sys.modules[name]
