"""Mixtral (`MixtralForCausalLM`): the Llama family with a mixture of experts in place of the MLP.

Attention, norms, rotary embeddings and the unembedding are Llama's (lensutil/architectures/llama.py,
reused, not copied); only each layer's MLP differs: a router `gate` [num_experts, d_model] and
num_experts SwiGLU experts. transformers 5 keeps the experts fused, `experts.gate_up_proj`
[expert, 2 * d_mlp, d_model] (gate rows first) and `experts.down_proj` [expert, d_model, d_mlp];
checkpoints written by transformers 4 (and TransformerLens' converter) name them per expert,
`block_sparse_moe.experts.{e}.w1` (gate), `w3` (up) and `w2` (down). Both are read.
"""

from __future__ import annotations

from ..config import HookedTransformerConfig
from . import llama
from .adapter import Adapter, HFLayout
from .attributes import READ


def config_from_hf(hf, **overrides) -> HookedTransformerConfig:
    moe = dict(mlp_type="moe", num_experts=hf.num_local_experts, experts_per_token=hf.num_experts_per_tok)
    return llama.config_from_hf(hf, **{**moe, **overrides})


def convert_router_and_experts(take, router: str, experts: str, o: str, cfg: HookedTransformerConfig,
                               per_expert: tuple[str, str, str] = ("w1", "w3", "w2")) -> dict:
    """A router (HF key `router`, [expert_index, d_model]) and its experts under HF prefix `experts`:
    fused (transformers 5) or one module per expert named `per_expert` (gate, up, down; transformers 4)."""
    sd = {o + "mlp.W_gate": take(router).T}  # [d_model, expert_index]
    fused = take.get(experts + "gate_up_proj")
    if fused is not None:
        gate, up = fused.chunk(2, dim=1)  # each [expert, d_mlp, d_model], as HF's forward splits it
        down = take(experts + "down_proj")  # [expert, d_model, d_mlp]
        for e in range(cfg.num_experts):
            x = f"{o}mlp.experts.{e}."
            sd[x + "W_gate"], sd[x + "W_in"], sd[x + "W_out"] = gate[e].T, up[e].T, down[e].T
        return sd
    for e in range(cfg.num_experts):
        x, h = f"{o}mlp.experts.{e}.", f"{experts}{e}."
        sd[x + "W_gate"], sd[x + "W_in"], sd[x + "W_out"] = (take(h + w + ".weight").T for w in per_expert)
    return sd


def _convert_moe(take, b: str, o: str, cfg: HookedTransformerConfig) -> dict:
    m = b + ("mlp." if b + "mlp.gate.weight" in take.sd else "block_sparse_moe.")  # transformers 5's names, else 4's
    return convert_router_and_experts(take, m + "gate.weight", m + "experts.", o, cfg)


def convert(hf_sd: dict, cfg: HookedTransformerConfig) -> dict:
    return llama.convert(hf_sd, cfg, convert_mlp=_convert_moe)


def module_names(cfg: HookedTransformerConfig) -> dict[str, tuple[str, ...]]:
    # transformers 5's router (mlp.gate) and fused experts (mlp.experts) are not nn.Linear; lensutil quantises each expert.
    return llama.module_names(cfg, mlp_names=lambda b, o: {b + "mlp.gate": (), b + "mlp.experts": (o + "mlp.experts",)})


# Llama's attributes and the experts'; router_jitter_noise only perturbs training (HF: `self.training and ...`).
UNDERSTANDS = {**llama.UNDERSTANDS, "num_local_experts": READ, "num_experts_per_tok": READ, "router_jitter_noise": READ}

ADAPTER = Adapter(config_from_hf, convert, HFLayout("model.embed_tokens", "model.layers", "self_attn", "mlp", "model.norm"),
                  module_names=module_names, understands=UNDERSTANDS)
