"""A HuggingFace config's rotary settings as lensutil config fields (the maths is in lensutil/model/rotary_scaling.py).

transformers 5 keeps them in `rope_parameters` (rope_theta, rope_type, the scaling's parameters,
partial_rotary_factor), standardised from older spellings by the config's own
`standardize_rope_params` (Phi-3's top-level original_max_position_embeddings among them), which is
called here on a copy so lensutil reads what HF's rotary module reads. transformers 4 kept them in
rope_theta / rope_scaling. A parameter a kind does not use in HF's computation, or a kind lensutil
does not implement, is a ConfigError: it would change the angles.
"""

from __future__ import annotations

import copy

from ..errors import ConfigError

_COMMON = {"rope_type", "type", "rope_theta", "partial_rotary_factor"}
# The parameters HF's rope_init_fn of each kind reads (modeling_rope_utils.py). dynamic ignores
# original_max_position_embeddings (it scales from max_position_embeddings); yarn's mscale_all_dim
# only enters its attention_factor in these families (DeepSeek's MLA also scales the scores with it).
KINDS = {
    "default": set(),
    "linear": {"factor"},
    "dynamic": {"factor", "original_max_position_embeddings"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
    "yarn": {"factor", "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow", "mscale",
             "mscale_all_dim", "truncate"},
    "longrope": {"factor", "original_max_position_embeddings", "attention_factor", "long_factor", "short_factor"},
}


def rope_parameters(hf) -> dict:
    """HF's rope parameters for this config, standardised as its rotary module reads them."""
    if getattr(hf, "rope_parameters", None) is not None and hasattr(hf, "standardize_rope_params"):
        hf = copy.deepcopy(hf)
        hf.standardize_rope_params()
        return dict(hf.rope_parameters)
    params = dict(getattr(hf, "rope_scaling", None) or {})  # transformers 4
    params.setdefault("rope_type", params.get("type", "default"))
    params.setdefault("rope_theta", getattr(hf, "rope_theta", 10000.0))
    if getattr(hf, "partial_rotary_factor", None) is not None:
        params.setdefault("partial_rotary_factor", hf.partial_rotary_factor)
    return params


def rope_fields(hf, head_dim: int, partial_rotary: bool) -> dict:
    """rotary_dim, rotary_base and the scaling fields; `partial_rotary`: whether the family rotates part of a head."""
    params = rope_parameters(hf)
    kind = params.get("rope_type", "default")
    if kind not in KINDS:
        raise ConfigError(
            f"This checkpoint uses RoPE scaling {kind!r}; lensutil implements {sorted(KINDS)} (as transformers' "
            "modeling_rope_utils.py computes them) and will not approximate another."
        )
    unknown = set(params) - _COMMON - KINDS[kind]
    if unknown:
        raise ConfigError(f"RoPE parameters {sorted(unknown)} are not used by rope_type {kind!r} in lensutil; got {params!r}.")
    partial = params.get("partial_rotary_factor", 1.0)
    if partial != 1.0 and not partial_rotary:
        raise ConfigError(f"partial_rotary_factor={partial} (rotating part of each head) is not implemented for this family.")
    fields = dict(rotary_dim=int(head_dim * partial), rotary_base=float(params["rope_theta"]))
    if kind == "llama3":  # TransformerLens' names for Llama 3's NTK-by-parts scaling
        fields.update(use_NTK_by_parts_rope=True, NTK_by_parts_factor=params["factor"],
                      NTK_by_parts_low_freq_factor=params["low_freq_factor"],
                      NTK_by_parts_high_freq_factor=params["high_freq_factor"],
                      NTK_original_ctx_len=params["original_max_position_embeddings"])
    elif kind != "default":
        scaling = {k: v for k, v in params.items() if k in KINDS[kind]}
        fields["rope_scaling"] = {"rope_type": kind, **scaling, "max_position_embeddings": hf.max_position_embeddings}
    return fields
