"""One exception hierarchy for everything lensutil tells a user went wrong.

Every error says what was wrong and what to do. Catch ``LensError`` to catch them all.
"""

from __future__ import annotations

import difflib
import re
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


class MissingVocabSizeError(ConfigError, AssertionError):
    """A config with d_vocab=-1 and no tokenizer to take the vocabulary size from. An AssertionError too,
    because TransformerLens 2.x asserted this and code written for it catches that."""


class UnsupportedArchitectureError(ConfigError):
    """A HuggingFace architecture with no lensutil adapter."""


class WeightLoadError(LensError):
    """Weights that are missing, unexpected, or of the wrong shape (loading is strict)."""


class InputError(LensError, ValueError):
    """Input to forward/generate of the wrong type, size or content.

    Also a ValueError, which is what TransformerLens and torch raise for bad input, so code written
    for them that catches ValueError catches this too."""


class AttentionMaskError(InputError):
    """An attention mask of the wrong shape or values."""


class FactoredMatrixShapeError(InputError, AssertionError):
    """FactoredMatrix factors or operands whose dimensions do not fit. An AssertionError too, because
    TransformerLens 2.x raised that and code written for it catches it (lensutil/factored_matrix.py)."""


class HeadDetectionError(InputError, AssertionError):
    """detect_head input that cannot be scored: a sequence that is empty or longer than the context, a
    detection pattern of the wrong shape or not lower triangular, an unknown head name or error measure.
    An AssertionError too, because TransformerLens 2.x raised that and code written for it catches it."""


class SVDInterpreterError(InputError, AssertionError):
    """SVDInterpreter asked for a vector type it does not know, a layer or head the model does not have, or
    OV without a head. An AssertionError too, because TransformerLens 2.x raised that."""


class FactoredMatrixBroadcastError(InputError, RuntimeError):
    """FactoredMatrix factors whose leading dimensions do not broadcast. A RuntimeError too, as torch's
    broadcasting error that TransformerLens 2.x let through."""


class ModelAccessError(LensError):
    """The hub refused or could not be reached (gated model, no token, offline)."""


# The hub's refusals, one class each (lensutil/loading/hub.py chooses among them); each message says what to do.
class GatedModelError(ModelAccessError):
    """A gated repository that no token, or a token without access, asked for."""


class InvalidTokenError(ModelAccessError):
    """The hub rejected the token itself: mistyped, expired or revoked."""


class ModelNotFoundError(ModelAccessError):
    """No such repository on the hub, nor local directory, zoo name or TransformerLens name."""


class RevisionNotFoundError(ModelAccessError):
    """The repository exists, but not the branch, tag or commit asked for."""


class HubUnreachableError(ModelAccessError):
    """The hub cannot be reached (no network, or HF_HUB_OFFLINE=1) and the files are not cached."""


class ZooError(LensError):
    """A zoo model that could not be fetched or built."""


_LAYER = re.compile(r"blocks\.(\d+)\.")


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates nearest to ``name`` (for 'did you mean' messages): those in the layer ``name``
    names first, then the rest, each group best first.

    Plain string similarity ranks 'blocks.20.attn.hook_pattern' next to 'blocks.0.attn.hook_pattern'
    for a typo in layer 0, so on a deep model the other layers' namesakes would crowd out the
    names of the layer the user meant.
    """
    candidates = list(candidates)
    layer = _LAYER.match(name)
    layer = layer.group(1) if layer else None

    def other_layer(c: str) -> bool:
        m = _LAYER.match(c)
        return layer is not None and (m.group(1) if m else None) != layer

    matcher = difflib.SequenceMatcher(b=name)
    scored = []
    for c in candidates:
        matcher.set_seq1(c)
        if matcher.real_quick_ratio() >= 0.5 and matcher.quick_ratio() >= 0.5 and (r := matcher.ratio()) >= 0.5:
            scored.append((other_layer(c), -r, c))
    found = [c for *_, c in sorted(scored)[:n]]
    if not found:  # fall back to shared suffixes: 'mlp.hook_mlp_out' -> '...hook_mlp_out'
        tail = name.rsplit(".", 1)[-1]
        found = sorted((c for c in candidates if c.endswith(tail)), key=other_layer)[:n]
    return found


class QuantizationError(ConfigError):
    """A quantisation request lensutil cannot carry out (missing bitsandbytes, conflicting options, ...)."""


class PlacementError(LensError):
    """A device map, max_memory or n_devices that cannot place this model."""


class OffloadedWeightError(PlacementError):
    """A weight of a module offloaded by its device map, read (or moved) outside that module's forward.

    Not an AttributeError on purpose: Python answers an AttributeError raised inside a property
    (GroupedQueryAttention.W_K reads _W_K) by calling __getattr__ again, which would replace this
    message with "has no attribute 'W_K'".
    """


class AllocatorError(LensError):
    """keep_freed_memory() cannot act here: no glibc malloc in this process, or mallopt refused."""
