"""HookedTransformerConfig: the handful of typed fields that say how one architecture differs from another.

Components read these fields and never a model's name (../shared/STYLE.md: architectures are data).
Field names follow TransformerLens so that `model.cfg.n_layers` and friends read as users expect.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch

from .errors import ConfigError

Normalization = Literal["LN", "LNPre", "RMS", "RMSPre"]
Positional = Literal["standard", "rotary"]
MlpType = Literal["dense", "gated"]
ActFn = Literal["gelu_new", "gelu", "gelu_pytorch_tanh", "silu", "relu"]

# Hooks that exist on every block but only fire when a flag is on (they cost memory or a copy).
FLAG_GATED_HOOKS: dict[str, str] = {
    "attn.hook_result": "use_attn_result",
    "hook_q_input": "use_split_qkv_input",
    "hook_k_input": "use_split_qkv_input",
    "hook_v_input": "use_split_qkv_input",
    "hook_attn_in": "use_attn_in",
    "hook_mlp_in": "use_hook_mlp_in",
}


@dataclasses.dataclass
class HookedTransformerConfig:
    n_layers: int
    d_model: int
    n_ctx: int
    d_head: int
    n_heads: int
    d_mlp: int
    d_vocab: int
    act_fn: ActFn = "gelu_new"
    eps: float = 1e-5
    normalization_type: Normalization = "LN"
    positional_embedding_type: Positional = "standard"
    rotary_dim: int | None = None
    rotary_base: float = 10000.0
    n_key_value_heads: int | None = None
    mlp_type: MlpType = "dense"
    window_size: int | None = None  # sliding-window attention: a query sees the last window_size keys
    tie_word_embeddings: bool = False
    original_architecture: str = ""
    model_name: str = "custom"
    tokenizer_name: str | None = None
    default_prepend_bos: bool = True
    default_padding_side: Literal["left", "right"] = "right"
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    use_attn_result: bool = False
    use_split_qkv_input: bool = False
    use_attn_in: bool = False
    use_hook_mlp_in: bool = False
    attn_scale: float | None = None
    # "eager" writes attention out (HuggingFace's eager rounding, bit for bit); "sdpa" uses torch's
    # fused kernel whenever no hook watches the scores or the pattern (faster, HF's "sdpa" rounding).
    attn_implementation: Literal["eager", "sdpa"] = "eager"
    # Set by weight processing (lensutil.processing) so a saved state dict says how it was made.
    folded_ln: bool = False
    centered_writing_weights: bool = False
    centered_unembed: bool = False
    folded_value_biases: bool = False

    def __post_init__(self) -> None:
        if self.attn_scale is None:
            self.attn_scale = math.sqrt(self.d_head)
        if self.positional_embedding_type == "rotary" and self.rotary_dim is None:
            self.rotary_dim = self.d_head
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"n_heads={self.n_heads} is not a multiple of n_key_value_heads={self.n_key_value_heads}; "
                "grouped-query attention shares each key/value head among an equal number of query heads."
            )

    @property
    def n_kv_heads(self) -> int:
        return self.n_key_value_heads or self.n_heads

    @property
    def gated_mlp(self) -> bool:
        return self.mlp_type == "gated"

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["dtype"] = str(self.dtype).removeprefix("torch.")
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "HookedTransformerConfig":
        d = dict(d)
        if isinstance(d.get("dtype"), str):
            d["dtype"] = getattr(torch, d["dtype"])
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"Unknown config fields {sorted(unknown)}; lensutil does not know what they mean.")
        return cls(**d)
