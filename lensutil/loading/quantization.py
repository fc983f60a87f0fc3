"""8-bit and 4-bit models through bitsandbytes: the config, its errors, and `quantize_`.

The design: quantisation swaps the linear maths, not the model's structure. A model is loaded
and converted in float32 as always, its weights are processed (fold_ln, ...) in full precision,
and only then does `quantize_` replace each linear weight by a bitsandbytes module built as
HuggingFace's `replace_with_bnb_linear` builds it, from the same [out, in] matrix
(lensutil/model/linear.py). So with no processing and the same BitsAndBytesConfig the
quantised bytes are HuggingFace's, the same bitsandbytes kernels run, and the logits equal those
of HuggingFace's own quantised model.

What is quantised, as HuggingFace does: the attention and MLP matrices (W_Q, W_K, W_V, W_O,
W_in, W_gate, W_out), BERT's MLM-head and pooler matrices. What stays in full precision, as in
HuggingFace: embeddings, positional embeddings, norms, biases, the unembedding (HF's lm_head /
tied output embedding) and the MoE router. One difference: transformers 5 keeps a Mixtral's
experts as fused 3-D parameters, which its bitsandbytes integration does not quantise (it
replaces nn.Linear and Conv1D only), while lensutil quantises each expert's matrices (most of a
Mixtral's weights). BitsAndBytesConfig(llm_int8_skip_modules=["lm_head", "experts"]) keeps
lensutil's experts in full precision too, for a like-for-like comparison; a model read from HF's
quantised model (hf_model=) is quantised exactly where that model is (hf_quantized.py). Skip patterns are read
as HuggingFace reads them, against HF's module names ("lm_head", "down_proj", GPT-2's fused
"c_attn" = W_Q, W_K, W_V), mapped to lensutil's weights by the model's adapter; lensutil's own
weight paths (e.g. "blocks.0.attn.W_Q") match too, at dot boundaries (skipped_weights).

Axis names: see lensutil/model/.
"""

from __future__ import annotations

import functools
import re

import torch
from torch import nn

from ..architectures.registry import adapter_for
from ..errors import QuantizationError
from ..model.linear import (
    TO_OUT_IN,
    QuantizableLinears,
    QuantizedLinear,
    fused_group,
    held_bytes,
    is_quantized,
    mode_of,
    weight_tensors,
    whole_shape,
)
from .hf_quantized import copy_bnb_linear


INSTALL = 'pip install "bitsandbytes>=0.48"'
MODES = ("8-bit", "4-bit nf4", "4-bit fp4")


def require_bitsandbytes():
    try:
        import bitsandbytes
    except ImportError as err:
        raise QuantizationError(
            f"8-bit and 4-bit models need the bitsandbytes package, which is not installed ({err}). "
            f"Install it with: {INSTALL}  (it runs on CPU and CUDA), then restart the kernel."
        ) from err
    return bitsandbytes


def config_from_kwargs(load_in_8bit=False, load_in_4bit=False, quantization_config=None, bnb_4bit_quant_type=None,
                       bnb_4bit_compute_dtype=None, bnb_4bit_use_double_quant=None):
    """The BitsAndBytesConfig that from_pretrained's quantisation arguments ask for, or None for none.

    The arguments are HuggingFace's, with HuggingFace's defaults (BitsAndBytesConfig: 4-bit "fp4",
    compute dtype float32, no double quantisation), so the same arguments quantise the same way.
    """
    four_bit_options = {k: v for k, v in dict(bnb_4bit_quant_type=bnb_4bit_quant_type, bnb_4bit_compute_dtype=bnb_4bit_compute_dtype,
                                              bnb_4bit_use_double_quant=bnb_4bit_use_double_quant).items() if v is not None}
    if load_in_8bit and load_in_4bit:
        raise QuantizationError("load_in_8bit=True and load_in_4bit=True both asked for; a model is quantised one way. Pass only one.")
    if quantization_config is None and not (load_in_8bit or load_in_4bit):
        if four_bit_options:
            raise QuantizationError(f"{', '.join(four_bit_options)} only apply to 4-bit models: add load_in_4bit=True.")
        return None
    require_bitsandbytes()
    from transformers import BitsAndBytesConfig

    if quantization_config is not None:
        if isinstance(quantization_config, dict):
            quantization_config = BitsAndBytesConfig(**quantization_config)
        if not isinstance(quantization_config, BitsAndBytesConfig):
            raise QuantizationError(
                f"quantization_config is a {type(quantization_config).__name__}; lensutil quantises through bitsandbytes "
                "only. Pass transformers.BitsAndBytesConfig(load_in_8bit=True) or (load_in_4bit=True, ...)."
            )
        if load_in_8bit or load_in_4bit or four_bit_options:
            raise QuantizationError(
                "Pass either quantization_config=BitsAndBytesConfig(...) or load_in_8bit/load_in_4bit/bnb_4bit_* "
                "arguments, not both (HuggingFace refuses the mix too): put every setting in the config."
            )
        if not (quantization_config.load_in_8bit or quantization_config.load_in_4bit):
            raise QuantizationError("This BitsAndBytesConfig asks for neither load_in_8bit nor load_in_4bit; set one to True.")
        return quantization_config
    if load_in_8bit and four_bit_options:
        raise QuantizationError(f"{', '.join(four_bit_options)} only apply to 4-bit models, but load_in_8bit=True.")
    if bnb_4bit_quant_type not in (None, "nf4", "fp4"):
        raise QuantizationError(f"bnb_4bit_quant_type={bnb_4bit_quant_type!r}; bitsandbytes' 4-bit types are 'nf4' and 'fp4'.")
    settings = {"bnb_4bit_quant_type": "fp4", **four_bit_options} if load_in_4bit else {}
    return BitsAndBytesConfig(load_in_8bit=load_in_8bit, load_in_4bit=load_in_4bit, **settings)


def config_for_mode(mode: str, **extra):
    """A BitsAndBytesConfig for one of MODES ('8-bit', '4-bit nf4', '4-bit fp4'), HuggingFace's defaults otherwise."""
    from transformers import BitsAndBytesConfig

    if mode == "8-bit":
        return BitsAndBytesConfig(load_in_8bit=True, **extra)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=mode.split()[-1], **extra)


def make_bnb_linear(w_out_in: torch.Tensor, config) -> nn.Module:
    """A bias-free bitsandbytes linear holding `w_out_in` ([out, in]) quantised, made as HuggingFace makes it.

    transformers' replace_with_bnb_linear builds the module on the meta device, then its
    Bnb4bitQuantize / Bnb8bitQuantize ops wrap the checkpoint's [out, in] weight in Params4bit /
    Int8Params (built from the meta parameter's attributes) and move it to its device, which quantises.
    """
    bnb = require_bitsandbytes()
    out_features, in_features = w_out_in.shape
    device = w_out_in.device
    with torch.device("meta"):
        if config.load_in_8bit:
            lin = bnb.nn.Linear8bitLt(in_features, out_features, False, has_fp16_weights=config.llm_int8_has_fp16_weight,
                                      threshold=config.llm_int8_threshold)
        else:
            lin = bnb.nn.Linear4bit(in_features, out_features, False, config.bnb_4bit_compute_dtype,
                                    compress_statistics=config.bnb_4bit_use_double_quant,
                                    quant_type=config.bnb_4bit_quant_type, quant_storage=config.bnb_4bit_quant_storage)
    if config.load_in_8bit:
        kwargs = dict(lin.weight.__dict__)
        kwargs.pop("SCB", None)
        lin.weight = bnb.nn.Int8Params(w_out_in.to("cpu"), requires_grad=False, **kwargs).to(device)
    else:
        lin.weight = bnb.nn.Params4bit(w_out_in, requires_grad=False, **lin.weight.__dict__).to(device)
    return lin.requires_grad_(False)


@functools.lru_cache(maxsize=None)
def probe_mode(mode: str, device: str) -> str | None:
    """None if this bitsandbytes build runs `mode` on `device` (a 64x64 layer quantised and run), else the error."""
    try:
        require_bitsandbytes()
        lin = make_bnb_linear(torch.randn(64, 64, device=device), config_for_mode(mode))
        out = QuantizedLinear(lin, "in_out", (64, 64)).eval()(torch.randn(2, 64, device=device))
        if not torch.isfinite(out).all():
            return "the quantised layer returned non-finite values"
    except Exception as err:  # any failure means: not on this device/build
        return f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    return None


def check_mode_runs(config, device) -> None:
    mode = "8-bit" if config.load_in_8bit else f"4-bit {config.bnb_4bit_quant_type}"
    failure = probe_mode(mode, str(device))
    if failure is None:
        return
    import bitsandbytes

    runs = [m for m in MODES if probe_mode(m, str(device)) is None]
    raise QuantizationError(
        f"{mode} does not run on {device} with bitsandbytes {bitsandbytes.__version__} ({failure}). "
        + (f"What runs here: {', '.join(runs)}." if runs else "No bitsandbytes mode runs on this device: load the model unquantised.")
        + " Update bitsandbytes (CPU kernels need >= 0.48), or load on another device."
    )


def _skipped(path: str, patterns) -> bool:
    return any(re.search(rf"(?:^|\.)(?:{p})(?:\.|$)", path) for p in patterns or ())


def _hf_matches(pattern: str, module: str) -> bool:
    """HuggingFace's rule (transformers.quantizers.quantizers_utils.should_convert_module): from the start up
    to a module boundary, as a regex with that boundary, or as a suffix ("down_proj" matches "model.layers.0.mlp.down_proj")."""
    return bool(re.match(rf"(?:{pattern})(?:(?<=\.)|(?=\.|$))", module)) or module.endswith(pattern)


def _under(path: str, targets) -> bool:
    # a target is a weight ("blocks.0.attn.W_K") or a prefix ("blocks.0.mlp.experts"); GQA's compact _W_K is W_K
    path = _weight_key(path)
    return any(path == t or path.startswith(t + ".") for t in targets)


def skipped_weights(model: nn.Module, paths: list[str], patterns) -> set[str]:
    """Which of `paths` (quantisable weights) `llm_int8_skip_modules` keeps in full precision, read as
    HuggingFace reads it. A pattern may name HF modules ("lm_head", "down_proj", "c_attn",
    "model.layers.0.self_attn": the adapter says which lensutil weights each holds; GPT-2's c_attn
    holds W_Q, W_K and W_V) or lensutil weights ("blocks.0.attn.W_Q", "experts"). A list replaces HF's
    default, which keeps the output embedding (lm_head) unquantised; lensutil's W_U always stays full
    precision, so a list that leaves lm_head out is refused instead of quietly differing from HF."""
    adapter = adapter_for(model.cfg) if hasattr(model, "cfg") else None
    hf_names = adapter.module_names(model.cfg) if adapter is not None and adapter.module_names is not None else {}
    if patterns is None:
        return set()
    skip = set()
    for pattern in patterns:
        hf_hits = [n for n in hf_names if _hf_matches(pattern, n)]
        hits = {p for p in paths if _skipped(p, [pattern]) or _under(p, [t for n in hf_hits for t in hf_names[n]])}
        if not hf_hits and not hits:
            leaves = sorted({n.split(".")[-1] for n in hf_names})
            raise QuantizationError(
                f"llm_int8_skip_modules names {pattern!r}, which matches no module of this model. "
                + (f"HuggingFace's linear modules here end in {', '.join(leaves)} (e.g. {next(iter(hf_names))!r}); " if hf_names else "")
                + f"lensutil's weights are paths such as {paths[0]!r}. Check the spelling."
            )
        skip |= hits
    output = [n for n, targets in hf_names.items() if "unembed.W_U" in targets]
    if output and not any(_hf_matches(p, output[0]) or _skipped("unembed.W_U", [p]) for p in patterns):
        raise QuantizationError(
            f"llm_int8_skip_modules={list(patterns)!r} leaves out {output[0]!r}. A list replaces HuggingFace's default skips, so "
            f"HuggingFace would quantise {output[0]!r} (and fail where it is tied to the embedding), while lensutil keeps its "
            f"unembedding W_U in full precision. Add {output[0]!r} to the list (the model is then HF's, byte for byte)."
        )
    return skip


def linear_weights(module: QuantizableLinears) -> dict[str, str]:
    """The quantisable weights of a component and their layouts: its W... parameters (W_O maps heads out)."""
    layouts = {}
    for name, p in module._parameters.items():
        if p is not None and name.lstrip("_").startswith("W"):
            layouts[name] = "in_out" if p.ndim == 2 else ("heads_out" if name == "W_O" else "heads_in")
    return layouts


def quantize_(model: nn.Module, config, copies: dict[str, nn.Module] | None = None) -> nn.Module:
    """Quantise a model's linear weights in place with bitsandbytes, as HuggingFace would; returns the model.

    Contract (for loading code that places the model first): call it once, after weight processing
    and after the model is on its final device(s) and dtype; each weight is quantised on the device
    it is on. `config` is a transformers.BitsAndBytesConfig (or from config_from_kwargs). Raises a
    QuantizationError if the model is already quantised or the mode cannot run on that device.
    `copies` (for a model converted from an HF model bitsandbytes quantised, hf_quantized.hf_linears):
    the HF module holding each weight, copied as it is; a weight it lacks stays in full precision.
    """
    if is_quantized(model):
        raise QuantizationError(
            f"This model is already quantised ({mode_of(model.quantization_config)}); quantising twice would round "
            "rounded weights. Load the model again from its name with the quantisation you want."
        )
    require_bitsandbytes()
    for device in {p.device for p in model.parameters()}:
        check_mode_runs(config, device)
    weights = [(path, module, name, layout) for path, module in model.named_modules() if isinstance(module, QuantizableLinears)
               for name, layout in linear_weights(module).items()]
    paths = [f"{path}.{name}" for path, _, name, _ in weights]
    skip = (skipped_weights(model, paths, config.llm_int8_skip_modules) if copies is None
            else {p for p in paths if _weight_key(p) not in copies})  # quantised where HF's model is, nowhere else
    for path, module, name, layout in weights:
        if f"{path}.{name}" in skip:
            continue
        group = fused_group(module, path, name, skip)
        if group is None:
            continue  # quantised with the first weight of its group, as one matrix
        name, names = group
        params = [module._parameters[n].detach() for n in names]
        # [out, in] of each, rows side by side: HF's one matrix for a fused group
        weight = torch.cat([TO_OUT_IN[layout](p) for p in params])
        shape = whole_shape([p.shape for p in params], layout)
        if copies is None:
            lin = make_bnb_linear(weight, config)
        else:
            lin = copy_bnb_linear(copies[_weight_key(f"{path}.{name}")], weight.device)
            if lin.in_features * lin.out_features != weight.numel():
                raise QuantizationError(
                    f"The hf_model's quantised module for {path}.{name} is [{lin.out_features}, {lin.in_features}], which does not "
                    f"hold a {list(shape)} weight: this adapter's module_names table is wrong. Please report it."
                )
        if "quantized" not in module._modules:
            module.add_module("quantized", nn.ModuleDict())
        for n in names:
            del module._parameters[n]
        module._modules["quantized"][name] = QuantizedLinear(lin, layout, shape)
        if name in module.fused_parts():  # the float storage the group's weights viewed: freed
            storage = {"W_QKV": "_qkv_storage", "W_GATE_UP": "_gate_up_storage"}[name]
            setattr(module, storage, None)
    model.quantization_config = config
    return model.eval()


def _weight_key(path: str) -> str:
    return re.sub(r"\._(W_[KV])$", r".\1", path)  # GQA's compact _W_K is W_K


# ---- HuggingFace models already quantised -----------------------------------------------------


def hf_quantization_config(hf_model):
    """The BitsAndBytesConfig an HF model was quantised with, or None for a full-precision one."""
    config = getattr(hf_model, "hf_quantizer", None)
    config = getattr(config, "quantization_config", None) or getattr(hf_model.config, "quantization_config", None)
    if config is None:
        return None
    if isinstance(config, dict):
        if config.get("quant_method") != "bitsandbytes":
            raise QuantizationError(f"This hf_model is quantised with {config.get('quant_method')!r}; lensutil reads bitsandbytes models only.")
        from transformers import BitsAndBytesConfig

        config = BitsAndBytesConfig.from_dict(config)
    return config


def prepare_from_hf(hf_model, asked, processing: dict):
    """For an hf_model passed to from_pretrained: (state dict to convert or None, the config to quantise with).

    An HF model that bitsandbytes already quantised is converted from its dequantised weights, then
    quantize_ puts copies of its quantised modules in their place (lensutil/loading/hf_quantized.py): the
    model computes as the HF model does. Weight processing cannot run on rounded weights.
    """
    hf_config = hf_quantization_config(hf_model)
    if hf_config is None:
        return None, asked
    asked_for = [k for k, v in processing.items() if v is not False]
    if asked_for:
        raise QuantizationError(
            f"{', '.join(asked_for)} asked on an hf_model that is already quantised ({mode_of(hf_config)}): weight processing "
            "needs full-precision weights. Load by name with the quantisation instead, e.g. from_pretrained(name, "
            "load_in_4bit=True): lensutil processes in float32, then quantises. Or pass fold_ln=False, center_unembed=False, "
            "fold_value_biases=False (from_pretrained_no_processing) to use this model as it is."
        )
    if asked is not None:
        raise QuantizationError(
            f"This hf_model is already quantised ({mode_of(hf_config)}); quantising it again ({mode_of(asked)}) would round "
            "rounded weights. Drop the quantisation arguments (lensutil keeps the model's own), or pass a full-precision hf_model."
        )
    return dequantized_state_dict(hf_model), hf_config


def dequantized_state_dict(hf_model) -> dict:
    """An HF bitsandbytes model's state dict with every quantised weight dequantised to float32, in its checkpoint layout."""
    bnb = require_bitsandbytes()
    from transformers.pytorch_utils import Conv1D

    state = {}
    for path, module in hf_model.named_modules():
        for name, tensor in list(module._parameters.items()) + list(module._buffers.items()):
            if tensor is None or (name in module._non_persistent_buffers_set):
                continue
            key = f"{path}.{name}" if path else name
            if isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) and name == "weight":
                w = QuantizedLinear(module, "in_out", ()).dequantize().float()
                tensor = w.T if getattr(module, "source_cls", None) is Conv1D else w  # GPT-2 stores [in, out]
            state[key] = tensor.detach()
    return state


# ---- memory -----------------------------------------------------------------------------------


def weight_memory(model: nn.Module) -> dict:
    """Bytes of a model's weights (lensutil's or HuggingFace's) as held in memory: all of them, the
    quantised linears', and what those linears take in float32. Quantisation statistics (absmax,
    scales) are counted. Each storage counts once, however many parameters view it: HF's tied
    lm_head is its input embedding (once), while lensutil's W_U, like TransformerLens', is a
    parameter of its own (counted, since it is held)."""
    bnb = require_bitsandbytes()
    linears = {}
    for module in model.modules():
        lin = module.linear if isinstance(module, QuantizedLinear) else module
        if isinstance(lin, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
            linears[id(lin)] = lin
    quantized = [t for lin in linears.values() for t in weight_tensors(lin)]
    float32 = sum(lin.in_features * lin.out_features * 4 for lin in linears.values())
    return {"total": held_bytes([*model.parameters(), *model.buffers(), *quantized]), "linear": held_bytes(quantized),
            "linear_float32": float32, "unembed_apart": unembed_apart_bytes(model)}


def unembed_apart_bytes(model: nn.Module) -> int:
    """Bytes lensutil holds for W_U apart from W_E where the checkpoint ties them (HF holds that matrix
    once); 0 for an untied model, for an HF model, and where W_U views W_E's storage. lensutil keeps
    W_U a parameter of its own, as TransformerLens does, so an edit of one never reaches the other."""
    cfg, unembed = getattr(model, "cfg", None), getattr(model, "unembed", None)
    if unembed is None or not getattr(cfg, "tie_word_embeddings", False):
        return 0
    quantized = unembed.quantized_linear("W_U") if hasattr(unembed, "quantized_linear") else None
    tensors = weight_tensors(quantized.linear) if quantized is not None else [unembed.W_U]
    embed = held_bytes([model.W_E])
    return held_bytes([*tensors, model.W_E]) - embed  # 0 when they share a storage


__all__ = ["QuantizationError", "config_from_kwargs", "quantize_", "is_quantized", "weight_memory", "FROM_OUT_IN"]
