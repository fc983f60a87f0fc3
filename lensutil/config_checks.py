"""HookedTransformerConfig's checks of its rotary-scaling and mixture-of-experts fields (lensutil/config.py calls them
from __post_init__; they raise ConfigError naming the field, and normalise values read back from a saved config)."""

from __future__ import annotations

import torch

from .errors import ConfigError


def check_rope(cfg) -> None:
    if cfg.rotary_dim is not None and (cfg.rotary_dim % 2 or not 0 < cfg.rotary_dim <= cfg.d_head):
        raise ConfigError(f"rotary_dim must be even and between 2 and d_head={cfg.d_head}, got {cfg.rotary_dim}.")
    if cfg.rope_scaling is None:
        return
    kinds = {"linear": ("factor",), "dynamic": ("factor", "max_position_embeddings"),
             "yarn": ("factor", "original_max_position_embeddings", "max_position_embeddings"),
             "longrope": ("long_factor", "short_factor", "original_max_position_embeddings", "max_position_embeddings")}
    kind = cfg.rope_scaling.get("rope_type")
    if cfg.use_NTK_by_parts_rope or kind not in kinds:
        raise ConfigError(
            f"rope_scaling={cfg.rope_scaling!r}: rope_type must be one of {sorted(kinds)} (Llama 3's 'llama3' scaling "
            "is use_NTK_by_parts_rope=True with the NTK_by_parts_* fields, TransformerLens' names), and not both."
        )
    missing = [k for k in kinds[kind] if cfg.rope_scaling.get(k) is None and not (kind == "yarn" and k == "factor")]
    if missing:
        raise ConfigError(f"rope_scaling of type {kind!r} needs {missing}; got {cfg.rope_scaling!r}.")


def check_moe(cfg) -> None:
    if isinstance(cfg.router_dtype, str):  # from a saved config: "float32"
        cfg.router_dtype = getattr(torch, cfg.router_dtype)
    if cfg.mlp_type != "moe":
        return
    e, k = cfg.num_experts, cfg.experts_per_token
    if not (isinstance(e, int) and isinstance(k, int) and 1 <= k <= e):
        raise ConfigError(
            f"mlp_type='moe' needs num_experts and experts_per_token with 1 <= experts_per_token <= num_experts; "
            f"got num_experts={e!r}, experts_per_token={k!r} (Mixtral-8x7B: num_experts=8, experts_per_token=2)."
        )
    if cfg.moe_layers is not None:
        cfg.moe_layers = tuple(cfg.moe_layers)  # a list, from a saved config
        if not all(isinstance(i, int) and 0 <= i < cfg.n_layers for i in cfg.moe_layers):
            raise ConfigError(f"moe_layers must list layer indices in 0..{cfg.n_layers - 1}, got {cfg.moe_layers!r}.")
    for name in ("d_mlp_expert", "d_mlp_shared_expert"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be a positive integer or None, got {getattr(cfg, name)!r}.")
