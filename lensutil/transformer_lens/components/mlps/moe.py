"""TransformerLens' MoE: lensutil's mixture of experts (lensutil/model/moe.py), built from a config or a dict."""

from __future__ import annotations

import dataclasses

from ....model import moe
from .._build import initialised, unwrap


class MoE(moe.MoE):
    def __init__(self, cfg):
        cfg = unwrap(cfg)
        if cfg.mlp_type != "moe":
            cfg = dataclasses.replace(cfg, mlp_type="moe")
        super().__init__(cfg)
        initialised(self, cfg)
