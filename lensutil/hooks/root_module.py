"""HookedRootModule: hook_dict, add_hook, hooks(), run_with_hooks, run_with_cache and hook-name validation."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..errors import HookFlagError, HookNameError, LensError, close_matches
from .activation_cache import ActivationCache, describe_names_filter
from .hook_listing import print_hook_list
from .hook_points import Direction, HookFn, HookPoint, LensHandle, NameOrFilter, NamesFilter


class HookedRootModule(nn.Module):
    """Base class of a model made of HookPoints. Call `setup()` at the end of the subclass' __init__."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__()
        self.context_level = 0  # depth of nested hooks() contexts
        self.mod_dict: dict[str, nn.Module] = {}
        self.hook_dict: dict[str, HookPoint] = {}

    def setup(self) -> None:
        """Name every HookPoint after its attribute path and index them in `hook_dict`."""
        self.mod_dict = {}
        self.hook_dict = {}
        for name, module in self.named_modules():
            if not name:
                continue
            self.mod_dict[name] = module
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    def hook_points(self) -> list[HookPoint]:
        return list(self.hook_dict.values())

    def hook_flag(self, name: str) -> str | None:
        """The config flag hook `name` needs, if that flag is off (so the hook would never fire). Subclasses override."""
        return None

    # ---- name checking -------------------------------------------------------------------------

    def check_hook_name(self, name: str, arg: str = "") -> None:
        """Raise HookNameError for an unknown name, HookFlagError for a hook whose flag is off.

        A string that is part of real names ('attn'), or a glob that matches some, was meant as a
        search: the error lists a few of the names and shows the filter function that selects them
        (`arg`, e.g. "names_filter=", is how that filter is passed).
        """
        if name not in self.hook_dict:
            found = self.find_hooks(name)
            if len(found) > 1:  # (part of just one name is a typo: 'Did you mean' below names it)
                is_glob = any(c in name for c in "*?[")
                shown = ", ".join(repr(n) for n in found[:4]) + (", ..." if len(found) > 4 else "")
                test = f"fnmatch.fnmatchcase(name, {name!r})" if is_glob else f"{name!r} in name"
                hint = (
                    f" It {'matches' if is_glob else 'is part of'} {len(found)} hook names ({shown}), but a string "
                    f"must be one whole name. To select them all, pass a filter function: {arg}lambda name: {test}."
                )
            else:
                matches = close_matches(name, self.hook_dict)
                hint = f" Did you mean: {', '.join(repr(m) for m in matches)}?" if matches else ""
            raise HookNameError(f"No hook named {name!r}.{hint} See model.find_hooks() or model.print_hook_list().")
        flag = self.hook_flag(name)
        if flag is not None:
            raise HookFlagError(f"Hook {name!r} only fires when {flag}=True; call model.set_{flag}(True) first.")

    def _check_hook_list(self, hooks: Sequence[tuple[NameOrFilter, HookFn]], arg: str) -> None:
        for entry in hooks:
            if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and callable(entry[1])):
                raise LensError(f"Each entry of {arg} must be a (name_or_filter, hook_fn) pair; got {entry!r}.")
            if isinstance(entry[0], str):
                self.check_hook_name(entry[0])
            elif not callable(entry[0]):
                raise LensError(f"A hook name must be a string or a filter function of the name; got {entry[0]!r} in {arg}.")

    def hook_names_matching(self, names_filter: NamesFilter) -> list[str]:
        """The names a filter selects: None = every hook that fires; strings are checked; a callable filters."""
        if names_filter is None:
            return [n for n in self.hook_dict if self.hook_flag(n) is None]
        if isinstance(names_filter, str):
            names_filter = [names_filter]
        if callable(names_filter):
            return [n for n in self.hook_dict if self.hook_flag(n) is None and names_filter(n)]
        names = list(names_filter)
        for name in names:
            if not isinstance(name, str):
                raise LensError(f"names_filter lists must hold hook names (strings); got {name!r}.")
            self.check_hook_name(name, arg="names_filter=")
        return names

    # ---- adding and removing hooks ------------------------------------------------------------

    def add_hook(
        self,
        name: NameOrFilter,
        hook: HookFn,
        dir: Direction = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> None:
        """Attach `hook` to the hook called `name`, or to every hook whose name passes the filter `name`."""
        if isinstance(name, str):
            self.check_hook_name(name)
        self._attach(name, hook, dir, is_permanent, level, prepend)

    def _attach(self, name: NameOrFilter, hook: HookFn, dir: Direction, is_permanent=False, level=None, prepend=False) -> None:
        """add_hook for a name already checked (hooks() checks its whole list before attaching any)."""
        if isinstance(name, str):
            targets = [name]
        elif callable(name):
            targets = [n for n in self.hook_dict if self.hook_flag(n) is None and name(n)]
        else:
            raise LensError(f"add_hook takes a hook name or a filter function of the name; got {name!r}.")
        for target in targets:
            self.hook_dict[target].add_hook(hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    # TransformerLens 2.x's private steps of hooks(), for code (and tests) that call them directly; hooks()
    # itself checks every name first and attaches through _attach.
    def _enable_hook_with_name(self, name: str, hook: HookFn, dir: Direction) -> None:
        self.mod_dict[name].add_hook(hook, dir=dir, level=self.context_level)

    def _enable_hooks_for_points(self, hook_points, enabled, hook: HookFn, dir: Direction) -> None:
        for name, point in hook_points:
            if enabled(name):
                point.add_hook(hook, dir=dir, level=self.context_level)

    def _enable_hook(self, name: NameOrFilter, hook: HookFn, dir: Direction) -> None:
        if isinstance(name, str):
            self._enable_hook_with_name(name, hook=hook, dir=dir)
        else:
            self._enable_hooks_for_points(self.hook_dict.items(), enabled=name, hook=hook, dir=dir)

    def reset_hooks(
        self,
        clear_contexts: bool = True,
        direction: Literal["fwd", "bwd", "both"] = "both",
        including_permanent: bool = False,
        level: int | None = None,
    ) -> None:
        """Remove hooks (all non-permanent ones by default) and, unless told not to, clear every hook.ctx."""
        for hp in self.hook_dict.values():
            hp.remove_hooks(direction, including_permanent=including_permanent, level=level)
            if clear_contexts:
                hp.clear_context()

    def remove_all_hook_fns(
        self, direction: Literal["fwd", "bwd", "both"] = "both", including_permanent: bool = False, level: int | None = None
    ) -> None:
        for hp in self.hook_dict.values():
            hp.remove_hooks(direction, including_permanent=including_permanent, level=level)

    def clear_contexts(self) -> None:
        for hp in self.hook_dict.values():
            hp.clear_context()

    @contextmanager
    def hooks(
        self,
        fwd_hooks: Sequence[tuple[NameOrFilter, HookFn]] = (),
        bwd_hooks: Sequence[tuple[NameOrFilter, HookFn]] = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
    ) -> Iterator["HookedRootModule"]:
        """Attach hooks for the duration of a `with` block; they are removed on exit, even on an exception."""
        # Check every name first: a bad one must not leave the others attached.
        self._check_hook_list(fwd_hooks, "fwd_hooks")
        self._check_hook_list(bwd_hooks, "bwd_hooks")
        self.context_level += 1
        level = self.context_level  # tag our hooks so an inner context removes only its own
        try:
            for name, fn in fwd_hooks:
                self._attach(name, fn, "fwd", level=level)
            for name, fn in bwd_hooks:
                self._attach(name, fn, "bwd", level=level)
            yield self
        finally:
            if reset_hooks_end:
                self.reset_hooks(clear_contexts, including_permanent=False, level=level)
            self.context_level -= 1

    def run_with_hooks(
        self,
        *model_args: Any,
        fwd_hooks: Sequence[tuple[NameOrFilter, HookFn]] = (),
        bwd_hooks: Sequence[tuple[NameOrFilter, HookFn]] = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        **model_kwargs: Any,
    ) -> Any:
        """Run the model with temporary hooks.

        Backward hooks still fire on a later `.backward()` of this run's output although the hooks
        are removed on return: PyTorch 2.x binds a module's backward hooks into the graph during the
        forward pass. (TransformerLens 2.x warns that they will not; under PyTorch 2.x they do.) They
        do not fire for a later forward; reset_hooks_end=False keeps them for that, then call
        model.reset_hooks().
        """
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            return self(*model_args, **model_kwargs)

    # ---- caching ------------------------------------------------------------------------------

    def get_caching_hooks(
        self,
        names_filter: NamesFilter = None,
        incl_bwd: bool = False,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        cache: dict | None = None,
    ) -> tuple[dict[str, Tensor], list[tuple[str, HookFn]], list[tuple[str, HookFn]]]:
        """(cache dict, fwd_hooks, bwd_hooks) that fill the dict with detached activations (and gradients)."""
        return self._caching_hooks(self.hook_names_matching(names_filter), incl_bwd, device, remove_batch_dim, cache)

    def _caching_hooks(
        self, names: list[str], incl_bwd: bool, device, remove_batch_dim: bool, cache: dict | None = None,
    ) -> tuple[dict[str, Tensor], list[tuple[str, HookFn]], list[tuple[str, HookFn]]]:
        """get_caching_hooks for names already checked."""
        cache = {} if cache is None else cache

        def save(tensor: Tensor, hook: HookPoint, key: str) -> None:
            t = tensor.detach()
            if device is not None:
                t = t.to(device)
            if remove_batch_dim and hook.has_batch_axis:
                if t.shape[0] != 1:
                    raise LensError(
                        f"remove_batch_dim=True needs a batch of one, but '{hook.name}' has batch size "
                        f"{t.shape[0]}; run one prompt at a time or leave remove_batch_dim=False."
                    )
                t = t[0]
            cache[key] = t

        fwd = [(n, lambda t, hook: save(t, hook, hook.name)) for n in names]
        bwd = [(n, lambda t, hook: save(t, hook, hook.name + "_grad")) for n in names] if incl_bwd else []
        return cache, fwd, bwd

    def run_with_cache(
        self,
        *model_args: Any,
        names_filter: NamesFilter = None,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        return_cache_object: bool = True,
        **model_kwargs: Any,
    ) -> tuple[Any, ActivationCache | dict[str, Tensor]]:
        """Run the model and return (output, ActivationCache of the hooks `names_filter` selects).

        return_cache_object=False returns the plain dict instead (TransformerLens' option).
        """
        selected = self.hook_names_matching(names_filter)  # checks names before anything runs
        cache_dict, fwd, bwd = self._caching_hooks(selected, incl_bwd, device, remove_batch_dim)
        with self.hooks(fwd, bwd, reset_hooks_end, clear_contexts):
            out = self(*model_args, **model_kwargs)
            if incl_bwd:
                if not isinstance(out, Tensor) or out.numel() != 1:
                    shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                    raise LensError(
                        f"incl_bwd=True backpropagates from the model's output, which must be a scalar; got {shape}. "
                        "Ask the model for a loss (e.g. return_type='loss')."
                    )
                out.backward()
        if not return_cache_object:
            return out, cache_dict
        cache = ActivationCache(
            cache_dict,
            self,
            has_batch_dim=not remove_batch_dim,
            names_filter_description=describe_names_filter(names_filter),
            selected_names=set(selected),
        )
        return out, cache

    # ---- discovery ----------------------------------------------------------------------------

    def find_hooks(self, pattern: str | re.Pattern | None = None) -> list[str]:
        """Hook names matching `pattern`: None = all; a glob if it has * ? or [; else a substring; or a regex.

        lensutil's own (it was called list_hooks before TransformerLens 3.3 gave that name to the
        attached hooks, see list_hooks). A TransformerLens user writes `[n for n in model.hook_dict if ...]`.
        """
        names = list(self.hook_dict)
        if pattern is None:
            return names
        if isinstance(pattern, re.Pattern):
            return [n for n in names if pattern.search(n)]
        if any(c in pattern for c in "*?["):
            return [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        return [n for n in names if pattern in n]

    def list_hooks(
        self,
        name_filter: NamesFilter = None,
        dir: Literal["fwd", "bwd", "both"] = "both",
        including_permanent: bool = True,
    ) -> dict[str, list[LensHandle]]:
        """The hooks attached with add_hook (hooks(), run_with_hooks, ...), by hook name, as in
        TransformerLens 3.3+: {name: [LensHandle, ...]}, hook points with none left out.

        `name_filter`: None = every hook point; a string = that one name; a list of names; or a
        function of the name. Each handle's `user_hook` is the function as it was given. To search
        the hook *names*, use find_hooks(pattern). Unlike TransformerLens, which returns {} for a
        name it does not have, a string that is not a hook name raises HookNameError.
        """
        if dir not in ("fwd", "bwd", "both"):
            raise LensError(f"Hook direction must be 'fwd', 'bwd' or 'both', not {dir!r}.")
        if name_filter is None or callable(name_filter):
            names = [n for n in self.hook_dict if name_filter is None or name_filter(n)]
        else:
            names = [name_filter] if isinstance(name_filter, str) else list(name_filter)
            for name in (n for n in names if n not in self.hook_dict):  # probably a search, as the old list_hooks took
                raise HookNameError(
                    f"No hook named {name!r}. list_hooks returns the hooks attached to the named hook points "
                    f"(as TransformerLens 3.3+ does); to search the hook names, call model.find_hooks({name!r})."
                )
            wanted = set(names)
            names = [n for n in self.hook_dict if n in wanted]
        attached = {}
        for name in names:
            hp = self.hook_dict[name]
            handles = (hp.fwd_hooks if dir != "bwd" else []) + (hp.bwd_hooks if dir != "fwd" else [])
            if handles := [h for h in handles if including_permanent or not h.is_permanent]:
                attached[name] = handles
        return attached

    def print_hook_list(self, pattern: str | re.Pattern | None = None) -> None:
        """Print each hook matching `pattern` with its shape, flags and device (lensutil's own; see hook_listing.py)."""
        print_hook_list(self, pattern)
