"""input_to_embed: what a model's first block reads, and the inputs that go with it (TransformerLens').

TransformerLens 2.x code runs a model in two halves: `input_to_embed(input)` gives the residual
stream before block 0 (and the tokens and attention mask), and `model(residual, start_at_layer=0,
tokens=..., attention_mask=...)` runs the rest. Here the residual is the model's own forward stopped
before block 0, so it is whatever the forward embeds (token and position embeddings, their hooks,
and any scaling a family applies), never a second copy of that code that could drift from it.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import InputError
from ..text import tokens as tok


def input_to_embed(
    model, input, prepend_bos: bool | None = None, padding_side: tok.PaddingSide | None = None,
    attention_mask: Tensor | None = None, past_kv_cache=None,
) -> tuple[Float[Tensor, "batch pos d_model"], Int[Tensor, "batch pos"], Tensor | None, Tensor | None]:
    """(residual, tokens, shortformer_pos_embed, attention_mask), as TransformerLens' input_to_embed.

    shortformer_pos_embed is the position embedding a shortformer model's layers add to their queries
    and keys (None for every other model). The mask is the one given, or the padding mask of a list of
    strings (None when nothing is padded).
    """
    if past_kv_cache is not None:
        raise InputError(
            "input_to_embed does not take past_kv_cache in lensutil (the cache's positions advance only in a "
            "forward that runs every layer); run model(input, past_kv_cache=...) instead."
        )
    if isinstance(input, (str, list)):
        tokens, text_mask = tok.tokenize(model, input, prepend_bos, padding_side)
        attention_mask = text_mask if attention_mask is None else attention_mask
    else:
        tokens = torch.as_tensor(input, device=model.cfg.device)
        tokens = tokens[None] if tokens.ndim == 1 else tokens
    if model.cfg.positional_embedding_type != "shortformer":
        return model(tokens, attention_mask=attention_mask, stop_at_layer=0), tokens, None, attention_mask
    seen = {}  # shortformer: the positions the forward computes for its layers' queries and keys

    def keep(value, hook):
        seen["pos"] = value
        return value

    residual = model.run_with_hooks(tokens, attention_mask=attention_mask, stop_at_layer=0,
                                    fwd_hooks=[("hook_pos_embed", keep)])
    return residual, tokens, seen["pos"], attention_mask
