"""Parameters laid out in memory as the HuggingFace model lays its own out, so BLAS rounds alike.

A parameter keeps TransformerLens' shape (W_Q [head_index, d_model, d_head], W_in [d_model, d_mlp],
...), but its memory layout follows the HuggingFace layer it came from: nn.Linear's [out, in] for
most models, Conv1D's [in, out] for GPT-2 (cfg.weight_layout). F.linear then hands BLAS the same
operands HuggingFace's layer does, BLAS takes the same kernel, and the output has the same bits.
With another layout BLAS picks other kernels for some sizes and logits drift by ~1e-6.

GPT-2 also computes q, k and v with one matmul (c_attn, [d_model, 3 * d_model]), and Phi-3 too
(qkv_proj, [(n_heads + 2 * n_kv_heads) * d_head, d_model]), and gate and up (gate_up_proj). BLAS
rounds an output element of one wide product otherwise than the same element of a narrower one for
some widths and kernels (a single token's matrix-vector product; MKL's AVX2 kernels, which AMD CPUs
get, for every size), so separate products differ from the fused one in the last bits. With
cfg.fused_qkv, W_Q, W_K and W_V (GQA: _W_K and _W_V) are views into one storage, and the forward
pass runs the one matmul over it (`fused_qkv_weight`); cfg.fused_gate_up (and a MoE's routed
experts) do the same for W_gate and W_in (gate_up.py).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from ..config import HookedTransformerConfig


def _param(*shape: int, dtype: torch.dtype, memory_order: tuple[int, ...] | None = None) -> nn.Parameter:
    """A parameter of TransformerLens' shape whose axes lie in memory in `memory_order` (outermost first)."""
    if memory_order is None:
        return nn.Parameter(torch.empty(*shape, dtype=dtype))
    storage = torch.empty([shape[i] for i in memory_order], dtype=dtype)
    return nn.Parameter(storage.permute(*_inverse(memory_order)))


def _inverse(order: tuple[int, ...]) -> list[int]:
    return sorted(range(len(order)), key=order.__getitem__)


_OUT_IN = (1, 0)  # [in, out] matrices stored as [out, in]
# Memory order of each linear layout (lensutil/model/linear.py names them) per cfg.weight_layout.
_MEMORY_ORDERS = {
    "out_in": {  # nn.Linear's [out, in]
        "in_out": _OUT_IN,  # W_in/W_out [in, out] stored as [out, in]
        "heads_in": (0, 2, 1),  # W_Q/W_K/W_V [head, d_model, d_head] stored as [head, d_head, d_model]
        "heads_out": (2, 0, 1),  # W_O [head, d_head, d_model] stored as [d_model, head, d_head]
    },
    "in_out": {  # GPT-2's Conv1D [in, out]
        "in_out": None,  # as they are
        "heads_in": (1, 0, 2),  # [head, d_model, d_head] stored as [d_model, head, d_head]
        "heads_out": None,  # [head, d_head, d_model] as it is
    },
}


def _linear_param(cfg: HookedTransformerConfig, layout: str, *shape: int) -> nn.Parameter:
    """A matrix read through `layout` (quantized_linear.TO_OUT_IN), laid out as cfg.weight_layout says."""
    return _param(*shape, dtype=cfg.dtype, memory_order=_MEMORY_ORDERS[cfg.weight_layout][layout])


# ---- fused q/k/v (cfg.fused_qkv) ------------------------------------------------------------------


def qkv_param_names(cfg: HookedTransformerConfig) -> tuple[str, str, str]:
    """The parameters holding q, k and v's weights, in the order of their rows in a fused matrix."""
    return ("W_Q", "_W_K", "_W_V") if cfg.n_key_value_heads is not None else ("W_Q", "W_K", "W_V")


def fused_qkv_params(cfg: HookedTransformerConfig, like: Tensor | None = None) -> tuple[Tensor, list[nn.Parameter]]:
    """One storage for the q, k and v weights and the three parameters that view it.

    W_Q is [head_index, d_model, d_head]; the key and value weights are [kv_head_index, d_model, d_head]
    (as many heads as W_Q without grouped-query attention). The storage is GPT-2's c_attn weight
    reshaped, [d_model, 3, head_index, d_head], for the "in_out" layout (one key/value head per query
    head, config_checks.py), and [head_index + 2 * kv_head_index, d_head, d_model] (qkv_proj's
    [out, in]) for "out_in". `like` gives device and dtype.
    """
    h, kv, m, e = cfg.n_heads, cfg.n_kv_heads, cfg.d_model, cfg.d_head
    kw = dict(dtype=cfg.dtype) if like is None else dict(dtype=like.dtype, device=like.device)
    if cfg.weight_layout == "in_out":
        storage = torch.empty(m, 3, h, e, **kw)
        views = [storage[:, i].permute(1, 0, 2) for i in range(3)]
    else:
        storage = torch.empty(h + 2 * kv, e, m, **kw)
        views = [part.permute(0, 2, 1) for part in storage.split([h, kv, kv])]
    return storage, [nn.Parameter(v) for v in views]


def fused_gate_up_params(cfg: HookedTransformerConfig, width: int, like: Tensor | None = None) -> tuple[Tensor, list[nn.Parameter]]:
    """One [2, width, d_model] storage (gate_up_proj's [out, in]: gate rows, then up rows) and W_gate,
    W_in ([d_model, width] each) viewing it: nn.Linear's layout (gate_up.py)."""
    kw = dict(dtype=cfg.dtype) if like is None else dict(dtype=like.dtype, device=like.device)
    storage = torch.empty(2, width, cfg.d_model, **kw)
    return storage, [nn.Parameter(part.T) for part in storage]


def fused_qkv_weight(cfg: HookedTransformerConfig, storage: Tensor | None, weights: list[Tensor]) -> Float[Tensor, "qkv d_model"]:
    """The [(n_heads + 2 * n_kv_heads) * d_head, d_model] matrix F.linear takes for q, k and v at once, laid out as HF's."""
    if cfg.weight_layout == "in_out":
        if _usable(storage, weights):
            return storage.view(cfg.d_model, -1).T
        flat = [w.transpose(1, 2).reshape(-1, cfg.d_model) for w in weights]  # each [n_heads * d_head, d_model]
        return torch.cat([f.T for f in flat], dim=1).T  # [d_model, 3 * ...] in memory, as Conv1D's
    return fused_weight(storage, weights, [w.transpose(1, 2).reshape(-1, cfg.d_model) for w in weights])


def fused_weight(storage: Tensor | None, weights: list[Tensor], out_in: list[Tensor] | None = None) -> Tensor:
    """The [out, in] matrix of several weights side by side ("out_in" layout): a view of their shared
    storage while they still live in it and no gradient must reach them through it; else their [out, in]
    forms (`out_in`, default each weight transposed) concatenated: the same values, one copy."""
    if _usable(storage, weights):
        return storage.view(-1, storage.shape[-1])
    return torch.cat([w.T for w in weights] if out_in is None else out_in, dim=0)


def _usable(storage: Tensor | None, weights: list[Tensor]) -> bool:
    return storage is not None and _still_shared(storage, weights) and not (
        torch.is_grad_enabled() and any(w.requires_grad for w in weights))


def _still_shared(storage: Tensor, weights: list[Tensor]) -> bool:
    # .to(), placement and offloading give each parameter its own storage; a meta storage has no data.
    if storage.is_meta or any(w.device != storage.device or w.dtype != storage.dtype for w in weights):
        return False
    base = storage.untyped_storage().data_ptr()
    return all(w.untyped_storage().data_ptr() == base for w in weights)


def share_storage(module: nn.Module, storage_name: str, names: tuple[str, ...], make) -> None:
    """Put the parameters `names` of `module` back into one storage, `module.<storage_name>`, made by
    `make(like=...)` (after .to() or a dtype cast gave them their own)."""
    weights = [module._parameters[n] for n in names]
    if _still_shared(getattr(module, storage_name), weights) or any(w.is_meta for w in weights):
        return
    storage, params = make(like=weights[0])
    for name, new in zip(names, params):
        new.data.copy_(module._parameters[name].data)
        module._parameters[name].data = new.data
    setattr(module, storage_name, storage)


def share_qkv_storage(module: nn.Module, cfg: HookedTransformerConfig) -> None:
    """Put the q, k, v weights of attention `module` back into one shared storage."""
    share_storage(module, "_qkv_storage", qkv_param_names(cfg), lambda like: fused_qkv_params(cfg, like=like))


def memory_order(t: torch.Tensor) -> list[int]:
    """The axes of `t` from outermost to innermost in memory."""
    return sorted(range(t.ndim), key=lambda d: (-t.stride(d), -d))


def empty_in_order(t: torch.Tensor, device=None) -> torch.Tensor:
    """An empty tensor of t's shape and dtype, its axes in memory in t's order, without gaps: W_Q, W_K and W_V
    of a fused_qkv model are views into one storage, and empty_strided with their strides would allocate all of it."""
    order = memory_order(t)
    compact = torch.empty([t.shape[d] for d in order], dtype=t.dtype, device=t.device if device is None else device)
    return compact.permute(*sorted(range(t.ndim), key=order.__getitem__))
