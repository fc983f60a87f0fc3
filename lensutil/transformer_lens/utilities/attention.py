"""TransformerLens 2.x's `transformer_lens.utilities.attention`."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def complex_attn_linear(
    input: Float[Tensor, "batch pos head_index d_model"], w: Float[Tensor, "head_index d_model d_head"],
    b: Float[Tensor, "head_index d_head"],
) -> Float[Tensor, "batch pos head_index d_head"]:
    """Each head's own input times that head's weight, plus its bias (a per-head input, as use_split_qkv_input gives)."""
    return torch.einsum("bphm,hmd->bphd", input, w) + b
