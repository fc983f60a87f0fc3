"""TransformerLens 2.x's `transformer_lens.HookedTransformerConfig` module."""

from ..config import HookedTransformerConfig as HookedTransformerConfig
