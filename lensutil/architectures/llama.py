"""The Llama family (`LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`).

RMSNorm, rotary embeddings (rotate-half layout, base `rope_theta`), SwiGLU MLP, grouped-query
attention. The members differ only in data: Qwen2 has q/k/v biases, Llama may have biases on all
four projections (`attention_bias`) and on the MLP (`mlp_bias`), Mistral may use a sliding window.
Biases are taken when the checkpoint has them and are zero otherwise.
"""

from __future__ import annotations

import torch

from ..config import HookedTransformerConfig
from ..errors import ConfigError
from ..model.attention import key_value_param_name
from .adapter import Adapter, HFLayout, StateDictReader
from .attributes import READ
from .rope import rope_fields

_ACTS = {"silu", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu"}


# Families whose sliding window covers only the layers config.layer_types names (Qwen2 and Qwen3 derive
# it from max_window_layers); Mistral and Mixtral slide on every layer and ignore layer_types.
_LAYER_TYPED = {"Qwen2ForCausalLM", "Qwen3ForCausalLM"}
_LAYER_TYPES = {"full_attention": "global", "sliding_attention": "local"}  # HF's names -> TransformerLens'


def attention_layers(hf, per_layer: bool) -> dict:
    """window_size and attn_types as HF applies sliding windows: on every layer (per_layer False: Mistral),
    or on those config.layer_types calls "sliding_attention" (Qwen2 from max_window_layers on, Gemma 2/3)."""
    window = getattr(hf, "sliding_window", None)
    if not getattr(hf, "use_sliding_window", True):  # Qwen2 keeps a window size but switches it off
        window = None
    types = getattr(hf, "layer_types", None) if per_layer else None
    if types is None:
        return dict(window_size=window)
    unknown = sorted(set(types) - set(_LAYER_TYPES))
    if unknown:
        raise ConfigError(f"config.layer_types has {unknown}; lensutil implements {sorted(_LAYER_TYPES)} layers only.")
    attn_types = [_LAYER_TYPES[t] for t in types]
    if "local" not in attn_types:
        return dict(window_size=None)
    if window is None:
        raise ConfigError("config.layer_types has sliding_attention layers but sliding_window is None; HF would fail too.")
    return dict(window_size=window, attn_types=attn_types)


def config_from_hf(hf, partial_rotary: bool = False, **overrides) -> HookedTransformerConfig:
    """`partial_rotary`: whether the family rotates part of each head (Phi-3 does; HF's Llama rotates whole heads)."""
    if hf.hidden_act not in _ACTS:
        raise ConfigError(f"Activation {hf.hidden_act!r} is not one of {sorted(_ACTS)}.")
    d_head = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    # TransformerLens' rule: n_key_value_heads is None (plain multi-head attention, weights named
    # W_K/W_V) unless there are fewer key/value heads than query heads.
    kv_heads = getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads
    fields = dict(
        n_layers=hf.num_hidden_layers, d_model=hf.hidden_size, n_ctx=hf.max_position_embeddings,
        n_heads=hf.num_attention_heads, d_head=d_head, d_mlp=hf.intermediate_size, d_vocab=hf.vocab_size,
        act_fn=hf.hidden_act, eps=hf.rms_norm_eps, normalization_type="RMS", positional_embedding_type="rotary",
        **rope_fields(hf, d_head, partial_rotary=partial_rotary),
        n_key_value_heads=kv_heads if kv_heads != hf.num_attention_heads else None,
        attn_scale_rule="multiply",  # HF: scores * head_dim ** -0.5 (LlamaAttention.scaling)
        mlp_type="gated", **attention_layers(hf, hf.architectures[0] in _LAYER_TYPED), tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        original_architecture=hf.architectures[0], absent_biases=_absent_biases(hf),
    )
    return HookedTransformerConfig(**{**fields, **overrides})  # overrides (n_ctx=...) win


# The HF attributes config_from_hf reads (lensutil/architectures/attributes.py); the rest must be at
# their defaults. rope_parameters: rope.py refuses what it does not implement.
UNDERSTANDS = {
    **{k: READ for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                         "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "hidden_act",
                         "rope_parameters", "rope_theta", "rope_scaling", "attention_bias", "mlp_bias",
                         "tie_word_embeddings", "sliding_window", "use_sliding_window", "max_window_layers", "layer_types")},
}
# What a family built on Llama's config_from_hf reads beyond its own attributes: the sizes, norms and rotary
# settings. Sliding windows and biases are declared per family, as each HF family reads them.
CORE = {k: READ for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                          "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "hidden_act",
                          "rope_parameters", "rope_theta", "rope_scaling", "tie_word_embeddings")}


def _absent_biases(hf) -> tuple[str, ...]:
    """The biases HuggingFace's layers lack (their zero stand-ins may run as a plain product, lensutil/model/zero_bias.py).

    LlamaConfig's attention_bias (q, k, v, o) and mlp_bias (up, down); Qwen2's q/k/v always have one,
    its o_proj none; Mistral's and Mixtral's layers none. lm_head never has one.
    """
    qwen2 = hf.architectures[0] == "Qwen2ForCausalLM"
    attention, mlp = getattr(hf, "attention_bias", False), getattr(hf, "mlp_bias", False)
    absent = [] if attention or qwen2 else ["b_Q", "b_K", "b_V"]
    absent += [] if attention else ["b_O"]
    absent += [] if mlp else ["b_in", "b_out"]
    return (*absent, "b_U")


def _bias(take, key: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    b = take.get(key)
    return b.reshape(shape) if b is not None else torch.zeros(shape, dtype=like.dtype)


def convert_mlp(take, b: str, o: str, cfg: HookedTransformerConfig) -> dict:
    """One layer's SwiGLU MLP: HF keys under prefix b, lensutil keys under prefix o."""
    sd = {o + "mlp.W_gate": take(b + "mlp.gate_proj.weight").T}
    up = take(b + "mlp.up_proj.weight")
    sd[o + "mlp.W_in"], sd[o + "mlp.b_in"] = up.T, _bias(take, b + "mlp.up_proj.bias", (cfg.d_mlp,), up)
    down = take(b + "mlp.down_proj.weight")
    sd[o + "mlp.W_out"], sd[o + "mlp.b_out"] = down.T, _bias(take, b + "mlp.down_proj.bias", (cfg.d_model,), down)
    if take.get(b + "mlp.gate_proj.bias") is not None:
        raise ConfigError("A bias on the MLP gate projection is not implemented.")
    return sd


# Each layer's norms: HF's module name in the layer -> lensutil's. Gemma 2/3 and OLMo 2 pass their own.
LLAMA_NORMS = {"input_layernorm": "ln1", "post_attention_layernorm": "ln2"}
_QK_NORMS = {"self_attn.q_norm": "attn.q_norm", "self_attn.k_norm": "attn.k_norm"}  # cfg.use_qk_norm


def convert(hf_sd: dict, cfg: HookedTransformerConfig, convert_mlp=convert_mlp, norms: dict[str, str] = LLAMA_NORMS) -> dict:
    """The Llama family's weights; `convert_mlp(take, hf_prefix, lensutil_prefix, cfg)` does each
    layer's MLP (a Mixtral passes its mixture of experts, lensutil/architectures/mixtral.py), `norms`
    names each layer's norms."""
    take = StateDictReader(hf_sd, ignore_suffixes=("rotary_emb.inv_freq",))
    h, kv, e, d = cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_model
    W_E = take("model.embed_tokens.weight")
    sd = {"embed.W_E": W_E}
    for i in range(cfg.n_layers):
        b, o = f"model.layers.{i}.", f"blocks.{i}."
        for hf_name, name in {**norms, **(_QK_NORMS if cfg.use_qk_norm else {})}.items():
            sd[o + name + ".w"] = take(b + hf_name + ".weight")
        for name, heads in (("q", h), ("k", kv), ("v", kv)):
            w = take(b + f"self_attn.{name}_proj.weight")  # nn.Linear: [heads * d_head, d_model]
            W, B = f"W_{name.upper()}", f"b_{name.upper()}"
            if name != "q":  # _W_K, _b_K, ... with grouped-query attention
                W, B = key_value_param_name(cfg, W), key_value_param_name(cfg, B)
            sd[o + f"attn.{W}"] = w.reshape(heads, e, d).transpose(1, 2)
            sd[o + f"attn.{B}"] = _bias(take, b + f"self_attn.{name}_proj.bias", (heads, e), w)
        w_o = take(b + "self_attn.o_proj.weight")  # [d_model, n_heads * d_head]
        sd[o + "attn.W_O"] = w_o.T.reshape(h, e, d)
        sd[o + "attn.b_O"] = _bias(take, b + "self_attn.o_proj.bias", (d,), w_o)
        sd.update(convert_mlp(take, b, o, cfg))
    sd["ln_final.w"] = take("model.norm.weight")
    lm_head = take.get("lm_head.weight")
    sd["unembed.W_U"] = (lm_head if lm_head is not None else W_E).T
    sd["unembed.b_U"] = torch.zeros(cfg.d_vocab_out, dtype=W_E.dtype)
    take.check_all_used()
    return sd


MLP_NAMES = {"gate_proj": "W_gate", "up_proj": "W_in", "down_proj": "W_out"}  # HF's gated MLP -> lensutil's


def mlp_module_names(b: str, o: str) -> dict[str, tuple[str, ...]]:
    """One layer's gated MLP: HF module under prefix b -> the lensutil weight under prefix o."""
    return {b + f"mlp.{k}": (o + f"mlp.{v}",) for k, v in MLP_NAMES.items()}


def module_names(cfg: HookedTransformerConfig, mlp_names=mlp_module_names):
    """HF linear module -> lensutil weights; `mlp_names(hf_prefix, lensutil_prefix)` names each layer's MLP."""
    names = {"lm_head": ("unembed.W_U",)}
    for i in range(cfg.n_layers):
        b, o = f"model.layers.{i}.", f"blocks.{i}."
        names.update({b + f"self_attn.{x}_proj": (o + f"attn.W_{x.upper()}",) for x in "qkvo"})
        names.update(mlp_names(b, o))
    return names


ADAPTER = Adapter(config_from_hf, convert, HFLayout("model.embed_tokens", "model.layers", "self_attn", "mlp", "model.norm"),
                  module_names=module_names, understands=UNDERSTANDS)
