"""Qwen3 (`Qwen3ForCausalLM`): the Llama family with an RMSNorm on each head's query and key.

HF's Qwen3Attention normalises q_proj's and k_proj's outputs per head (over d_head, weights
`self_attn.q_norm` / `self_attn.k_norm`), before rotary; its RMSNorm rounds as Llama's. In lensutil that
is cfg.use_qk_norm (TransformerLens' name) with modules attn.q_norm / attn.k_norm. Everything else is
Llama's (lensutil/architectures/llama.py, reused): no q/k/v bias unless attention_bias, sliding windows
on the layers config.layer_types names (from max_window_layers), tied or untied unembedding.
"""

from __future__ import annotations

from ..config import HookedTransformerConfig
from . import llama
from .adapter import Adapter, HFLayout
from .attributes import READ


def config_from_hf(hf, **overrides) -> HookedTransformerConfig:
    return llama.config_from_hf(hf, **{"use_qk_norm": True, "qk_norm_scope": "head", **overrides})


# Llama's attributes less mlp_bias (HF's Qwen3MLP has no bias); its windows come from layer_types, as Qwen2's.
UNDERSTANDS = {**llama.CORE, **{k: READ for k in ("attention_bias", "sliding_window", "use_sliding_window", "max_window_layers",
                                                  "layer_types")}}

ADAPTER = Adapter(config_from_hf, llama.convert, HFLayout("model.embed_tokens", "model.layers", "self_attn", "mlp", "model.norm"),
                  module_names=llama.module_names, understands=UNDERSTANDS)
