"""The dense and gated MLPs, and the activation functions by config name."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ..config import HookedTransformerConfig
from ..hooks.hook_points import HookPoint
from .linear import QuantizableLinears
from .weight_layout import _linear_param, _param


def gelu_new(x: Tensor) -> Tensor:
    # GPT-2's tanh approximation, written as HuggingFace writes it so rounding matches.
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


ACTIVATIONS = {
    "gelu_new": gelu_new,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "silu": F.silu,
    "relu": F.relu,
}


class MLP(QuantizableLinears):
    """Dense: W_out·act(W_in·x + b_in). Gated (SwiGLU): W_out·(act(W_gate·x) * (W_in·x + b_in))."""

    def __init__(self, cfg: HookedTransformerConfig, gated: bool | None = None):
        super().__init__()
        self.cfg = cfg
        # gated: None follows cfg.mlp_type; a Qwen2-MoE's dense layers pass True (cfg.layer_mlp_type).
        self.gated = cfg.gated_mlp if gated is None else gated
        dt = cfg.dtype
        self.W_in, self.b_in = _linear_param(cfg, "in_out", cfg.d_model, cfg.d_mlp), _param(cfg.d_mlp, dtype=dt)
        if self.gated:
            self.W_gate = _linear_param(cfg, "in_out", cfg.d_model, cfg.d_mlp)
            self.hook_pre_linear = HookPoint("batch pos d_mlp")
        self.W_out, self.b_out = _linear_param(cfg, "in_out", cfg.d_mlp, cfg.d_model), _param(cfg.d_model, dtype=dt)
        self.hook_pre = HookPoint("batch pos d_mlp")  # gated: the gate's pre-activation
        self.hook_post = HookPoint("batch pos d_mlp")
        self.act = ACTIVATIONS[cfg.act_fn]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        if self.gated:
            gate = self.hook_pre(self._linear(x, "W_gate"))
            linear = self.hook_pre_linear(self._linear(x, "W_in", self.b_in))
            act = self.act(gate)
            # In place into the fresh activation when no gradient is recorded (the same product, one
            # [batch, pos, d_mlp] tensor fewer); with autograd the product must keep act for the backward.
            post = self.hook_post(act * linear if torch.is_grad_enabled() else act.mul_(linear))
        else:
            post = self.hook_post(self.act(self.hook_pre(self._linear(x, "W_in", self.b_in))))
        return self._linear(post, "W_out", self.b_out)
