"""GPT-2 (`GPT2LMHeadModel`): learned positions, LayerNorm, gelu_new, tied unembedding.

GPT-2 stores its projections as Conv1D weights of shape [in, out] (the transpose of nn.Linear),
so W_in/W_out are taken as they are and the fused q/k/v matrix is split along its output axis.
weight_layout="in_out" keeps that memory layout and fused_qkv=True keeps c_attn's single matmul
(lensutil/model/weight_layout.py): BLAS then rounds as in HuggingFace's GPT-2, bit for bit.
"""

from __future__ import annotations

import torch

from ..config import HookedTransformerConfig
from ..errors import ConfigError
from .adapter import Adapter, HFLayout, StateDictReader
from .attributes import READ

_ACTS = {"gelu_new", "gelu", "relu", "gelu_pytorch_tanh"}


def _scale_rule() -> str:
    # transformers' GPT-2 divides the scores by sqrt(head_dim) up to 5.3 and multiplies them by
    # head_dim ** -0.5 from 5.4 (modeling_gpt2.py eager_attention_forward). Same bits at GPT-2's
    # own d_head 64; a custom head size follows the installed version.
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return "multiply" if (major, minor) >= (5, 4) else "divide"


def config_from_hf(hf, **overrides) -> HookedTransformerConfig:
    unsupported = {
        "scale_attn_by_inverse_layer_idx": (getattr(hf, "scale_attn_by_inverse_layer_idx", False), False),
        "scale_attn_weights": (getattr(hf, "scale_attn_weights", True), True),
        "add_cross_attention": (getattr(hf, "add_cross_attention", False), False),
    }
    for name, (value, supported) in unsupported.items():
        if value != supported:
            raise ConfigError(f"GPT-2 config sets {name}={value}; lensutil implements only {name}={supported}.")
    if hf.activation_function not in _ACTS:
        raise ConfigError(f"GPT-2 activation {hf.activation_function!r} is not one of {sorted(_ACTS)}.")
    if getattr(hf, "n_inner", None) not in (None, 4 * hf.n_embd):
        d_mlp = hf.n_inner
    else:
        d_mlp = 4 * hf.n_embd
    fields = dict(
        n_layers=hf.n_layer, d_model=hf.n_embd, n_ctx=hf.n_positions, n_heads=hf.n_head,
        d_head=hf.n_embd // hf.n_head, d_mlp=d_mlp, d_vocab=hf.vocab_size, act_fn=hf.activation_function,
        eps=hf.layer_norm_epsilon, normalization_type="LN", positional_embedding_type="standard",
        mlp_type="dense", tie_word_embeddings=True, original_architecture="GPT2LMHeadModel", weight_layout="in_out", fused_qkv=True,
        attn_scale_rule=_scale_rule(), absent_biases=("b_U",),  # lm_head has no bias; every other layer has one
    )
    if overrides.get("n_ctx", hf.n_positions) > hf.n_positions:
        raise ConfigError(
            f"n_ctx={overrides['n_ctx']} (or max_seq_len) exceeds GPT-2's {hf.n_positions} learned positions: W_pos has "
            f"no trained row past position {hf.n_positions - 1}. Pass n_ctx <= {hf.n_positions}."
        )
    return HookedTransformerConfig(**{**fields, **overrides})  # overrides (n_ctx=...) win


def convert(hf_sd: dict, cfg: HookedTransformerConfig) -> dict:
    take = StateDictReader(hf_sd, ignore_suffixes=("attn.bias", "attn.masked_bias"))  # causal-mask buffers
    h, e, d = cfg.n_heads, cfg.d_head, cfg.d_model
    p = "transformer."
    sd = {"embed.W_E": take(p + "wte.weight"), "pos_embed.W_pos": take(p + "wpe.weight")[: cfg.n_ctx]}
    # A smaller n_ctx keeps the first n_ctx learned positions, as TransformerLens' convert_gpt2_weights does.
    for i in range(cfg.n_layers):
        b, o = f"{p}h.{i}.", f"blocks.{i}."
        sd[o + "ln1.w"], sd[o + "ln1.b"] = take(b + "ln_1.weight"), take(b + "ln_1.bias")
        sd[o + "ln2.w"], sd[o + "ln2.b"] = take(b + "ln_2.weight"), take(b + "ln_2.bias")
        W = take(b + "attn.c_attn.weight").split(d, dim=1)  # three [d_model, n_heads * d_head]
        B = take(b + "attn.c_attn.bias").split(d)
        for name, w, bias in zip("QKV", W, B):
            sd[o + f"attn.W_{name}"] = w.reshape(d, h, e).permute(1, 0, 2)
            sd[o + f"attn.b_{name}"] = bias.reshape(h, e)
        sd[o + "attn.W_O"] = take(b + "attn.c_proj.weight").reshape(h, e, d)
        sd[o + "attn.b_O"] = take(b + "attn.c_proj.bias")
        sd[o + "mlp.W_in"], sd[o + "mlp.b_in"] = take(b + "mlp.c_fc.weight"), take(b + "mlp.c_fc.bias")
        sd[o + "mlp.W_out"], sd[o + "mlp.b_out"] = take(b + "mlp.c_proj.weight"), take(b + "mlp.c_proj.bias")
    sd["ln_final.w"], sd["ln_final.b"] = take(p + "ln_f.weight"), take(p + "ln_f.bias")
    lm_head = take.get("lm_head.weight")
    sd["unembed.W_U"] = (lm_head if lm_head is not None else sd["embed.W_E"]).T
    sd["unembed.b_U"] = torch.zeros(cfg.d_vocab_out, dtype=sd["embed.W_E"].dtype)
    take.check_all_used()
    return sd


def module_names(cfg: HookedTransformerConfig) -> dict[str, tuple[str, ...]]:
    names = {"lm_head": ("unembed.W_U",)}
    for i in range(cfg.n_layers):
        b, o = f"transformer.h.{i}.", f"blocks.{i}."
        names[b + "attn.c_attn"] = (o + "attn.W_Q", o + "attn.W_K", o + "attn.W_V")  # one fused module, three weights
        names[b + "attn.c_proj"], names[b + "mlp.c_fc"], names[b + "mlp.c_proj"] = (o + "attn.W_O",), (o + "mlp.W_in",), (o + "mlp.W_out",)
    return names


# The HF attributes config_from_hf reads (lensutil/architectures/attributes.py); the rest must be at their
# defaults. summary_*: GPT2DoubleHeadsModel's classification head, which GPT2LMHeadModel lacks; n_ctx: an
# older spelling of n_positions that transformers 5 ignores. reorder_and_upcast_attn scales q before q·k
# (baddbmm), which rounds otherwise.
UNDERSTANDS = {
    **{k: READ for k in ("vocab_size", "n_embd", "n_layer", "n_head", "n_inner", "n_positions", "n_ctx",
                         "layer_norm_epsilon", "activation_function", "tie_word_embeddings", "summary_activation",
                         "summary_proj_to_labels", "summary_type", "summary_use_proj")},
    "scale_attn_by_inverse_layer_idx": (False,), "scale_attn_weights": (True,), "add_cross_attention": (False,),
    "reorder_and_upcast_attn": (False,),
}

ADAPTER = Adapter(config_from_hf, convert, HFLayout("transformer.wte", "transformer.h", "attn", "mlp", "transformer.ln_f"),
                  module_names=module_names, understands=UNDERSTANDS)
