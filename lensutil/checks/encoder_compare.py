"""checks.compare_with_hf and checks.locate_divergence for encoders (HookedEncoder).

What is compared: an MLM model's logits (as log-probabilities by default), else the final hidden
states (HF's last_hidden_state); real token positions only, with the same token types and mask
on both sides. Inputs may be texts or sentence pairs (text_a, text_b).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..architectures.registry import get_adapter
from ..errors import LensError
from ..loading.encoder import load_hf_encoder
from ..text.encoder_tokens import tokenize_input
from .stats import DivergenceReport, ErrorStats, _device_of, _first_tensor, _transform


def _reference(model, hf_model):
    if hf_model is None:
        hf_model, _ = load_hf_encoder(model.cfg.model_name, dtype=model.cfg.dtype)
        hf_model.to(model.cfg.device)
    return hf_model


def _encode(model, inputs):
    return dict(zip(("input_ids", "token_type_ids", "attention_mask"), tokenize_input(model, inputs)))


# A text with a [MASK] and a padded batch of sentence pairs.
PROMPTS = (["The capital of France is [MASK]."], [("How old are you?", "I am six."), ("Hi.", "Where does the river go?")])


@torch.no_grad()
def compare_with_hf(model, hf_model=None, prompts=None, on="logprobs") -> ErrorStats:
    """prompts: a text, a pair, or a list of either (one padded batch); None: PROMPTS, one batch each."""
    hf_model = _reference(model, hf_model)
    if prompts is None:
        parts = [compare_with_hf(model, hf_model, list(p), on) for p in PROMPTS]
        return max(parts, key=lambda s: s.max)
    prompts = [prompts] if isinstance(prompts, (str, tuple)) else list(prompts)
    enc = _encode(model, prompts)
    theirs = hf_model(**{k: v.to(_device_of(hf_model)) for k, v in enc.items()})
    real = enc["attention_mask"].bool()
    if model.cfg.mlm_head:
        _transform(torch.zeros(1), on)  # validate `on`
        ours = model(enc["input_ids"], "logits", enc["token_type_ids"], enc["attention_mask"])
        diff = _transform(ours, on)[real] - _transform(theirs.logits.to(ours.device), on)[real]
        return ErrorStats.of(diff, on)
    ours = model(enc["input_ids"], "embeddings", enc["token_type_ids"], enc["attention_mask"])
    return ErrorStats.of(ours.double()[real] - theirs.last_hidden_state.to(ours.device).double()[real], "hidden states")


@torch.no_grad()
def locate_divergence(model, hf_model=None, input="The quick brown fox jumps over the lazy dog", atol: float = 1e-4):
    hf_model = _reference(model, hf_model)
    layout = get_adapter(hf_model.config).layout
    if isinstance(input, Tensor):
        tokens = input[None] if input.ndim == 1 else input
        enc = {"input_ids": tokens, "token_type_ids": torch.zeros_like(tokens), "attention_mask": torch.ones_like(tokens)}
    else:
        enc = _encode(model, input)
    plan = [("embeddings", "hook_full_embed", layout.embed)]
    for i in range(model.cfg.n_layers):
        layer = f"{layout.layers}.{i}"
        plan += [
            (f"blocks.{i} attention output", f"blocks.{i}.hook_attn_out", f"{layer}.{layout.attn}"),
            (f"blocks.{i} MLP output", f"blocks.{i}.hook_mlp_out", f"{layer}.{layout.mlp}"),
            (f"blocks.{i} output (after ln2)", f"blocks.{i}.hook_normalized_resid_post", layer),
        ]
    if model.cfg.mlm_head:
        plan += [("MLM transform", "mlm_head.ln.hook_normalized", layout.final_norm)]
    if model.cfg.pooler:
        plan += [("pooler", "pooler.hook_pooler_out", "pooler")]
    captured: dict[str, Tensor] = {}
    handles = []
    try:
        for _, _, path in plan:
            def grab(module, args, output, path=path):
                captured[path] = _first_tensor(output).detach()
            handles.append(hf_model.get_submodule(path).register_forward_hook(grab))
        out = hf_model(**{k: v.to(_device_of(hf_model)) for k, v in enc.items()})
    finally:
        for h in handles:
            h.remove()
    return_type = "logits" if model.cfg.mlm_head else "embeddings"
    final, cache = model.run_with_cache(enc["input_ids"], return_type, enc["token_type_ids"], enc["attention_mask"],
                                        names_filter=[hook for _, hook, _ in plan])
    if model.cfg.mlm_head:
        plan.append(("logits", "logits", "logits"))
        captured["logits"] = out.logits
    rows = []
    for component, hook, path in plan:
        ours = final if hook == "logits" else cache[hook]
        theirs = captured[path].to(ours.device)
        if ours.shape != theirs.shape:
            raise LensError(f"{component}: lensutil's {list(ours.shape)} vs HuggingFace's {list(theirs.shape)}; report this.")
        diff = (ours.double() - theirs.double()).abs()
        rows.append({"component": component, "hook": hook, "max": diff.max().item(), "mean": diff.mean().item()})
    return DivergenceReport(rows, atol)
