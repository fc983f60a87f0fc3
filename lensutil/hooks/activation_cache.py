"""ActivationCache: the activations one `run_with_cache` saw, plus TransformerLens' analysis helpers.

Axis glossary (TransformerLens' names): batch; pos (query position); d_model (residual width);
head_index; d_head; layers_covered (one entry per residual-stream snapshot, see accumulated_resid);
num_components (one entry per thing that writes to the residual stream, see decompose_resid and
stack_head_results). `*batch_and_pos_dims` means "batch pos" normally, "pos" after
remove_batch_dim(), and fewer still once a pos_slice picks a single position.

Look up activations by full name (`cache["blocks.0.attn.hook_pattern"]`) or TransformerLens'
short form (`cache["pattern", 0]`, `cache["scale", 3, "ln1"]`, negative layers count from the end).
A missing name raises CacheKeyError saying why it is missing and how to get it.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import ItemsView, Iterator, KeysView, ValuesView
from typing import Any

import torch
from torch import Tensor

from ..errors import CacheKeyError, LensError, close_matches
from ..utils import get_act_name
from .cache_analysis import ResidualStreamAnalysis


def describe_names_filter(names_filter: Any) -> str:
    """How run_with_cache's names_filter (None, a name, a list of names or a function) reads in an error message."""
    if names_filter is None or isinstance(names_filter, str):
        return f"names_filter={names_filter!r}"
    if callable(names_filter):
        return f"names_filter={getattr(names_filter, '__name__', repr(names_filter))} (a filter function)"
    return f"names_filter={list(names_filter)!r}"


def _version(t: Tensor) -> int | None:
    """The tensor's in-place version counter; None for inference-mode tensors, which keep none."""
    return None if t.is_inference() else t._version


class ActivationCache(ResidualStreamAnalysis):
    """A dict of hook name -> detached activation, tied to the model that produced it.

    `names_filter_description` and `selected_names` record how run_with_cache chose what to cache,
    so that a missing key can say whether it was filtered out or simply never fired. `edited` holds
    the names changed since the cache was made, by `cache[name] = ...` or in place
    (`cache[name].zero_()`, `cache[name][:, 3] = 0`); run_with_cache_from_cache patches those in.

    Assigning (`cache[name] = tensor`) is lensutil's own: TransformerLens' ActivationCache has no
    __setitem__ (`TypeError: 'ActivationCache' object does not support item assignment`); there
    one edits `cache.cache_dict[name]` or the tensor itself.
    """

    def __init__(
        self,
        cache_dict: dict[str, Tensor],
        model: Any,
        has_batch_dim: bool = True,
        names_filter_description: str | None = None,
        selected_names: set[str] | None = None,
    ):
        self.cache_dict = cache_dict
        self.model = model
        self.has_batch_dim = has_batch_dim
        self.names_filter_description = names_filter_description
        self.selected_names = selected_names
        self._assigned: set[str] = set()
        self._record_versions()

    # ---- edits --------------------------------------------------------------------------------

    def _record_versions(self) -> None:
        # torch bumps a tensor's _version on every in-place change (zero_(), t[:] = 0, t[0].mul_(2)...),
        # so comparing it later finds edits made to the tensors themselves. The weak reference makes
        # sure it is the same tensor being compared, without keeping a replaced one alive.
        self._versions = {name: (weakref.ref(t), _version(t)) for name, t in self.cache_dict.items()}

    @property
    def edited(self) -> set[str]:
        """Names assigned with `cache[name] = ...` or whose tensor was changed in place since the cache was made.

        Tensors that two hooks share (a block's hook_resid_post is the next block's hook_resid_pre)
        change together, so an in-place edit of one marks both. Tensors made under
        torch.inference_mode() keep no version counter: in-place edits to those cannot be seen.
        """
        changed = {
            name for name, (ref, version) in self._versions.items()
            if version is not None and (t := self.cache_dict.get(name)) is not None and ref() is t and _version(t) != version
        }
        return self._assigned | changed

    def __getstate__(self) -> dict:  # copy.deepcopy and pickle: weak references do not travel
        state = {k: v for k, v in self.__dict__.items() if k != "_versions"}
        state["_assigned"] = self.edited
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._record_versions()  # of the copy's own tensors

    def _replace_tensors(self, new: dict[str, Tensor]) -> None:
        """Swap in moved or reshaped tensors, keeping the record of what was edited before."""
        self._assigned = self.edited
        self.cache_dict = new
        self._record_versions()

    # ---- mapping ------------------------------------------------------------------------------

    def _resolve(self, key: str | tuple) -> str:
        """The full hook name for a key; raises CacheKeyError for a short name that cannot be resolved."""
        try:
            if isinstance(key, str):
                return key if key in self.cache_dict else get_act_name(key)
            if isinstance(key, tuple) and key and isinstance(key[0], str):
                name, *rest = key
                if rest and rest[0] is not None and int(rest[0]) < 0:  # count from the last layer
                    rest[0] = self.model.cfg.n_layers + int(rest[0])
                return get_act_name(name, *rest)
        except LensError as e:
            raise CacheKeyError(str(e)) from None
        raise CacheKeyError(f"Cache keys are hook names or (name, layer[, layer_type]) tuples; got {key!r}.")

    def __getitem__(self, key: str | tuple) -> Tensor:
        name = self._resolve(key)
        if name not in self.cache_dict:
            raise CacheKeyError(self._why_missing(name))
        return self.cache_dict[name]

    def __setitem__(self, key: str | tuple, value: Tensor) -> None:
        """Replace an activation (lensutil's own; TransformerLens' cache cannot be assigned to)."""
        name = self._resolve(key)
        self.cache_dict[name] = value
        self._assigned.add(name)

    def __contains__(self, key: object) -> bool:
        try:
            return self._resolve(key) in self.cache_dict  # type: ignore[arg-type]
        except (CacheKeyError, TypeError, ValueError):
            return False

    def __len__(self) -> int:
        return len(self.cache_dict)

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def keys(self) -> KeysView[str]:
        return self.cache_dict.keys()

    def values(self) -> ValuesView[Tensor]:
        return self.cache_dict.values()

    def items(self) -> ItemsView[str, Tensor]:
        return self.cache_dict.items()

    def __repr__(self) -> str:
        return f"ActivationCache with keys {list(self.cache_dict)}"

    def _why_missing(self, name: str) -> str:
        hook_dict = getattr(self.model, "hook_dict", {}) or {}
        if name.endswith("_grad") and name[: -len("_grad")] in hook_dict:
            base = name[: -len("_grad")]
            if not any(k.endswith("_grad") for k in self.cache_dict):
                return f"No gradient {name!r} in this cache: gradients are cached only by run_with_cache(..., incl_bwd=True)."
            return f"No gradient {name!r}: '{base}' was not selected by {self.names_filter_description}, or no gradient reached it (the output does not depend on it, or nothing before it requires grad)."
        if name not in hook_dict:
            matches = close_matches(name, hook_dict or self.cache_dict)
            hint = f" Did you mean: {', '.join(repr(m) for m in matches)}?" if matches else ""
            return f"No hook named {name!r} in this model.{hint} See model.find_hooks() or model.print_hook_list()."
        flag = self.model.hook_flag(name) if hasattr(self.model, "hook_flag") else None
        if flag is not None:
            return f"{name!r} did not fire: it needs {flag}=True. Call model.set_{flag}(True) and run again."
        if self.selected_names is not None and name not in self.selected_names:
            return (
                f"{name!r} was left out by {self.names_filter_description}. Include it (e.g. add {name!r} "
                "to the names_filter list) or pass names_filter=None to cache every hook."
            )
        return (
            f"{name!r} exists but did not fire in this run (a run that stopped early, e.g. stop_at_layer, "
            "or started late, e.g. start_at_layer, skips the hooks outside it)."
        )

    # ---- moving and reshaping -----------------------------------------------------------------

    def to(self, device: str | torch.device, move_model: bool = False) -> "ActivationCache":
        """Move every cached tensor (and, if asked, the model) to `device`; returns self."""
        self._replace_tensors({k: v.to(device) for k, v in self.cache_dict.items()})
        if move_model:
            self.model.to(device)
        return self

    def remove_batch_dim(self) -> "ActivationCache":
        """Drop the leading batch axis (which must have size 1) from every activation that has one
        (an MoE expert's hooks are [routed, d_mlp] and stay as they are); returns self."""
        if not self.has_batch_dim:
            warnings.warn("This cache has no batch dimension to remove.", stacklevel=2)
            return self
        hooks = getattr(self.model, "hook_dict", {})
        batched = {k for k in self.cache_dict if (h := hooks.get(k.removesuffix("_grad"))) is None or h.has_batch_axis}
        wide = {k: tuple(v.shape) for k, v in self.cache_dict.items() if k in batched and v.shape[0] != 1}
        if wide:
            name, shape = next(iter(wide.items()))
            raise LensError(f"remove_batch_dim needs batch size 1, but {name!r} has shape {shape}.")
        self._replace_tensors({k: v[0] if k in batched else v for k, v in self.cache_dict.items()})
        self.has_batch_dim = False
        return self
