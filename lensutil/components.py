"""The transformer's parts: embeddings, norms, attention, MLP and the block that joins them.

Axis glossary (TransformerLens' names): batch, pos (query position), key_pos, head_index,
kv_head_index (grouped-query attention: fewer key/value heads than query heads), d_model, d_head,
d_mlp, d_vocab. Every HookPoint says its shape where it is made.

Components read only config fields, never a model name. Norms (lensutil/norm.py), softmax and rotary
angles run in at least float32 (`compute_dtype`) and cast back, as HuggingFace does, so half-precision
runs stay comparable with it; a float64 model computes them in float64, never silently in float32.
Matrices are laid out in memory as HuggingFace's own (lensutil/weight_layout.py says why).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from .config import HookedTransformerConfig
from .errors import ConfigError
from .fused_attention import fire_hook, fused_attention
from .hook_points import HookPoint
from .norm import Norm  # noqa: F401  (re-exported, as compute_dtype, _param and _OUT_IN, for the modules that build on this one)
from .quantized_linear import QuantizableLinears
from .weight_layout import _OUT_IN, _linear_param, _param, compute_dtype, fused_qkv_params, fused_qkv_weight, share_qkv_storage  # noqa: F401
from .zero_bias import bias_or_none


def gelu_new(x: Tensor) -> Tensor:
    # GPT-2's tanh approximation, written as HuggingFace writes it so rounding matches.
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


ACTIVATIONS = {
    "gelu_new": gelu_new,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "silu": F.silu,
    "relu": F.relu,
}


@dataclass
class AttentionContext:
    """What every attention layer of one forward pass needs; built once per forward, not per layer."""

    positions: Int[Tensor, "batch pos"]  # position ids, counted from each row's first real token
    key_mask: Bool[Tensor, "batch key_pos"] | None  # True = real token; None = no padding anywhere
    query_is_pad: Bool[Tensor, "batch pos"] | None
    past_len: int
    allowed: Bool[Tensor, "batch 1 pos key_pos"]  # causal (and sliding-window) and padding mask
    rotary: tuple[Tensor, Tensor] | None  # cos, sin for rotary models

    @classmethod
    def build(cls, cfg: HookedTransformerConfig, positions, key_mask, query_is_pad, past_len: int) -> "AttentionContext":
        q_len, device = positions.shape[1], positions.device
        # Causal: query i (at absolute index past_len + i) sees keys 0..past_len + i, and with a
        # sliding window only the last `window_size` of them.
        q_idx = torch.arange(past_len, past_len + q_len, device=device)[:, None]
        k_idx = torch.arange(past_len + q_len, device=device)[None, :]
        # Bidirectional (encoders): every query sees every key; only the padding mask below applies.
        allowed = k_idx <= q_idx if cfg.attention_dir == "causal" else torch.ones_like(k_idx <= q_idx)
        if cfg.window_size is not None:
            allowed = allowed & (q_idx - k_idx < cfg.window_size)
        allowed = allowed[None, None]
        if key_mask is not None:
            allowed = allowed & key_mask[:, None, None, :]
        rotary = None
        if cfg.positional_embedding_type == "rotary":
            rotary = rotary_cos_sin(positions, cfg.rotary_dim, cfg.rotary_base, cfg.dtype)
        return cls(positions, key_mask, query_is_pad, past_len, allowed, rotary)

    def to(self, device, non_blocking: bool = False) -> "AttentionContext":
        # A model placed over devices (lensutil/placement.py): accelerate's hooks move each block's
        # inputs to the block's device by calling .to on them, this context included.
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        rotary = None if self.rotary is None else tuple(move(t) for t in self.rotary)
        return AttentionContext(move(self.positions), move(self.key_mask), move(self.query_is_pad), self.past_len,
                                move(self.allowed), rotary)


class Embed(nn.Module):
    def __init__(self, cfg: HookedTransformerConfig):
        super().__init__()
        if cfg.d_vocab < 1:
            raise ConfigError(
                f"d_vocab={cfg.d_vocab}: the vocabulary size is not set. Pass d_vocab=... to the config "
                "(TransformerLens takes it from a tokenizer when d_vocab is -1)."
            )
        self.W_E = _param(cfg.d_vocab, cfg.d_model, dtype=cfg.dtype)

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return F.embedding(tokens, self.W_E)


class PosEmbed(nn.Module):
    def __init__(self, cfg: HookedTransformerConfig):
        super().__init__()
        self.W_pos = _param(cfg.n_ctx, cfg.d_model, dtype=cfg.dtype)

    def forward(self, positions: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return F.embedding(positions, self.W_pos)


class Unembed(nn.Module):
    def __init__(self, cfg: HookedTransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.W_U = _param(cfg.d_model, cfg.d_vocab_out, dtype=cfg.dtype, memory_order=_OUT_IN)
        self.b_U = _param(cfg.d_vocab_out, dtype=cfg.dtype)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        # A zero b_U is skipped where HF's lm_head has no bias (lensutil/zero_bias.py).
        return F.linear(x, self.W_U.T, bias_or_none(self.b_U, "b_U" in self.cfg.absent_biases))


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


class Attention(QuantizableLinears):
    """Multi-head attention: one key/value head per query head (cfg.n_key_value_heads is None)."""

    def __init__(self, cfg: HookedTransformerConfig):
        super().__init__()
        self.cfg = cfg
        h, m, e, dt = cfg.n_heads, cfg.d_model, cfg.d_head, cfg.dtype
        # GPT-2's c_attn: W_Q, W_K, W_V view one storage, so q, k, v come from one matmul (weight_layout.py)
        self._qkv_storage, fused = fused_qkv_params(cfg) if cfg.fused_qkv else (None, None)
        self.W_Q = _linear_param(cfg, "heads_in", h, m, e) if fused is None else fused[0]
        self.b_Q = _param(h, e, dtype=dt)
        self._make_key_value_weights(cfg, fused)
        self.W_O, self.b_O = _linear_param(cfg, "heads_out", h, e, m), _param(m, dtype=dt)
        self.hook_q = HookPoint("batch pos head_index d_head")
        self.hook_k = HookPoint("batch pos kv_head_index d_head")
        self.hook_v = HookPoint("batch pos kv_head_index d_head")
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
        if self._qkv_storage is not None and "W_Q" in self._parameters:
            share_qkv_storage(self, self.cfg)
        return self

    def _fused(self) -> bool:
        """Whether q, k, v come from one matmul: the float storage, or one quantised matrix (quantized["W_QKV"])."""
        quantized = self._modules.get("quantized")
        return self._qkv_storage is not None if quantized is None else "W_QKV" in quantized._modules

    def _project_fused(self, x: Float[Tensor, "batch pos d_model"]) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v from one matmul over W_Q, W_K, W_V side by side: GPT-2's c_attn, rounded as it rounds."""
        bias = torch.cat([self.b_Q.reshape(-1), self.b_K.reshape(-1), self.b_V.reshape(-1)])
        if "quantized" in self._modules:  # c_attn quantised as HF quantises it; bitsandbytes adds the bias
            qkv = self._modules["quantized"]._modules["W_QKV"](x, bias)
        else:
            absent = {"b_Q", "b_K", "b_V"} <= set(self.cfg.absent_biases)  # never for GPT-2, whose c_attn has a bias
            qkv = F.linear(x, fused_qkv_weight(self.cfg, self._qkv_storage, [self.W_Q, self.W_K, self.W_V]), bias_or_none(bias, absent))
        return tuple(t.view(*x.shape[:-1], *self.b_Q.shape) for t in qkv.split(self.b_Q.numel(), dim=-1))

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
        if q_in is k_in is v_in and q_in.ndim == 3 and self._fused():
            q, k, v = (hook(t) for hook, t in zip((self.hook_q, self.hook_k, self.hook_v), self._project_fused(q_in)))
        else:
            _, b_K, _, b_V = self.key_value_weights()
            k_name, v_name = key_value_param_name(cfg, "W_K"), key_value_param_name(cfg, "W_V")
            q = self.hook_q(self._project(q_in, "W_Q", self.b_Q))
            k = self.hook_k(self._project(k_in, k_name, b_K))  # compact: one per key/value head, as in TransformerLens
            v = self.hook_v(self._project(v_in, v_name, b_V))
        if ctx.rotary is not None:
            cos, sin = ctx.rotary
            if cos.dtype != q.dtype:
                cos, sin = cos.to(q.dtype), sin.to(q.dtype)
            q = self.hook_rot_q(apply_rotary(q, cos, sin))
            k = self.hook_rot_k(apply_rotary(k, cos, sin))
        if kv_cache_entry is not None:
            k, v = kv_cache_entry.append(k, v)
        # [batch, head, pos, d_head]; each key/value head serves n_heads / n_kv_heads query heads.
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        hooked = self.hook_attn_scores.has_hooks or self.hook_pattern.has_hooks
        fused = fused_attention(cfg, q, k, v, ctx) if cfg.attn_implementation == "sdpa" else None
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

    def _eager_attention(self, q, k, v, ctx: AttentionContext, fused: Tensor | None = None):
        # HuggingFace's eager order of operations, so logits agree with it bit for bit. With `fused` (sdpa
        # mode: the kernel's z for the same q, k, v), that z unless a hook changed the scores or the pattern,
        # so hooks that only read (run_with_cache) leave the plain forward's logits exactly.
        # The scaling and masking run in place on the fresh product (the same kernels, so the same
        # bits as out of place, and none of them needs its output for the gradient): two fewer
        # [batch, head, pos, key_pos] tensors per layer, which run_with_cache would otherwise allocate.
        scores = torch.matmul(q, k.transpose(-1, -2))
        if self.cfg.attn_scale_rule == "multiply":
            scores.mul_(self.cfg.attn_scale_factor)
        else:
            scores.div_(self.cfg.attn_scale)
        scores, edited_scores = fire_hook(self.hook_attn_scores, scores.masked_fill_(~ctx.allowed, float("-inf")))
        pattern = F.softmax(scores, dim=-1, dtype=compute_dtype(q.dtype)).to(q.dtype)
        if ctx.query_is_pad is not None:  # a padding query sees nothing: its row is 0, not NaN
            pattern = pattern.masked_fill(ctx.query_is_pad[:, None, :, None], 0.0)
        pattern, edited_pattern = fire_hook(self.hook_pattern, pattern)
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
        self._W_K, self._b_K = _linear_param(cfg, "heads_in", kv, m, e), _param(kv, e, dtype=dt)
        self._W_V, self._b_V = _linear_param(cfg, "heads_in", kv, m, e), _param(kv, e, dtype=dt)

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


class MLP(QuantizableLinears):
    """Dense: W_out·act(W_in·x + b_in). Gated (SwiGLU): W_out·(act(W_gate·x) * (W_in·x + b_in))."""

    def __init__(self, cfg: HookedTransformerConfig):
        super().__init__()
        self.cfg = cfg
        dt = cfg.dtype
        self.W_in, self.b_in = _linear_param(cfg, "in_out", cfg.d_model, cfg.d_mlp), _param(cfg.d_mlp, dtype=dt)
        if cfg.gated_mlp:
            self.W_gate = _linear_param(cfg, "in_out", cfg.d_model, cfg.d_mlp)
            self.hook_pre_linear = HookPoint("batch pos d_mlp")
        self.W_out, self.b_out = _linear_param(cfg, "in_out", cfg.d_mlp, cfg.d_model), _param(cfg.d_model, dtype=dt)
        self.hook_pre = HookPoint("batch pos d_mlp")  # gated: the gate's pre-activation
        self.hook_post = HookPoint("batch pos d_mlp")
        self.act = ACTIVATIONS[cfg.act_fn]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        if self.cfg.gated_mlp:
            gate = self.hook_pre(self._linear(x, "W_gate"))
            linear = self.hook_pre_linear(self._linear(x, "W_in", self.b_in))
            act = self.act(gate)
            # In place into the fresh activation when no gradient is recorded (the same product, one
            # [batch, pos, d_mlp] tensor fewer); with autograd the product must keep act for the backward.
            post = self.hook_post(act * linear if torch.is_grad_enabled() else act.mul_(linear))
        else:
            post = self.hook_post(self.act(self.hook_pre(self._linear(x, "W_in", self.b_in))))
        return self._linear(post, "W_out", self.b_out)


def check_hook_flags(cfg: HookedTransformerConfig) -> None:
    if cfg.use_split_qkv_input and cfg.use_attn_in:
        raise ConfigError("use_split_qkv_input and use_attn_in cannot both be on; turn one off first.")
    if cfg.use_attn_in and cfg.n_kv_heads != cfg.n_heads:
        raise ConfigError(
            "use_attn_in gives one attention input per query head, which grouped-query attention "
            "cannot use (key/value heads are shared); use set_use_split_qkv_input(True) instead."
        )


def _moe(cfg: HookedTransformerConfig) -> nn.Module:
    from .moe import MoE  # lensutil/moe.py builds on this module

    return MoE(cfg)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: HookedTransformerConfig, index: int):
        super().__init__()
        check_hook_flags(cfg)
        self.cfg, self.index = cfg, index
        self.ln1, self.ln2 = Norm(cfg), Norm(cfg)
        self.attn = GroupedQueryAttention(cfg) if cfg.n_key_value_heads is not None else Attention(cfg)
        self.mlp = MLP(cfg) if cfg.mlp_type != "moe" else _moe(cfg)
        self.hook_resid_pre = HookPoint("batch pos d_model")
        self.hook_attn_in = HookPoint("batch pos head_index d_model")  # needs use_attn_in
        self.hook_q_input = HookPoint("batch pos head_index d_model")  # needs use_split_qkv_input
        self.hook_k_input = HookPoint("batch pos kv_head_index d_model")  # needs use_split_qkv_input
        self.hook_v_input = HookPoint("batch pos kv_head_index d_model")  # needs use_split_qkv_input
        self.hook_attn_out = HookPoint("batch pos d_model")
        self.hook_resid_mid = HookPoint("batch pos d_model")
        self.hook_mlp_in = HookPoint("batch pos d_model")  # needs use_hook_mlp_in
        self.hook_mlp_out = HookPoint("batch pos d_model")
        self.hook_resid_post = HookPoint("batch pos d_model")  # post-LN: before ln2 (TransformerLens' BertBlock)
        if cfg.norm_position == "post":
            self.hook_normalized_resid_post = HookPoint("batch pos d_model")  # ln2's output: the block's output

    def forward(self, resid: Float[Tensor, "batch pos d_model"], ctx: AttentionContext, kv_cache_entry=None):
        # Submodules read from nn.Module's own dict: `self.ln1` goes through nn.Module.__getattr__, a
        # Python frame per read, ~10 reads per layer per generated token.
        cfg, m = self.cfg, self._modules
        resid = m["hook_resid_pre"](resid)
        norm_in = m["ln1"] if cfg.norm_position == "pre" else (lambda x: x)  # post-LN: attention reads the raw stream
        if cfg.use_split_qkv_input:  # a separate copy of the residual per head and per q/k/v
            per_head = lambda n: resid.unsqueeze(2).expand(-1, -1, n, -1).clone()  # noqa: E731
            q_in = norm_in(m["hook_q_input"](per_head(cfg.n_heads)))
            k_in = norm_in(m["hook_k_input"](per_head(cfg.n_kv_heads)))
            v_in = norm_in(m["hook_v_input"](per_head(cfg.n_kv_heads)))
        elif cfg.use_attn_in:
            q_in = k_in = v_in = norm_in(m["hook_attn_in"](resid.unsqueeze(2).expand(-1, -1, cfg.n_heads, -1).clone()))
        else:
            q_in = k_in = v_in = norm_in(resid)
        attn_out = m["hook_attn_out"](m["attn"](q_in, k_in, v_in, ctx, kv_cache_entry))
        resid = m["hook_resid_mid"](resid + attn_out)
        mlp_in = m["hook_mlp_in"](resid.clone()) if cfg.use_hook_mlp_in else resid
        if cfg.norm_position == "post":  # BERT: LayerNorm after each residual addition, as HF's BertLayer
            resid = m["ln1"](mlp_in)
            resid_post = m["hook_resid_post"](resid + m["hook_mlp_out"](m["mlp"](resid)))
            return m["hook_normalized_resid_post"](m["ln2"](resid_post))
        mlp_out = m["hook_mlp_out"](m["mlp"](m["ln2"](mlp_in)))
        return m["hook_resid_post"](resid + mlp_out)
