"""A gated MLP's gate and up projections computed with one matmul, as HF's fused layers compute them.

Phi-3's gate_up_proj and transformers 5's fused MoE experts (Mixtral, Qwen2-MoE, Qwen3-MoE:
experts.gate_up_proj[e]) hold gate's rows then up's in one [2 * d_mlp, d_model] matrix and run one
F.linear over it. BLAS rounds an element of that wide product otherwise than the same element of a
d_mlp-wide one for some sizes and kernels (MKL's AVX2 kernels, which AMD CPUs get, once enough rows
come in: a batch, or many tokens routed to one expert), so W_gate and W_in ([d_model, d_mlp] each,
TransformerLens' shapes) view one [2, d_mlp, d_model] storage laid out as HF's matrix, and the
forward pass runs the one matmul over it (weight_layout.fused_weight). Quantised, the two are one
bitsandbytes matrix, `quantized["W_GATE_UP"]`, as HF quantises gate_up_proj.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ..config import HookedTransformerConfig
from .linear import FusedPart, QuantizableLinears
from .weight_layout import fused_gate_up_params, fused_weight, share_storage
from .zero_bias import bias_or_none

_GATE_UP = ("W_gate", "W_in")


class GateUpLinears(QuantizableLinears):
    """A component whose W_gate and W_in may be fused (`_make_gate_up(..., fused=True)`)."""

    _gate_up_storage: Tensor | None = None

    def _make_gate_up(self, cfg: HookedTransformerConfig, width: int, fused: bool, separate) -> None:
        """W_gate and W_in, [d_model, width] each: views of one storage when `fused`, else `separate()` each."""
        self._gate_up_width, self._gate_up_fused = width, fused
        if fused:  # W_in registered first, as TransformerLens orders a gated MLP's state dict
            self._gate_up_storage, (gate, self.W_in) = fused_gate_up_params(cfg, width)
            self.W_gate = gate
        else:
            self.W_in = separate()
            self.W_gate = separate()

    def _fuses_gate_up(self) -> bool:
        quantized = self._modules.get("quantized")
        return self._gate_up_storage is not None if quantized is None else "W_GATE_UP" in quantized._modules

    def _gate_up(self, x: Float[Tensor, "... d_model"], b_in: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The gate's and the linear part's pre-activations, [..., width] each, from one matmul."""
        # None where HF's layer has no bias (zero_bias.py), decided before any copy (generation runs this per token);
        # else the gate's half gets + 0 (exact)
        bias = None if b_in is None else bias_or_none(b_in, "b_in" in self.cfg.absent_biases)
        if bias is not None:
            bias = torch.cat([torch.zeros_like(bias), bias])
        if "quantized" in self._modules:  # one quantised matrix, as HF quantises it; bitsandbytes adds the bias
            return self._modules["quantized"]._modules["W_GATE_UP"](x, bias).chunk(2, dim=-1)
        weight = fused_weight(self._gate_up_storage, [self._parameters[n] for n in _GATE_UP])
        return F.linear(x, weight, bias).chunk(2, dim=-1)

    def fused_parts(self) -> dict[str, list[FusedPart]]:
        if not self.__dict__.get("_gate_up_fused"):
            return {}
        m, d = self.cfg.d_model, self._gate_up_width
        return {"W_GATE_UP": [FusedPart(n, d, (m, d), "in_out") for n in _GATE_UP]}

    def share_fused_storage(self) -> None:
        """W_gate and W_in back in one storage after .to() or a dtype cast gave them their own."""
        if self._gate_up_storage is not None and set(_GATE_UP) <= set(self._parameters):
            share_storage(self, "_gate_up_storage", _GATE_UP,
                          lambda like: fused_gate_up_params(self.cfg, self._gate_up_width, like=like))

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.share_fused_storage()
        return self
