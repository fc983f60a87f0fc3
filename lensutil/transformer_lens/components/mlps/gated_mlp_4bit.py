"""TransformerLens' GatedMLP4Bit: in lensutil, 4-bit weights come from loading, not from a component."""

from __future__ import annotations

from ....errors import QuantizationError


class GatedMLP4Bit:
    def __init__(self, cfg, *args, **kwargs):
        raise QuantizationError(
            "GatedMLP4Bit: lensutil quantises a loaded model's linear layers in place "
            "(HookedTransformer.from_pretrained(name, load_in_4bit=True)); it has no separate 4-bit MLP class."
        )
