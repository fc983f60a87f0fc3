"""Qwen2-MoE and Qwen3-MoE (`Qwen2MoeForCausalLM`, `Qwen3MoeForCausalLM`): the Llama family with a
mixture of experts on some layers.

Attention, norms, rotary embeddings and the unembedding are Llama's (llama.py, reused); the router
and routed experts are stored as Mixtral's (mixtral.py's converter, reused). What Qwen adds is data
(lensutil/config.py): the layers that are MoE (`decoder_sparse_step`, `mlp_only_layers`; the others
have a dense gated MLP of `intermediate_size`), the experts' own width (`moe_intermediate_size`), a
router that renormalises its top-k weights only when `norm_topk_prob` is set and casts them to its
logits' dtype. Qwen2-MoE adds a shared expert every token uses (`shared_expert_intermediate_size`)
scaled by sigmoid(`shared_expert_gate`), q/k/v biases (`qkv_bias`) and sliding windows on the layers
config.layer_types names; Qwen3-MoE has no shared expert and normalises each head's query and key
(Qwen3's use_qk_norm, lensutil/architectures/qwen3.py), with a window on every layer where one is set.
"""

from __future__ import annotations

from ..config import HookedTransformerConfig
from . import llama, mixtral, qwen3
from .adapter import Adapter, HFLayout
from .attributes import READ

_QWEN_EXPERT_NAMES = ("gate_proj", "up_proj", "down_proj")  # one module per expert (transformers 4's checkpoints)


def moe_fields(hf) -> dict:
    """The config fields of a Qwen-style mixture of experts (Qwen2-MoE and Qwen3-MoE share them)."""
    n = hf.num_hidden_layers
    sparse = [i for i in range(n) if i not in (hf.mlp_only_layers or []) and hf.num_experts > 0
              and (i + 1) % hf.decoder_sparse_step == 0]  # as Qwen2MoeDecoderLayer chooses its MLP
    if not sparse:
        return {}  # every layer dense: a Llama-style gated MLP
    return dict(
        mlp_type="moe", num_experts=hf.num_experts, experts_per_token=hf.num_experts_per_tok,
        moe_layers=None if len(sparse) == n else tuple(sparse), d_mlp_expert=hf.moe_intermediate_size,
        d_mlp_shared_expert=getattr(hf, "shared_expert_intermediate_size", None) or None,
        norm_topk_prob=bool(hf.norm_topk_prob), cast_routing_weights=True,
    )


def config_from_hf(hf, **overrides) -> HookedTransformerConfig:
    """Qwen2-MoE: windows on the layers config.layer_types names (as Qwen2's), q/k/v biases where qkv_bias."""
    qkv = getattr(hf, "qkv_bias", True)  # q/k/v biases; o_proj and the MLPs have none
    absent = ("b_O", "b_in", "b_out", "b_U") + (() if qkv else ("b_Q", "b_K", "b_V"))
    return llama.config_from_hf(hf, **{"absent_biases": absent, **llama.attention_layers(hf, per_layer=True),
                                       **moe_fields(hf), **overrides})


def config_from_hf_qwen3(hf, **overrides) -> HookedTransformerConfig:
    """Qwen3-MoE: Qwen3's per-head q/k RMSNorm; biases where attention_bias (Llama's rule)."""
    return qwen3.config_from_hf(hf, **{**moe_fields(hf), **overrides})


def _layer(o: str) -> int:
    return int(o.split(".")[1])  # o is "blocks.{i}."


def convert_mlp(take, b: str, o: str, cfg: HookedTransformerConfig) -> dict:
    """One layer's MLP: Llama's gated MLP on a dense layer; router, experts and shared expert on an MoE one."""
    if not cfg.is_moe_layer(_layer(o)):
        return llama.convert_mlp(take, b, o, cfg)
    sd = mixtral.convert_router_and_experts(take, b + "mlp.gate.weight", b + "mlp.experts.", o, cfg, _QWEN_EXPERT_NAMES)
    if cfg.d_mlp_shared_expert:
        for hf_name, ours in llama.MLP_NAMES.items():
            sd[f"{o}mlp.shared_expert.{ours}"] = take(f"{b}mlp.shared_expert.{hf_name}.weight").T
        sd[o + "mlp.shared_expert_gate.W"] = take(b + "mlp.shared_expert_gate.weight").T  # [d_model, 1]
    return sd


def convert(hf_sd: dict, cfg: HookedTransformerConfig) -> dict:
    return llama.convert(hf_sd, cfg, convert_mlp=convert_mlp)


def module_names(cfg: HookedTransformerConfig) -> dict[str, tuple[str, ...]]:
    def mlp_names(b: str, o: str) -> dict[str, tuple[str, ...]]:
        if not cfg.is_moe_layer(_layer(o)):
            return llama.mlp_module_names(b, o)
        # The router (mlp.gate) and fused experts are not nn.Linear (mixtral.py); the shared expert's are.
        names = {b + "mlp.gate": (), b + "mlp.experts": (o + "mlp.experts",)}
        if cfg.d_mlp_shared_expert:
            names.update({k.replace("mlp.", "mlp.shared_expert.", 1): (v[0].replace("mlp.", "mlp.shared_expert.", 1),)
                          for k, v in llama.mlp_module_names(b, o).items()})
            names[b + "mlp.shared_expert_gate"] = ()  # never quantised in lensutil (moe.SharedExpertGate)
        return names

    return llama.module_names(cfg, mlp_names=mlp_names)


_MOE = {k: READ for k in ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "decoder_sparse_step",
                          "mlp_only_layers", "norm_topk_prob")}
# Qwen2-MoE: q/k/v biases from qkv_bias (attention_bias and mlp_bias are not its attributes), windows from layer_types.
UNDERSTANDS = {**llama.CORE, **_MOE, **{k: READ for k in (
    "qkv_bias", "shared_expert_intermediate_size", "sliding_window", "use_sliding_window", "max_window_layers", "layer_types")}}
# Qwen3-MoE: num_local_experts (its num_experts), attention_bias; a window on every layer, so no layer_types.
UNDERSTANDS_QWEN3 = {**llama.CORE, **_MOE, **{k: READ for k in (
    "num_local_experts", "attention_bias", "sliding_window", "use_sliding_window")}}

_LAYOUT = HFLayout("model.embed_tokens", "model.layers", "self_attn", "mlp", "model.norm")
ADAPTER = Adapter(config_from_hf, convert, _LAYOUT, module_names=module_names, understands=UNDERSTANDS)
ADAPTER_QWEN3 = Adapter(config_from_hf_qwen3, convert, _LAYOUT, module_names=module_names, understands=UNDERSTANDS_QWEN3)
