"""How TransformerLens 2.x builds a component on its own: from a config or a dict of its fields, ready to run.

TransformerLens' components take `Union[Dict, HookedTransformerConfig]`; lensutil's take a config.
A component built alone also gets lensutil's initial weights (the model's init_weights rule, per
parameter: matrices drawn as cfg.init_mode says, norms' w one, biases zero), where TransformerLens
leaves its matrices as torch.empty left them.
"""

from __future__ import annotations

from torch import nn

from ...config import HookedTransformerConfig
from ...model import initialization


def unwrap(cfg: HookedTransformerConfig | dict) -> HookedTransformerConfig:
    return HookedTransformerConfig.unwrap(cfg)


def initialised(module: nn.Module, cfg: HookedTransformerConfig) -> None:
    if cfg.init_weights:
        holder = module if getattr(module, "cfg", None) is not None else _WithCfg(module, cfg)
        initialization.init_weights(holder)


class _WithCfg:
    """A module seen with a cfg attribute, for init_weights (norms and embeddings keep none)."""

    def __init__(self, module: nn.Module, cfg: HookedTransformerConfig):
        self.cfg, self.named_parameters = cfg, module.named_parameters


class KindCheck(type(nn.Module)):
    """isinstance(x, C) for a TransformerLens class that lensutil spells as one class read through a field:
    C.matches(x) says whether x is one (a Norm of kind "LN" is TransformerLens' LayerNorm)."""

    def __instancecheck__(cls, obj) -> bool:
        return type.__instancecheck__(cls, obj) or cls.matches(obj)

    def __subclasscheck__(cls, sub) -> bool:
        return type.__subclasscheck__(cls, sub)
