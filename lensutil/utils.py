"""Small helpers shared by the hook plumbing and the activation cache.

`get_act_name` turns TransformerLens' short activation names ("pattern", 0) into full hook names
("blocks.0.attn.hook_pattern"); `slice_along` applies TransformerLens' `pos_slice` convention.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import LensError

# Hook names that live inside a block's attention / MLP module (their layer_type is implied).
_ATTN_ACTS = {"q", "k", "v", "z", "result", "rot_q", "rot_k", "pattern", "attn_scores"}
_MLP_ACTS = {"pre", "post", "pre_linear"}
# Norm hooks: need a layer_type (ln1/ln2) inside a block, and mean ln_final without a layer.
_NORM_ACTS = {"scale", "normalized"}
# Hooks that hang directly off a block (or, for the embeddings, off the model).
_BLOCK_ACTS = {
    "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out",
    "q_input", "k_input", "v_input", "attn_in", "mlp_in",
}
_MODEL_ACTS = {"embed", "pos_embed"}
ACT_NAMES = _ATTN_ACTS | _MLP_ACTS | _NORM_ACTS | _BLOCK_ACTS | _MODEL_ACTS

# TransformerLens' synonyms, kept so notebooks written for it read the same here.
_ACT_ALIASES = {
    "attn": "pattern",
    "attn_logits": "attn_scores",
    "key": "k",
    "query": "q",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_post": "post",
}
_LAYER_TYPE_ALIASES = {"a": "attn", "attention": "attn", "m": "mlp", "b": "", "block": "", "blocks": ""}
LAYER_TYPES = {"attn", "mlp", "ln1", "ln2", "ln_final", ""}

# "scale4ln1" -> ("scale", "4", "ln1"); "resid_pre5" -> ("resid_pre", "5", "")
_SHORTHAND = re.compile(r"^([a-z_]+?)(\d+)([a-z_]*\d?)$")


def get_act_name(name: str, layer: int | str | None = None, layer_type: str | None = None) -> str:
    """The full hook name for a short activation name, e.g. ("pattern", 0) -> "blocks.0.attn.hook_pattern".

    A full name ("blocks.0.hook_resid_pre", "hook_embed") passes through unchanged. Accepts
    TransformerLens' shorthand ("scale4ln1" -> "blocks.4.ln1.hook_scale") and synonyms ("attn" ->
    "pattern", "key" -> "k", ...). Negative layers are not resolved here (no model to count from);
    ActivationCache resolves them.
    """
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    match = _SHORTHAND.match(name)
    if match is not None and layer is None:
        name, layer, short_type = match.groups()
        layer_type = short_type or layer_type
    name = _ACT_ALIASES.get(name, name)
    if name not in ACT_NAMES:
        raise LensError(
            f"Unknown activation name {name!r}. Known short names: {sorted(ACT_NAMES)} "
            f"(synonyms: {sorted(_ACT_ALIASES)}); full hook names such as 'blocks.0.hook_resid_pre' pass through."
        )
    layer_type = _LAYER_TYPE_ALIASES.get(layer_type, layer_type) if layer_type is not None else None
    if layer_type is not None and layer_type not in LAYER_TYPES:
        raise LensError(f"Unknown layer_type {layer_type!r}; use one of {sorted(LAYER_TYPES - {''})}.")

    if name in _ATTN_ACTS:
        layer_type = "attn"
    elif name in _MLP_ACTS:
        layer_type = "mlp"
    elif name in _NORM_ACTS:
        if layer is None:  # without a layer, the only norm is the final one
            layer_type = "ln_final"
        elif layer_type not in ("ln1", "ln2"):
            raise LensError(
                f"{name!r} at layer {layer} is ambiguous: say which norm, "
                f"e.g. get_act_name({name!r}, {layer}, 'ln1') or 'ln2'."
            )
    elif name in _BLOCK_ACTS | _MODEL_ACTS:
        layer_type = ""  # these sit on the block (or the model) itself

    if name in _MODEL_ACTS:
        if layer is not None:
            raise LensError(f"{name!r} belongs to the model, not a block; call get_act_name({name!r}) without a layer.")
        return f"hook_{name}"
    if layer_type == "ln_final":
        return f"ln_final.hook_{name}"
    if layer is None:
        raise LensError(f"{name!r} lives in every block; give a layer, e.g. get_act_name({name!r}, 0).")
    prefix = f"blocks.{int(layer)}."
    return prefix + (f"{layer_type}." if layer_type else "") + f"hook_{name}"


PosSlice = int | slice | tuple | Sequence[int] | Tensor | None


def slice_along(tensor: Tensor, index: PosSlice, dim: int) -> Tensor:
    """Index `tensor` along `dim` the way TransformerLens' `Slice` does.

    None keeps everything; an int picks one position and drops the axis (so pos_slice=-1 gives the
    last position); a tuple is slice(*tuple); a slice, list or tensor of indices keeps the axis.
    """
    if index is None:
        return tensor
    if isinstance(index, tuple):
        index = slice(*index)
    if isinstance(index, (list, range)):
        index = torch.as_tensor(list(index), dtype=torch.long)
    if isinstance(index, Tensor):
        index = index.to(tensor.device)
    full = [slice(None)] * tensor.ndim
    full[dim] = index
    return tensor[tuple(full)]
