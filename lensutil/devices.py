"""Reading a device map: the device a module, weight or hook is placed on (placement builds the maps; the hook listing reads them)."""

from __future__ import annotations

from collections.abc import Mapping

from .errors import PlacementError


def device_for(device_map: Mapping, key: str) -> str:
    """The device a parameter (or hook) named `key` is placed on: the longest device-map name that contains it."""
    best = None
    for name in device_map:
        if (name == "" or key == name or key.startswith(name + ".")) and (best is None or len(name) > len(best)):
            best = name
    if best is None:
        raise PlacementError(f"{key!r} has no device in the device map {dict(device_map)}.")
    return device_map[best]
