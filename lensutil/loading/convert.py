"""From a HuggingFace model to a lensutil model: the adapter's config and state dict, strictly loaded, then placed on one device."""

from __future__ import annotations

import torch

from ..architectures.registry import get_adapter
from ..config import compute_dtype
from ..model.initialization import loading_weights
from . import zoo
from .hf_source import resolve_source
from .names import official_name
from .strict import _load_strict


# On by default, as in TransformerLens. center_writing_weights=None: "where valid" (LayerNorm
# models); on RMSNorm models it is skipped quietly, and recorded in the ProcessingReport.
# center_unembed=None likewise: everywhere but under a logit soft cap (Gemma 2), where it would change the model.
DEFAULT_PROCESSING = {"fold_ln": True, "center_writing_weights": None, "center_unembed": None, "fold_value_biases": True}


PROCESSING_OPTIONS = tuple(DEFAULT_PROCESSING)


def name_overrides(name_or_path: str, attn_implementation: str) -> dict:
    """The config fields every loaded model takes from how it was named and asked for."""
    tokenizer_name = resolve_source(name_or_path) if zoo.is_zoo_name(name_or_path) else str(name_or_path)
    tokenizer_name = official_name(tokenizer_name) or tokenizer_name  # gpt2-small's tokenizer is gpt2's
    return {"attn_implementation": attn_implementation, "model_name": str(name_or_path), "tokenizer_name": tokenizer_name}


def convert_into(model_cls, hf_model, tokenizer, dtype: torch.dtype, overrides: dict, hf_state_dict: dict | None = None):
    """A `model_cls` (HookedTransformer or HookedEncoder) holding `hf_model`'s weights, strictly loaded.

    It is built in compute_dtype(dtype) (float32, or float64 for float64), so weight processing that
    follows adds no half-precision rounding of its own; `place` casts to `dtype` at the end.
    """
    adapter = get_adapter(hf_model.config)
    cfg = adapter.config_from_hf(hf_model.config, **overrides)
    cfg.dtype = compute_dtype(dtype)
    hf_state_dict = hf_model.state_dict() if hf_state_dict is None else hf_state_dict
    state_dict = {k: v.detach().to(cfg.dtype) for k, v in adapter.convert(hf_state_dict, cfg).items()}
    # Loading hands over the tokenizer it found (or none, for an hf_model whose name is no checkpoint):
    # the model class must not fetch one by cfg.tokenizer_name itself (TransformerLens' rule for HookedTransformer(cfg)).
    name, cfg.tokenizer_name = cfg.tokenizer_name, None
    with loading_weights():  # no initial values: every weight is loaded next
        model = model_cls(cfg, tokenizer)
    # A name no tokenizer came from (an hf_model passed under a made-up name) is not recorded: HookedTransformer(model.cfg)
    # would try to fetch it.
    cfg.tokenizer_name = name if tokenizer is not None else None
    _load_strict(model, state_dict)
    return model


def place(model, device: str | None, dtype: torch.dtype):
    """Move a freshly loaded model to `device` (the GPU where there is one) and cast it to `dtype`."""
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return model.to(dtype).eval()
