"""TransformerLens' MLP: lensutil's MLP (lensutil/model/mlp.py), built from a config or a dict."""

from __future__ import annotations

from ....model import mlp
from .._build import KindCheck, initialised, unwrap


class MLP(mlp.MLP, metaclass=KindCheck):
    """A dense MLP (TransformerLens' MLP is never gated; its GatedMLP is)."""

    def __init__(self, cfg):
        cfg = unwrap(cfg)
        super().__init__(cfg)
        initialised(self, cfg)

    @classmethod
    def matches(cls, obj) -> bool:
        return isinstance(obj, mlp.MLP) and not obj.cfg.gated_mlp
