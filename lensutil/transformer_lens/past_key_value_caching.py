"""TransformerLens 2.x's `transformer_lens.past_key_value_caching`, over lensutil's key-value cache.

HookedTransformerKeyValueCache is lensutil's KVCache (lensutil/text/generation.py) with TransformerLens'
constructor and names: `init_cache(cfg, device, batch_size)`, `freeze()`/`unfreeze()`, `entries`,
`previous_attention_mask`, and each entry's `past_keys`/`past_values`. Pass it to
`model(tokens, past_kv_cache=...)` as in TransformerLens.
"""

from __future__ import annotations

import torch

from ..text.generation import KVCache, KVCacheEntry


class HookedTransformerKeyValueCacheEntry(KVCacheEntry):
    """One layer's cached keys and values, [batch, pos_so_far, n_heads, d_head] (None before the first forward)."""

    @classmethod
    def init_cache_entry(cls, cfg=None, device=None, batch_size: int = 1) -> "HookedTransformerKeyValueCacheEntry":
        return cls()

    @property
    def past_keys(self) -> torch.Tensor | None:
        return self.k

    @property
    def past_values(self) -> torch.Tensor | None:
        return self.v


class HookedTransformerKeyValueCache(KVCache):
    """A cache for every layer; freeze() to run many continuations from one prefix."""

    def __init__(self, n_layers: int):
        super().__init__(n_layers)
        self.entries = [HookedTransformerKeyValueCacheEntry() for _ in range(n_layers)]

    @classmethod
    def init_cache(cls, cfg, device=None, batch_size: int = 1) -> "HookedTransformerKeyValueCache":
        """An empty cache for a model with `cfg` (the batch size is fixed by the first forward that fills it)."""
        return cls(cfg.n_layers)

    @property
    def previous_attention_mask(self) -> torch.Tensor | None:
        """Which cached positions are real tokens (1) or padding (0); None until a forward had padding."""
        return None if self.mask is None else self.mask.long()
