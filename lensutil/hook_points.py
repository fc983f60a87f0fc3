"""Hook plumbing: `HookPoint` (an identity module you can attach functions to) and `HookedRootModule`.

TransformerLens' API and semantics: a hook function is `fn(activation, hook) -> None | tensor`;
returning None keeps the activation, returning a tensor replaces it. Names are checked before
anything is attached, so a typo never leaves half a set of hooks behind, and every temporary hook
is removed when its call ends, however it ends.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .activation_cache import ActivationCache, describe_names_filter
from .errors import HookFlagError, HookNameError, HookShapeError, LensError, close_matches

HookFn = Callable[..., Any]  # fn(tensor, hook: HookPoint) -> None | Tensor
NameOrFilter = str | Callable[[str], bool]
NamesFilter = str | Sequence[str] | Callable[[str], bool] | None
Direction = Literal["fwd", "bwd"]


# torch's module-wide hook registries (register_module_forward_hook, ...): dicts it changes in place.
_m = nn.modules.module
_GLOBAL_FWD, _GLOBAL_BWD = _m._global_forward_hooks, _m._global_backward_hooks
_GLOBAL_FWD_PRE, _GLOBAL_BWD_PRE = _m._global_forward_pre_hooks, _m._global_backward_pre_hooks


@dataclass
class LensHandle:
    """A registered hook's torch handle plus what decides when it is removed."""

    handle: RemovableHandle
    is_permanent: bool = False
    context_level: int | None = None  # set by hooks(): the nesting depth that added it
    user_hook: HookFn | None = None  # the function as the user gave it, before add_hook wrapped it

    @property
    def hook(self) -> RemovableHandle:
        """TransformerLens' name for the torch handle."""
        return self.handle


class HookPoint(nn.Module):
    """Identity module marking a place in the forward pass where activations can be read or changed."""

    def __init__(self, shape_comment: str | None = None):
        super().__init__()
        self.shape_comment = shape_comment  # e.g. "batch pos d_model"; shown by print_hook_list
        self.name: str | None = None  # set by HookedRootModule.setup()
        self.ctx: dict = {}  # scratch space shared by a hook's calls (TransformerLens' hook.ctx)
        self.fwd_hooks: list[LensHandle] = []
        self.bwd_hooks: list[LensHandle] = []

    def forward(self, x: Tensor) -> Tensor:
        return x

    def __call__(self, x: Tensor) -> Tensor:
        # A model runs ~20 hook points per layer; with nothing attached (here or globally), skip
        # nn.Module's call machinery: an identity needs none, and generation calls these 600 times a token.
        others = (self._forward_pre_hooks or self._backward_hooks or self._backward_pre_hooks
                  or _GLOBAL_FWD or _GLOBAL_BWD or _GLOBAL_FWD_PRE or _GLOBAL_BWD_PRE)
        if not self._forward_hooks:
            return super().__call__(x) if others else x
        if others or self._forward_hooks_with_kwargs or self._forward_hooks_always_called:
            return super().__call__(x)
        # Only plain forward hooks (run_with_cache attaches ~600): call them as nn.Module._call_impl does (a
        # non-None return replaces the output), without the rest of its machinery.
        args, out = (x,), x
        for hook in tuple(self._forward_hooks.values()):
            result = hook(self, args, out)
            if result is not None:
                out = result
        return out

    @property
    def has_batch_axis(self) -> bool:
        # What remove_batch_dim squeezes: an MoE expert's hooks are "routed d_mlp" (tokens over batch and pos).
        return self.shape_comment is None or self.shape_comment.split()[0] == "batch"

    @property
    def has_hooks(self) -> bool:
        """Whether any hook is attached here: forward, forward-pre, backward or backward-pre, by
        add_hook or by torch's own register_* methods.

        Attention reads this to decide whether the fused kernel (which never materialises the
        pattern) may run, so it must see every kind. (TransformerLens 3.x has a method
        has_hooks(dir, including_permanent, level) that counts only add_hook's hooks; 2.x has none.)
        """
        return bool(self._forward_hooks or self._forward_pre_hooks or self._backward_hooks or self._backward_pre_hooks)

    def add_hook(
        self,
        hook: HookFn,
        dir: Direction = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> LensHandle:
        """Attach `hook(tensor, hook=self)`; for dir="bwd" the tensor is the gradient of this point's output."""
        if dir == "fwd":

            def fwd_wrapper(module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
                return self._checked(hook, hook(output, hook=self), output)

            handle = self.register_forward_hook(fwd_wrapper, prepend=prepend)
            lens_handle = LensHandle(handle, is_permanent, level, user_hook=hook)
            self.fwd_hooks.append(lens_handle)
        elif dir == "bwd":

            def bwd_wrapper(module: nn.Module, grad_input: tuple, grad_output: tuple) -> tuple | None:
                grad = grad_output[0]
                new = self._checked(hook, self._unwrap_grad(hook, hook(grad, hook=self)), grad)
                # The module is the identity, so the gradient w.r.t. its input is the one we were given.
                return None if new is None else (new,)

            handle = self.register_full_backward_hook(bwd_wrapper, prepend=prepend)
            lens_handle = LensHandle(handle, is_permanent, level, user_hook=hook)
            self.bwd_hooks.append(lens_handle)
        else:
            raise LensError(f"Hook direction must be 'fwd' or 'bwd', not {dir!r}.")
        return lens_handle

    def _unwrap_grad(self, hook: HookFn, result: Any) -> Any:
        """A backward hook may return None, a tensor, or torch's own form, a 1-tuple (grad,)."""
        if result is None or isinstance(result, Tensor):
            return result
        if isinstance(result, tuple) and len(result) == 1 and isinstance(result[0], Tensor):
            return result[0]
        fn_name = getattr(hook, "__name__", repr(hook))
        if isinstance(result, tuple):
            what = f"a tuple of {len(result)} ({', '.join(type(r).__name__ for r in result)})"
        else:
            what = f"a {type(result).__name__}"
        raise LensError(
            f"Backward hook {fn_name} on '{self.name}' returned {what}; a backward hook must return "
            "None (keep the gradient), a tensor, or a 1-tuple (grad,) holding the new gradient."
        )

    def _checked(self, hook: HookFn, result: Any, activation: Tensor) -> Tensor | None:
        if result is None:
            return None
        fn_name = getattr(hook, "__name__", repr(hook))
        if not isinstance(result, Tensor):
            raise LensError(
                f"Hook function {fn_name} on '{self.name}' returned a {type(result).__name__}; a hook must "
                "return None (keep the activation) or a tensor (replace it)."
            )
        if result.shape != activation.shape:
            raise HookShapeError(
                f"Hook function {fn_name} on '{self.name}' returned a tensor of shape {tuple(result.shape)}, "
                f"but the activation has shape {tuple(activation.shape)} ({self.shape_comment or 'no shape comment'}). "
                "Return a tensor of the same shape, or None to keep the activation."
            )
        return result

    def remove_hooks(
        self,
        dir: Literal["fwd", "bwd", "both"] = "fwd",
        including_permanent: bool = False,
        level: int | None = None,
    ) -> None:
        """Remove hooks in direction `dir`; permanent ones only if asked, and only those of `level` if given."""
        if dir not in ("fwd", "bwd", "both"):
            raise LensError(f"Hook direction must be 'fwd', 'bwd' or 'both', not {dir!r}.")

        def keep(h: LensHandle) -> bool:
            if h.is_permanent and not including_permanent:
                return True
            if level is not None and h.context_level != level:
                return True
            h.handle.remove()
            return False

        # In place, and only where there are hooks: reset_hooks() visits every hook point, and
        # assigning through nn.Module.__setattr__ costs more than the filtering.
        if dir in ("fwd", "both") and self.fwd_hooks:
            self.fwd_hooks[:] = [h for h in self.fwd_hooks if keep(h)]
        if dir in ("bwd", "both") and self.bwd_hooks:
            self.bwd_hooks[:] = [h for h in self.bwd_hooks if keep(h)]

    def clear_context(self) -> None:
        self.ctx = {}

    def extra_repr(self) -> str:
        return self.shape_comment or ""


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
        from .hook_listing import print_hook_list

        print_hook_list(self, pattern)
