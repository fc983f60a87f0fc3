"""Hook plumbing: `HookPoint`, an identity module you can attach functions to (HookedRootModule, in
root_module.py, finds them by name and attaches and removes them).

TransformerLens' API and semantics: a hook function is `fn(activation, hook) -> None | tensor`;
returning None keeps the activation, returning a tensor replaces it. Names are checked before
anything is attached, so a typo never leaves half a set of hooks behind, and every temporary hook
is removed when its call ends, however it ends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..errors import HookShapeError, LensError


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
        # What remove_batch_dim squeezes: an MoE expert's hooks are "routed d_mlp_expert" (tokens over batch and pos).
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

    def fire_and_tell(self, x: Tensor) -> tuple[Tensor, bool]:
        """Run the hooks on `x`: (what they give back, whether they changed the value). lensutil's own.

        For a shortcut that keeps a fused or HuggingFace-rounded value while hooks only read. A change
        is another tensor returned, or an edit in place, found by comparing values with a copy made
        before the hooks ran: a version counter would miss an edit through `.data` (and inference
        tensors keep none), and a shortcut must never change what a forward computes.
        """
        if not self.has_hooks:
            return x, False
        seen = x.detach().clone()
        out = self(x)
        return out, out is not x or not torch.equal(out.detach(), seen)

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
            self._record(self.fwd_hooks, lens_handle, prepend)
        elif dir == "bwd":

            def bwd_wrapper(module: nn.Module, grad_input: tuple, grad_output: tuple) -> tuple | None:
                grad = grad_output[0]
                new = self._checked(hook, self._unwrap_grad(hook, hook(grad, hook=self)), grad)
                # The module is the identity, so the gradient w.r.t. its input is the one we were given.
                return None if new is None else (new,)

            handle = self.register_full_backward_hook(bwd_wrapper, prepend=prepend)
            lens_handle = LensHandle(handle, is_permanent, level, user_hook=hook)
            self._record(self.bwd_hooks, lens_handle, prepend)
        else:
            raise LensError(f"Hook direction must be 'fwd' or 'bwd', not {dir!r}.")
        return lens_handle

    @staticmethod
    def _record(handles: list[LensHandle], handle: LensHandle, prepend: bool) -> None:
        # fwd_hooks / bwd_hooks list the hooks in the order they run, as TransformerLens' do: a
        # prepended hook runs first (torch's prepend=True), so it is listed first.
        if prepend:
            handles.insert(0, handle)
        else:
            handles.append(handle)

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
