"""locate_divergence and routing_agreement: where a model first departs from HuggingFace, hook by hook."""

from __future__ import annotations

import torch
from torch import Tensor

from ..architectures.registry import get_adapter
from ..errors import LensError
from ..loading import hf_source
from ..text import tokens as tok
from .compare import DEFAULT_PROMPTS, _hf_logits
from .encoder_compare import locate_divergence as locate_encoder
from .error_table import _APPLIED_FLAGS
from .stats import DivergenceReport, _device_of, _first_tensor


_INDICES = "#indices"  # a router's third output, the chosen experts (HF's MixtralTopKRouter returns logits, weights, indices)


def _expert_sets_differ(ours: Tensor, theirs: Tensor) -> Tensor:
    """Per token, whether two [..., top_k] expert choices differ as sets (order within top-k aside)."""
    k = theirs.shape[-1]
    return (ours.reshape(-1, k).sort(-1).values != theirs.reshape(-1, k).sort(-1).values).any(-1)


@torch.no_grad()
def routing_agreement(
    model: "HookedTransformer",
    hf_model=None,
    input: str | list[str] | tuple[str, ...] | Tensor = DEFAULT_PROMPTS,
) -> list[float]:
    """Per MoE layer (in order; a Qwen2-MoE's dense layers have none), the share of real tokens whose set of experts is the same as HuggingFace's.

    lensutil's own (TransformerLens has no such check). `hf_model` None loads the reference for
    model.cfg.model_name in the model's dtype. Prompts are padded as compare_with_hf pads them,
    and padding positions are not counted. 1.0 on every layer: the two route identically.
    """
    if model.cfg.mlp_type != "moe":
        raise LensError(f"routing_agreement needs a mixture-of-experts model (cfg.mlp_type='moe'); this one is {model.cfg.mlp_type!r}.")
    if hf_model is None:
        hf_model, _ = hf_source.load_hf(model.cfg.model_name, dtype=model.cfg.dtype, attn_implementation=model.cfg.attn_implementation)
        hf_model.to(model.cfg.device)
    layout = get_adapter(hf_model.config).layout
    if isinstance(input, Tensor):
        tokens = input[None] if input.ndim == 1 else input
        mask = torch.ones_like(tokens)
    else:
        tokens, mask = tok.tokenize(model, [input] if isinstance(input, str) else list(input))
    layers = [i for i in range(model.cfg.n_layers) if model.cfg.is_moe_layer(i)]  # a Qwen2-MoE has dense layers too
    theirs: list[Tensor] = []
    handles = [hf_model.get_submodule(f"{layout.layers}.{i}.{layout.mlp}.gate").register_forward_hook(
        lambda module, args, output: theirs.append(output[2].detach())) for i in layers]
    try:
        _hf_logits(hf_model, tokens, mask)
    finally:
        for h in handles:
            h.remove()
    names = [f"blocks.{i}.mlp.hook_expert_indices" for i in layers]
    _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=names)
    real = mask.bool().reshape(-1).to(model.cfg.device)
    return [1.0 - _expert_sets_differ(cache[n], t.to(model.cfg.device))[real].double().mean().item()
            for n, t in zip(names, theirs)]


@torch.no_grad()
def locate_divergence(
    model: "HookedTransformer",
    hf_model=None,
    input: str | Tensor = "The quick brown fox jumps over the lazy dog",
    atol: float = 1e-4,
) -> DivergenceReport:
    """Run both models once and compare embeddings, each layer's attention, MLP and residual
    stream, the final norm and the logits, in that order; the report names the first mismatch."""
    if getattr(model, "is_encoder", False):
        return locate_encoder(model, hf_model, input, atol)
    applied = [f for f in _APPLIED_FLAGS if getattr(model.cfg, f, False)]
    if applied:
        raise LensError(
            f"This model's weights were processed ({', '.join(applied)}), which changes intermediate activations "
            "on purpose, so they cannot be compared with HuggingFace's. Load it with "
            "HookedTransformer.from_pretrained_no_processing(...) for this check (compare_with_hf works on either)."
        )
    if hf_model is None:
        hf_model, _ = hf_source.load_hf(model.cfg.model_name, dtype=model.cfg.dtype, attn_implementation=model.cfg.attn_implementation)
        hf_model.to(model.cfg.device)
    layout = get_adapter(hf_model.config).layout
    tokens = model.to_tokens(input) if isinstance(input, str) else torch.as_tensor(input)
    tokens = tokens[None] if tokens.ndim == 1 else tokens

    # (display name, lensutil hook or "logits", HF module path or "logits"), in forward order
    plan = [("embeddings", "hook_embed", layout.embed)]
    for i in range(model.cfg.n_layers):
        layer = f"{layout.layers}.{i}"
        # hook_attn_out / hook_mlp_out are what joins the residual stream: after ln1_post / ln2_post where there are such norms
        post = hasattr(model.blocks[i], "ln1_post") and layout.post_attn_norm is not None
        attn, mlp = (layout.post_attn_norm, layout.post_mlp_norm) if post else (layout.attn, layout.mlp)
        plan.append((f"blocks.{i} attention output", f"blocks.{i}.hook_attn_out", f"{layer}.{attn}"))
        if model.cfg.is_moe_layer(i):  # the router's logits, then its discrete choice (share of tokens routed differently)
            router = f"{layer}.{layout.mlp}.gate"
            plan += [(f"blocks.{i} MoE router logits", f"blocks.{i}.mlp.hook_router_logits", router),
                     (f"blocks.{i} MoE expert choice", f"blocks.{i}.mlp.hook_expert_indices", router + _INDICES)]
        plan += [
            (f"blocks.{i} MLP output", f"blocks.{i}.hook_mlp_out", f"{layer}.{mlp}"),
            (f"blocks.{i} residual stream after the block", f"blocks.{i}.hook_resid_post", layer),
        ]
    plan += [("final norm", "ln_final.hook_normalized", layout.final_norm), ("logits", "logits", "logits")]

    captured: dict[str, Tensor] = {}
    handles = []
    try:
        for _, _, path in plan[:-1]:
            def grab(module, args, output, path=path):
                captured[path] = (output[2] if path.endswith(_INDICES) else _first_tensor(output)).detach()
            handles.append(hf_model.get_submodule(path.removesuffix(_INDICES)).register_forward_hook(grab))
        captured["logits"] = hf_model(input_ids=tokens.to(_device_of(hf_model))).logits
    finally:
        for h in handles:
            h.remove()
    # The final norm's output with its weight applied, as HF's module returns it: hook_normalized is before the
    # weight in an RMSNorm (TransformerLens), and the weight is (offset + w), in float32, in Gemma's norms.
    final = model.ln_final.register_forward_hook(lambda module, args, output: captured.__setitem__("ln_final", output.detach()))
    try:
        logits, cache = model.run_with_cache(tokens, names_filter=[hook for _, hook, _ in plan[:-2]])
    finally:
        final.remove()

    rows = []
    for component, hook, path in plan:
        ours = logits if hook == "logits" else captured["ln_final"] if hook == "ln_final.hook_normalized" else cache[hook]
        theirs = captured[path].to(ours.device)
        if path.endswith(_INDICES):  # 1 where a token's set of experts differs, 0 where it is the same
            diff = _expert_sets_differ(ours, theirs).double()
        else:
            diff = (ours.double().reshape(theirs.shape) - theirs.double()).abs()
        rows.append({"component": component, "hook": hook, "max": diff.max().item(), "mean": diff.mean().item()})
    return DivergenceReport(rows, atol)
