"""TransformerLens' Attention and GroupedQueryAttention, built alone and called as TransformerLens calls them.

lensutil's attention takes an AttentionContext (positions, mask, rotary angles) shared by the layers
of one forward; called alone, as `attn(query_input, key_input, value_input)`, it builds the causal
context of a fresh sequence here. TransformerLens' other arguments (an additive mask, a position bias)
belong to features lensutil computes otherwise or not at all, and are refused.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...errors import InputError
from ...model import attention
from ...model.context import AttentionContext
from ._build import initialised, unwrap


class _Alone:
    def _setup(self, cfg) -> None:
        initialised(self, cfg)

    def forward(self, query_input: Tensor, key_input: Tensor, value_input: Tensor, past_kv_cache_entry=None,
                additive_attention_mask: Tensor | None = None, attention_mask: Tensor | None = None,
                position_bias: Tensor | None = None):
        if additive_attention_mask is not None or position_bias is not None:
            raise InputError("additive_attention_mask / position_bias: lensutil's attention takes a 0/1 attention_mask; "
                             "position biases (T5, alibi) are not implemented.")
        batch, pos = query_input.shape[:2]
        positions = torch.arange(pos, device=query_input.device).expand(batch, pos)
        key_mask = None if attention_mask is None else attention_mask.bool()
        ctx = AttentionContext.build(self.cfg, positions, key_mask, None, 0)
        return super().forward(query_input, key_input, value_input, ctx, past_kv_cache_entry)


class Attention(_Alone, attention.Attention):
    def __init__(self, cfg, attn_type: str = "global", layer_id: int | None = None):
        if attn_type != "global":
            raise InputError(f"attn_type={attn_type!r}: lensutil has global attention only (TransformerLens' local "
                             "attention for GPT-Neo is not implemented).")
        cfg = unwrap(cfg)
        attention.Attention.__init__(self, cfg)
        self.layer_id = layer_id
        self._setup(cfg)


class GroupedQueryAttention(_Alone, attention.GroupedQueryAttention):
    def __init__(self, cfg, attn_type: str = "global", layer_id: int | None = None):
        if attn_type != "global":
            raise InputError(f"attn_type={attn_type!r}: lensutil has global attention only.")
        cfg = unwrap(cfg)
        attention.GroupedQueryAttention.__init__(self, cfg)
        self.layer_id = layer_id
        self._setup(cfg)
