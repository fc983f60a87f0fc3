"""What every layer of one forward shares: positions, the attention mask and rotary angles (AttentionContext)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..config import HookedTransformerConfig, compute_dtype
from .rotary_scaling import RopeState, rope_type, scaled_cos_sin


@dataclass
class AttentionContext:
    """What every attention layer of one forward pass needs; built once per forward, not per layer.

    A model with sliding-window layers gets a second context for them (`local`): their mask, their
    rotary angles (Gemma 3's local layers use another base) and their window. A layer of type "local"
    reads `ctx.local`; `window` is None in the global context.
    """

    positions: Int[Tensor, "batch pos"]  # position ids, counted from each row's first real token
    key_mask: Bool[Tensor, "batch key_pos"] | None  # True = real token; None = no padding anywhere
    query_is_pad: Bool[Tensor, "batch pos"] | None  # the loss leaves these out
    past_len: int
    allowed: Bool[Tensor, "batch 1 pos key_pos"]  # causal (and sliding-window) and padding mask
    rotary: tuple[Tensor, Tensor] | None  # cos, sin for rotary models
    window: int | None = None  # the keys each query sees, in a sliding-window (local) layer
    local: "AttentionContext | None" = None  # the local layers' context, where the model has any
    # shortformer models: the position embedding every layer adds to its query and key inputs after ln1
    shortformer_pos: Float[Tensor, "batch pos d_model"] | None = None
    # Queries that see no key at all (a left-padding pad, a pad beyond a sliding window): their pattern
    # row and z are 0, as TransformerLens and HF's sdpa give them (HF's eager attention spreads such a
    # row evenly over every key instead). Every other query, a right-padding pad included, attends to
    # the keys it may see, as in HF and TransformerLens: a MoE routes those pads too, and under some
    # BLAS kernels the number of rows an expert gets changes its real tokens' last bits.
    query_blind: Bool[Tensor, "batch pos"] | None = None

    @classmethod
    def build(cls, cfg: HookedTransformerConfig, positions, key_mask, query_is_pad, past_len: int,
              rope_state: RopeState | None = None) -> "AttentionContext":
        types = {cfg.attn_type(i) for i in range(cfg.n_layers)}
        ctx = cls._build(cfg, positions, key_mask, query_is_pad, past_len, None, cfg.rotary_base, rope_state=rope_state)
        if "local" in types:
            base = cfg.rotary_base if cfg.rotary_base_local is None else cfg.rotary_base_local
            # Gemma 3's local layers: their own base, unscaled (HF scales only its global layers' angles)
            same = base == cfg.rotary_base and rope_type(cfg) == "default"
            ctx.local = cls._build(cfg, positions, key_mask, query_is_pad, past_len, cfg.window_size, base,
                                   ctx.rotary if same else None, rope_state, scaled=False)
        return ctx

    @classmethod
    def _build(cls, cfg, positions, key_mask, query_is_pad, past_len: int, window, base, rotary=None,
               rope_state: RopeState | None = None, scaled: bool = True) -> "AttentionContext":
        q_len, device = positions.shape[1], positions.device
        # Causal: query i (at absolute index past_len + i) sees keys 0..past_len + i, and with a
        # sliding window only the last `window` of them (HF's sliding mask: query - key < window).
        q_idx = torch.arange(past_len, past_len + q_len, device=device)[:, None]
        k_idx = torch.arange(past_len + q_len, device=device)[None, :]
        # Bidirectional (encoders): every query sees every key; only the padding mask below applies.
        allowed = k_idx <= q_idx if cfg.attention_dir == "causal" else torch.ones_like(k_idx <= q_idx)
        if window is not None:
            allowed = allowed & (q_idx - k_idx < window)
        allowed = allowed[None, None]
        if key_mask is not None:
            allowed = allowed & key_mask[:, None, None, :]
        if rotary is None and cfg.positional_embedding_type == "rotary":
            dtype = compute_dtype(cfg.dtype) if cfg.rotary_upcast else cfg.dtype
            if rope_type(cfg) == "default" or not scaled:
                rotary = rotary_cos_sin(positions, cfg.rotary_dim, base, dtype)
            else:  # scaled (lensutil/model/rotary_scaling.py); the model's rope_state remembers what HF's would
                rotary = scaled_cos_sin(cfg, positions, rope_state)
        blind = None
        if key_mask is not None:
            blind = ~allowed.any(-1)[:, 0]
            blind = blind if blind.any() else None
        return cls(positions, key_mask, query_is_pad, past_len, allowed, rotary, window, query_blind=blind)

    def to(self, device, non_blocking: bool = False) -> "AttentionContext":
        # A model placed over devices (lensutil/loading/placement.py): accelerate's hooks move each block's
        # inputs to the block's device by calling .to on them, this context included.
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        rotary = None if self.rotary is None else tuple(move(t) for t in self.rotary)
        local = None if self.local is None else self.local.to(device, non_blocking)
        return AttentionContext(move(self.positions), move(self.key_mask), move(self.query_is_pad), self.past_len,
                                move(self.allowed), rotary, self.window, local, query_blind=move(self.query_blind))


def rotary_cos_sin(positions: Int[Tensor, "batch pos"], dim: int, base: float, dtype: torch.dtype):
    # HuggingFace's rotary arithmetic, in float32 for float32 and half-precision models so angles
    # agree bit for bit, and in float64 for float64 models.
    angle_dtype = compute_dtype(dtype)
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64, device=positions.device).to(angle_dtype) / dim))
    freqs = positions.to(angle_dtype)[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]  # broadcast over heads
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: Float[Tensor, "batch pos head d_head"], cos: Tensor, sin: Tensor) -> Tensor:
    # Rotates pairs (i, i + dim/2) of the first `dim` features (the "rotate half" layout of the
    # Llama family); features past `dim` pass through (partial rotary).
    dim = cos.shape[-1]
    half = dim // 2
    if dim == x.shape[-1]:  # full rotary (the usual case): no slicing into rotated and passed-through parts
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin
    rot, rest = x[..., :dim], x[..., dim:]
    rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    return torch.cat((rot * cos + rotated * sin, rest), dim=-1)
