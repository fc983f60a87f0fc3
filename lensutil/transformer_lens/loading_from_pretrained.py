"""TransformerLens 2.x's `transformer_lens.loading_from_pretrained`: its model-name tables and the config of a named model.

The name tables are TransformerLens' own, in full (OFFICIAL_MODEL_NAMES, MODEL_ALIASES and
NON_HF_HOSTED_MODEL_NAMES of transformer_lens/loading_from_pretrained.py at v2.18.0, read into
tl_model_names.json), so get_official_model_name answers as TransformerLens does for every name it
knows, including families lensutil has no adapter for (from_pretrained then says so). TransformerLens'
per-model config and weight-conversion tables are not reproduced: get_pretrained_model_config reads
the model's HuggingFace config through lensutil's adapter for its family (docs/tl_compat.md says why).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import DEFAULT_ATTN_IMPLEMENTATION, HookedTransformerConfig
from ..loading import zoo
from ..loading.convert import name_overrides
from ..loading.hf_source import resolve_source
from ..loading.pretrained import refuse_tl_only

_TABLES = json.loads((Path(__file__).with_name("tl_model_names.json")).read_text(encoding="utf-8"))
OFFICIAL_MODEL_NAMES: list[str] = _TABLES["OFFICIAL_MODEL_NAMES"]
MODEL_ALIASES: dict[str, list[str]] = _TABLES["MODEL_ALIASES"]
NON_HF_HOSTED_MODEL_NAMES: list[str] = _TABLES["NON_HF_HOSTED_MODEL_NAMES"]
# By TransformerLens' convention: a model's first alias, else its official name.
DEFAULT_MODEL_ALIASES: list[str] = [MODEL_ALIASES[n][0] if MODEL_ALIASES.get(n) else n for n in OFFICIAL_MODEL_NAMES]
_FOLDED = {"LN": "LNPre", "RMS": "RMSPre"}


def make_model_alias_map() -> dict[str, str]:
    """Every official name and alias, lower-cased -> the official name."""
    found: dict[str, str] = {}
    for official in OFFICIAL_MODEL_NAMES:
        for name in MODEL_ALIASES.get(official, []):
            found[name.lower()] = official
        found[official.lower()] = official
    return found


_ALIAS_MAP = make_model_alias_map()


def get_official_model_name(model_name: str) -> str:
    """The official name for a TransformerLens name or alias (any case); ValueError, as TransformerLens, if unknown."""
    official = _ALIAS_MAP.get(model_name.lower())
    if official is None:
        raise ValueError(f"{model_name} not found. Valid official model names (excl aliases): {OFFICIAL_MODEL_NAMES}")
    return official


def get_pretrained_model_config(
    model_name: str,
    hf_cfg: dict | None = None,
    checkpoint_index: int | None = None,
    checkpoint_value: int | None = None,
    fold_ln: bool = False,
    device: str | torch.device | None = None,
    n_devices: int = 1,
    default_prepend_bos: bool | None = None,
    dtype: torch.dtype = torch.float32,
    first_n_layers: int | None = None,
    n_ctx: int | None = None,
    **kwargs,
) -> HookedTransformerConfig:
    """The HookedTransformerConfig from_pretrained(model_name) would build, without loading weights.

    Read from the model's HuggingFace config (hf_cfg, a dict of one, or the hub's/zoo's) through
    lensutil's adapter for its family: UnsupportedArchitectureError for a family without one.
    fold_ln=True gives the folded norms' kind (LNPre/RMSPre), as TransformerLens does.
    """
    refuse_tl_only(checkpoint_index=checkpoint_index, checkpoint_value=checkpoint_value, first_n_layers=first_n_layers)
    from transformers import AutoConfig, PretrainedConfig

    from ..architectures.registry import get_adapter

    if hf_cfg is not None:
        hf_config = hf_cfg if isinstance(hf_cfg, PretrainedConfig) else PretrainedConfig.from_dict(dict(hf_cfg))
    elif zoo.is_zoo_name(model_name):
        hf_config = AutoConfig.from_pretrained(resolve_source(model_name))
    else:
        official = _ALIAS_MAP.get(model_name.lower(), model_name)  # other hub names pass through, as from_pretrained's
        hf_config = AutoConfig.from_pretrained(official, **{k: v for k, v in kwargs.items() if k in ("revision", "token")})
    overrides = name_overrides(model_name, kwargs.get("attn_implementation") or DEFAULT_ATTN_IMPLEMENTATION)
    overrides.update({k: v for k, v in (("n_ctx", n_ctx), ("default_prepend_bos", default_prepend_bos)) if v is not None})
    cfg = get_adapter(hf_config).config_from_hf(hf_config, **overrides)
    cfg.dtype = dtype
    if device is not None:
        cfg.device = str(device)
    if fold_ln and cfg.normalization_type in _FOLDED:
        cfg.normalization_type = _FOLDED[cfg.normalization_type]
    return cfg
