"""Gemma 1, 2 and 3 (`GemmaForCausalLM`, `Gemma2ForCausalLM`, `Gemma3ForCausalLM`): the Llama family's
layout and weight names (lensutil/architectures/llama.py, reused), with what Gemma changes as config:

- every RMSNorm multiplies by (1 + w), in float32 before the cast back (norm_weight_offset=1,
  norm_upcast_weight). TransformerLens folds the 1 into w at load; lensutil keeps HF's w and adds 1 at
  run time, so bfloat16 weights round as HF's (1 + w, rounded to bfloat16, is not HF's float32 1 + w);
  a TransformerLens Gemma state dict's norm weights are therefore 1 larger than lensutil's;
- the embedding is multiplied by sqrt(d_model) rounded to the weights' dtype (HF's embed_scale):
  folded into W_E, as TransformerLens does (exact: the product of each row, whether taken before or after the lookup);
  W_U stays HF's unscaled (tied) embedding. W_E cast to another dtype afterwards is rounded once, where HF
  rounds the weight and the scale apart;
- GeGLU (gelu_pytorch_tanh), a head size of its own (head_dim), scores scaled by query_pre_attn_scalar ** -0.5;
- Gemma 2: norms before and after attention and the MLP (use_normalization_before_and_after, ln1_post,
  ln2_post), soft caps on the scores and the logits, sliding windows on every other layer (layer_types);
- Gemma 3: q/k RMSNorm per head (use_qk_norm), layer_types windows, the local layers' own rotary base
  (rotary_base_local), "linear" RoPE scaling on the global layers only (4B and larger). Its attn_logit_softcapping is ignored, as HF's Gemma3Attention ignores it.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ..config import HookedTransformerConfig
from ..errors import ConfigError
from . import llama
from .adapter import Adapter, HFLayout
from .attributes import READ
from .rope import rope_fields

_GEMMA3_ROPE = {"full_attention": ("default", "linear"), "sliding_attention": ("default",)}  # tested bit for bit vs HF
_GEMMA2_NORMS = {"input_layernorm": "ln1", "post_attention_layernorm": "ln1_post",
                 "pre_feedforward_layernorm": "ln2", "post_feedforward_layernorm": "ln2_post"}


def _rope_bases(hf) -> dict:
    params = getattr(hf, "rope_parameters", None) or {}
    if "full_attention" not in params:  # Gemma 1 and 2: one rotary setting for every layer
        return {k: v for k, v in rope_fields(hf, hf.head_dim, partial_rotary=False).items() if k != "rotary_dim"}
    # Gemma 3: one per layer type. The global (full_attention) layers' scaling is the model's (rope.py, read as a
    # transformers 4 rope_scaling dict); the local layers are built unscaled with their own base
    # (lensutil/model/context.py), so a scaling there, or a kind not tested against HF's Gemma 3, is refused.
    for kind, p in params.items():
        rope_type = (p or {}).get("rope_type", "default")
        if rope_type not in _GEMMA3_ROPE.get(kind, ("default",)):
            raise ConfigError(
                f"This Gemma 3 checkpoint scales the rotary embedding of its {kind} layers ({rope_type!r}, "
                f"factor {p.get('factor')}). lensutil implements {_GEMMA3_ROPE['full_attention']} on the "
                "full_attention layers (Gemma 3 4B and larger use 'linear') and unscaled sliding_attention layers, "
                "and will not approximate another."
            )
    full = SimpleNamespace(rope_scaling=dict(params["full_attention"]), max_position_embeddings=hf.max_position_embeddings)
    fields = {k: v for k, v in rope_fields(full, hf.head_dim, partial_rotary=False).items() if k != "rotary_dim"}
    return dict(fields, rotary_base_local=float(params["sliding_attention"]["rope_theta"]))


def config_from_hf(hf, **overrides) -> HookedTransformerConfig:
    arch = hf.architectures[0]
    if getattr(hf, "use_bidirectional_attention", False):
        raise ConfigError("use_bidirectional_attention=True (an embedding model built on Gemma) is not implemented; lensutil's models are causal.")
    act = getattr(hf, "hidden_activation", None) or hf.hidden_act
    if act not in ("gelu_pytorch_tanh", "gelu"):  # HF's Gemma maps a legacy "gelu" to the tanh approximation
        raise ConfigError(f"Gemma activation {act!r} is not gelu_pytorch_tanh.")
    kv_heads = hf.num_key_value_heads
    later = arch != "GemmaForCausalLM"
    fields = dict(
        n_layers=hf.num_hidden_layers, d_model=hf.hidden_size, n_ctx=hf.max_position_embeddings,
        n_heads=hf.num_attention_heads, d_head=hf.head_dim, d_mlp=hf.intermediate_size, d_vocab=hf.vocab_size,
        act_fn="gelu_pytorch_tanh", eps=hf.rms_norm_eps, normalization_type="RMS", positional_embedding_type="rotary",
        rotary_dim=hf.head_dim, **_rope_bases(hf),
        n_key_value_heads=kv_heads if kv_heads != hf.num_attention_heads else None,
        attn_scale_rule="multiply", query_pre_attn_scalar=getattr(hf, "query_pre_attn_scalar", None),
        mlp_type="gated", norm_weight_offset=1.0, norm_upcast_weight=True,
        use_normalization_before_and_after=later, use_qk_norm=arch == "Gemma3ForCausalLM",
        **(llama.attention_layers(hf, per_layer=True) if later else {}),
        output_logits_soft_cap=float(getattr(hf, "final_logit_softcapping", None) or -1.0),
        attn_scores_soft_cap=float(getattr(hf, "attn_logit_softcapping", None) or -1.0) if arch == "Gemma2ForCausalLM" else -1.0,
        tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", True)), original_architecture=arch,
        absent_biases=llama._absent_biases(hf),
    )
    return HookedTransformerConfig(**{**fields, **overrides})


def convert(hf_sd: dict, cfg: HookedTransformerConfig) -> dict:
    sd = llama.convert(hf_sd, cfg, norms=_GEMMA2_NORMS if cfg.use_normalization_before_and_after else llama.LLAMA_NORMS)
    W_E = sd["embed.W_E"]
    sd["embed.W_E"] = W_E * torch.tensor(cfg.d_model**0.5).to(W_E.dtype)  # HF's embed_scale, in the weights' dtype
    return sd


# Gemma 1-3's attributes; attn_logit_softcapping is read by Gemma 2 and ignored by Gemma 3, as HF does.
# use_bidirectional_attention and the activation are refused by config_from_hf where not implemented.
UNDERSTANDS = {**llama.CORE, **{k: READ for k in (
    "hidden_activation", "attention_bias", "sliding_window", "layer_types", "query_pre_attn_scalar",
    "final_logit_softcapping", "attn_logit_softcapping", "use_bidirectional_attention")}}

ADAPTER = Adapter(config_from_hf, convert, HFLayout("model.embed_tokens", "model.layers", "self_attn", "mlp", "model.norm",
                                                    "post_attention_layernorm", "post_feedforward_layernorm"),
                  module_names=llama.module_names, understands=UNDERSTANDS)
