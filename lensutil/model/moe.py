"""Mixture of experts: the MLP variant of `mlp_type="moe"` (Mixtral, Qwen2-MoE, Qwen3-MoE), routed as HuggingFace routes it.

Axis glossary (as lensutil/model/), plus: expert_index (0..num_experts-1), top_k
(experts_per_token), routed (the tokens sent to one expert, flattened over batch and pos),
d_mlp_expert (a routed expert's width: cfg.d_mlp_expert, else cfg.d_mlp) and d_mlp_shared_expert.

A router (W_gate) scores each token against every expert; the token goes to its top-k experts,
whose outputs are summed with the softmax weights (renormalised over the top k unless
cfg.norm_topk_prob is off, as in Qwen2-MoE). A Qwen2-MoE adds a shared expert every token goes through,
scaled by sigmoid(x·W) of its gate; a Qwen MoE may have dense layers between its MoE layers
(cfg.moe_layers; the block builds a gated MLP there). The choice is discrete: two
implementations whose router logits differ in the last bits agree on the experts only while the
second- and third-best logits are further apart than that. In bfloat16 they often are not, and one
flipped expert changes everything downstream. So, by default, the router runs in float32 (its
weight is kept in float32 whatever the model's dtype, and the hidden states are up-cast for the
router only); `cfg.router_dtype` set to the model's dtype reproduces HuggingFace's half-precision
routing bit for bit.

Hook names are TransformerLens 2.x's (components/mlps/moe.py, v2.18): `mlp.hook_expert_weights`
(the softmax over all experts, before top-k), `mlp.hook_expert_indices`, and per expert
`mlp.experts.{e}.hook_gate` (W_gate·x, before the activation), `hook_pre` (W_in·x, the linear
part) and `hook_post`. Differences: lensutil's router hooks are [batch, pos, ...] where
TransformerLens' are flattened to [batch * pos, ...]; lensutil adds `mlp.hook_router_logits`; an
expert's hooks see only the tokens routed to it ([routed, d_mlp_expert]), as in TransformerLens, and
`remove_batch_dim` leaves them so (TransformerLens 2.18 takes [0] of them: the first routed token). Note that
TransformerLens' dense gated MLP calls the gate `hook_pre` and the linear part `hook_pre_linear`;
its MoE experts (and so lensutil's) call them `hook_gate` and `hook_pre`. TransformerLens 2.18 has no
shared expert; lensutil's are `mlp.shared_expert.hook_gate/hook_pre/hook_post` ([batch, pos, d_mlp_shared_expert]: every
token) and `mlp.hook_shared_expert_gate` (the sigmoid, [batch, pos, 1]); TransformerLens 4's bridge calls
the modules `mlp.shared_expert` and `mlp.shared_expert_gate` too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from ..config import HookedTransformerConfig, compute_dtype
from ..hooks.hook_points import HookPoint
from .gate_up import GateUpLinears
from .activations import ACTIVATIONS
from .weight_layout import _OUT_IN, _param


class Expert(GateUpLinears):
    """One gated (SwiGLU) expert without biases: W_out·(act(W_gate·x) * W_in·x).

    A routed expert sees the tokens routed to it ("routed d_mlp_expert"); a shared expert (Qwen2-MoE) every
    token ("batch pos d_mlp_shared_expert"). The width axis is cfg.d_mlp_expert (None: cfg.d_mlp, as
    Mixtral's) or cfg.d_mlp_shared_expert, named apart from d_mlp, which a Qwen MoE's dense layers keep.
    """

    def __init__(self, cfg: HookedTransformerConfig, d_mlp: int | None = None, tokens: str = "routed"):
        super().__init__()
        self.cfg = cfg
        m, f, dt = cfg.d_model, d_mlp or cfg.d_mlp_expert or cfg.d_mlp, cfg.dtype
        # W_gate, W_in [d_model, d_mlp]: a routed expert's view HF's experts.gate_up_proj[e], and gate and up
        # come from one matmul over it (gate_up.py); a shared expert is HF's plain MLP, gate_proj and up_proj.
        self._make_gate_up(cfg, f, tokens == "routed", lambda: _param(m, f, dtype=dt, memory_order=_OUT_IN))
        self.W_out = _param(f, m, dtype=dt, memory_order=_OUT_IN)  # [d_mlp, d_model]
        # Their last axis is the expert's own width, not cfg.d_mlp (a Qwen MoE's dense layers' width)
        width = "d_mlp_expert" if tokens == "routed" else "d_mlp_shared_expert"
        self.hook_gate = HookPoint(f"{tokens} {width}")  # W_gate·x, before the activation
        self.hook_pre = HookPoint(f"{tokens} {width}")  # W_in·x, the linear part
        self.hook_post = HookPoint(f"{tokens} {width}")
        self.act = ACTIVATIONS[cfg.act_fn]

    def forward(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        # HF's fused experts split one [routed, 2 * d_mlp] product, so the activation and the product read
        # two strided halves; torch's vectorised kernels round a row's tail (d_mlp not a multiple of the
        # SIMD width, e.g. 48) apart from a contiguous tensor's: the halves of our one product are alike.
        if self._fuses_gate_up():
            gate, linear = self._gate_up(x)
            gate, linear = self.hook_gate(gate), self.hook_pre(linear)
        else:
            gate, linear = self.hook_gate(self._linear(x, "W_gate")), self.hook_pre(self._linear(x, "W_in"))
        return self._linear(self.hook_post(self.act(gate) * linear), "W_out")


class SharedExpertGate(nn.Module):
    """Qwen2-MoE's shared_expert_gate: sigmoid(x·W), one scalar per token, that scales the shared expert.

    Never quantised, like the router: one row of d_model weights saves nothing, and bitsandbytes' CPU
    4-bit kernel cannot pack a matrix whose rows are not a multiple of its block (a quantised model
    keeps it with BitsAndBytesConfig(llm_int8_skip_modules=[..., "shared_expert_gate"]) to match HF's).
    """

    def __init__(self, cfg: HookedTransformerConfig):
        super().__init__()
        self.W = _param(cfg.d_model, 1, dtype=cfg.dtype, memory_order=_OUT_IN)  # [d_model, 1], HF's Linear(d_model, 1)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos 1"]:
        return torch.sigmoid(F.linear(x, self.W.T))  # W.T: HF's [1, d_model] weight, laid out as HF's


class MoE(nn.Module):
    """Router plus num_experts experts; each token's output is the weighted sum of its top-k experts',
    plus, where cfg.d_mlp_shared_expert is set, a shared expert's output scaled by its gate (Qwen2-MoE)."""

    def __init__(self, cfg: HookedTransformerConfig):
        super().__init__()
        self.cfg = cfg
        # The router's weight, kept in at least float32 (see _apply). [d_model, expert_index]
        self.W_gate = _param(cfg.d_model, cfg.num_experts, dtype=compute_dtype(cfg.dtype), memory_order=_OUT_IN)
        self.experts = nn.ModuleList(Expert(cfg) for _ in range(cfg.num_experts))
        self.hook_router_logits = HookPoint("batch pos expert_index")  # lensutil's own
        self.hook_expert_weights = HookPoint("batch pos expert_index")  # softmax over all experts, before top-k
        self.hook_expert_indices = HookPoint("batch pos top_k")  # int64 expert ids, best first
        if cfg.d_mlp_shared_expert:
            self.shared_expert = Expert(cfg, cfg.d_mlp_shared_expert, tokens="batch pos")
            self.shared_expert_gate = SharedExpertGate(cfg)
            self.hook_shared_expert_gate = HookPoint("batch pos 1")  # sigmoid(x·W): the shared expert's weight per token

    def router_dtype(self, x: Tensor) -> torch.dtype:
        return self.cfg.router_dtype or compute_dtype(x.dtype)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        batch, pos, d_model = x.shape
        k = self.cfg.experts_per_token
        flat = x.reshape(-1, d_model)
        rd = self.router_dtype(x)
        logits = F.linear(flat.to(rd), self.W_gate.T.to(rd)).view(batch, pos, -1)
        logits = self.hook_router_logits(logits)
        # As HuggingFace's MixtralTopKRouter: softmax in (at least) float32, top-k of the
        # probabilities, renormalised to sum to 1; the weights stay in that dtype until each
        # expert's weighted output is cast back to the model's dtype.
        # Qwen's routers renormalise only where cfg.norm_topk_prob says, and cast the weights back
        # to the logits' dtype (cfg.cast_routing_weights).
        probs = self.hook_expert_weights(F.softmax(logits, dim=-1, dtype=compute_dtype(logits.dtype)))
        top_w, top_i = torch.topk(probs, k, dim=-1)
        top_i = self.hook_expert_indices(top_i)
        if self.cfg.norm_topk_prob:
            top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        if self.cfg.cast_routing_weights:
            top_w = top_w.to(logits.dtype)
        top_i, top_w = top_i.reshape(-1, k), top_w.reshape(-1, k)
        out = torch.zeros_like(flat)
        # One matmul per expert over the tokens routed to it, in HuggingFace's order (experts in
        # ascending order, index_add_ in the model's dtype), so the sums round as HF's do. An
        # expert no token chose still runs on zero rows, so its hooks fire (as in TransformerLens).
        for e, expert in enumerate(self.experts):
            slot, token = torch.where(top_i.T == e)  # slot-major, as HF's expert_mask[e]
            y = expert(flat[token]) * top_w[token, slot, None]
            out.index_add_(0, token, y.to(out.dtype))
        out = out.view(batch, pos, d_model)
        if self.cfg.d_mlp_shared_expert:  # HF: experts' sum + sigmoid(gate(x)) * shared_expert(x), in the model's dtype
            out = out + self.hook_shared_expert_gate(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out

    def _apply(self, fn, recurse: bool = True):
        # .to(bfloat16), .half(), ... cast the experts but not the router's weight: it follows the
        # device, and stays in at least float32 (float64 in a float64 model), so the float32
        # router of a half-precision model uses the checkpoint's own router weights.
        w = self._parameters.pop("W_gate")
        try:
            super()._apply(fn, recurse)
        finally:
            self._parameters["W_gate"] = w
        probe = fn(torch.zeros((), dtype=torch.float32, device=w.device))
        w.data = w.data.to(device=probe.device, dtype=compute_dtype(probe.dtype) if probe.is_floating_point() else w.dtype)
        return self
