"""TransformerLens' MLPFactory: the MLP component a config asks for."""

from __future__ import annotations

from ...errors import ConfigError
from ..components.mlps.gated_mlp import GatedMLP
from ..components.mlps.mlp import MLP
from ..components.mlps.moe import MoE


class MLPFactory:
    @staticmethod
    def create_mlp(cfg):
        if cfg.original_architecture == "GptOssForCausalLM":
            raise ConfigError("GPT-OSS's mixture of experts (TransformerLens' GptOssMoE) is not implemented in lensutil.")
        if cfg.mlp_type == "moe":
            return MoE(cfg)
        return GatedMLP(cfg) if cfg.gated_mlp else MLP(cfg)
