"""The dense and gated MLPs (the activation functions are in activations.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ..config import HookedTransformerConfig
from ..hooks.hook_points import HookPoint
from .activations import make_activation
from .norm import Norm
from .linear import FusedPart, QuantizableLinears
from .weight_layout import _linear_param, _param, fused_gate_up_params, fused_weight, share_storage
from .zero_bias import bias_or_none


class MLP(QuantizableLinears):
    """Dense: W_out·act(W_in·x + b_in). Gated (SwiGLU): W_out·(act(W_gate·x) * (W_in·x + b_in)).

    act_fn="solu_ln" (TransformerLens' SoLU models): act is SoLU followed by a LayerNorm over d_mlp
    (`ln`: "LN" with weights when the model's norms are "LN", else "LNPre"), hooked between the two
    at hook_mid. A gated MLP uses the normalised activation as its gate (TransformerLens 2.18's
    GatedMLP drops the linear branch there instead: docs/tl_compat_model.md).
    """

    def __init__(self, cfg: HookedTransformerConfig, gated: bool | None = None):
        super().__init__()
        self.cfg = cfg
        # gated: None follows cfg.mlp_type; a Qwen2-MoE's dense layers pass True (cfg.layer_mlp_type).
        self.gated = cfg.gated_mlp if gated is None else gated
        dt = cfg.dtype
        # Phi-3's gate_up_proj: W_gate and W_in view one storage, so gate and up come from one matmul (weight_layout.py)
        self._gate_up_storage, fused = fused_gate_up_params(cfg) if self.gated and cfg.fused_gate_up else (None, None)
        self.W_in = _linear_param(cfg, "in_out", cfg.d_model, cfg.d_mlp) if fused is None else fused[1]
        self.b_in = _param(cfg.d_mlp, dtype=dt)
        if self.gated:
            self.W_gate = _linear_param(cfg, "in_out", cfg.d_model, cfg.d_mlp) if fused is None else fused[0]
            self.hook_pre_linear = HookPoint("batch pos d_mlp")
        self.W_out, self.b_out = _linear_param(cfg, "in_out", cfg.d_mlp, cfg.d_model), _param(cfg.d_model, dtype=dt)
        self.hook_pre = HookPoint("batch pos d_mlp")  # gated: the gate's pre-activation
        self.hook_post = HookPoint("batch pos d_mlp")
        # act_fn, TransformerLens' name: xIELU's is a module whose parameters are in the state dict.
        self.act_fn = make_activation(cfg.act_fn)
        if cfg.is_layer_norm_activation():
            self.hook_mid = HookPoint("batch pos d_mlp")  # the activation before its LayerNorm
            self.ln = Norm(cfg, "LN" if cfg.normalization_type == "LN" else "LNPre", length=cfg.d_mlp)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        if self.gated:
            quantized = self._modules.get("quantized")
            if self._gate_up_storage is not None and quantized is None or quantized is not None and "W_GATE_UP" in quantized._modules:
                gate, linear = self._gate_up(x)
                gate, linear = self.hook_pre(gate), self.hook_pre_linear(linear)
            else:
                gate = self.hook_pre(self._linear(x, "W_gate"))
                linear = self.hook_pre_linear(self._linear(x, "W_in", self.b_in))
            act = self._activation(gate)
            # In place into the fresh activation when no gradient is recorded (the same product, one
            # [batch, pos, d_mlp] tensor fewer); with autograd the product must keep act for the backward.
            in_place = not torch.is_grad_enabled() and not self.cfg.is_layer_norm_activation()  # ln.hook_normalized may hold act
            post = self.hook_post(act.mul_(linear) if in_place else act * linear)
        else:
            post = self.hook_post(self._activation(self.hook_pre(self._linear(x, "W_in", self.b_in))))
        return self._linear(post, "W_out", self.b_out)

    def _gate_up(self, x: Float[Tensor, "batch pos d_model"]) -> tuple[Tensor, Tensor]:
        """Gate and linear pre-activations from one matmul over W_gate and W_in stacked, as gate_up_proj rounds."""
        bias = torch.cat([torch.zeros_like(self.b_in), self.b_in])  # the gate's half gets + 0: exact
        bias = bias_or_none(bias, "b_in" in self.cfg.absent_biases)  # None where gate_up_proj has none (zero_bias.py)
        if "quantized" in self._modules:  # gate_up_proj quantised as HF quantises it; bitsandbytes adds the bias
            return self._modules["quantized"]._modules["W_GATE_UP"](x, bias).chunk(2, dim=-1)
        return F.linear(x, fused_weight(self._gate_up_storage, [self.W_gate, self.W_in]), bias).chunk(2, dim=-1)

    def _apply(self, fn, recurse: bool = True):
        # .to(device) and dtype casts give each parameter its own storage: put W_gate and W_in back in one.
        super()._apply(fn, recurse)
        self.share_fused_storage()
        return self

    def fused_parts(self) -> dict[str, list[FusedPart]]:
        if not (self.gated and self.cfg.fused_gate_up):
            return {}
        m, d = self.cfg.d_model, self.cfg.d_mlp
        return {"W_GATE_UP": [FusedPart("W_gate", d, (m, d), "in_out"), FusedPart("W_in", d, (m, d), "in_out")]}

    def share_fused_storage(self) -> None:
        if self._gate_up_storage is not None and {"W_gate", "W_in"} <= set(self._parameters):
            share_storage(self, "_gate_up_storage", ("W_gate", "W_in"), lambda like: fused_gate_up_params(self.cfg, like=like))

    def _activation(self, pre: Float[Tensor, "batch pos d_mlp"]) -> Float[Tensor, "batch pos d_mlp"]:
        if self.cfg.is_layer_norm_activation():
            return self.ln(self.hook_mid(self.act_fn(pre)))
        return self.act_fn(pre)
