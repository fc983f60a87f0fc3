"""Weights of offloaded modules between forwards: a LensError that says why, and read_weight to load one.

accelerate keeps an offloaded module's weights on the meta device (shapes, no data) and loads them
from the offload folder (or, beside a GPU, from CPU memory) for that module's forward only. Read
outside it, a weight is a meta tensor, and torch fails later and far from the cause ("Tensor.item()
cannot be called on meta tensors", "Cannot copy out of meta tensor"). So placement.dispatch calls
`guard` on the model, after which:

- reading a weight of an offloaded module outside its forward (`model.blocks[3].attn.W_Q`, or
  `model.W_Q`, which stacks every block's) raises OffloadedWeightError naming it, where it is kept
  and what to do. Inside the forward, hooks included, the weights are loaded and read as usual;
- `model.to(...)`, `.half()`, `.cuda()` ... raise it too (there is no data to move), unless they
  would change nothing: `model.to(model.cfg.device)`, as TransformerLens notebooks write, still works;
- `read_weight(model, "blocks.3.attn.W_Q")` loads one weight from where it is kept (lensutil's own;
  TransformerLens has no offloading);
- `model.state_dict()` (so torch.save and save_pretrained) holds every weight's values, read from where
  it is kept (from disk: all of them in memory at once); `state_dict(keep_vars=True)` the meta Parameters.

Python looks `__getattr__` up on the type, never the instance, so the modules holding offloaded
weights get a subclass of their own class that adds the check (same name; `isinstance` holds).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import OffloadedWeightError, PlacementError, close_matches
from ..model.weight_layout import empty_in_order


@dataclass(frozen=True)
class Offloaded:
    unit: str  # the device map's name for the module whose weights are offloaded, e.g. "blocks.3"
    kept_on: str  # "disk", or "cpu" for a model that runs on a GPU
    runs_on: str  # the device its weights are loaded onto for its forward
    weights_map: object  # placement.OffloadFolder: full parameter name -> stored tensor


_moving = threading.local()  # depth > 0 while accelerate's hooks load or unload weights


def guard(model: nn.Module, offloaded: dict[str, Offloaded]) -> None:
    """Make the weights of the `offloaded` units ({unit name: where}) refuse reads and moves outside their forward."""
    for unit, info in offloaded.items():
        root = model.get_submodule(unit)
        for name, module in root.named_modules():
            _let_accelerate_move(module)
            if module._parameters:
                module._lens_offload = (info, f"{unit}.{name}" if name else unit)
                module.__class__ = _guarded_class(type(module))
    # The units, what is in them, and what is above them (moving "blocks" moves the offloaded blocks):
    # moves are refused before anything moves, so a refused model.to() leaves no module half-moved.
    for name, module in model.named_modules():
        if _related(name, offloaded):
            module._apply = _refusing_apply(module, name, offloaded)


def _related(name: str, offloaded: dict[str, Offloaded]) -> list[str]:
    """The offloaded units inside module `name`, or the one that contains it."""
    return [u for u in offloaded if name == "" or u == name or u.startswith(name + ".") or name.startswith(u + ".")]


def read_weight(model: nn.Module, name: str) -> Tensor:
    """One weight by its state_dict name (e.g. "blocks.3.attn.W_Q"), loaded if its module is offloaded.

    lensutil's own. An offloaded weight comes back as a copy on the CPU, in the parameter's memory
    order (writing to it changes nothing in the model); any other weight as the parameter itself.
    """
    module_name, _, leaf = name.rpartition(".")
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        module = None
    param = None if module is None else module._parameters.get(leaf, module._buffers.get(leaf))
    if param is None:
        close = close_matches(name, model.state_dict(keep_vars=True).keys(), n=3)
        raise PlacementError(
            f"{name!r} is not a weight of this model (read_weight takes a state_dict name"
            + (f"; did you mean {', '.join(map(repr, close))}?)" if close else ")") + "."
        )
    if not param.is_meta:
        return param
    offload = module.__dict__.get("_lens_offload")
    if offload is None:  # e.g. placement_loading.empty_model's: no weights anywhere
        raise PlacementError(f"{name} is a meta tensor that no offload folder holds: this model was built without weights.")
    info = offload[0]
    stored = info.weights_map[name]
    if info.kept_on == "disk":  # OffloadFolder read a fresh tensor from disk
        return stored
    return empty_in_order(stored).copy_(stored)  # one kept in CPU memory is the model's own: a copy


# ---- reads ---------------------------------------------------------------------------------------


class _GuardedReads:
    """Mixed in before the module's own class: a meta weight read outside accelerate's moves is an error."""

    def __getattr__(self, attr: str):
        value = super().__getattr__(attr)
        if isinstance(value, Tensor) and value.is_meta and not getattr(_moving, "depth", 0):
            info, where = self.__dict__["_lens_offload"]
            raise OffloadedWeightError(_read_message(f"{where}.{attr}", info))
        return value

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # state_dict() (torch.save, save_pretrained) gets the stored weights, not meta tensors (which torch.save
        # writes as a few KB of shapes without complaint). keep_vars=True asks for the Parameters themselves
        # (lensutil's placement code reads their shapes that way): those stay meta, and nothing is read.
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if keep_vars or getattr(_moving, "depth", 0):
            return
        info, where = self.__dict__["_lens_offload"]
        for name, param in self._parameters.items():
            if param is not None and param.is_meta and prefix + name in destination:
                destination[prefix + name] = info.weights_map[f"{where}.{name}"]  # from disk: a fresh tensor


_GUARDED: dict[type, type] = {}


def _guarded_class(cls: type) -> type:
    if cls not in _GUARDED and not issubclass(cls, _GuardedReads):
        names = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}  # prints as the class it extends
        _GUARDED[cls] = type(cls.__name__, (_GuardedReads, cls), names)
    return _GUARDED.get(cls, cls)


def _read_message(name: str, info: Offloaded) -> str:
    where = "to disk" if info.kept_on == "disk" else "to CPU memory"
    stacked = (" model.W_Q and the like stack this weight from every block."
               if name.rsplit(".", 1)[-1].lstrip("_") in _STACKED else "")
    in_hook = (f", or inside a hook in {info.unit} (e.g. '{info.unit}.hook_resid_pre'), which runs with its weights loaded"
               if info.unit.startswith("blocks.") else "")
    return (
        f"{name} is not in memory between forwards: the device map offloads {info.unit} {where}, and accelerate loads "
        f"its weights onto {info.runs_on} only while {info.unit} runs (outside, it is a meta tensor).{stacked} Read it "
        f"with lensutil.loading.offloaded_weights.read_weight(model, {name!r}) (lensutil's own: loads this one weight){in_hook}. "
        "To edit weights, load without offload: a device_map with no 'disk' entries (beside a GPU, no 'cpu' ones "
        "either), or a max_memory with room for the whole model."
    )


_STACKED = {"W_Q", "W_K", "W_V", "W_O", "W_in", "W_out"}  # model.py's stacked properties


# ---- accelerate's own moves ------------------------------------------------------------------------


def _let_accelerate_move(module: nn.Module) -> None:
    """accelerate's hooks read each meta weight (getattr) as they load it: let them, by counting them in."""
    from accelerate.hooks import AlignDevicesHook, SequentialHook

    hook = getattr(module, "_hf_hook", None)
    hooks = hook.hooks if isinstance(hook, SequentialHook) else [hook]
    for h in hooks:
        if isinstance(h, AlignDevicesHook) and h.offload:
            for method in ("pre_forward", "post_forward", "detach_hook"):
                setattr(h, method, _counted(getattr(h, method)))


def _counted(method):
    def run(*args, **kwargs):
        _moving.depth = getattr(_moving, "depth", 0) + 1
        try:
            return method(*args, **kwargs)
        finally:
            _moving.depth -= 1

    return run


# ---- moves -----------------------------------------------------------------------------------------


def _refusing_apply(module: nn.Module, name: str, offloaded: dict[str, Offloaded]):
    """An instance `_apply` (what .to, .half, .cuda, ... call) that refuses any move that would change something."""
    units = _related(name, offloaded)
    runs_on = offloaded[units[0]].runs_on  # every offloaded unit runs on the main device (placement.main_device)

    def _apply(fn, *args, **kwargs):
        if _changes_nothing(module, fn, runs_on):
            return module
        raise OffloadedWeightError(
            f"Cannot move or cast {'the model' if name == '' else name}: the device map offloads "
            f"{', '.join(units[:6])}{' ...' if len(units) > 6 else ''}, whose weights have no data between forwards "
            f"(accelerate loads them onto {runs_on} for each forward). To run on another device or in another dtype, "
            "load again with device=... or dtype=... (with the device map, or without one if the model fits); to hold "
            "every weight in memory, load without offload."
        )

    return _apply


def _changes_nothing(module: nn.Module, fn, runs_on: str) -> bool:
    # `fn` is the conversion .to() built; a tensor it would leave alone comes back as itself. Empty
    # probes of each (dtype, device) stand for the tensors, and a meta weight for what it becomes at
    # each forward: a tensor of its dtype on `runs_on`.
    kinds = {(t.dtype, runs_on if t.is_meta else t.device) for t in [*module.parameters(), *module.buffers()]}
    probes = [torch.empty(0, dtype=dtype, device=device) for dtype, device in kinds]
    return all(fn(p) is p for p in probes)
