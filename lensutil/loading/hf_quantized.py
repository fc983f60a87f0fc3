"""A model HuggingFace quantised with bitsandbytes, read as it is (from_pretrained(..., hf_model=)).

lensutil converts such a model from its dequantised state dict (quantization.prepare_from_hf), then
puts a copy of each of its bitsandbytes modules in place of the weights that module holds: the
adapter's module_names table says which (GPT-2's c_attn holds W_Q, W_K and W_V, one matrix).
Quantising the dequantised weights again would not do: once double quantisation has rounded the
block scales, the codes do not come back (1.2e-4 on a matrix, 0.024 on tiny-llama's logits).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..architectures.registry import adapter_for
from ..model.linear import FUSED_NAMES


def hf_linears(hf_model, model: nn.Module) -> dict[str, nn.Module]:
    """Which bitsandbytes module of `hf_model` holds each of `model`'s weights, by lensutil weight path (the
    adapter's module_names). GPT-2's c_attn holds W_Q, W_K, W_V and their one matrix, attn.W_QKV (Phi-3's gate_up_proj: mlp.W_GATE_UP).
    Weights of HF modules lensutil does not quantise (its unembedding) stay absent: they stay dequantised."""
    import bitsandbytes as bnb

    adapter = adapter_for(model.cfg)
    names = adapter.module_names(model.cfg) if adapter is not None and adapter.module_names is not None else {}
    copies = {}
    for name, module in hf_model.named_modules():
        if isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
            targets = names.get(name, ())
            for parts, whole in FUSED_NAMES.items():  # one HF module holding a fused group: its one matrix too
                if len(targets) == len(parts) and all(t.endswith("." + n) for t, n in zip(targets, parts)):
                    targets = (*targets, targets[0].removesuffix(parts[0]) + whole)
            copies.update({t: module for t in targets})
    return copies


def copy_bnb_linear(hf_linear: nn.Module, device) -> nn.Module:
    """A bias-free copy of a bitsandbytes linear of a HuggingFace model, its codes and statistics as they are.

    Dequantising and quantising again does not give the same codes back once double quantisation
    rounded the block scales, so a model read from an HF model quantised by bitsandbytes copies them.
    """
    import bitsandbytes as bnb

    weight, n_in, n_out = hf_linear.weight, hf_linear.in_features, hf_linear.out_features
    with torch.device("meta"):
        if isinstance(hf_linear, bnb.nn.Linear8bitLt):
            lin = bnb.nn.Linear8bitLt(n_in, n_out, False, has_fp16_weights=False, threshold=hf_linear.state.threshold)
        else:
            lin = bnb.nn.Linear4bit(n_in, n_out, False, hf_linear.compute_dtype, quant_type=weight.quant_type,
                                    quant_storage=hf_linear.quant_storage)
    if isinstance(hf_linear, bnb.nn.Linear8bitLt):
        codes = weight.data.clone()  # after a forward bitsandbytes keeps the row scales in .state, before it in .weight
        scb = (hf_linear.state.SCB if hf_linear.state.SCB is not None else weight.SCB).clone()
        lin.weight = bnb.nn.Int8Params(codes, requires_grad=False, has_fp16_weights=False, CB=codes, SCB=scb)
    else:
        lin.weight = copy.deepcopy(weight)  # Params4bit copies its data and its quant_state (packed for the CPU or not)
    lin.requires_grad_(False)
    return lin if weight.device == torch.device(device) else lin.to(device)
