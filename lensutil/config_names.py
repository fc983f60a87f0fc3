"""TransformerLens 2.x's config names, read onto lensutil's typed fields.

TransformerLens' `HookedTransformerConfig(...)` takes ~80 keyword arguments. lensutil's config
(config.py) keeps the handful of typed fields its components read, and `with_tl_names` lets the same
class take TransformerLens' spellings too, so 2.x code builds lensutil configs unchanged:

- **aliases**: a TransformerLens name for what lensutil spells otherwise (`gated_mlp=True` is
  `mlp_type="gated"`, `use_attn_scale=False` is `attn_scale=1.0`, `None` for "the default");
- **not implemented**: a TransformerLens feature lensutil does not compute (`final_rms`,
  `use_local_attn`, ...). Its "off" value is accepted and read back; any other value is a ConfigError
  naming the field, never a model that silently computes something else. A name that becomes a
  real field of the config (another branch implementing it) is the field's from then on.

Anything else unknown is a ConfigError listing the closest real names (TransformerLens raises a
TypeError there).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import random
from typing import Any

import numpy as np
import torch

from .errors import ConfigError

# TransformerLens' features that lensutil does not compute, each with the value that means "off".
# The NTK_by_parts_* numbers only matter with use_NTK_by_parts_rope, so any value is accepted.
NOT_IMPLEMENTED: dict[str, Any] = {
    "use_qk_norm": False,
    "use_local_attn": False,
    "attn_types": None,
    "scale_attn_by_inverse_layer_idx": False,
    "final_rms": False,
    "parallel_attn_mlp": False,
    "post_embedding_ln": False,
    "rotary_adjacent_pairs": False,
    "rotary_base_local": None,
    "use_NTK_by_parts_rope": False,
    "relative_attention_max_distance": None,
    "relative_attention_num_buckets": None,
    "use_normalization_before_and_after": False,
    "attn_scores_soft_cap": -1.0,
    "output_logits_soft_cap": -1.0,
    "ungroup_grouped_query_attention": False,
    "n_devices": 1,
    "load_in_4bit": False,
}
_FEATURE_PARAMETERS = {
    "NTK_by_parts_low_freq_factor": 1.0, "NTK_by_parts_high_freq_factor": 4.0,
    "NTK_by_parts_factor": 8.0, "NTK_original_ctx_len": 8192,
}
_WHAT_INSTEAD = {
    "load_in_4bit": "load a quantised model with HookedTransformer.from_pretrained(name, load_in_4bit=True)",
    "n_devices": "place a loaded model over devices with from_pretrained(name, device_map=...)",
}


def translate(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """kwargs in TransformerLens' or lensutil's names -> kwargs in lensutil's field names."""
    fields = {f.name for f in dataclasses.fields(cls)}
    out = {k: v for k, v in kwargs.items() if k in fields}
    rest = {k: v for k, v in kwargs.items() if k not in fields}
    for name in ("act_fn", "device"):  # TransformerLens' None ("not set"): lensutil's typed default
        if name in out and out[name] is None:
            del out[name]
    if out.get("original_architecture", "") is None:
        out["original_architecture"] = ""
    if "use_attn_scale" in rest:  # TransformerLens: False means scores are not scaled at all
        if not rest.pop("use_attn_scale"):
            out["attn_scale"] = 1.0
    if "gated_mlp" in rest:
        _set_mlp_type(out, "gated" if rest.pop("gated_mlp") else "dense", "gated_mlp")
    if out.get("num_experts") is not None and "mlp_type" not in out:
        out["mlp_type"] = "moe"  # TransformerLens builds an MoE whenever num_experts is set
    elif out.get("num_experts") is not None and out["mlp_type"] == "gated":
        out["mlp_type"] = "moe"  # gated_mlp=True with num_experts: TransformerLens' MoE (its experts are gated)
    for name, value in rest.items():
        if name in _FEATURE_PARAMETERS:
            continue
        if name in NOT_IMPLEMENTED:
            check_not_implemented(name, value)
            continue
        close = difflib.get_close_matches(name, sorted(fields | set(NOT_IMPLEMENTED) | {"gated_mlp", "use_attn_scale"}))
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"HookedTransformerConfig has no field {name!r} (in lensutil's or TransformerLens 2.x's names).{hint}")
    return out


def _set_mlp_type(out: dict, mlp_type: str, alias: str) -> None:
    given = out.get("mlp_type")
    if given is not None and given != mlp_type and not (given == "moe" and mlp_type == "gated"):
        raise ConfigError(f"{alias} says mlp_type={mlp_type!r} but mlp_type={given!r} was passed too; pass one of them.")
    out.setdefault("mlp_type", mlp_type)


def check_not_implemented(name: str, value: Any) -> None:
    off = NOT_IMPLEMENTED[name]
    if value == off or (off is None and value is None):
        return
    instead = _WHAT_INSTEAD.get(name)
    raise ConfigError(
        f"{name}={value!r}: lensutil does not implement this TransformerLens feature; only {name}={off!r} "
        f"(the feature off) is accepted, so that no model computes something other than what its config says."
        + (f" To do this in lensutil, {instead}." if instead else "")
    )


def _not_implemented_property(name: str) -> property:
    def get(self) -> Any:
        return NOT_IMPLEMENTED[name]

    def set_(self, value: Any) -> None:
        check_not_implemented(name, value)

    return property(get, set_, doc=f"TransformerLens' {name}: not implemented in lensutil, always {NOT_IMPLEMENTED[name]!r}.")


def with_tl_names(cls: type) -> type:
    """Class decorator: the dataclass `cls` also takes and reads TransformerLens 2.x's names."""
    dataclass_init = cls.__init__

    @functools.wraps(dataclass_init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        dataclass_init(self, *args, **translate(cls, kwargs))

    cls.__init__ = __init__
    fields = {f.name for f in dataclasses.fields(cls)}
    for name in NOT_IMPLEMENTED:
        if name not in fields and not hasattr(cls, name):
            setattr(cls, name, _not_implemented_property(name))
    return cls


def set_seed_everywhere(seed: int) -> None:
    """Seed torch, Python's random and numpy (TransformerLens' set_seed_everywhere).

    TransformerLens calls this from its config whenever `seed` is set; lensutil never changes
    process-wide state by itself, so a config's seed seeds only the model's own generator
    (lensutil/model/initialization.py), and this is for code that calls it explicitly.
    """
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
