"""Skip biases that are all zeros, so F.linear runs a plain matrix product, as HuggingFace's bias-free layers do.

lensutil keeps TransformerLens' biases on every linear map (b_Q, b_K, b_V, b_O, b_in, b_out, b_U),
zeros where the checkpoint has none (the Llama family). F.linear with a bias runs addmm, which on
CPU first copies the bias into the output and then accumulates onto it: about a fifth more time
than the mm that HuggingFace's bias-free nn.Linear runs (SmolLM2-135M: 1.13 s against 0.93 s of
matrix products per 4 x 128-token forward). The result has the same values (adding 0 to each
sum), so passing None for a zero bias is exact, and it runs HuggingFace's own call.

A bias is checked once per change: the answer is remembered on the parameter together with its
in-place version counter, which load_state_dict, weight processing and optimiser steps all bump.
When autograd could want the bias' gradient (grad mode on and requires_grad), it is always passed.
"""

from __future__ import annotations

import torch
from torch import Tensor


def bias_or_none(bias: Tensor | None) -> Tensor | None:
    """`bias`, or None where it is all zeros and no gradient can be asked of it."""
    if bias is None or (bias.requires_grad and torch.is_grad_enabled()):
        return bias
    owner = bias._base if bias._base is not None else bias  # b.reshape(-1) is a view: remember on the parameter
    try:  # generation runs this ~200 times a token: the key costs three attribute reads
        key = (owner._version, owner.data_ptr(), owner.device)
    except RuntimeError:  # an inference tensor has no version counter: check every time (a few thousand numbers)
        return None if not bool(bias.any()) else bias
    memo = getattr(owner, "_lensutil_zero_memo", None)
    if memo is None or memo[0] != key:
        memo = (key, not bool(owner.any()))
        owner._lensutil_zero_memo = memo
    return None if memo[1] else bias
