"""Attention: multi-head and grouped-query, written out (hooks on scores and pattern) or fused (fused_attention.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from ..config import HookedTransformerConfig, compute_dtype
from ..hooks.hook_points import HookPoint
from .context import AttentionContext, apply_rotary
from .fused_attention import fused_attention
from .linear import FusedPart, QuantizableLinears
from .norm import Norm
from .weight_layout import _linear_param, _param, fused_qkv_params, fused_qkv_weight, qkv_param_names, share_qkv_storage
from .zero_bias import bias_or_none


class Attention(QuantizableLinears):
    """Multi-head attention: one key/value head per query head (cfg.n_key_value_heads is None)."""

    def __init__(self, cfg: HookedTransformerConfig, attn_type: str = "global"):
        super().__init__()
        self.cfg, self.attn_type = cfg, attn_type  # "local": a sliding window (cfg.attn_type(layer))
        h, m, e, dt = cfg.n_heads, cfg.d_model, cfg.d_head, cfg.dtype
        # GPT-2's c_attn, Phi-3's qkv_proj: the q, k, v weights view one storage, so q, k, v come from one matmul (weight_layout.py)
        self._qkv_storage, fused = fused_qkv_params(cfg) if cfg.fused_qkv else (None, None)
        self.W_Q = _linear_param(cfg, "heads_in", h, m, e) if fused is None else fused[0]
        self.b_Q = _param(h, e, dtype=dt)
        self._make_key_value_weights(cfg, fused)
        self.W_O, self.b_O = _linear_param(cfg, "heads_out", h, e, m), _param(m, dtype=dt)
        self.hook_q = HookPoint("batch pos head_index d_head")
        self.hook_k = HookPoint("batch pos kv_head_index d_head")
        self.hook_v = HookPoint("batch pos kv_head_index d_head")
        if cfg.use_qk_norm:  # RMSNorm of q and k after hook_q / hook_k, before rotary (TransformerLens' q_norm, k_norm)
            if cfg.qk_norm_scope == "head":
                self.q_norm = Norm(cfg, "RMS", e, "batch pos head_index d_head")
                self.k_norm = Norm(cfg, "RMS", e, "batch pos kv_head_index d_head")
            else:  # over the whole projection, heads side by side (OLMo 2)
                self.q_norm = Norm(cfg, "RMS", h * e, "batch pos head_index*d_head")
                self.k_norm = Norm(cfg, "RMS", cfg.n_kv_heads * e, "batch pos kv_head_index*d_head")
        if cfg.positional_embedding_type == "rotary":  # elsewhere they would be names that never fire
            self.hook_rot_q = HookPoint("batch pos head_index d_head")
            self.hook_rot_k = HookPoint("batch pos kv_head_index d_head")
        self.hook_attn_scores = HookPoint("batch head_index pos key_pos")  # -inf where masked
        self.hook_pattern = HookPoint("batch head_index pos key_pos")  # exactly 0 where masked
        self.hook_z = HookPoint("batch pos head_index d_head")
        self.hook_result = HookPoint("batch pos head_index d_model")  # needs use_attn_result

    def _make_key_value_weights(self, cfg: HookedTransformerConfig, fused: list[nn.Parameter] | None = None) -> None:
        h, m, e, dt = cfg.n_heads, cfg.d_model, cfg.d_head, cfg.dtype
        self.W_K = _linear_param(cfg, "heads_in", h, m, e) if fused is None else fused[1]
        self.b_K = _param(h, e, dtype=dt)
        self.W_V = _linear_param(cfg, "heads_in", h, m, e) if fused is None else fused[2]
        self.b_V = _param(h, e, dtype=dt)

    def _apply(self, fn, recurse: bool = True):
        # .to(device) and dtype casts give each parameter its own storage: put W_Q, W_K, W_V back in one.
        super()._apply(fn, recurse)
        self.share_fused_storage()
        return self

    def fused_parts(self) -> dict[str, list[FusedPart]]:
        cfg = self.cfg
        if not cfg.fused_qkv:
            return {}
        heads = (cfg.n_heads, cfg.n_kv_heads, cfg.n_kv_heads)
        return {"W_QKV": [FusedPart(n, k * cfg.d_head, (k, cfg.d_model, cfg.d_head), "heads_in")
                          for n, k in zip(qkv_param_names(cfg), heads)]}

    def share_fused_storage(self) -> None:
        if self._qkv_storage is not None and all(n in self._parameters for n in qkv_param_names(self.cfg)):
            share_qkv_storage(self, self.cfg)

    def _fused(self) -> bool:
        """Whether q, k, v come from one matmul: the float storage, or one quantised matrix (quantized["W_QKV"])."""
        quantized = self._modules.get("quantized")
        return self._qkv_storage is not None if quantized is None else "W_QKV" in quantized._modules

    def _project_fused(self, x: Float[Tensor, "batch pos d_model"]) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v from one matmul over their weights side by side: GPT-2's c_attn, Phi-3's qkv_proj, rounded as they round."""
        _, b_K, _, b_V = self.key_value_weights()  # compact with grouped-query attention
        biases = (self.b_Q, b_K, b_V)
        absent = {"b_Q", "b_K", "b_V"} <= set(self.cfg.absent_biases)  # GPT-2's c_attn has a bias, Phi-3's none
        # None when all three may be dropped (zero_bias.py), decided before the copy that joins them
        kept = any(bias_or_none(b, absent) is not None for b in biases)
        bias = torch.cat([b.reshape(-1) for b in biases]) if kept else None
        if "quantized" in self._modules:  # c_attn quantised as HF quantises it; bitsandbytes adds the bias
            qkv = self._modules["quantized"]._modules["W_QKV"](x, bias)
        else:
            weights = [self._parameters[n] for n in qkv_param_names(self.cfg)]
            qkv = F.linear(x, fused_qkv_weight(self.cfg, self._qkv_storage, weights), bias)
        parts = qkv.split([b.numel() for b in biases], dim=-1)
        return tuple(t.view(*x.shape[:-1], *b.shape) for t, b in zip(parts, biases))

    def key_value_weights(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """W_K, b_K, W_V, b_V with one entry per key/value head: what the forward pass uses."""
        return self.W_K, self.b_K, self.W_V, self.b_V

    def _project(self, x: Tensor, name: str, b: Tensor) -> Float[Tensor, "batch pos head d_head"]:
        # `name` is the parameter's name (W_Q, or W_K/_W_K ...): quantisation swaps its linear maths.
        if x.ndim == 4:  # one input per head (use_split_qkv_input / use_attn_in)
            if self.quantized_linear(name) is not None:
                return self._per_head_linear(x, name, b)
            return torch.einsum("bphm,hme->bphe", x, getattr(self, name)) + b
        n_heads, d_head = b.shape
        flat = self._linear(x, name, b, layout="heads_in")  # _linear flattens b only if it is kept
        return flat.view(*x.shape[:-1], n_heads, d_head)

    def forward(self, q_in: Tensor, k_in: Tensor, v_in: Tensor, ctx: AttentionContext, kv_cache_entry=None):
        cfg = self.cfg
        if self.attn_type == "local":  # its mask (and, in Gemma 3, its rotary base) are the local layers'
            ctx = ctx.local
        if q_in is k_in is v_in and q_in.ndim == 3 and self._fused():
            q, k, v = (hook(t) for hook, t in zip((self.hook_q, self.hook_k, self.hook_v), self._project_fused(q_in)))
        else:
            _, b_K, _, b_V = self.key_value_weights()
            k_name, v_name = key_value_param_name(cfg, "W_K"), key_value_param_name(cfg, "W_V")
            q = self.hook_q(self._project(q_in, "W_Q", self.b_Q))
            k = self.hook_k(self._project(k_in, k_name, b_K))  # compact: one per key/value head, as in TransformerLens
            v = self.hook_v(self._project(v_in, v_name, b_V))
        if cfg.use_qk_norm:
            q, k = self._qk_norm(self.q_norm, q), self._qk_norm(self.k_norm, k)
        if ctx.rotary is not None:
            cos, sin = ctx.rotary
            if cos.dtype != q.dtype and not cfg.rotary_upcast:
                cos, sin = cos.to(q.dtype), sin.to(q.dtype)
            # (rotary_upcast: a half-precision q times float32 angles is rotated in float32, then cast back)
            q = self.hook_rot_q(apply_rotary(q, cos, sin).to(q.dtype))
            k = self.hook_rot_k(apply_rotary(k, cos, sin).to(k.dtype))
        if kv_cache_entry is not None:
            k, v = kv_cache_entry.append(k, v)
        # [batch, head, pos, d_head]; each key/value head serves n_heads / n_kv_heads query heads.
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        hooked = self.hook_attn_scores.has_hooks or self.hook_pattern.has_hooks
        # Soft-capped scores (Gemma 2) are always written out: torch's kernel cannot cap them.
        fused = fused_attention(cfg, q, k, v, ctx) if cfg.attn_implementation == "sdpa" and cfg.attn_scores_soft_cap <= 0 else None
        if fused is not None and not hooked:
            z = fused
        else:  # the pattern written out: eager mode, or for the hooks on it (the kernel never makes it)
            group = cfg.n_heads // cfg.n_kv_heads
            if group > 1:
                k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            z = self._eager_attention(q, k, v, ctx, fused)
        z = self.hook_z(z.transpose(1, 2))
        out = self._linear(z.reshape(*z.shape[:2], -1), "W_O", self.b_O, layout="heads_out")  # a view, no copy
        if cfg.use_attn_result and self.hook_result.has_hooks:
            # Flags never change outputs: the output stays the one matmul above, since summing per-head
            # results rounds otherwise (1e-6 in float32; 0.06 in 8-bit, where LLM.int8() scales each
            # head's zero-padded row by its own max). What a hook changes in a head's result is added
            # to it, so edits reach the output; an unchanged result adds exact zeros.
            if self.quantized_linear("W_O") is not None:
                result = self._per_head_result(z, "W_O")
            else:
                result = torch.einsum("bphe,hem->bphm", z, self.W_O)
            before = result.clone()  # a hook may edit in place
            out = out + (self.hook_result(result) - before).sum(dim=2)
        return out

    def _qk_norm(self, norm: Norm, x: Float[Tensor, "batch pos head d_head"]) -> Tensor:
        if self.cfg.qk_norm_scope == "head":
            return norm(x)
        return norm(x.flatten(-2)).view(x.shape)  # the heads side by side, as HF normalises q_proj's output

    def _eager_attention(self, q, k, v, ctx: AttentionContext, fused: Tensor | None = None):
        # HuggingFace's eager order of operations, so logits agree with it bit for bit. With `fused` (sdpa
        # mode: the kernel's z for the same q, k, v), that z unless a hook changed the scores or the pattern,
        # so hooks that only read (run_with_cache) leave the plain forward's logits exactly.
        # The scaling and masking run in place on the fresh product (the same kernels, so the same
        # bits as out of place, and none of them needs its output for the gradient): two fewer
        # [batch, head, pos, key_pos] tensors per layer, which run_with_cache would otherwise allocate.
        # Keys and values as HF's attention gets them from its DynamicCache (torch.cat copies them to
        # contiguous [batch, head, key_pos, d_head], even for a forward without generation): K^T then
        # reaches the batched gemm transposed, as HF's does. A view of q/k/v's matmul is copied by
        # torch.matmul into [.., d_head, key_pos] instead whenever batch > 1, a layout some BLAS kernels
        # (AMD CPUs; MKL_CBWR=COMPATIBLE here) round differently: GPT-2 logits off by 1.07e-6.
        k, v = k.contiguous(), v.contiguous()
        scores = torch.matmul(q, k.transpose(-1, -2))
        if self.cfg.attn_scale_rule == "multiply":
            scores.mul_(self.cfg.attn_scale_factor)
        else:
            scores.div_(self.cfg.attn_scale)
        cap = self.cfg.attn_scores_soft_cap
        if cap > 0:  # Gemma 2: cap * tanh(scores / cap), in HF's order, before the mask; the hook sees it capped
            scores = torch.tanh(scores / cap) * cap  # out of place: tanh's backward needs its output
        scores.masked_fill_(~ctx.allowed, float("-inf"))
        blind = ctx.query_blind
        if blind is not None and fused is None:
            # A query that sees no key (context.py), in eager mode: HF's eager attention adds finfo.min, not
            # -inf, where it masks, so such a row is all finfo.min and its softmax spreads evenly over every key.
            scores.masked_fill_(blind[:, None, :, None], torch.finfo(scores.dtype).min)
        scores, edited_scores = self.hook_attn_scores.fire_and_tell(scores)
        pattern = F.softmax(scores, dim=-1, dtype=compute_dtype(q.dtype)).to(q.dtype)
        if blind is not None and fused is not None:  # sdpa mode: its row is 0, as the kernel's z (not NaN)
            pattern = pattern.masked_fill(blind[:, None, :, None], 0.0)
        pattern, edited_pattern = self.hook_pattern.fire_and_tell(pattern)
        if fused is None or edited_scores or edited_pattern:  # eager mode, or z from what a hook changed
            return torch.matmul(pattern, v)
        if not pattern.requires_grad:  # hooks only read: the kernel's z (pattern @ v is not needed)
            return fused
        z = torch.matmul(pattern, v)
        return fused.detach() + (z - z.detach())  # the kernel's value, the gradient through the pattern


class GroupedQueryAttention(Attention):
    """Attention whose key/value heads are each shared by n_heads // n_key_value_heads query heads.

    Why the underscored names: TransformerLens (components/grouped_query_attention.py) stores the
    compact weights as the parameters _W_K, _W_V, _b_K, _b_V ([kv_head_index, ...]) and exposes
    W_K, W_V, b_K, b_V repeated to [head_index, ...], so QK/OV-circuit code indexes query heads.
    lensutil uses TransformerLens' names and shapes (state-dict keys included, so a TransformerLens-
    saved state dict loads) and its rule: this class is used exactly when cfg.n_key_value_heads is
    not None, even when it equals n_heads. hook_k / hook_v stay compact, as in TransformerLens.
    Query head h reads key/value head h // (n_heads // n_kv_heads).
    """

    def _make_key_value_weights(self, cfg: HookedTransformerConfig, fused: list[nn.Parameter] | None = None) -> None:
        kv, m, e, dt = cfg.n_kv_heads, cfg.d_model, cfg.d_head, cfg.dtype
        self._W_K = _linear_param(cfg, "heads_in", kv, m, e) if fused is None else fused[1]
        self._W_V = _linear_param(cfg, "heads_in", kv, m, e) if fused is None else fused[2]
        self._b_K, self._b_V = _param(kv, e, dtype=dt), _param(kv, e, dtype=dt)

    def key_value_weights(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self._W_K, self._b_K, self._W_V, self._b_V

    def _per_query_head(self, compact: Tensor) -> Tensor:
        return compact.repeat_interleave(self.cfg.n_heads // self.cfg.n_kv_heads, dim=0)

    W_K = property(lambda self: self._per_query_head(self._W_K))  # [head_index, d_model, d_head]
    W_V = property(lambda self: self._per_query_head(self._W_V))  # [head_index, d_model, d_head]
    b_K = property(lambda self: self._per_query_head(self._b_K))  # [head_index, d_head]
    b_V = property(lambda self: self._per_query_head(self._b_V))  # [head_index, d_head]


def key_value_param_name(cfg: HookedTransformerConfig, name: str) -> str:
    """The parameter that holds `name` ("W_K", "W_V", "b_K" or "b_V"): "_W_K" etc. with grouped-query
    attention, as TransformerLens names them (GroupedQueryAttention says why lensutil does too)."""
    return "_" + name if cfg.n_key_value_heads is not None else name
