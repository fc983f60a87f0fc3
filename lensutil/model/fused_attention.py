"""The fused attention path: torch's scaled_dot_product_attention, called as HuggingFace's "sdpa" calls it.

Attention (components.py) takes this path when cfg.attn_implementation == "sdpa" (the default of
from_pretrained). The kernel never makes the scores or the pattern, so where a hook is attached to
`hook_attn_scores` or `hook_pattern` they are also written out (HuggingFace's eager order of
operations) for the hooks; z stays the kernel's unless a hook changed one of them (`HookPoint.fire_and_tell` tells),
so run_with_cache gives exactly the plain forward's logits. The two paths round differently in the
last bits, so each mode is bit-exact only with HuggingFace in the same mode.

To round like HuggingFace's sdpa (transformers' integrations/sdpa_attention.py and the sdpa mask of
masking_utils.py), the kernel is called with the same arguments HuggingFace gives it:
- no padding, and no sliding window that could cut a key off: no mask at all, is_causal=True for a
  prompt (query length = key length), is_causal=False for one new token from a KV cache (it sees
  every key); encoders (bidirectional) without padding: no mask;
- otherwise a boolean mask [batch, 1, pos, key_pos] (True = attend);
- grouped-query attention: enable_gqa=True with the compact keys and values when there is no mask;
  one query token with a mask: the query heads folded into rows of their key/value head (HF's
  pack_gqa); else keys and values repeated to one per query head (HF's repeat_kv);
- scale = head_dim ** -0.5 (cfg.attn_scale_factor), multiplied inside the kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor


def _mask_can_be_skipped(cfg: "HookedTransformerConfig", ctx: "AttentionContext", q_len: int, kv_len: int) -> bool:
    # HF's _ignore_causal_mask_sdpa / _ignore_bidirectional_mask_sdpa, for a dynamic KV cache.
    if ctx.key_mask is not None:
        return False
    if ctx.window is not None and kv_len >= ctx.window:
        return False
    return cfg.attention_dir != "causal" or q_len == 1 or q_len == kv_len


def fused_attention(
    cfg: "HookedTransformerConfig",
    q: Float[Tensor, "batch head_index pos d_head"],
    k: Float[Tensor, "batch kv_head_index key_pos d_head"],
    v: Float[Tensor, "batch kv_head_index key_pos d_head"],
    ctx: "AttentionContext",
) -> Float[Tensor, "batch head_index pos d_head"]:
    """z for every query head; a query that sees no key gets 0 (as the eager path gives it)."""
    batch, n_heads, q_len, d_head = q.shape
    kv_len, group = k.shape[2], cfg.n_heads // cfg.n_kv_heads
    if _mask_can_be_skipped(cfg, ctx, q_len, kv_len):
        mask, is_causal = None, cfg.attention_dir == "causal" and q_len > 1
    else:
        mask, is_causal = ctx.allowed, False
    pad = None
    if mask is not None and ctx.query_blind is not None:
        # A query that sees no key at all (context.py); let it see itself, then zero its output. The
        # other queries' rows are untouched, so they round as HuggingFace's.
        pad = ctx.query_blind[:, None, :, None]
        q_idx = torch.arange(ctx.past_len, ctx.past_len + q_len, device=q.device)[:, None]
        mask = mask | (pad & (q_idx == torch.arange(kv_len, device=q.device)[None, :]))
    extra, packed = {}, False
    if group > 1:
        if mask is None and d_head <= 256:
            extra["enable_gqa"] = True
        elif q_len == 1:  # HF's pack_gqa: [batch, kv_head, group, d_head], one row per query head
            q, packed = q.reshape(batch, n_heads // group, group, d_head), True
        else:  # HF's repeat_kv (the same values as repeat_interleave on the head axis)
            k, v = (t[:, :, None].expand(-1, -1, group, -1, -1).reshape(batch, n_heads, kv_len, d_head) for t in (k, v))
    z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=cfg.attn_scale_factor, is_causal=is_causal, **extra)
    if packed:
        z = z.reshape(batch, n_heads, q_len, d_head)
    return z if pad is None else z.masked_fill(pad, 0.0)

