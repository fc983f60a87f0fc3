"""Token and learned position embeddings, and the unembedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from ..config import HookedTransformerConfig
from ..errors import ConfigError
from .weight_layout import _OUT_IN, _param
from .zero_bias import bias_or_none


class Embed(nn.Module):
    def __init__(self, cfg: HookedTransformerConfig):
        super().__init__()
        if cfg.d_vocab < 1:
            raise ConfigError(
                f"d_vocab={cfg.d_vocab}: the vocabulary size is not set. Pass d_vocab=... to the config "
                "(TransformerLens takes it from a tokenizer when d_vocab is -1)."
            )
        self.W_E = _param(cfg.d_vocab, cfg.d_model, dtype=cfg.dtype)

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return F.embedding(tokens, self.W_E)


class PosEmbed(nn.Module):
    def __init__(self, cfg: HookedTransformerConfig):
        super().__init__()
        self.W_pos = _param(cfg.n_ctx, cfg.d_model, dtype=cfg.dtype)

    def forward(self, positions: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return F.embedding(positions, self.W_pos)


class Unembed(nn.Module):
    def __init__(self, cfg: HookedTransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.W_U = _param(cfg.d_model, cfg.d_vocab_out, dtype=cfg.dtype, memory_order=_OUT_IN)
        self.b_U = _param(cfg.d_vocab_out, dtype=cfg.dtype)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        # A zero b_U is skipped where HF's lm_head has no bias (lensutil/model/zero_bias.py).
        logits = F.linear(x, self.W_U.T, bias_or_none(self.b_U, "b_U" in self.cfg.absent_biases))
        cap = self.cfg.output_logits_soft_cap
        if cap > 0:  # Gemma 2: cap * tanh(logits / cap), in HF's order (generation's logits pass here too)
            logits = torch.tanh(logits / cap) * cap
        return logits
