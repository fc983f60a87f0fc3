"""TransformerLens' GatedMLP: lensutil's MLP with mlp_type="gated", whatever the config passed says."""

from __future__ import annotations

import dataclasses

from ....model import mlp
from .._build import KindCheck, initialised, unwrap


class GatedMLP(mlp.MLP, metaclass=KindCheck):
    def __init__(self, cfg):
        cfg = unwrap(cfg)
        if not cfg.gated_mlp:  # TransformerLens' GatedMLP is gated even when its config does not say so
            cfg = dataclasses.replace(cfg, mlp_type="gated")
        super().__init__(cfg)
        initialised(self, cfg)

    @classmethod
    def matches(cls, obj) -> bool:
        return isinstance(obj, mlp.MLP) and obj.cfg.gated_mlp
