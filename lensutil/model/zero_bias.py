"""Run a layer without its bias where HuggingFace's layer has none and lensutil's is all zeros.

lensutil keeps TransformerLens' biases on every linear map (b_Q, b_K, b_V, b_O, b_in, b_out, b_U),
zeros where the checkpoint has none (the Llama family; GPT-2's lm_head). F.linear with a bias runs
addmm, which on CPU first copies the bias into the output and then accumulates onto it: about a
fifth more time than the mm that HuggingFace's bias-free nn.Linear runs (SmolLM2-135M: 1.13 s
against 0.93 s of matrix products per 4 x 128-token forward), and on some CPUs other bits. So where
the adapter says HuggingFace's layer has no bias (cfg.absent_biases), a bias that is all zeros is
passed as None: HuggingFace's own call, the same sum.

Where HuggingFace's layer has a bias (GPT-2's and BERT's layers, Qwen2's q/k/v), or the model was
built from a config, the bias is always passed, zero or not: addmm, as HuggingFace and TransformerLens
run it. The zero check runs at every call (one `any()` over a few thousand numbers), never from a
memo: an edit through `.data` does not bump the version counter a memo would be keyed on, and the
shortcut must never change what a forward computes. When autograd could want the bias' gradient
(grad mode on and requires_grad), it is always passed.
"""

from __future__ import annotations

import torch
from torch import Tensor


def bias_or_none(bias: Tensor | None, absent_in_hf: bool) -> Tensor | None:
    """`bias`, or None where HuggingFace's layer has none (absent_in_hf), it is all zeros, and no gradient can be asked of it."""
    if bias is None or not absent_in_hf or (bias.requires_grad and torch.is_grad_enabled()):
        return bias
    return None if not bool(bias.any()) else bias
