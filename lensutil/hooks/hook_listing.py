"""print_hook_list: every hook's name and shape, and where it runs on a model placed over devices."""

from __future__ import annotations

import re
from ..devices import device_for


def print_hook_list(model, pattern: str | re.Pattern | None = None) -> None:
    """Print each hook whose name matches `pattern` (as find_hooks reads it) with its shape,
    noting hooks that need a config flag to fire, and, on a model loaded with a device_map or
    n_devices (lensutil/loading/placement.py), the device its block is on ("disk": loaded for each forward).

    lensutil's own: TransformerLens has no such method (a TransformerLens user writes
    `[n for n in model.hook_dict if ...]`).
    """
    names = model.find_hooks(pattern)
    if not names:
        print(f"No hook matches {pattern!r}; model.print_hook_list() shows them all.")
        return
    device_map = getattr(model, "hf_device_map", None)
    name_w = max(len(n) for n in names)
    shape_w = max(len(model.hook_dict[n].shape_comment or "") for n in names)
    for name in names:
        shape = model.hook_dict[name].shape_comment or ""
        flag = model.hook_flag(name)
        note = f"  (needs {flag}=True)" if flag else ""
        where = f"  {hook_device(model, name, device_map):<7}" if device_map else ""
        print(f"{name:<{name_w}}  {shape:<{shape_w}}{where}{note}".rstrip())


def hook_device(model, name: str, device_map: dict) -> str:
    """The device of the module a hook sits in; hooks outside every placed module run on cfg.device."""
    unit = name.removeprefix("hook_")  # hook_embed / hook_pos_embed: the embeddings' outputs
    for key in (name, unit):
        if any(key == n or key.startswith(n + ".") or n == "" for n in device_map):
            return device_for(device_map, key)
    return model.cfg.device
