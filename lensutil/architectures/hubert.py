"""HuBERT (`HubertModel`): a convolutional front end over the waveform, then BERT's post-LN blocks.

Only the blocks are converted (to lensutil's TransformerBlock under encoder fields, as BERT's); the
front end (feature_extractor, feature_projection, the convolutional position embedding and the
LayerNorm after it) stays HuggingFace's modules, as in TransformerLens' HookedAudioEncoder, which
hooks nothing there either (lensutil/model/audio_encoder.py).

HF facts this relies on (transformers' models/hubert/modeling_hubert.py): HubertEncoderLayer is
attention -> residual add -> layer_norm -> x + feed_forward(x) -> final_layer_norm (post-LN, as BERT);
eager attention multiplies q·k by head_dim ** -0.5; the stable-layer-norm variant (pre-LN,
do_stable_layer_norm=True, HuBERT large) is another layer, refused here.
"""

from __future__ import annotations

from ..config import HookedTransformerConfig
from ..errors import ConfigError
from .adapter import StateDictReader

_ACTS = {"gelu", "gelu_new", "relu"}
_FRONT_END = ("feature_extractor.", "feature_projection.", "encoder.pos_conv_embed.", "encoder.layer_norm.",
              "masked_spec_embed")  # masked_spec_embed: used in training only (SpecAugment)


def config_from_hf(hf, **overrides) -> HookedTransformerConfig:
    if getattr(hf, "do_stable_layer_norm", False):
        raise ConfigError("HuBERT with do_stable_layer_norm=True (pre-LN layers, e.g. hubert-large) is not implemented; "
                          "lensutil implements the post-LN layers of hubert-base.")
    if hf.hidden_act not in _ACTS:
        raise ConfigError(f"HuBERT activation {hf.hidden_act!r} is not one of {sorted(_ACTS)}.")
    fields = dict(
        n_layers=hf.num_hidden_layers, d_model=hf.hidden_size, n_heads=hf.num_attention_heads,
        d_head=hf.hidden_size // hf.num_attention_heads, d_mlp=hf.intermediate_size, d_vocab=hf.vocab_size,
        # frames, not tokens: no learned positions bound the length (the position embedding is a convolution)
        n_ctx=1 << 20, act_fn=hf.hidden_act, eps=hf.layer_norm_eps, normalization_type="LN", mlp_type="dense",
        attention_dir="bidirectional", norm_position="post", attn_scale_rule="multiply",
        original_architecture="HubertModel",
    )
    return HookedTransformerConfig(**{**fields, **overrides})


def convert(hf_sd: dict, cfg: HookedTransformerConfig) -> dict:
    """The blocks' weights, under lensutil's (TransformerLens') names; the front end's are left to its modules."""
    take = StateDictReader({k: v for k, v in hf_sd.items() if not k.startswith(_FRONT_END)})
    h, e, d = cfg.n_heads, cfg.d_head, cfg.d_model
    sd = {}
    for i in range(cfg.n_layers):
        b, o = f"encoder.layers.{i}.", f"blocks.{i}."
        for name in "qkv":
            # nn.Linear weight [n_heads * d_head, d_model] -> [n_heads, d_model, d_head]
            sd[o + f"attn.W_{name.upper()}"] = take(b + f"attention.{name}_proj.weight").reshape(h, e, d).transpose(1, 2)
            sd[o + f"attn.b_{name.upper()}"] = take(b + f"attention.{name}_proj.bias").reshape(h, e)
        sd[o + "attn.W_O"] = take(b + "attention.out_proj.weight").T.reshape(h, e, d)
        sd[o + "attn.b_O"] = take(b + "attention.out_proj.bias")
        sd[o + "ln1.w"], sd[o + "ln1.b"] = take(b + "layer_norm.weight"), take(b + "layer_norm.bias")
        ff = b + "feed_forward."
        sd[o + "mlp.W_in"], sd[o + "mlp.b_in"] = take(ff + "intermediate_dense.weight").T, take(ff + "intermediate_dense.bias")
        sd[o + "mlp.W_out"], sd[o + "mlp.b_out"] = take(ff + "output_dense.weight").T, take(ff + "output_dense.bias")
        sd[o + "ln2.w"], sd[o + "ln2.b"] = take(b + "final_layer_norm.weight"), take(b + "final_layer_norm.bias")
    take.check_all_used()
    return sd
