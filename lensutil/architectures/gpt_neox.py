"""GPT-NeoX / Pythia (`GPTNeoXForCausalLM`): parallel attention and MLP, partial rotary, LayerNorm, untied unembedding.

HF facts this relies on (transformers' models/gpt_neox/modeling_gpt_neox.py): `query_key_value`
[3 * d_model, d_model] holds each head's q, k and v rows side by side ([head, 3, d_head] along the
output axis, not Q|K|V blocks), split here into W_Q, W_K, W_V per head; rotary on the first
int(d_head * partial_rotary_factor) features of each head (Pythia: 0.25, `rotary_pct` in older
configs), rotate-half layout; scores multiplied by head_dim ** -0.5; `use_parallel_residual` (Pythia:
True) computes (mlp + attn) + resid from the block's input; exact-erf GELU; `embed_out` (transformers 5:
`lm_head`) untied.
Separate q/k/v matmuls give the fused one's bits: each output is the dot product of one row of an
[out, in] matrix with the input, whichever rows are computed together.
"""

from __future__ import annotations

import torch

from ..config import HookedTransformerConfig
from ..errors import ConfigError
from .adapter import Adapter, HFLayout, StateDictReader
from .attributes import READ
from .rope import rope_fields

_ACTS = {"gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu"}


def config_from_hf(hf, **overrides) -> HookedTransformerConfig:
    if hf.hidden_act not in _ACTS:
        raise ConfigError(f"GPT-NeoX activation {hf.hidden_act!r} is not one of {sorted(_ACTS)}.")
    d_head = hf.hidden_size // hf.num_attention_heads
    bias = getattr(hf, "attention_bias", True)
    fields = dict(
        n_layers=hf.num_hidden_layers, d_model=hf.hidden_size, n_ctx=hf.max_position_embeddings,
        n_heads=hf.num_attention_heads, d_head=d_head, d_mlp=hf.intermediate_size, d_vocab=hf.vocab_size,
        act_fn=hf.hidden_act, eps=hf.layer_norm_eps, normalization_type="LN", positional_embedding_type="rotary",
        **rope_fields(hf, d_head, partial_rotary=True),
        parallel_attn_mlp=bool(getattr(hf, "use_parallel_residual", True)), attn_scale_rule="multiply",
        mlp_type="dense", tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        original_architecture="GPTNeoXForCausalLM",
        absent_biases=("b_U",) if bias else ("b_Q", "b_K", "b_V", "b_O", "b_U"),
    )
    return HookedTransformerConfig(**{**fields, **overrides})  # overrides (n_ctx=...) win


def convert(hf_sd: dict, cfg: HookedTransformerConfig) -> dict:
    take = StateDictReader(hf_sd, ignore_suffixes=("rotary_emb.inv_freq", "attention.bias", "attention.masked_bias"))
    h, e, d = cfg.n_heads, cfg.d_head, cfg.d_model
    p = "gpt_neox."
    W_E = take(p + "embed_in.weight")
    sd = {"embed.W_E": W_E}
    for i in range(cfg.n_layers):
        b, o = f"{p}layers.{i}.", f"blocks.{i}."
        sd[o + "ln1.w"], sd[o + "ln1.b"] = take(b + "input_layernorm.weight"), take(b + "input_layernorm.bias")
        sd[o + "ln2.w"], sd[o + "ln2.b"] = take(b + "post_attention_layernorm.weight"), take(b + "post_attention_layernorm.bias")
        qkv = take(b + "attention.query_key_value.weight").reshape(h, 3, e, d)  # per head: q rows, k rows, v rows
        qkv_b = take.get(b + "attention.query_key_value.bias")
        qkv_b = qkv_b.reshape(h, 3, e) if qkv_b is not None else torch.zeros(h, 3, e, dtype=qkv.dtype)
        for j, name in enumerate("QKV"):
            sd[o + f"attn.W_{name}"] = qkv[:, j].transpose(1, 2)  # [head, d_model, d_head]
            sd[o + f"attn.b_{name}"] = qkv_b[:, j]
        dense = take(b + "attention.dense.weight")  # [d_model, n_heads * d_head]
        sd[o + "attn.W_O"] = dense.T.reshape(h, e, d)
        dense_b = take.get(b + "attention.dense.bias")
        sd[o + "attn.b_O"] = dense_b if dense_b is not None else torch.zeros(d, dtype=dense.dtype)
        sd[o + "mlp.W_in"], sd[o + "mlp.b_in"] = take(b + "mlp.dense_h_to_4h.weight").T, take(b + "mlp.dense_h_to_4h.bias")
        sd[o + "mlp.W_out"], sd[o + "mlp.b_out"] = take(b + "mlp.dense_4h_to_h.weight").T, take(b + "mlp.dense_4h_to_h.bias")
    sd["ln_final.w"], sd["ln_final.b"] = take(p + "final_layer_norm.weight"), take(p + "final_layer_norm.bias")
    # transformers 5 names the unembedding lm_head (renaming checkpoints' embed_out on load); a raw
    # checkpoint state dict still says embed_out.
    lm_head = take.get("lm_head.weight")
    lm_head = take.get("embed_out.weight") if lm_head is None else lm_head
    sd["unembed.W_U"] = (lm_head if lm_head is not None else W_E).T
    sd["unembed.b_U"] = torch.zeros(cfg.d_vocab_out, dtype=W_E.dtype)
    take.check_all_used()
    return sd


def module_names(cfg: HookedTransformerConfig) -> dict[str, tuple[str, ...]]:
    names = {"lm_head": ("unembed.W_U",)}  # transformers 5's name for Pythia's embed_out
    for i in range(cfg.n_layers):
        b, o = f"gpt_neox.layers.{i}.", f"blocks.{i}."
        names[b + "attention.query_key_value"] = (o + "attn.W_Q", o + "attn.W_K", o + "attn.W_V")  # one module, three weights
        names[b + "attention.dense"] = (o + "attn.W_O",)
        names[b + "mlp.dense_h_to_4h"], names[b + "mlp.dense_4h_to_h"] = (o + "mlp.W_in",), (o + "mlp.W_out",)
    return names


# The HF attributes config_from_hf reads (lensutil/architectures/attributes.py); the rest must be at their
# defaults. rotary_pct / rotary_emb_base: transformers 4's spellings, folded into rope_parameters by 5.
UNDERSTANDS = {
    k: READ for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                      "hidden_act", "max_position_embeddings", "layer_norm_eps", "rope_parameters", "rotary_pct",
                      "rotary_emb_base", "rope_scaling", "use_parallel_residual", "attention_bias", "tie_word_embeddings",
                      "is_decoder")  # is_decoder: read by no GPT-NeoX module
}

ADAPTER = Adapter(config_from_hf, convert, HFLayout("gpt_neox.embed_in", "gpt_neox.layers", "attention", "mlp",
                                                    "gpt_neox.final_layer_norm"),
                  module_names=module_names, understands=UNDERSTANDS)
