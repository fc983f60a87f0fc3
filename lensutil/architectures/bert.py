"""BERT (`BertForMaskedLM`, `BertModel`): post-LN blocks, learned absolute positions, token types.

The maths is the decoder's components under four config fields: attention_dir="bidirectional",
norm_position="post" (LayerNorm after each residual addition), n_token_types (segment embedding)
and the heads (mlm_head: BertForMaskedLM's transform + LayerNorm + tied decoder; pooler: BertModel's
tanh pooler, when the checkpoint has one). State-dict names are TransformerLens' HookedEncoder's
(pretrained/weight_conversions/bert.py), so a TransformerLens BERT state dict loads.

HF facts this relies on (transformers' models/bert/modeling_bert.py): eager attention multiplies
the scores by head_dim ** -0.5 and adds the mask; hidden_act "gelu" is the exact erf GELU
(activations.GELUActivation -> F.gelu); every LayerNorm uses config.layer_norm_eps (1e-12);
embeddings are (word + token_type) + position, then LayerNorm; the pooler is tanh(dense(h[:, 0])).
"""

from __future__ import annotations

from ..config import HookedTransformerConfig
from ..errors import ConfigError
from .adapter import Adapter, HFLayout, StateDictReader
from .attributes import READ

_ACTS = {"gelu", "gelu_new", "relu", "gelu_pytorch_tanh"}


def config_from_hf(hf, **overrides) -> HookedTransformerConfig:
    arch = (getattr(hf, "architectures", None) or ["BertModel"])[0]
    must = {
        "is_decoder": (getattr(hf, "is_decoder", False), False),
        "add_cross_attention": (getattr(hf, "add_cross_attention", False), False),
        "position_embedding_type": (getattr(hf, "position_embedding_type", "absolute"), "absolute"),
    }
    for name, (value, supported) in must.items():
        if value != supported:
            raise ConfigError(f"BERT config sets {name}={value!r}; lensutil implements only {name}={supported!r}.")
    if hf.hidden_act not in _ACTS:
        raise ConfigError(f"BERT activation {hf.hidden_act!r} is not one of {sorted(_ACTS)}.")
    fields = dict(
        n_layers=hf.num_hidden_layers, d_model=hf.hidden_size, n_ctx=hf.max_position_embeddings,
        n_heads=hf.num_attention_heads, d_head=hf.hidden_size // hf.num_attention_heads,
        d_mlp=hf.intermediate_size, d_vocab=hf.vocab_size, act_fn=hf.hidden_act, eps=hf.layer_norm_eps,
        normalization_type="LN", positional_embedding_type="standard", mlp_type="dense",
        attention_dir="bidirectional", norm_position="post", n_token_types=hf.type_vocab_size,
        mlm_head=arch == "BertForMaskedLM", pooler=arch == "BertModel",  # pooler: see convert
        tie_word_embeddings=arch == "BertForMaskedLM", original_architecture=arch,
        attn_scale_rule="multiply", default_prepend_bos=False,  # the tokenizer adds [CLS] and [SEP]
    )
    return HookedTransformerConfig(**{**fields, **overrides})


def convert(hf_sd: dict, cfg: HookedTransformerConfig) -> dict:
    # HF keeps position_ids / token_type_ids buffers in some older checkpoints: not weights.
    take = StateDictReader(hf_sd, ignore_suffixes=("embeddings.position_ids", "embeddings.token_type_ids"))
    h, e, d = cfg.n_heads, cfg.d_head, cfg.d_model
    p = "bert." if cfg.mlm_head else ""
    sd = {
        "embed.embed.W_E": take(p + "embeddings.word_embeddings.weight"),
        "embed.pos_embed.W_pos": take(p + "embeddings.position_embeddings.weight"),
        "embed.token_type_embed.W_token_type": take(p + "embeddings.token_type_embeddings.weight"),
        "embed.ln.w": take(p + "embeddings.LayerNorm.weight"),
        "embed.ln.b": take(p + "embeddings.LayerNorm.bias"),
    }
    for i in range(cfg.n_layers):
        b, o = f"{p}encoder.layer.{i}.", f"blocks.{i}."
        for name, hf_name in zip("QKV", ("query", "key", "value")):
            # nn.Linear weight [n_heads * d_head, d_model] -> [n_heads, d_model, d_head]
            sd[o + f"attn.W_{name}"] = take(b + f"attention.self.{hf_name}.weight").reshape(h, e, d).transpose(1, 2)
            sd[o + f"attn.b_{name}"] = take(b + f"attention.self.{hf_name}.bias").reshape(h, e)
        sd[o + "attn.W_O"] = take(b + "attention.output.dense.weight").T.reshape(h, e, d)
        sd[o + "attn.b_O"] = take(b + "attention.output.dense.bias")
        # post-LN: ln1 follows the attention's residual addition, ln2 the MLP's (TransformerLens' names)
        sd[o + "ln1.w"], sd[o + "ln1.b"] = take(b + "attention.output.LayerNorm.weight"), take(b + "attention.output.LayerNorm.bias")
        sd[o + "mlp.W_in"], sd[o + "mlp.b_in"] = take(b + "intermediate.dense.weight").T, take(b + "intermediate.dense.bias")
        sd[o + "mlp.W_out"], sd[o + "mlp.b_out"] = take(b + "output.dense.weight").T, take(b + "output.dense.bias")
        sd[o + "ln2.w"], sd[o + "ln2.b"] = take(b + "output.LayerNorm.weight"), take(b + "output.LayerNorm.bias")
    if cfg.pooler:
        sd["pooler.W"], sd["pooler.b"] = take("pooler.dense.weight").T, take("pooler.dense.bias")
    if cfg.mlm_head:
        c = "cls.predictions."
        sd["mlm_head.W"], sd["mlm_head.b"] = take(c + "transform.dense.weight").T, take(c + "transform.dense.bias")
        sd["mlm_head.ln.w"], sd["mlm_head.ln.b"] = take(c + "transform.LayerNorm.weight"), take(c + "transform.LayerNorm.bias")
        decoder = take.get(c + "decoder.weight")  # tied to the word embeddings; absent from some saved files
        sd["unembed.W_U"] = (decoder if decoder is not None else sd["embed.embed.W_E"]).T
        bias = take(c + "bias")
        decoder_bias = take.get(c + "decoder.bias")  # the same tensor as cls.predictions.bias (tied)
        sd["unembed.b_U"] = decoder_bias if decoder_bias is not None else bias
    take.check_all_used()
    return sd


def _layout(prefix: str) -> HFLayout:
    # attn / mlp: the modules whose outputs are hook_attn_out / hook_mlp_out (before the residual add).
    return HFLayout(f"{prefix}embeddings", f"{prefix}encoder.layer", "attention.output.dense", "output.dense",
                    "cls.predictions.transform" if prefix else "")


def _module_names(prefix: str):
    def names(cfg: HookedTransformerConfig) -> dict[str, tuple[str, ...]]:
        out = {}
        for i in range(cfg.n_layers):
            b, o = f"{prefix}encoder.layer.{i}.", f"blocks.{i}."
            out.update({b + f"attention.self.{x}": (o + f"attn.W_{x[0].upper()}",) for x in ("query", "key", "value")})
            out[b + "attention.output.dense"], out[b + "intermediate.dense"] = (o + "attn.W_O",), (o + "mlp.W_in",)
            out[b + "output.dense"] = (o + "mlp.W_out",)
        if cfg.pooler:
            out[f"{prefix}pooler.dense"] = ("pooler.W",)
        if cfg.mlm_head:
            out["cls.predictions.transform.dense"], out["cls.predictions.decoder"] = ("mlm_head.W",), ("unembed.W_U",)
        return out
    return names


ARCHITECTURES = ("BertForMaskedLM", "BertModel")
# The HF attributes config_from_hf reads (lensutil/architectures/attributes.py); the rest must be at their defaults.
UNDERSTANDS = {
    **{k: READ for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                         "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "tie_word_embeddings")},
    "is_decoder": (False,), "add_cross_attention": (False,), "position_embedding_type": ("absolute",),
}
ADAPTER_MLM = Adapter(config_from_hf, convert, _layout("bert."), auto_class="AutoModelForMaskedLM", module_names=_module_names("bert."),
                      understands=UNDERSTANDS)
ADAPTER_BASE = Adapter(config_from_hf, convert, _layout(""), auto_class="AutoModel", module_names=_module_names(""),
                       understands=UNDERSTANDS)
