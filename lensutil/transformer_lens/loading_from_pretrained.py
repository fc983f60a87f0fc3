"""TransformerLens 2.x's `transformer_lens.loading_from_pretrained`: the model-name tables.

TransformerLens' per-model config and weight-conversion tables are not reproduced: lensutil reads
each model's HuggingFace config through one adapter per family (docs/tl_compat.md says why).
"""

from ..loading.names import official_name as _official_name
from ..loading.names import TRANSFORMERLENS_NAMES as _NAMES

# TransformerLens' lists, restricted to the families lensutil has adapters for.
OFFICIAL_MODEL_NAMES: list[str] = list(_NAMES)
MODEL_ALIASES: dict[str, list[str]] = {name: list(aliases) for name, aliases in _NAMES.items()}


def get_official_model_name(model_name: str) -> str:
    """The official name for a TransformerLens name or alias; ValueError (as TransformerLens) if unknown."""
    official = _official_name(model_name)
    if official is None:
        raise ValueError(f"{model_name} not found. Valid official model names (excl aliases): {OFFICIAL_MODEL_NAMES}")
    return official
