"""state_dict() of a quantised model reads it and changes nothing (issue 24, item 1.6).

bitsandbytes repacks a CPU 4-bit weight for its AVX512-BF16 kernel at the first no-grad forward,
and its Linear4bit._save_to_state_dict unpacks that weight in place, with an inverse that does not
restore the block scales: `torch.save(model.state_dict())` used to change what the model computed.
"""

import logging

import pytest
import torch

from lensutil.loading.pretrained import from_pretrained_no_processing
from lensutil.loading.quantization import config_for_mode

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

CASES = [("8-bit", False), ("4-bit nf4", False), ("4-bit nf4", True), ("4-bit fp4", False), ("4-bit fp4", True)]


@pytest.mark.parametrize("mode, double", CASES, ids=[f"{m}{' double' if d else ''}" for m, d in CASES])
def test_state_dict_leaves_the_quantised_model_as_it_was(mode, double):
    extra = {"bnb_4bit_use_double_quant": True} if double else {}
    model = from_pretrained_no_processing("tiny-llama", quantization_config=config_for_mode(mode, **extra))
    tokens = model.to_tokens("The Eiffel Tower is in the city of")
    with torch.no_grad():
        before = model(tokens)  # the first no-grad forward repacks CPU 4-bit weights
        weight_before = model.blocks[0].attn.W_Q.clone()
        state = model.state_dict()
        after = model(tokens)
    assert torch.equal(after, before), f"{mode}: state_dict() moved the logits by {(after - before).abs().max().item():.2e}"
    assert torch.equal(model.blocks[0].attn.W_Q, weight_before)
    assert all(torch.isfinite(t.float()).all() for t in state.values() if isinstance(t, torch.Tensor))
    assert any(k.startswith("blocks.0.attn.quantized.W_Q.linear.weight") for k in state)


def test_a_quantised_linear_s_own_state_dict_leaves_it_as_it_was():
    model = from_pretrained_no_processing("tiny-llama", quantization_config=config_for_mode("4-bit nf4"))
    linear = model.blocks[0].mlp.quantized["W_out"]  # d_mlp inputs: several blocks of 64 per row
    x = torch.randn(2, 3, model.cfg.d_mlp)
    with torch.no_grad():
        before = linear(x)  # repacks the weight for the CPU kernel
        own = linear.state_dict()
        after = linear(x)
    assert torch.equal(after, before)
    whole = model.state_dict()
    assert set(own) == {k.removeprefix("blocks.0.mlp.quantized.W_out.") for k in whole if k.startswith("blocks.0.mlp.quantized.W_out.")}
    assert all(torch.equal(own[k], whole["blocks.0.mlp.quantized.W_out." + k]) for k in own)
