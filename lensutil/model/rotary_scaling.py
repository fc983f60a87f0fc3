"""RoPE scaling as HuggingFace computes it (transformers' modeling_rope_utils.py), bit for bit.

Each kind changes the inverse frequencies, and yarn and longrope also multiply cos and sin by an
attention factor. HF computes them in float32 with Python-float scalars, in the order written here;
any other order (a float64 base, `inv_freq * (1 / factor)`) moves the last bits of the angles.
Two kinds depend on the sequence a forward sees, and are kept in RopeState across forwards as HF
keeps them on its rotary module:
- "dynamic" (NTK): once a forward's largest position + 1 passes the longest seen so far (at first
  max_position_embeddings), inv_freq is recomputed for it; a forward shorter than
  max_position_embeddings after that goes back to the original. Keys already in a KV cache keep the
  rotation they were given, as in HF.
- "longrope" (Phi-3 128k): the long factors when a forward's largest position + 1 passes
  original_max_position_embeddings, the short ones otherwise. The largest position is the batch's:
  a short prompt padded beside a long one gets the long factors, in HF as here, so a padded row
  can differ from the prompt alone (lensutil/text/generation.py also drops the KV cache where HF does).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Int
from torch import Tensor

from ..config import HookedTransformerConfig, compute_dtype


def rope_type(cfg: HookedTransformerConfig) -> str:
    if cfg.use_NTK_by_parts_rope:
        return "llama3"
    return (cfg.rope_scaling or {}).get("rope_type", "default")


def _default(dim: int, base) -> Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float) / dim))


def _llama3(cfg: HookedTransformerConfig) -> Tensor:
    inv_freq = _default(cfg.rotary_dim, cfg.rotary_base)
    factor, low, high = cfg.NTK_by_parts_factor, cfg.NTK_by_parts_low_freq_factor, cfg.NTK_by_parts_high_freq_factor
    old_context_len = cfg.NTK_original_ctx_len
    low_freq_wavelen, high_freq_wavelen = old_context_len / low, old_context_len / high
    wavelen = 2 * math.pi / inv_freq
    # long wavelengths divided by factor, short ones kept, those between interpolated smoothly
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low) / (high - low)
    smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)


def _dynamic(dim: int, base, p: dict, seq_len) -> Tensor:
    # At build time seq_len is None and the arithmetic is in Python floats; during a forward HF passes
    # the largest position + 1 as a tensor, and the new base is computed in float32.
    max_pos, factor = p["max_position_embeddings"], p["factor"]
    if seq_len is None:
        seq_len = max_pos
    else:
        seq_len = torch.maximum(seq_len, torch.tensor(max_pos, dtype=seq_len.dtype, device=seq_len.device))
    base = base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    return _default(dim, base)


def _yarn(dim: int, base, p: dict) -> tuple[Tensor, float]:
    factor, original = p.get("factor"), p["original_max_position_embeddings"]
    if factor is None:
        factor = p["max_position_embeddings"] / original
    mscale_of = lambda scale, m=1: 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0  # noqa: E731
    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = p.get("mscale"), p.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = float(mscale_of(factor, mscale) / mscale_of(factor, mscale_all_dim))
        else:
            attention_factor = mscale_of(factor)
    beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

    def correction_dim(rotations):
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # HF's guard against a zero-width ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).to(dtype=torch.float) / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    extrapolation_factor = 1 - ramp
    inv_freq = interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor
    return inv_freq, attention_factor


def _longrope(dim: int, base, p: dict, long: bool) -> tuple[Tensor, float]:
    factor, original = p.get("factor"), p["original_max_position_embeddings"]
    if factor is None:
        factor = p["max_position_embeddings"] / original
    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    ext_factors = torch.tensor(p["long_factor"] if long else p["short_factor"], dtype=torch.float32)
    inv_freq_shape = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    return 1.0 / (ext_factors * base**inv_freq_shape), attention_factor


def inv_freq_and_factor(cfg: HookedTransformerConfig, seq_len: Tensor | None = None, long: bool = False) -> tuple[Tensor, float]:
    """HF's rope_init_fn for cfg's kind: float32 inverse frequencies [rotary_dim / 2] and the cos/sin factor."""
    kind, dim, base, p = rope_type(cfg), cfg.rotary_dim, cfg.rotary_base, cfg.rope_scaling or {}
    if kind == "llama3":
        return _llama3(cfg), 1.0
    if kind == "linear":
        inv_freq = _default(dim, base)
        inv_freq /= p["factor"]  # in place, as HF divides (not a multiplication by 1 / factor)
        return inv_freq, 1.0
    if kind == "dynamic":
        return _dynamic(dim, base, p, seq_len), 1.0
    if kind == "yarn":
        return _yarn(dim, base, p)
    if kind == "longrope":
        return _longrope(dim, base, p, long)
    return _default(dim, base), 1.0


class RopeState:
    """What HF's rotary module remembers between forwards (see the module docstring); one per model."""

    def __init__(self):
        self.key = None

    def _start(self, cfg: HookedTransformerConfig) -> None:
        key = (rope_type(cfg), cfg.rotary_dim, cfg.rotary_base, repr(cfg.rope_scaling), cfg.NTK_by_parts_factor,
               cfg.NTK_by_parts_low_freq_factor, cfg.NTK_by_parts_high_freq_factor, cfg.NTK_original_ctx_len)
        if key != self.key:  # a new model, or its config edited: start as a freshly built HF model
            self.key = key
            self.original, self.attention_factor = inv_freq_and_factor(cfg)
            self.inv_freq = self.original
            self.long = None
            self.max_seq_len_cached = self.original_max_seq_len = (cfg.rope_scaling or {}).get("max_position_embeddings")

    def frequencies(self, cfg: HookedTransformerConfig, positions: Int[Tensor, "batch pos"]) -> tuple[Tensor, float]:
        self._start(cfg)
        kind = rope_type(cfg)
        if kind == "dynamic":
            seq_len = torch.max(positions).cpu() + 1
            cached = self.max_seq_len_cached
            if seq_len > cached:  # growth: recomputed for this length
                self.inv_freq, self.attention_factor = inv_freq_and_factor(cfg, seq_len=seq_len)
                self.max_seq_len_cached = int(seq_len)
            if seq_len < self.original_max_seq_len and cached > self.original_max_seq_len:  # back to the original
                self.inv_freq, self.max_seq_len_cached = self.original, self.original_max_seq_len
        elif kind == "longrope":
            if self.long is None:
                self.long = inv_freq_and_factor(cfg, long=True)[0]
            seq_len = int(torch.max(positions)) + 1
            self.inv_freq = self.long if seq_len > cfg.rope_scaling["original_max_position_embeddings"] else self.original
        return self.inv_freq, self.attention_factor


def scaled_cos_sin(cfg: HookedTransformerConfig, positions: Int[Tensor, "batch pos"], state: RopeState | None):
    """cos and sin [batch, pos, 1, rotary_dim] for a scaled kind, as HF's rotary forward makes them."""
    inv_freq, attention_factor = (state or RopeState()).frequencies(cfg, positions)
    angle_dtype = compute_dtype(cfg.dtype)
    freqs = positions.to(angle_dtype)[..., None] * inv_freq.to(device=positions.device, dtype=angle_dtype)
    emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]
    cos, sin = emb.cos(), emb.sin()
    if attention_factor != 1.0:  # yarn, longrope: HF multiplies in float32 before the cast
        cos, sin = cos * attention_factor, sin * attention_factor
    return cos.to(cfg.dtype), sin.to(cfg.dtype)
