"""Is my model right? `compare_with_hf`: how far the hooked model's outputs are from HuggingFace's on the same tokens.

The other checks, each in its own module of this package (lensutil.checks re-exports them all):
- `error_table` (error_table.py): that error for every dtype x weight-processing option (SYMPTOMS.md item 12).
- `locate_divergence` (divergence.py): where, component by component, two models that should agree first disagree.
- `routing_agreement` (divergence.py): per mixture-of-experts layer, the share of tokens routed to HuggingFace's experts.
- `validate_model_setup` (setup.py): shapes, hooks, cache keys, masks, generation, config (SYMPTOMS.md item 18).

Every comparison runs each model in its own dtype, then measures |Δ| in float64, so the measurement
adds no rounding of its own. By default we compare log-probabilities, not logits: centring the
unembedding subtracts a constant from every logit of a position, which changes logits but not
log-probs (softmax is shift-invariant), and a user only ever sees the distribution.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..loading import hf_source
from ..text import tokens as tok
from .encoder_compare import compare_with_hf as compare_encoder
from .stats import ErrorStats, Quantity, _device_of, _transform


# Short prompts (<= 16 tokens with BOS): half precision on a CPU is slow, and these already cover
# prose, code and numbers. Different lengths, so the batch is padded and masking is exercised.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "The capital of France is",
    "def add(a, b):\n    return a +",
    "Once upon a time, there was a little",
    "1, 2, 3, 4, 5,",
)


@torch.no_grad()
def compare_with_hf(
    model: "HookedTransformer",
    hf_model=None,
    prompts: str | list[str] | tuple[str, ...] = DEFAULT_PROMPTS,
    on: Quantity = "logprobs",
    batched: bool = True,
) -> ErrorStats:
    """|Δ| between this model and HuggingFace's `AutoModelForCausalLM` on the same token ids.

    `hf_model` None loads the reference for `model.cfg.model_name` in the model's dtype and
    attention mode (cfg.attn_implementation: "sdpa" against HF's "sdpa", "eager" against "eager",
    so the two run the same kernels and float32 agrees bit for bit where the maths is the same). A padded
    batch gets the same attention mask and position ids (cumsum(mask) - 1) on both sides, and only
    real positions are compared (the pads are computed as HF computes them, so a mixture-of-experts model, which
    routes them too, keeps HF's bits). batched=False compares each prompt alone.
    """
    if getattr(model, "is_encoder", False):  # HookedEncoder: logits or hidden states, pairs allowed
        return compare_encoder(model, hf_model, None if prompts is DEFAULT_PROMPTS else prompts, on)
    _transform(torch.zeros(1), on)  # validate `on` before loading anything
    if hf_model is None:
        hf_model, _ = hf_source.load_hf(model.cfg.model_name, dtype=model.cfg.dtype, attn_implementation=model.cfg.attn_implementation)
        hf_model.to(model.cfg.device)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not batched:
        return ErrorStats.of(torch.cat([_diff(model, hf_model, [p], on) for p in prompts]), on)
    return ErrorStats.of(_diff(model, hf_model, prompts, on), on)


def _diff(model, hf_model, prompts: list[str], on: Quantity) -> Tensor:
    tokens, mask = tok.tokenize(model, prompts)
    ours = model(tokens, attention_mask=mask)
    theirs = _hf_logits(hf_model, tokens, mask)
    real = mask.bool().to(ours.device)
    return _transform(ours, on)[real] - _transform(theirs.to(ours.device), on)[real]


def _hf_logits(hf_model, tokens: Tensor, mask: Tensor) -> Tensor:
    dev = _device_of(hf_model)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # as HuggingFace's generate computes them
    out = hf_model(input_ids=tokens.to(dev), attention_mask=mask.to(dev), position_ids=positions.to(dev))
    return out.logits

