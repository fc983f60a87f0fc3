"""The parts only an encoder has: token-type embeddings, BERT's embedding block, MLM head and pooler.

Built from the decoder's components (Embed, PosEmbed, Norm, Unembed's layout), with TransformerLens'
HookedEncoder names (components/bert_embed.py, bert_mlm_head.py, bert_pooler.py) so hook names
and state-dict keys read the same: embed.hook_embed, embed.hook_pos_embed,
embed.hook_token_type_embed, embed.ln.*, mlm_head.ln.*, pooler.hook_pooler_out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from ..config import HookedTransformerConfig
from ..hooks.hook_points import HookPoint
from .embed import Embed, PosEmbed
from .linear import QuantizableLinears
from .activations import ACTIVATIONS
from .norm import Norm
from .weight_layout import _OUT_IN, _param


class TokenTypeEmbed(nn.Module):
    """One vector per token type (segment): 0 for sentence A, 1 for sentence B."""

    def __init__(self, cfg: HookedTransformerConfig):
        super().__init__()
        self.W_token_type = _param(cfg.n_token_types, cfg.d_model, dtype=cfg.dtype)

    def forward(self, token_type_ids: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return F.embedding(token_type_ids, self.W_token_type)


class EncoderEmbed(nn.Module):
    """LayerNorm(token + token type + position), BERT's embedding block."""

    def __init__(self, cfg: HookedTransformerConfig):
        super().__init__()
        self.embed, self.pos_embed = Embed(cfg), PosEmbed(cfg)
        self.token_type_embed = TokenTypeEmbed(cfg)
        self.ln = Norm(cfg)
        self.hook_embed = HookPoint("batch pos d_model")
        self.hook_pos_embed = HookPoint("batch pos d_model")
        self.hook_token_type_embed = HookPoint("batch pos d_model")

    def forward(self, tokens: Int[Tensor, "batch pos"], token_type_ids: Int[Tensor, "batch pos"],
                positions: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        word = self.hook_embed(self.embed(tokens))
        token_type = self.hook_token_type_embed(self.token_type_embed(token_type_ids))
        pos = self.hook_pos_embed(self.pos_embed(positions))
        # HF's order, (word + token_type) + position: float addition is not associative, and
        # TransformerLens' word + position + token_type differs from HF in the last bit.
        return self.ln((word + token_type) + pos)


class MLMHead(QuantizableLinears):
    """BertForMaskedLM's transform: LayerNorm(act(W x + b)); the tied decoder is the model's Unembed."""

    def __init__(self, cfg: HookedTransformerConfig):
        super().__init__()
        self.W = _param(cfg.d_model, cfg.d_model, dtype=cfg.dtype, memory_order=_OUT_IN)  # [d_model in, d_model out]
        self.b = _param(cfg.d_model, dtype=cfg.dtype)
        self.act = ACTIVATIONS[cfg.act_fn]  # HF uses config.hidden_act here (TransformerLens: nn.GELU)
        self.ln = Norm(cfg)

    def forward(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        return self.ln(self.act(self._linear(resid, "W", self.b)))


class Pooler(QuantizableLinears):
    """BertModel's pooler: tanh(W h + b) of the first token's ([CLS]) final hidden state."""

    def __init__(self, cfg: HookedTransformerConfig):
        super().__init__()
        self.W = _param(cfg.d_model, cfg.d_model, dtype=cfg.dtype, memory_order=_OUT_IN)
        self.b = _param(cfg.d_model, dtype=cfg.dtype)
        self.hook_pooler_out = HookPoint("batch d_model")

    def forward(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch d_model"]:
        return self.hook_pooler_out(torch.tanh(self._linear(resid[:, 0], "W", self.b)))


class NSPHead(QuantizableLinears):
    """BertForNextSentencePrediction's head: 2 logits (B follows A, B does not) from the pooled state."""

    def __init__(self, cfg: HookedTransformerConfig):
        super().__init__()
        self.W = _param(cfg.d_model, 2, dtype=cfg.dtype, memory_order=_OUT_IN)  # [d_model, 2], TransformerLens' shape
        self.b = _param(2, dtype=cfg.dtype)
        self.hook_nsp_out = HookPoint("batch 2")

    def forward(self, pooled: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch 2"]:
        return self.hook_nsp_out(self._linear(pooled, "W", self.b))
