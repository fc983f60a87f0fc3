"""The registry: the adapter for a HuggingFace config, keyed on `config.architectures[0]` (never guessed from a name)."""

from __future__ import annotations

from ..config import HookedTransformerConfig
from ..errors import UnsupportedArchitectureError
from . import bert, gemma, gpt2, gpt_neox, llama, mixtral, olmo2, phi3, qwen3, qwen_moe
from .adapter import Adapter


def _registry() -> dict[str, Adapter]:
    return {
        "GPT2LMHeadModel": gpt2.ADAPTER,
        "LlamaForCausalLM": llama.ADAPTER,
        "MistralForCausalLM": llama.ADAPTER,  # Mistral is Llama plus an optional sliding window
        "Qwen2ForCausalLM": llama.ADAPTER,  # Qwen2 is Llama with q/k/v biases
        "Qwen3ForCausalLM": qwen3.ADAPTER,  # Qwen2 without q/k/v biases, with per-head q/k RMSNorm
        "GemmaForCausalLM": gemma.ADAPTER,  # (1 + w) norms, scaled embedding, GeGLU
        "Gemma2ForCausalLM": gemma.ADAPTER,  # + norms after attention and MLP, soft caps, alternating windows
        "Gemma3ForCausalLM": gemma.ADAPTER,  # + q/k norms, layer_types windows, a local rotary base
        "Olmo2ForCausalLM": olmo2.ADAPTER,  # norms after attention and MLP only, q/k norms over the whole projection
        "MixtralForCausalLM": mixtral.ADAPTER,  # Llama with a mixture of experts for the MLP
        "GPTNeoXForCausalLM": gpt_neox.ADAPTER,  # Pythia: parallel attention and MLP, partial rotary
        "Phi3ForCausalLM": phi3.ADAPTER,  # Llama with fused q/k/v and gate/up projections
        "Qwen2MoeForCausalLM": qwen_moe.ADAPTER,  # MoE on some layers, a gated shared expert, q/k/v biases
        "Qwen3MoeForCausalLM": qwen_moe.ADAPTER_QWEN3,  # MoE on some layers, Qwen3's per-head q/k RMSNorm
        "BertForMaskedLM": bert.ADAPTER_MLM,  # encoders: HookedEncoder (post-LN, bidirectional, token types)
        "BertModel": bert.ADAPTER_BASE,
    }


# HuggingFace classes of a supported family that lensutil refuses, with what to load instead.
_REFUSED = {
    "Gemma3ForConditionalGeneration": (
        "Gemma3ForConditionalGeneration is Gemma 3's multimodal model (a vision tower and projector around the "
        "language model; Gemma 3 4B, 12B, 27B). lensutil loads the text-only Gemma3ForCausalLM (config class "
        "Gemma3TextConfig): gemma-3-270m or gemma-3-1b, or a text model saved from it (its config.architectures "
        "['Gemma3ForCausalLM'])."
    ),
}


def refuse_known(arch: str) -> None:
    """Raise UnsupportedArchitectureError with advice for a class lensutil knows of and does not load."""
    if arch in _REFUSED:
        raise UnsupportedArchitectureError(f"{_REFUSED[arch]} Supported: {', '.join(supported_architectures())}.")


def supported_architectures() -> list[str]:
    return sorted(_registry())


def adapter_for(cfg: HookedTransformerConfig) -> Adapter | None:
    """The adapter a model was converted with (cfg.original_architecture), or None for one built from a config."""
    return _registry().get(getattr(cfg, "original_architecture", None) or "")


def get_adapter(hf_config) -> Adapter:
    archs = getattr(hf_config, "architectures", None) or []
    registry = _registry()
    refuse_known(archs[0] if archs else "")
    if not archs or archs[0] not in registry:
        found = archs[0] if archs else "none (config.architectures is empty)"
        raise UnsupportedArchitectureError(
            f"lensutil has no adapter for architecture {found}. Supported: {', '.join(sorted(registry))}. "
            "If this model is one of those under another name, set config.architectures accordingly."
        )
    return registry[archs[0]]
