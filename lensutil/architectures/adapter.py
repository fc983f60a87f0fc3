"""What an adapter is: a config function, a state-dict converter and where the family keeps its layers in a HF model."""

from __future__ import annotations

from dataclasses import dataclass
from functools import wraps
from typing import Callable, Mapping

from ..config import HookedTransformerConfig
from ..errors import WeightLoadError
from .attributes import Accept, check_attributes


@dataclass(frozen=True)
class HFLayout:
    """Attribute paths inside the HF model, e.g. layers='model.layers', attn='self_attn'."""

    embed: str
    layers: str
    attn: str
    mlp: str
    final_norm: str
    # Families that norm attention's and the MLP's outputs before the residual add (lensutil's ln1_post,
    # ln2_post; Gemma 2/3, OLMo 2): the HF modules inside a layer whose outputs are hook_attn_out and
    # hook_mlp_out. Read only for a model whose blocks have ln1_post (Gemma 1 shares Gemma's layout and
    # has none: its post_attention_layernorm is the norm before the MLP).
    post_attn_norm: str | None = None
    post_mlp_norm: str | None = None


@dataclass(frozen=True)
class Adapter:
    config_from_hf: Callable[..., HookedTransformerConfig]
    convert: Callable[[dict, HookedTransformerConfig], dict]
    layout: HFLayout
    # The transformers auto class that loads the family; anything but AutoModelForCausalLM is an
    # encoder, loaded by HookedEncoder.from_pretrained (lensutil.model.encoder) rather than HookedTransformer.
    auto_class: str = "AutoModelForCausalLM"
    # HF linear module name -> the lensutil weights (or prefixes of them) it holds, for cfg: what lets
    # BitsAndBytesConfig(llm_int8_skip_modules=["lm_head", "down_proj"]) mean what it means in HF.
    module_names: Callable[[HookedTransformerConfig], dict[str, tuple[str, ...]]] | None = None
    # The HF config attributes config_from_hf understands, and the values it implements
    # (lensutil/architectures/attributes.py); any other attribute off its default is a ConfigError.
    # None: not checked (tests/test_config_attributes.py requires every registered adapter to declare one).
    understands: Mapping[str, Accept] | None = None

    def __post_init__(self):
        # Every caller of adapter.config_from_hf (convert, the streamed road, the encoder road, the
        # estimators) gets the check first, so no road can skip it.
        if self.understands is not None:
            raw, understands = self.config_from_hf, self.understands

            @wraps(raw)
            def checked(hf, **overrides):
                check_attributes(hf, understands, (getattr(hf, "architectures", None) or [type(hf).__name__])[0])
                return raw(hf, **overrides)

            object.__setattr__(self, "config_from_hf", checked)

    @property
    def is_encoder(self) -> bool:
        return self.auto_class != "AutoModelForCausalLM"


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
