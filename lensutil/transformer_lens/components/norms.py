"""TransformerLens' four norm classes, each lensutil's Norm of one kind (lensutil/model/norm.py)."""

from __future__ import annotations

from ...model.norm import Norm
from ._build import KindCheck, initialised, unwrap


def _norm_class(name: str, kind: str, takes_length: bool) -> type:
    def __init__(self, cfg, length: int | None = None):
        cfg = unwrap(cfg)
        Norm.__init__(self, cfg, kind, length if takes_length else None)
        self.cfg = cfg
        initialised(self, cfg)

    matches = classmethod(lambda cls, obj: isinstance(obj, Norm) and obj.kind == kind)
    doc = f"TransformerLens' {name}: lensutil's Norm with kind={kind!r}."
    return KindCheck(name, (Norm,), {"__init__": __init__, "matches": matches, "__doc__": doc, "__module__": __name__})


LayerNorm = _norm_class("LayerNorm", "LN", True)
LayerNormPre = _norm_class("LayerNormPre", "LNPre", False)
RMSNorm = _norm_class("RMSNorm", "RMS", True)
RMSNormPre = _norm_class("RMSNormPre", "RMSPre", False)
