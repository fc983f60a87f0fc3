"""TransformerLens 2.x's `transformer_lens.past_key_value_caching`: lensutil's key/value cache (lensutil/text/generation.py)."""

from ..text.generation import KVCache as HookedTransformerKeyValueCache
from ..text.generation import KVCacheEntry as HookedTransformerKeyValueCacheEntry

__all__ = ["HookedTransformerKeyValueCache", "HookedTransformerKeyValueCacheEntry"]
