"""TransformerLens' CanBeUsedAsMLP: the base its MLP classes share (d_mlp, the activation and, for
"solu_ln", hook_mid and the LayerNorm over d_mlp). lensutil's MLP holds the same parts
(lensutil/model/mlp.py); this class gives TransformerLens' base on its own."""

from __future__ import annotations

from torch import Tensor, nn

from ....hooks.hook_points import HookPoint
from ....model.activations import make_activation
from ....model.norm import Norm
from .._build import unwrap


class CanBeUsedAsMLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = unwrap(cfg)
        if self.cfg.d_mlp is None:
            raise ValueError("d_mlp must be set to use an MLP")
        self.d_mlp = self.cfg.d_mlp

    def forward(self, x: Tensor) -> Tensor:
        return x

    def select_activation_function(self) -> None:
        self.act_fn = make_activation(self.cfg.act_fn)
        if self.cfg.is_layer_norm_activation():
            self.hook_mid = HookPoint("batch pos d_mlp")
            kind = "LN" if self.cfg.normalization_type == "LN" else "LNPre"
            self.ln = Norm(self.cfg, kind, length=self.d_mlp)
            if kind == "LN":
                nn.init.ones_(self.ln.w), nn.init.zeros_(self.ln.b)
