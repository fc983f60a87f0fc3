"""One adapter per HuggingFace architecture family, chosen by `config.architectures[0]`.

An adapter is a pure pair of functions, `config_from_hf(hf_config) -> HookedTransformerConfig` and
`convert(hf_state_dict, cfg) -> state_dict`, plus where the family keeps its layers in a HF model
(for lensutil.checks.locate_divergence). Adding a family is adding a file and a registry line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..config import HookedTransformerConfig
from ..errors import UnsupportedArchitectureError, WeightLoadError


@dataclass(frozen=True)
class HFLayout:
    """Attribute paths inside the HF model, e.g. layers='model.layers', attn='self_attn'."""

    embed: str
    layers: str
    attn: str
    mlp: str
    final_norm: str


@dataclass(frozen=True)
class Adapter:
    config_from_hf: Callable[..., HookedTransformerConfig]
    convert: Callable[[dict, HookedTransformerConfig], dict]
    layout: HFLayout
    # The transformers auto class that loads the family; anything but AutoModelForCausalLM is an
    # encoder, loaded by HookedEncoder.from_pretrained (lensutil.encoder) rather than HookedTransformer.
    auto_class: str = "AutoModelForCausalLM"
    # HF linear module name -> the lensutil weights (or prefixes of them) it holds, for cfg: what lets
    # BitsAndBytesConfig(llm_int8_skip_modules=["lm_head", "down_proj"]) mean what it means in HF.
    module_names: Callable[[HookedTransformerConfig], dict[str, tuple[str, ...]]] | None = None

    @property
    def is_encoder(self) -> bool:
        return self.auto_class != "AutoModelForCausalLM"


def _registry() -> dict[str, Adapter]:
    from . import gpt2, llama
    from . import mixtral
    from . import bert

    return {
        "GPT2LMHeadModel": gpt2.ADAPTER,
        "LlamaForCausalLM": llama.ADAPTER,
        "MistralForCausalLM": llama.ADAPTER,  # Mistral is Llama plus an optional sliding window
        "Qwen2ForCausalLM": llama.ADAPTER,  # Qwen2 is Llama with q/k/v biases
        "MixtralForCausalLM": mixtral.ADAPTER,  # Llama with a mixture of experts for the MLP
        "BertForMaskedLM": bert.ADAPTER_MLM,  # encoders: HookedEncoder (post-LN, bidirectional, token types)
        "BertModel": bert.ADAPTER_BASE,
    }


def supported_architectures() -> list[str]:
    return sorted(_registry())


def adapter_for(cfg: HookedTransformerConfig) -> Adapter | None:
    """The adapter a model was converted with (cfg.original_architecture), or None for one built from a config."""
    return _registry().get(getattr(cfg, "original_architecture", None) or "")


def get_adapter(hf_config) -> Adapter:
    archs = getattr(hf_config, "architectures", None) or []
    registry = _registry()
    if not archs or archs[0] not in registry:
        found = archs[0] if archs else "none (config.architectures is empty)"
        raise UnsupportedArchitectureError(
            f"lensutil has no adapter for architecture {found}. Supported: {', '.join(sorted(registry))}. "
            "If this model is one of those under another name, set config.architectures accordingly."
        )
    return registry[archs[0]]


class StateDictReader:
    """Takes HF tensors by name, so a converter can fail on a missing key and on unused ones."""

    def __init__(self, state_dict: dict, ignore_suffixes: tuple[str, ...] = ()):
        self.sd = dict(state_dict)
        self.used: set[str] = set()
        self.ignore = ignore_suffixes

    def __call__(self, key: str):
        if key not in self.sd:
            near = [k for k in self.sd if k.split(".")[-2:] == key.split(".")[-2:]][:3]
            raise WeightLoadError(
                f"The HuggingFace checkpoint has no weight {key!r}"
                + (f" (it has {near})" if near else "")
                + ". Its key names or architecture differ from what this adapter expects: check that "
                "config.architectures matches the weights, or pin the transformers version / revision= it was saved with."
            )
        self.used.add(key)
        return self.sd[key]

    def get(self, key: str):
        return self(key) if key in self.sd else None

    def check_all_used(self) -> None:
        left = [k for k in self.sd if k not in self.used and not k.endswith(self.ignore)]
        if left:
            raise WeightLoadError(
                f"The HuggingFace checkpoint has {len(left)} weights lensutil would not use, e.g. {left[:4]}. "
                "Loading them silently could give a different model; this checkpoint's architecture is not the one its config names."
            )
