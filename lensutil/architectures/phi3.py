"""Phi-3 (`Phi3ForCausalLM`): the Llama family with q/k/v fused in `qkv_proj` and gate/up fused in `gate_up_proj`.

HF facts this relies on (transformers' models/phi3/modeling_phi3.py): qkv_proj's output is
[q (n_heads * d_head) | k (n_kv_heads * d_head) | v (n_kv_heads * d_head)]; gate_up_proj's is
[gate | up] (`gate, up = chunk(2)`; the MLP is down(up * act(gate))); no biases; rotary on the first
int(d_head * partial_rotary_factor) features (1.0 for Phi-3, 0.75 for Phi-4-mini); the 128k models
use "longrope" scaling (lensutil/model/rotary_scaling.py); `sliding_window`, when set, on every layer.
The fused matrices are split into Llama's names and Llama's converter does the rest. The forward
pass fuses them again (cfg.fused_qkv, cfg.fused_gate_up: the weights view one storage laid out as
qkv_proj's and gate_up_proj's), because separate matmuls round otherwise than one wide one with some
BLAS kernels (MKL's AVX2 ones, what AMD CPUs get: ~2e-6 in the logits; model/weight_layout.py).
"""

from __future__ import annotations

from ..config import HookedTransformerConfig
from . import llama
from .adapter import Adapter, HFLayout
from .attributes import READ


def config_from_hf(hf, **overrides) -> HookedTransformerConfig:
    return llama.config_from_hf(hf, partial_rotary=True, **{"fused_qkv": True, "fused_gate_up": True, **overrides})


def _unfuse(hf_sd: dict, cfg: HookedTransformerConfig) -> dict:
    sd = dict(hf_sd)
    q, kv = cfg.n_heads * cfg.d_head, cfg.n_kv_heads * cfg.d_head
    for i in range(cfg.n_layers):
        b = f"model.layers.{i}."
        if b + "self_attn.qkv_proj.weight" in sd:
            for name, w in zip("qkv", sd.pop(b + "self_attn.qkv_proj.weight").split([q, kv, kv])):
                sd[b + f"self_attn.{name}_proj.weight"] = w
        if b + "mlp.gate_up_proj.weight" in sd:
            gate, up = sd.pop(b + "mlp.gate_up_proj.weight").chunk(2)
            sd[b + "mlp.gate_proj.weight"], sd[b + "mlp.up_proj.weight"] = gate, up
    return sd


def convert(hf_sd: dict, cfg: HookedTransformerConfig) -> dict:
    return llama.convert(_unfuse(hf_sd, cfg), cfg)


def module_names(cfg: HookedTransformerConfig) -> dict[str, tuple[str, ...]]:
    names = {"lm_head": ("unembed.W_U",)}
    for i in range(cfg.n_layers):
        b, o = f"model.layers.{i}.", f"blocks.{i}."
        names[b + "self_attn.qkv_proj"] = (o + "attn.W_Q", o + "attn.W_K", o + "attn.W_V")  # one module, three weights
        names[b + "self_attn.o_proj"] = (o + "attn.W_O",)
        names[b + "mlp.gate_up_proj"], names[b + "mlp.down_proj"] = (o + "mlp.W_gate", o + "mlp.W_in"), (o + "mlp.W_out",)
    return names


# Llama's attributes, and Phi-3's pretraining length (read into its rope parameters, as HF does).
UNDERSTANDS = {**llama.UNDERSTANDS, "original_max_position_embeddings": READ}

ADAPTER = Adapter(config_from_hf, convert, HFLayout("model.embed_tokens", "model.layers", "self_attn", "mlp", "model.norm"),
                  module_names=module_names, understands=UNDERSTANDS)
