"""TransformerLens' Embed, PosEmbed and Unembed, built from a config or a dict (lensutil/model/embed.py)."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ...model import embed
from ._build import initialised, unwrap


class Embed(embed.Embed):
    def __init__(self, cfg):
        cfg = unwrap(cfg)
        super().__init__(cfg)
        self.cfg = cfg
        initialised(self, cfg)


class PosEmbed(embed.PosEmbed):
    """TransformerLens' call: the tokens (for their shape) and the offset of a key/value cache; lensutil's
    own PosEmbed takes the position ids."""

    def __init__(self, cfg):
        cfg = unwrap(cfg)
        super().__init__(cfg)
        self.cfg = cfg
        initialised(self, cfg)

    def forward(self, tokens: Int[Tensor, "batch pos"], past_kv_pos_offset: int = 0,
                attention_mask: Int[Tensor, "batch offset_pos"] | None = None) -> Float[Tensor, "batch pos d_model"]:
        batch, pos = tokens.shape[:2]
        if attention_mask is None:
            positions = torch.arange(past_kv_pos_offset, past_kv_pos_offset + pos, device=self.W_pos.device).expand(batch, pos)
        else:  # left padding: count positions from each row's first real token, as TransformerLens
            positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, past_kv_pos_offset: past_kv_pos_offset + pos]
        return super().forward(positions)


class Unembed(embed.Unembed):
    def __init__(self, cfg):
        cfg = unwrap(cfg)
        super().__init__(cfg)
        initialised(self, cfg)
