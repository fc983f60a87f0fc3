"""From a name to a HookedTransformer: zoo names, local directories and hub names, one step per module.

name -> source and the HuggingFace model (hf_source.py) -> adapter and state dict, strictly loaded into
the model (convert.py, strict.py) -> weight processing (model/processing.py) -> device and dtype
(convert.place) -> quantisation (quantization.py). With a device map the same steps run block by
block, straight to where each weight lives (placed.py).

Loading is strict: the adapter must use every HF weight and fill every lensutil weight, or it
raises a WeightLoadError naming the culprit. Nothing is silently re-initialised.
"""

from __future__ import annotations

import torch

from ..config import DEFAULT_ATTN_IMPLEMENTATION
from ..errors import ConfigError
from ..model import doors
from ..model.processing import process_weights_
from ..model.transformer import HookedTransformer
from . import hf_source, placement as pl, quantization as qz, saving
from .convert import PROCESSING_OPTIONS, convert_into, name_overrides, place
from .hf_quantized import hf_linears
from .placed import load_placed


def from_pretrained(
    name_or_path: str,
    *,
    hf_model=None,
    tokenizer=None,
    dtype: torch.dtype | str | None = None,
    device: str | None = None,
    revision: str | None = None,
    token: str | None = None,
    n_ctx: int | None = None,
    default_prepend_bos: bool | None = None,
    default_padding_side: str | None = None,
    attn_implementation: str | None = None,
    fold_ln: bool = True,
    center_writing_weights: bool | None = None,
    center_unembed: bool | None = None,
    fold_value_biases: bool = True,
    refactor_factored_attn_matrices: bool = False,
    # TransformerLens 2.18's other from_pretrained arguments (tl_options below says what each does here).
    move_to_device: bool = True,
    checkpoint_index: int | None = None,
    checkpoint_value: int | None = None,
    first_n_layers: int | None = None,
    # Quantisation (lensutil/loading/quantization.py): HuggingFace's from_pretrained arguments.
    load_in_8bit: bool = False,
    load_in_4bit: bool = False,
    quantization_config=None,
    bnb_4bit_quant_type: str | None = None,
    bnb_4bit_compute_dtype: torch.dtype | str | None = None,
    bnb_4bit_use_double_quant: bool | None = None,
    # Placement over devices and disk (lensutil/loading/placement.py): accelerate's arguments, and TransformerLens' n_devices.
    device_map=None,
    max_memory: dict | None = None,
    offload_folder: str | None = None,
    n_devices: int | None = None,
    max_seq_len: int | None = None,
    **unknown,
) -> HookedTransformer:
    """Load a model by zoo name, local directory, hub name or TransformerLens name (gpt2-small), convert it,
    and process its weights. A directory written by model.save_pretrained() loads exactly as saved (its
    config records the processing; the processing options are not applied again).

    Weights are converted and processed in float32 (float64 for a float64 model) and only then cast
    to `dtype` (default float32; a save_pretrained() directory: the dtype it was saved in), so
    processing adds no half-precision rounding of its own. The default
    attn_implementation="sdpa" (HuggingFace's default too) uses torch's fused attention whenever no
    hook reads the scores or pattern, and rounds like HuggingFace's "sdpa"; a hook on hook_pattern
    or hook_attn_scores (run_with_cache of everything) switches that layer to the written-out path,
    which rounds like HuggingFace's "eager", so its logits differ from a plain forward's in the last
    bits. attn_implementation="eager" always writes attention out (bit-exact with HF eager).
    With hf_model= and no attn_implementation, the model follows hf_model's own mode (eager or sdpa),
    so converting a HuggingFace model keeps its maths, and the two compare bit for bit.
    max_seq_len is read as n_ctx (the name a widely shared guide uses). TransformerLens 2.18's
    refactor_factored_attn_matrices (lensutil/model/refactor_attn.py), default_padding_side and
    move_to_device do what they do there; checkpoint_index, checkpoint_value and first_n_layers raise
    a ConfigError saying what to pass instead.
    """
    refuse_unknown_kwargs(unknown, from_pretrained)
    refuse_tl_only(checkpoint_index=checkpoint_index, checkpoint_value=checkpoint_value, first_n_layers=first_n_layers)
    attn_implementation = attn_implementation or attention_mode_of(hf_model)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if max_seq_len is not None:
        if n_ctx is not None and n_ctx != max_seq_len:
            raise ConfigError(f"max_seq_len={max_seq_len} and n_ctx={n_ctx} disagree; max_seq_len means n_ctx, pass only n_ctx.")
        n_ctx = max_seq_len
    options = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                   center_unembed=center_unembed, fold_value_biases=fold_value_biases,
                   refactor_factored_attn_matrices=refactor_factored_attn_matrices)
    quant = dict(load_in_8bit=load_in_8bit, load_in_4bit=load_in_4bit, quantization_config=quantization_config,
                 bnb_4bit_quant_type=bnb_4bit_quant_type, bnb_4bit_compute_dtype=bnb_4bit_compute_dtype,
                 bnb_4bit_use_double_quant=bnb_4bit_use_double_quant)
    placement = dict(device_map=device_map, max_memory=max_memory, offload_folder=offload_folder, n_devices=n_devices)
    bnb_config = qz.config_from_kwargs(**quant)  # None, or a BitsAndBytesConfig; conflicting arguments fail here
    if hf_model is None and saving.is_lensutil_dir(name_or_path):  # from model.save_pretrained(): as saved, not reprocessed
        return saving.load_saved(name_or_path, tokenizer=tokenizer, dtype=dtype, device=device, bnb_config=bnb_config)
    dtype = dtype or torch.float32
    overrides = name_overrides(name_or_path, attn_implementation)
    if n_ctx is not None:
        overrides["n_ctx"] = n_ctx
    if default_prepend_bos is not None:
        overrides["default_prepend_bos"] = default_prepend_bos
    if default_padding_side is not None:  # TransformerLens': the side a list of strings is padded on
        if default_padding_side not in ("left", "right"):
            raise ConfigError(f"default_padding_side must be 'left' or 'right', got {default_padding_side!r}.")
        overrides["default_padding_side"] = default_padding_side
    if pl.requested(**placement):  # over GPUs, CPU and disk: weights loaded straight to where they live
        if refactor_factored_attn_matrices:
            raise ConfigError("refactor_factored_attn_matrices is not available with a device_map/n_devices (it decomposes "
                              "every head's weights at once); load on one device, or without it.")
        if device is not None:
            raise ConfigError(f"Pass device={device!r} or a device_map/n_devices, not both (a device map says where every block goes).")
        return load_placed(name_or_path, hf_model=hf_model, tokenizer=tokenizer, dtype=dtype, revision=revision, token=token,
                           overrides=overrides, options=options, bnb_config=bnb_config, **placement)
    if hf_model is None:
        hf_model, loaded_tokenizer = hf_source.load_hf(name_or_path, revision=revision, token=token)
        tokenizer = tokenizer or loaded_tokenizer
    # An hf_model that bitsandbytes already quantised: converted dequantised, then its quantised modules copied.
    hf_state_dict, bnb_config = qz.prepare_from_hf(hf_model, bnb_config, options)
    model = convert_into(HookedTransformer, hf_model, tokenizer, dtype, overrides, hf_state_dict)
    if any(v is not False for v in options.values()):
        process_weights_(model, **options)
    # move_to_device=False (TransformerLens'): the model stays on the CPU, where it was converted.
    model = place(model, device if move_to_device else "cpu", dtype)
    # Quantised last: weights processed in full precision, then quantised on their device (quantization.py).
    copies = hf_linears(hf_model, model) if hf_state_dict is not None else None  # HF's quantised modules, as they are
    return qz.quantize_(model, bnb_config, copies) if bnb_config is not None else model


def refuse_tl_only(**given) -> None:
    """A ConfigError for TransformerLens arguments that rest on its per-model tables, each with what to do instead."""
    what = {
        "checkpoint_index": "TransformerLens maps it to a training checkpoint through its per-model checkpoint tables, "
                            "which lensutil does not have; pass revision='<the hub branch or commit of that checkpoint>'",
        "checkpoint_value": "TransformerLens maps it to a training checkpoint through its per-model checkpoint tables, "
                            "which lensutil does not have; pass revision='<the hub branch or commit of that checkpoint>'",
        "first_n_layers": "lensutil loads every layer (loading is strict: every checkpoint weight is used); load the model "
                          "and run model(tokens, stop_at_layer=n) for the first n layers' output",
    }
    for name, value in given.items():
        if value is not None:
            raise ConfigError(f"from_pretrained({name}={value!r}) is not supported: {what[name]}.")


def attention_mode_of(hf_model) -> str:
    """hf_model's attention mode where lensutil has it ("eager" or "sdpa"), else lensutil's default."""
    mode = getattr(getattr(hf_model, "config", None), "_attn_implementation", None)
    return mode if mode in ("eager", "sdpa") else DEFAULT_ATTN_IMPLEMENTATION


def refuse_unknown_kwargs(unknown: dict, fn) -> None:
    """A LensError for keyword arguments `fn` does not take: each with its closest accepted name, and the full list.

    Python's own "unexpected keyword argument" names neither what was meant nor what is accepted.
    """
    if not unknown:
        return
    import difflib
    import inspect

    accepted = [p.name for p in inspect.signature(fn).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY]
    parts = []
    for name in sorted(unknown):
        close = difflib.get_close_matches(name, accepted, n=1, cutoff=0.6)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ConfigError(
        f"{fn.__qualname__}() got unknown keyword argument{'s' if len(parts) > 1 else ''} {', '.join(parts)}. "
        f"It accepts: {', '.join(accepted)}."
    )


def from_pretrained_no_processing(name_or_path: str, **kwargs) -> HookedTransformer:
    """from_pretrained with every weight-processing option off: weights exactly as HuggingFace's."""
    return from_pretrained(name_or_path, **{**kwargs, **{o: False for o in PROCESSING_OPTIONS}})


# The model's TransformerLens doors (lensutil/model/doors.py says why they are filled from here).
doors.provide("HookedTransformer.from_pretrained", from_pretrained)
doors.provide("HookedTransformer.from_pretrained_no_processing", from_pretrained_no_processing)
