"""Norms: LayerNorm and RMSNorm as HuggingFace rounds them, with TransformerLens' hooks and folded forms.

Axes: batch, pos, d_model (TransformerLens' names).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from ..config import HookedTransformerConfig, compute_dtype
from ..hooks.hook_points import HookPoint
from .weight_layout import _param


class Norm(nn.Module):
    """LayerNorm ("LN"), RMSNorm ("RMS"), or either with its weights folded away ("LNPre"/"RMSPre").

    LN centres then divides by the root mean square; RMS only divides. The *Pre forms keep the
    division (it is not linear, so it cannot be folded) and drop w and b, which weight processing
    has folded into the next layer's weights.
    """

    def __init__(self, cfg: HookedTransformerConfig, kind: str | None = None, length: int | None = None,
                 axes: str = "batch pos d_model"):
        # length, axes: what is normalised when it is not the residual stream, e.g. a query norm's
        # d_head over "batch pos head_index d_head" (cfg.use_qk_norm).
        super().__init__()
        self.kind = kind or cfg.normalization_type
        length = length or cfg.d_model  # d_mlp for a solu_ln MLP's norm
        self.eps = cfg.eps
        self.center = self.kind in ("LN", "LNPre")
        self.offset, self.upcast_weight = cfg.norm_weight_offset, cfg.norm_upcast_weight
        length = length or cfg.d_model
        if self.kind in ("LN", "RMS"):
            self.w = _param(length, dtype=cfg.dtype)
        if self.kind == "LN":
            self.b = _param(length, dtype=cfg.dtype)
        self.hook_scale = HookPoint(axes.rsplit(" ", 1)[0] + " 1")  # sqrt(mean(x^2) + eps), after centring for LN
        self.hook_normalized = HookPoint(axes)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        if self.center:
            return self.hook_normalized(self._layer_norm(x))
        dtype = x.dtype
        x = x.to(compute_dtype(dtype))
        mean_square = x.pow(2).mean(-1, keepdim=True) + self.eps
        inverse = torch.rsqrt(mean_square)  # HuggingFace's rounding; TransformerLens divides by the scale
        if self.hook_scale.has_hooks:
            scale, edited = self._hooked_scale(mean_square)
            x = x / scale if edited else x * _grad_through(inverse, scale)
        else:
            x = x * inverse
        if self.kind == "RMS" and (self.upcast_weight or self.offset):
            return self._weighted_before_cast(x, dtype)
        if self.kind == "RMS":  # HuggingFace's Llama casts back before the weight; TransformerLens
            return self.w * self.hook_normalized(x.to(dtype))  # hooks the value before w
        return self.hook_normalized(x.to(dtype))

    def _weighted_before_cast(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        """(offset + w) * x in float32, then the cast back (Gemma's and OLMo 2's order; cfg.norm_upcast_weight).

        hook_normalized sees the normalised value in the model's dtype, as elsewhere. In half precision
        the float32 value goes on to the weight unless a hook changed it (HookPoint.fire_and_tell).
        """
        if x.dtype == dtype:  # float32 and float64 models: the hook's value is the one used
            x = self.hook_normalized(x)
        else:
            hooked, edited = self.hook_normalized.fire_and_tell(x.to(dtype))
            x = hooked.to(x.dtype) if edited else x
        w = self.w.to(x.dtype)
        return (x * (self.offset + w if self.offset else w)).to(dtype)  # HF: x * (1.0 + w.float())

    def _layer_norm(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        # HuggingFace's nn.LayerNorm is torch's fused kernel in the model's dtype (it accumulates in
        # float32 itself). Its moments and affine step round differently from the written-out
        # (x - mean) / scale * w + b (~5e-7), so the fused kernel gives the value, and the
        # written-out maths runs only when hook_scale is hooked: for its value if a hook edits the
        # scale, for the gradient through the scale if one may want it.
        w, b = (None if p is None else p.to(x.dtype) for p in (getattr(self, "w", None), getattr(self, "b", None)))
        fused = F.layer_norm(x, x.shape[-1:], w, b, self.eps)
        if not self.hook_scale.has_hooks:
            return fused
        centred = x.to(compute_dtype(x.dtype))
        centred = centred - centred.mean(-1, keepdim=True)
        scale, edited = self._hooked_scale(centred.pow(2).mean(-1, keepdim=True) + self.eps)
        written = centred / scale
        if w is not None:
            written = written * w.to(written.dtype) + b.to(written.dtype)
        written = written.to(x.dtype)
        if edited or not written.requires_grad:
            return written if edited else fused
        return fused.detach() + (written - written.detach())  # fused's value, the written-out gradient

    def _hooked_scale(self, mean_square: Float[Tensor, "batch pos 1"]) -> tuple[Tensor, bool]:
        """hook_scale fired on sqrt(mean_square): the scale it returns, and whether a hook changed it.

        A hook that only reads the scale must keep HuggingFace's bits, so that run_with_cache returns
        exactly the logits of a plain forward: the scale counts as changed only when a hook returned
        another tensor or changed its values (HookPoint.fire_and_tell; an edit through .data counts).
        """
        return self.hook_scale.fire_and_tell(mean_square.sqrt())


def make_norm(cfg: HookedTransformerConfig) -> nn.Module:
    """The model's norm as cfg says: a Norm, or for normalization_type=None the identity (TransformerLens':
    no parameters and no hooks; the residual stream goes on as it is)."""
    return nn.Identity() if cfg.normalization_type is None else Norm(cfg)


def _grad_through(inverse: Tensor, scale: Tensor) -> Tensor:
    """`inverse` (1 / scale as HuggingFace rounds it), its gradient flowing through a hooked `scale`.

    A hook may want the scale's gradient (retain_grad). r - r.detach() is exactly 0, so the value
    stays `inverse`'s while the gradient flows through 1 / scale.
    """
    if not scale.requires_grad:
        return inverse
    r = 1 / scale
    return inverse.detach() + (r - r.detach())


