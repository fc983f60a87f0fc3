"""The linear maths of a component, full precision or quantised: what quantisation swaps, and nothing else.

A component's matrices keep TransformerLens' shapes (W_Q [head_index, d_model, d_head], W_in
[d_model, d_mlp], ...) and are stored as F.linear wants them, [out, in] (components._param). Each
call site names its weight and its *layout*, the rule that turns the TransformerLens-shaped
weight into F.linear's [out, in] matrix:

- "in_out":    W [in, out]                     -> W.T                                   (MLP, experts, MLM head)
- "heads_in":  W [head_index, d_model, d_head] -> [head_index * d_head, d_model]         (W_Q, W_K, W_V)
- "heads_out": W [head_index, d_head, d_model] -> [d_model, head_index * d_head]         (W_O)

That [out, in] matrix is exactly HuggingFace's nn.Linear weight, so quantising it with
bitsandbytes gives the bytes HuggingFace's own quantised model holds, and the same bitsandbytes
module computes with them. A quantised weight leaves the module's parameters and lives in
`module.quantized[name]` (a QuantizedLinear); hooks, biases, norms and embeddings are untouched.
GPT-2's W_Q, W_K and W_V are HuggingFace's one c_attn module (Phi-3's qkv_proj; its W_gate and W_in
are gate_up_proj), quantised as one matrix as HF does (double quantisation rounds a matrix's block
scales around their mean over the whole matrix, so separate matrices would hold other bytes):
`quantized["W_QKV"]` / `quantized["W_GATE_UP"]`, their rows side by side as in the float storage
(weight_layout.py), each part read through QuantizedPart. A component names its fused groups in
`fused_parts()`.

Reading a quantised weight by its TransformerLens name (attn.W_Q, model.W_Q, mlp.W_in) gives a
dequantised *read-only copy* in TransformerLens' shape: the values the quantised maths uses (for
8-bit, the weight half of it: LLM.int8() also rounds the activations). It is an inference tensor,
so an in-place edit raises instead of silently changing nothing; to edit weights, edit the float
model, then quantise it (lensutil.loading.quantization.quantize_).
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import QuantizationError
from .zero_bias import bias_or_none


# The bias that goes with each weight a component runs through _linear (GQA's compact _W_K too).
BIAS_OF = {"W_Q": "b_Q", "W_K": "b_K", "_W_K": "b_K", "W_V": "b_V", "_W_V": "b_V", "W_O": "b_O", "W_in": "b_in", "W_out": "b_out"}
# TransformerLens-shaped weight -> F.linear's [out, in]. The expressions are the ones the
# full-precision forward always used, so its bits (and HF equivalence) do not change.
TO_OUT_IN = {
    "in_out": lambda W: W.T,
    "heads_in": lambda W: W.transpose(1, 2).reshape(W.shape[0] * W.shape[2], W.shape[1]),
    "heads_out": lambda W: W.reshape(-1, W.shape[-1]).T,
}
# F.linear's [out, in] -> TransformerLens' shape (the inverse of TO_OUT_IN), for dequantised reads.
FROM_OUT_IN = {
    "in_out": lambda w, shape: w.T,
    "heads_in": lambda w, shape: w.view(shape[0], shape[2], shape[1]).transpose(1, 2),
    "heads_out": lambda w, shape: w.T.reshape(shape),
}


# The weights of a fused q/k/v linear, in the order of their rows in it (GPT-2's c_attn; weight_layout.py),
# and the name of the one quantised module of each fused group, by the (HF-side) names of its parts.
FUSED_QKV = ("W_Q", "W_K", "W_V")
FUSED_NAMES = {FUSED_QKV: "W_QKV", ("W_gate", "W_in"): "W_GATE_UP"}


class FusedPart(NamedTuple):
    """One weight of a fused group: its parameter name, rows in the fused [out, in] matrix, TL shape, layout."""

    name: str
    rows: int
    shape: tuple[int, ...]
    layout: str


def _cpu_packable(lin: nn.Module) -> bool:
    """What bitsandbytes' _convert_weight_packed_for_cpu needs: [out, in] in 32-row groups, whole blocks along in."""
    return lin.out_features % 32 == 0 and lin.in_features % lin.weight.blocksize == 0


class QuantizedLinear(nn.Module):
    """One bitsandbytes linear (Linear4bit or Linear8bitLt, built as HuggingFace builds it), bias-free.

    The bias stays the component's own full-precision parameter (b_Q, b_in, ...) and is handed to
    bitsandbytes' forward for each call, so it is added exactly where HuggingFace's module adds its own.
    """

    def __init__(self, bnb_linear: nn.Module, layout: str, shape: tuple[int, ...]):
        super().__init__()
        self.linear, self.layout, self.shape = bnb_linear, layout, tuple(shape)
        # bitsandbytes (0.50) repacks a 4-bit weight for its AVX512-BF16 CPU kernel on the first no-grad call, and
        # dies in a reshape or an assert where it cannot: in_features not a multiple of the quantisation block,
        # out_features not a multiple of 32 (tiny-qwen2-moe's 96-wide shared expert; HF's quantised model dies too).
        # Such a weight keeps bitsandbytes' plain CPU path, the one every CPU without AVX512-BF16 runs.
        if getattr(bnb_linear, "support_avx512bf16_for_cpu", False) and not _cpu_packable(bnb_linear):
            bnb_linear.support_avx512bf16_for_cpu = False

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        lin = self.linear
        if x.numel() == 0:  # an MoE expert no token chose: bitsandbytes' packed CPU 4-bit kernel dies of SIGFPE on 0 rows
            return x.new_zeros(*x.shape[:-1], lin.out_features)
        # bitsandbytes reads self.bias (and may recast its .data): give it a view of ours, never ours.
        lin._parameters["bias"] = None if bias is None else bias.view(-1)
        try:
            if x.ndim > 3:  # per-head inputs; LLM.int8() flattens only 3-D inputs itself
                return lin(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], lin.out_features)
            return lin(x)
        finally:
            lin._parameters["bias"] = None

    def dequantize(self) -> Tensor:
        """The [out, in] float matrix the quantised weight stands for (a new tensor)."""
        import bitsandbytes.functional as bf

        weight = self.linear.weight
        state = getattr(weight, "quant_state", None)
        if state is not None:  # 4-bit
            return bf.dequantize_4bit(*unpacked_4bit(weight))
        scb = self.linear.state.SCB if self.linear.state.SCB is not None else weight.SCB  # 8-bit: row scales
        return bf.int8_vectorwise_dequant(weight.data, scb)

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """bitsandbytes' Linear4bit._save_to_state_dict unpacks a CPU-repacked weight *in place*, and its
        inverse leaves non-double-quantised scales in the repacked layout: the model computes other
        numbers after state_dict(). Save such a weight from an unpacked copy instead; the module is untouched."""
        lin = self.linear
        if not getattr(getattr(lin.weight, "quant_state", None), "packing_format_for_cpu", False):
            return super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        data, state = unpacked_4bit(lin.weight)
        unpacked = copy.copy(lin.weight)  # a new Params4bit: its quant_state is set below, not shared
        unpacked.data, unpacked.quant_state = data, state
        reader = copy.copy(lin)  # the module's attributes, with a parameter table of its own
        reader._parameters = {**lin._parameters, "weight": unpacked}
        shell = copy.copy(self)  # this wrapper, holding the reader in place of the module
        shell._modules = {"linear": reader}
        return nn.Module.state_dict(shell, *args, destination=destination, prefix=prefix, keep_vars=keep_vars)

    def dequantized_view(self) -> Tensor:
        """The weight in TransformerLens' shape, dequantised, as a read-only (inference) tensor."""
        with torch.inference_mode():
            return FROM_OUT_IN[self.layout](self.dequantize(), self.shape).contiguous()

    def nbytes(self) -> int:
        """Bytes this weight occupies: the packed data plus its quantisation statistics."""
        return weight_bytes(self.linear)


class QuantizedPart:
    """One weight of a quantised fused linear (`quantized["W_QKV"]`, `quantized["W_GATE_UP"]`): its rows of the whole.

    Used where the part runs alone (use_split_qkv_input, a separate key input, a hook reading W_in):
    the whole linear runs and this part's rows are kept, so the maths is the fused module's, row for
    row. Not a module (the whole is, once), so state_dict and memory counts hold the matrix once.
    """

    def __init__(self, whole: QuantizedLinear, rows: slice, part: FusedPart):
        self.whole, self.rows, self.shape, self.layout = whole, rows, part.shape, part.layout

    @property
    def linear(self) -> nn.Module:
        return self.whole.linear

    def __call__(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        out = self.whole(x)[..., self.rows]
        return out if bias is None else out + bias.reshape(-1)

    def dequantize(self) -> Tensor:
        return self.whole.dequantize()[self.rows]

    def dequantized_view(self) -> Tensor:
        with torch.inference_mode():
            return FROM_OUT_IN[self.layout](self.dequantize(), self.shape).contiguous()


def unpacked_4bit(weight) -> tuple[Tensor, object]:
    """A 4-bit weight's packed data and quant_state as bitsandbytes quantised them (copies where they differ).

    At the first no-grad forward on CPU, bitsandbytes repacks the weight for its AVX512-BF16 kernel,
    rounds the block scales (absmax) to bfloat16 and stores them [blocks per row, out]: unpack a copy,
    and lay the scales out again (bitsandbytes' own inverse restores only double-quantised ones).
    """
    import bitsandbytes.functional as bf

    state = weight.quant_state
    if not getattr(state, "packing_format_for_cpu", False):
        return weight.data, state
    nested = state.original_nested
    data, state = bf._convert_weight_packed_for_cpu_inverse(weight.data.clone(), copy.deepcopy(state))
    if not nested:
        state.absmax = state.absmax.T.reshape(-1).float()
    return data, state


def weight_tensors(bnb_linear: nn.Module) -> list[Tensor]:
    """A bitsandbytes linear's packed weight and its quantisation statistics (HF's modules too; bias not included)."""
    weight = bnb_linear.weight
    tensors = [weight.data]
    state = getattr(weight, "quant_state", None)
    if state is not None:
        tensors += [state.absmax, state.code]
        if state.state2 is not None:
            tensors += [state.state2.absmax, state.state2.code, state.offset]
    else:
        tensors += [bnb_linear.state.SCB if bnb_linear.state.SCB is not None else weight.SCB]
    return [t for t in tensors if isinstance(t, Tensor)]


def held_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors`: a storage several tensors view (a tied matrix and
    its transpose, GPT-2's W_Q/W_K/W_V over one c_attn buffer) is held once; a meta tensor holds none."""
    storages = {}
    for t in tensors:
        if t.device.type != "meta":
            s = t.untyped_storage()
            storages[(t.device, s.data_ptr())] = s.nbytes()
    return sum(storages.values())


def weight_bytes(bnb_linear: nn.Module) -> int:
    """Bytes of a bitsandbytes linear's weight and statistics (HF's modules too; bias not counted)."""
    return held_bytes(weight_tensors(bnb_linear))


class QuantizableLinears(nn.Module):
    """Base of every component with linear maps: `_linear` runs a named weight, quantised or not."""

    def quantized_linear(self, name: str) -> QuantizedLinear | QuantizedPart | None:
        q = self._modules.get("quantized")
        if q is None:
            return None
        found = q._modules.get(name)
        if found is None:
            for whole, parts in self.fused_parts().items():
                start = 0
                for part in parts:
                    if part.name == name and whole in q._modules:
                        return QuantizedPart(q._modules[whole], slice(start, start + part.rows), part)
                    start += part.rows
        return found

    def fused_parts(self) -> dict[str, list[FusedPart]]:
        """The groups of this component's weights that HF computes with one linear: W_QKV, W_GATE_UP (none here)."""
        return {}

    def _linear(self, x: Tensor, name: str, bias: Tensor | None = None, layout: str = "in_out") -> Tensor:
        """x times the weight `name` (TransformerLens-shaped, turned by `layout`), plus `bias` [out] or
        [heads, d_head] (flattened here, and only when it is kept)."""
        # Generation runs this ~200 times a token: read the dicts nn.Module keeps instead of going
        # through getattr and two __getattr__ layers (a property, such as GQA's W_K, still works).
        if "quantized" in self._modules:
            quantized = self.quantized_linear(name)
            if quantized is not None:
                return quantized(x, bias)
        weight = self._parameters.get(name)
        weight = self._out_in(name, weight, layout) if weight is not None else TO_OUT_IN[layout](getattr(self, name))
        # A zero bias is skipped where HF's layer has none: mm, as HF runs it (lensutil/model/zero_bias.py).
        cfg = self.__dict__.get("cfg")
        bias = bias_or_none(bias, cfg is not None and BIAS_OF.get(name) in cfg.absent_biases)
        return F.linear(x, weight, None if bias is None else bias.reshape(-1))

    def _out_in(self, name: str, weight: nn.Parameter, layout: str) -> Tensor:
        """TO_OUT_IN[layout](weight), remembered: making the view costs about as much as the matmul of one token.

        A view shares its parameter's storage, so in-place edits (load_state_dict, weight processing,
        optimiser steps) show through it. It is made again when the parameter is another object, or
        holds another storage or shape (`param.data = ...`); never kept where autograd could want the
        weight's gradient through it, and dropped when the module is moved or cast (_apply), so that it
        holds no old copy alive. Never kept for an offloaded module (lensutil/loading/offloaded_weights.py):
        accelerate loads its weights for each forward and drops them after, and a kept view would hold
        them in memory.
        """
        if (not isinstance(weight, nn.Parameter) or (weight.requires_grad and torch.is_grad_enabled())
                or "_lens_offload" in self.__dict__):
            return TO_OUT_IN[layout](weight)  # plain tensors: torch.func's functional_call, for one
        views = self.__dict__.setdefault("_out_in_views", {})
        key = (weight.data_ptr(), weight.shape, weight.stride(), layout)
        cached = views.get(name)
        if cached is None or cached[0] is not weight or cached[1] != key:
            cached = views[name] = (weight, key, TO_OUT_IN[layout](weight))
        return cached[2]

    def _apply(self, fn, recurse: bool = True):
        self.__dict__.pop("_out_in_views", None)
        return super()._apply(fn, recurse)

    def _per_head_linear(self, x: Tensor, name: str, bias: Tensor) -> Tensor:
        """A quantised heads_in projection of one input per head, [batch, pos, n, d_model] -> [batch, pos, n, d_head].

        Head i's output is head i's slice of the quantised linear applied to head i's input: run the
        linear on every head's input and keep the diagonal (n times the work; exact quantised maths).
        """
        batch, pos, n, d_model = x.shape
        out = self.quantized_linear(name)(x.reshape(-1, d_model), bias)  # [batch * pos * n, n * d_head]
        return torch.diagonal(out.view(batch, pos, n, n, -1), dim1=2, dim2=3).permute(0, 1, 3, 2)

    def _per_head_result(self, z: Tensor, name: str) -> Tensor:
        """A quantised heads_out map per head, [batch, pos, head_index, d_head] -> [batch, pos, head_index, d_model].

        Head i's result is the quantised linear (no bias) applied to z with every other head zeroed.
        The heads' results sum to the full output up to the kernel's rounding (bitsandbytes' CPU 4-bit
        kernel rounds activations to bfloat16); LLM.int8() rounds each row's activations by that
        row's own scale, so 8-bit results sum to it only approximately.
        """
        batch, pos, n, d_head = z.shape
        blocks = z.new_zeros(batch, pos, n, n, d_head)
        idx = torch.arange(n, device=z.device)
        blocks[:, :, idx, idx] = z
        return self.quantized_linear(name)(blocks.reshape(batch, pos, n, n * d_head))

    def __getattr__(self, name: str):
        # Parameters and submodules first, as nn.Module.__getattr__ looks them up, without its frame:
        # forward reads ~25 of them per layer.
        d = self.__dict__
        params, modules = d["_parameters"], d["_modules"]
        if name in params:
            return params[name]
        if name in modules:
            return modules[name]
        try:
            return super().__getattr__(name)
        except AttributeError:
            quantized = self.quantized_linear(name) if "quantized" in modules else None
            if quantized is not None:
                return quantized.dequantized_view()
            raise


def mode_of(config) -> str:
    """'8-bit', '4-bit nf4' or '4-bit fp4' (with ' double-quant' when asked)."""
    if config.load_in_8bit:
        return "8-bit"
    return f"4-bit {config.bnb_4bit_quant_type}" + (" double-quant" if config.bnb_4bit_use_double_quant else "")


def is_quantized(model: nn.Module) -> bool:
    return getattr(model, "quantization_config", None) is not None


def refuse_if_quantized(model: nn.Module, what: str) -> None:
    """A clear error for operations that need full-precision weights (weight processing, ...)."""
    if is_quantized(model):
        raise QuantizationError(
            f"{what} needs full-precision weights, but this model is quantised ({mode_of(model.quantization_config)}). "
            "Process first, then quantise: from_pretrained(name, fold_ln=True, ..., load_in_4bit=True) does both in that order."
        )


def fused_group(module: QuantizableLinears, path: str, name: str, skip: set[str]) -> tuple[str, list[str]] | None:
    """(the quantised module's name, the weights it holds) for weight `name`: itself alone, or its fused group
    (module.fused_parts()) when that is quantised whole; None for a later weight of such a group."""
    for whole, parts in module.fused_parts().items():
        names = [p.name for p in parts]
        if name in names and not any(f"{path}.{n}" in skip for n in names):
            return (whole, names) if name == names[0] else None
    return name, [name]


def whole_shape(shapes: list[torch.Size], layout: str) -> tuple[int, ...]:
    """The TransformerLens shape of several weights' rows side by side: heads stacked (heads_in), columns (in_out)."""
    if len(shapes) == 1:
        return tuple(shapes[0])
    if layout == "heads_in":
        return (sum(s[0] for s in shapes), *shapes[0][1:])
    return (shapes[0][0], sum(s[1] for s in shapes))
