"""Weight processing: rewrite a model's weights into an equivalent, easier-to-read form.

Four options, as in TransformerLens, applied in this order:

- ``fold_ln``: fold the norms' scale w (and LayerNorm's bias b) into the weights that read the
  normalised residual; the norms become "LNPre"/"RMSPre" (normalise only, no parameters).
- ``center_writing_weights``: make every write into the residual stream mean-zero over d_model.
  LayerNorm models only: it relies on every reader of the residual centring it first.
- ``center_unembed``: make W_U and b_U mean-zero over d_vocab (logits shift, log-probs do not).
- ``fold_value_biases``: move b_V into b_O (each attention pattern row sums to 1).

Each is a plain function on a state dict (lensutil names, see docs/design.md) that returns a new
dict and never changes its input; ``process_weights_`` applies them to a model in float32 (float64
for a float64 model: the arithmetic is never narrower than the weights), rebuilds
its norms, records what was done in the cfg flags and returns a ``ProcessingReport``. Nothing is
silently skipped: an option that would change the model's function is not applied, the report says
why, and one warning tells the user.

Axis names: head_index, kv_head_index, d_model, d_head, d_mlp, d_vocab (../shared/STYLE.md).
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
from jaxtyping import Float
from torch import Tensor

from ..config import HookedTransformerConfig, compute_dtype
from ..errors import ConfigError, LensError
from .attention import key_value_param_name
from .linear import refuse_if_quantized
from .norm import Norm
from .refactor_attn import refactor_factored_attn_matrices

OPTIONS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")
_FOLDED_KIND = {"LN": "LNPre", "RMS": "RMSPre"}
_CFG_FLAG = {
    "fold_ln": "folded_ln",
    "center_writing_weights": "centered_writing_weights",
    "center_unembed": "centered_unembed",
    "fold_value_biases": "folded_value_biases",
}

_NOTHING_TO_DO = "nothing to fold"  # a skip that leaves the model as asked: no warning

StateDict = dict[str, Tensor]


@dataclasses.dataclass
class ProcessingReport:
    """What process_weights_ did: the options applied, and each option not applied with the reason."""

    applied: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # option -> why it was not applied

    def __str__(self) -> str:
        lines = [f"applied: {', '.join(self.applied) or 'nothing'}"]
        lines += [f"skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


# ---- the four transformations, on state dicts ----------------------------------------------------


def _up(t: Tensor) -> Tensor:
    """t in at least float32 (half precision is widened; float64 stays float64)."""
    return t.to(compute_dtype(t.dtype))


def _center_d_model(W: Tensor, axis: int) -> Tensor:
    return W - W.mean(dim=axis, keepdim=True)


def fold_layer_norm(state_dict: StateDict, cfg: HookedTransformerConfig, *, center_weights: bool = True) -> StateDict:
    """Fold every norm's w (and LayerNorm's b) into the weights that read its output.

    Maths. A norm computes w ⊙ n(x) + b, with n(x) = x / rms(x) (RMS) or centred x / rms (LN), and
    its reader computes y = (w ⊙ n(x) + b) @ W + c. Rewriting, y = n(x) @ (diag(w) W) + (b @ W + c):
    the same function with W' = w[:, None] * W and c' = c + b @ W, and a norm with no w or b. The
    division by rms(x) depends on x, so it stays in the norm ("LNPre"/"RMSPre").
    With center_weights (LayerNorm only), each W' is also made mean-zero along d_model: n(x) sums
    to zero over d_model, so n(x) @ (W' - 1 mean(W')) = n(x) @ W'. RMSNorm's n(x) is not centred,
    so RMS reading weights are left as they are.

    Readers: ln1 -> W_Q, W_K, W_V (+ b_Q, b_K, b_V; with grouped-query attention the compact
    _W_K, _W_V, _b_K, _b_V, folded per key/value head); ln2 -> W_in (+ b_in) and W_gate;
    ln_final -> W_U (+ b_U). W_gate has no bias, so a LayerNorm bias cannot be folded into it:
    that case raises ConfigError (process_weights_ reports it as skipped instead).
    Gemma's norms scale by (offset + w) (cfg.norm_weight_offset): that is the w folded. A q/k norm after
    W_Q / W_K (use_qk_norm) changes nothing: it reads the same projection. The norms after attention and
    the MLP (ln1_post, ln2_post: Gemma 2/3, OLMo 2) are not folded: what reads their output is the
    residual stream, whose readers normalise it again, so no weight can absorb them; they keep w.
    """
    kind = cfg.normalization_type
    if kind not in _FOLDED_KIND:
        raise LensError(
            f"fold_layer_norm: normalization_type is {kind!r}, so the norms have no weights to fold "
            "(already folded, or built without them). Nothing to do; do not fold twice."
        )
    if "ln_final.w" not in state_dict:
        raise LensError(
            f"fold_layer_norm: the state dict has no 'ln_final.w' although cfg.normalization_type={kind!r}; "
            "it was probably saved after fold_ln. Load it into a model built with normalization_type="
            f"{_FOLDED_KIND[kind]!r} instead of folding again."
        )
    has_bias = kind == "LN"
    center = center_weights and kind == "LN"
    if has_bias and cfg.mlp_type in ("gated", "moe") and not cfg.attn_only:
        nonzero = [i for i in range(cfg.n_layers) if state_dict[f"blocks.{i}.ln2.b"].abs().max() > 0]
        if nonzero:
            raise ConfigError(
                f"Cannot fold LayerNorm: ln2.b is non-zero in layers {nonzero[:5]} and the gated MLP's W_gate "
                "has no bias to absorb b @ W_gate. Load with fold_ln=False."
            )
    sd = dict(state_dict)

    def fold(norm: str, W_key: str, b_key: str | None, d_model_axis: int) -> None:
        if f"{norm}.w" not in sd:  # norm_position "output" (OLMo 2): no norm before attention and the MLP
            return
        w = _up(sd[f"{norm}.w"]) + cfg.norm_weight_offset  # Gemma's norms scale by (1 + w)
        W = _up(sd[W_key])
        shape = [1] * W.ndim
        shape[d_model_axis] = -1
        if has_bias and b_key is not None:
            # b @ W, contracting b with W's d_model axis: [heads, d_head] for attention, [d_mlp], [d_vocab].
            sd[b_key] = _up(sd[b_key]) + torch.tensordot(_up(sd[f"{norm}.b"]), W, dims=([0], [d_model_axis]))
        W = W * w.reshape(shape)
        sd[W_key] = _center_d_model(W, d_model_axis) if center else W

    for i in range(cfg.n_layers):
        p = f"blocks.{i}."
        for name in "QKV":  # W_* [heads, d_model, d_head]; K and V compact (_W_K, ...) with GQA
            W, b = f"W_{name}", f"b_{name}"
            if name != "Q":
                W, b = key_value_param_name(cfg, W), key_value_param_name(cfg, b)
            fold(p + "ln1", f"{p}attn.{W}", f"{p}attn.{b}", 1)
        kind = cfg.layer_mlp_type(i)  # a Qwen2-MoE has dense gated MLPs between its MoE layers
        if cfg.attn_only:  # no ln2, no MLP
            pass
        elif kind == "moe":
            # ln2 is read by the router ([d_model, expert_index], no bias), by every expert and by the
            # shared expert and its gate (Qwen2-MoE; [d_model, 1]). The router's logits are then rounded
            # differently, and a near-tie between two experts may resolve the other way than in the
            # unfolded model (lensutil/model/moe.py explains why).
            fold(p + "ln2", f"{p}mlp.W_gate", None, 0)
            experts = [f"{p}mlp.experts.{e}." for e in range(cfg.num_experts)]
            if cfg.d_mlp_shared_expert:
                experts.append(f"{p}mlp.shared_expert.")
                fold(p + "ln2", f"{p}mlp.shared_expert_gate.W", None, 0)
            for x in experts:
                fold(p + "ln2", x + "W_in", None, 0)
                fold(p + "ln2", x + "W_gate", None, 0)
        else:
            fold(p + "ln2", f"{p}mlp.W_in", f"{p}mlp.b_in", 0)  # [d_model, d_mlp]
        if kind == "gated" and not cfg.attn_only:
            fold(p + "ln2", f"{p}mlp.W_gate", None, 0)  # the ln2.b == 0 check above makes b @ W_gate zero
        for norm in ("ln1",) if cfg.attn_only else ("ln1", "ln2"):  # ln1_post / ln2_post keep their weights
            sd.pop(f"{p}{norm}.w", None)
            sd.pop(f"{p}{norm}.b", None)
    fold("ln_final", "unembed.W_U", "unembed.b_U", 0)  # [d_model, d_vocab]
    sd.pop("ln_final.w")
    sd.pop("ln_final.b", None)
    return sd


def center_writing_weights(state_dict: StateDict, cfg: HookedTransformerConfig) -> StateDict:
    """Subtract the mean over d_model from every weight and bias that writes into the residual stream.

    Maths. The residual stream is a sum of writes (W_E, W_pos, each W_O/b_O, each W_out/b_out).
    Centring each write changes the residual at a position by c·1 for some scalar c. Every reader
    of the residual is a LayerNorm, which first subtracts the mean over d_model, so it sees exactly
    the same input: the function is unchanged (the hook_resid_* values are now mean-zero).
    RMSNorm does not centre, so there it would change the function: refused with ConfigError.
    """
    if cfg.normalization_type not in ("LN", "LNPre"):
        raise ConfigError(
            f"center_writing_weights needs LayerNorm readers (normalization_type LN/LNPre), not "
            f"{cfg.normalization_type!r}: RMSNorm does not subtract the mean, so centring the residual "
            "stream's writes would change the model's outputs."
        )
    sd = dict(state_dict)
    keys = ["embed.W_E"] + (["pos_embed.W_pos"] if "pos_embed.W_pos" in sd else [])
    for i in range(cfg.n_layers):
        p = f"blocks.{i}."
        keys += [p + "attn.W_O", p + "attn.b_O"]
        if cfg.attn_only:
            continue
        if cfg.is_moe_layer(i):  # experts have no output bias
            keys += [f"{p}mlp.experts.{e}.W_out" for e in range(cfg.num_experts)]
            keys += [f"{p}mlp.shared_expert.W_out"] if cfg.d_mlp_shared_expert else []
        else:
            keys += [p + "mlp.W_out", p + "mlp.b_out"]
    for k in keys:  # every one has d_model as its last axis
        sd[k] = _center_d_model(_up(sd[k]), -1)
    return sd


def center_unembed(state_dict: StateDict) -> StateDict:
    """Subtract the mean over d_vocab from W_U and b_U.

    Maths. The logits at a position become logits - m for one scalar m (the mean logit), and
    softmax(z - m) = softmax(z), log_softmax(z - m) = log_softmax(z). Probabilities, log-probs,
    the loss and argmax are unchanged; raw logits are not. Valid for every model.
    """
    sd = dict(state_dict)
    W_U, b_U = _up(sd["unembed.W_U"]), _up(sd["unembed.b_U"])
    sd["unembed.W_U"] = W_U - W_U.mean(-1, keepdim=True)
    sd["unembed.b_U"] = b_U - b_U.mean()
    return sd


def fold_value_biases(state_dict: StateDict, cfg: HookedTransformerConfig) -> StateDict:
    """Move each layer's value bias b_V into the output bias b_O, and set b_V to zero.

    Maths. Head h's output is pattern_h @ (x W_V + 1 b_V) @ W_O[h]. Each real query's pattern row
    sums to 1, so the bias contributes b_V @ W_O[h] whatever the input; summed over heads that is
    the constant Σ_h b_V[kv(h)] @ W_O[h], which b_O can carry. With grouped-query attention, query
    head h reads key/value head kv(h) = h // (n_heads // n_kv_heads). Only padding queries (whose
    pattern row is all zero) change: they now get the constant too, but their outputs are never
    used (masked in the loss, ignored by generation). hook_v / hook_z lose the constant b_V.
    """
    sd = dict(state_dict)
    group = cfg.n_heads // cfg.n_kv_heads
    b_V_key = key_value_param_name(cfg, "b_V")  # "_b_V" (compact) with grouped-query attention
    for i in range(cfg.n_layers):
        p = f"blocks.{i}.attn."
        b_V: Float[Tensor, "kv_head_index d_head"] = _up(sd[p + b_V_key])
        per_query_head = b_V.repeat_interleave(group, dim=0)  # [head_index, d_head]
        W_O: Float[Tensor, "head_index d_head d_model"] = _up(sd[p + "W_O"])
        sd[p + "b_O"] = _up(sd[p + "b_O"]) + torch.einsum("he,hem->m", per_query_head, W_O)
        sd[p + b_V_key] = torch.zeros_like(b_V)
    return sd


# ---- on a model ----------------------------------------------------------------------------------

# process_weights_'s keyword arguments share these functions' names (TransformerLens' API).
_center_writing_weights, _center_unembed, _fold_value_biases = center_writing_weights, center_unembed, fold_value_biases


def rebuild_norms(model, kind: str) -> None:
    """Set model.cfg.normalization_type to `kind` and swap every Norm for one of that kind.

    The new norms keep the old ones' HookPoint objects, so hooks attached to ln*.hook_scale /
    hook_normalized survive; model.setup() re-indexes hook_dict. Norms gaining w/b (LNPre -> LN,
    used when unprocessed weights are loaded into a processed model) get uninitialised Parameters
    on the model's device and dtype: load a state dict straight after.
    """
    model.cfg.normalization_type = kind
    p = next(model.parameters())

    def rebuilt(old: Norm) -> Norm:
        new = Norm(model.cfg, kind).to(device=p.device, dtype=p.dtype)
        new.hook_scale, new.hook_normalized = old.hook_scale, old.hook_normalized
        return new

    for block in model.blocks:  # (ln1_post, ln2_post keep their weights, POST_NORM_KIND)
        for name in ("ln1", "ln2"):  # none with norm_position "output" (OLMo 2); no ln2 when attn_only
            if name in block._modules:
                setattr(block, name, rebuilt(block._modules[name]))
    model.ln_final = rebuilt(model.ln_final)
    model.setup()


def process_weights_(
    model,
    *,
    fold_ln: bool = True,
    center_writing_weights: bool | None = True,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
    refactor_factored_attn_matrices: bool = False,
) -> ProcessingReport:
    """Process a HookedTransformer's weights in place (in float32, or float64 for a float64 model), keeping its function.

    Updates model.cfg: normalization_type LN -> LNPre / RMS -> RMSPre after fold_ln, and the flags
    folded_ln, centered_writing_weights, centered_unembed, folded_value_biases. Options that cannot
    be applied without changing the function (center_writing_weights on RMSNorm models; fold_ln on a
    LayerNorm model with a gated MLP and a non-zero ln2 bias) are skipped, listed in the returned
    report with the reason, and announced by one warning when the option was asked for explicitly
    (True). center_writing_weights=None means "where valid": from_pretrained's default, so loading a
    Llama-family model does not warn about an option nobody asked for; the report still lists it.

    Safe to call twice: fold_ln on a model whose norms have no weights does nothing (reported); the
    other three are projections (centring a centred tensor, zeroing a zero b_V), so re-applying them
    leaves the weights as they are. refactor_factored_attn_matrices (off by default, as in
    TransformerLens) runs last: lensutil/model/refactor_attn.py; a ConfigError where it is not valid.
    """
    dtype = next(model.parameters()).dtype
    sd = {k: v.detach().to(compute_dtype(dtype)) for k, v in model.state_dict().items()}
    return process_into_(model, sd, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                         center_unembed=center_unembed, fold_value_biases=fold_value_biases,
                         refactor_factored_attn_matrices=refactor_factored_attn_matrices)


def process_into_(model, sd: StateDict, **wanted) -> ProcessingReport:
    """process_weights_ of the full-precision weights `sd` (all of `model`'s, at least float32), loaded into `model`.

    Each processed weight is cast once, to its own parameter's dtype: a half-precision model's
    weights are rounded after processing, never before (load_and_process_state_dict hands the
    float32 weights it was given straight here), and an MoE router's weight stays float32.
    """
    refuse_if_quantized(model, "Weight processing (fold_ln, center_writing_weights, center_unembed, fold_value_biases)")
    cfg = model.cfg
    report = ProcessingReport()
    new_kind = None

    if cfg.positional_embedding_type == "shortformer":  # W_pos joins q and k after ln1, W_Q/W_K read it unscaled
        for option in ("fold_ln", "center_writing_weights"):
            if wanted[option] is not False:
                report.skipped[option] = ("not valid for a shortformer model: its position embedding is added after ln1 "
                                          "and is not centred by it, so this would change the queries and keys")
    if wanted["fold_ln"] and "fold_ln" not in report.skipped:
        if cfg.normalization_type not in _FOLDED_KIND:
            why = "already folded" if cfg.folded_ln else "the model was built without norm weights"
            report.skipped["fold_ln"] = f"{why} (normalization_type={cfg.normalization_type!r}); {_NOTHING_TO_DO}"
        else:
            try:
                sd = fold_layer_norm(sd, cfg)
            except ConfigError as err:
                report.skipped["fold_ln"] = str(err)
            else:
                new_kind = _FOLDED_KIND[cfg.normalization_type]
                report.applied.append("fold_ln")
    if wanted["center_writing_weights"] is not False and "center_writing_weights" not in report.skipped:
        if cfg.normalization_type in ("LN", "LNPre"):
            sd = _center_writing_weights(sd, cfg)
            report.applied.append("center_writing_weights")
        else:
            report.skipped["center_writing_weights"] = (
                f"not valid for normalization_type={cfg.normalization_type!r}: RMSNorm does not subtract the "
                "mean, so centring the residual stream would change the outputs"
            )
    if wanted["center_unembed"] is not False and cfg.output_logits_soft_cap > 0:  # None: where valid
        report.skipped["center_unembed"] = (
            f"not valid with output_logits_soft_cap={cfg.output_logits_soft_cap}: the cap's tanh is applied to the "
            "logits, so shifting them by their mean would change the probabilities, not only the logits")
    elif wanted["center_unembed"] is not False:
        sd = _center_unembed(sd)
        report.applied.append("center_unembed")
    if wanted["fold_value_biases"]:
        sd = _fold_value_biases(sd, cfg)
        report.applied.append("fold_value_biases")

    if wanted.get("refactor_factored_attn_matrices"):  # off by default, as in TransformerLens; last, as there
        sd = refactor_factored_attn_matrices(sd, cfg)  # a ConfigError (before anything changed) where not valid
        report.applied.append("refactor_factored_attn_matrices")

    if new_kind is not None:
        rebuild_norms(model, new_kind)
    # load_state_dict copies into the existing Parameters (optimisers holding them stay valid).
    # Each in its parameter's own dtype: an MoE router's weight stays float32 in a half-precision model.
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)
    for option in report.applied:
        if option in _CFG_FLAG:  # refactor_factored_attn_matrices has no flag in TransformerLens' config either
            setattr(cfg, _CFG_FLAG[option], True)

    not_applicable = {k: v for k, v in report.skipped.items() if not v.endswith(_NOTHING_TO_DO) and wanted[k] is True}
    if not_applicable:
        warnings.warn(
            "process_weights_ did not apply " + "; ".join(f"{k} ({v})" for k, v in not_applicable.items())
            + ". The model computes the same function; see the returned ProcessingReport.",
            stacklevel=3,
        )
    return report
