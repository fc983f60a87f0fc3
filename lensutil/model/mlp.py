"""The dense and gated MLPs (the activation functions are in activations.py)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from ..config import HookedTransformerConfig
from ..hooks.hook_points import HookPoint
from .activations import make_activation
from .norm import Norm
from .gate_up import GateUpLinears
from .weight_layout import _linear_param, _param


class MLP(GateUpLinears):
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
        m, d = cfg.d_model, cfg.d_mlp
        if self.gated:  # Phi-3's gate_up_proj (cfg.fused_gate_up): W_gate and W_in from one matmul (gate_up.py)
            self._make_gate_up(cfg, d, cfg.fused_gate_up, lambda: _linear_param(cfg, "in_out", m, d))
            self.hook_pre_linear = HookPoint("batch pos d_mlp")
        else:
            self.W_in = _linear_param(cfg, "in_out", m, d)
        self.b_in = _param(d, dtype=dt)
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
            if self._fuses_gate_up():
                gate, linear = self._gate_up(x, self.b_in)
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

    def _activation(self, pre: Float[Tensor, "batch pos d_mlp"]) -> Float[Tensor, "batch pos d_mlp"]:
        if self.cfg.is_layer_norm_activation():
            return self.ln(self.hook_mid(self.act_fn(pre)))
        return self.act_fn(pre)
