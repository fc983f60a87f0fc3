"""OLMo 2 (`Olmo2ForCausalLM`): the Llama family's weights with its norms moved.

- No norm before attention or the MLP: each one's output is normalised before it joins the residual
  stream (norm_position="output"; HF's post_attention_layernorm and post_feedforward_layernorm are
  lensutil's ln1_post and ln2_post, the modules Gemma 2's post-norms use). hook_attn_out and hook_mlp_out
  are after them, what joins the residual stream, as for Gemma 2 in TransformerLens 2.18.
  (TransformerLens 3.x calls these norms ln1 / ln2 and hooks the outputs before them.)
- q and k are RMS-normalised over the whole projection, before the heads are split (use_qk_norm with
  qk_norm_scope="all_heads"; q_norm has n_heads * d_head weights, k_norm n_kv_heads * d_head).
- Its RMSNorm multiplies by w in float32 before the cast back (norm_upcast_weight), and its rotary
  angles stay float32, q and k rotated in float32 (rotary_upcast): half precision rounds as HF's.
Rotary embeddings, SwiGLU, biases and the unembedding are Llama's (lensutil/architectures/llama.py, reused).
"""

from __future__ import annotations

from ..config import HookedTransformerConfig
from . import llama
from .adapter import Adapter, HFLayout
from .attributes import READ

_NORMS = {"post_attention_layernorm": "ln1_post", "post_feedforward_layernorm": "ln2_post"}


def config_from_hf(hf, **overrides) -> HookedTransformerConfig:
    olmo = dict(norm_position="output", use_qk_norm=True, qk_norm_scope="all_heads", norm_upcast_weight=True, rotary_upcast=True)
    return llama.config_from_hf(hf, **{**olmo, **overrides})


def convert(hf_sd: dict, cfg: HookedTransformerConfig) -> dict:
    return llama.convert(hf_sd, cfg, norms=_NORMS)


# HF's Olmo2 reads no sliding window and no MLP bias: set, they are refused (Llama's code would apply a window).
UNDERSTANDS = {**llama.CORE, "attention_bias": READ}

ADAPTER = Adapter(config_from_hf, convert, HFLayout("model.embed_tokens", "model.layers", "self_attn", "mlp", "model.norm",
                                                    "post_attention_layernorm", "post_feedforward_layernorm"),
                  module_names=llama.module_names, understands=UNDERSTANDS)
