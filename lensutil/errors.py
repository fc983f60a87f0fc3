"""One exception hierarchy for everything lensutil tells a user went wrong.

Every error says what was wrong and what to do. Catch ``LensError`` to catch them all.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LensError(Exception):
    """Base class of every error lensutil raises on purpose."""


class HookNameError(LensError):
    """A hook name that the model does not have."""


class HookFlagError(LensError):
    """A hook that only fires when a config flag is on, asked for while the flag is off."""


class HookShapeError(LensError):
    """A hook function returned a tensor whose shape differs from the activation's."""


class CacheKeyError(LensError, KeyError):
    """A name missing from an ActivationCache: unknown to the model, or left out by names_filter."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class ConfigError(LensError):
    """A config that is inconsistent, or uses a setting lensutil does not implement."""


class UnsupportedArchitectureError(ConfigError):
    """A HuggingFace architecture with no lensutil adapter."""


class WeightLoadError(LensError):
    """Weights that are missing, unexpected, or of the wrong shape (loading is strict)."""


class InputError(LensError):
    """Input to forward/generate of the wrong type, size or content."""


class AttentionMaskError(InputError):
    """An attention mask of the wrong shape or values."""


class ModelAccessError(LensError):
    """The hub refused or could not be reached (gated model, no token, offline)."""


class ZooError(LensError):
    """A zoo model that could not be fetched or built."""


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates nearest to ``name``, best first (for 'did you mean' messages)."""
    candidates = list(candidates)
    found = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    if not found:  # fall back to shared suffixes: 'mlp.hook_mlp_out' -> '...hook_mlp_out'
        tail = name.rsplit(".", 1)[-1]
        found = [c for c in candidates if c.endswith(tail)][:n]
    return found
