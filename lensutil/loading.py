"""From a name to a HookedTransformer: zoo names, local directories and hub names.

Loading is strict: the adapter must use every HF weight and fill every lensutil weight, or it
raises a WeightLoadError naming the culprit. Nothing is silently re-initialised.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from . import saving, zoo
from .adapters import get_adapter
from .components import compute_dtype
from .config import DEFAULT_ATTN_IMPLEMENTATION
from .errors import ConfigError, LensError, ModelAccessError, WeightLoadError
from .hf_quantized import hf_linears
from .initialization import loading_weights
from .model import HookedTransformer

# On by default, as in TransformerLens. center_writing_weights=None: "where valid" (LayerNorm
# models); on RMSNorm models it is skipped quietly, and recorded in the ProcessingReport.
DEFAULT_PROCESSING = {"fold_ln": True, "center_writing_weights": None, "center_unembed": True, "fold_value_biases": True}
PROCESSING_OPTIONS = tuple(DEFAULT_PROCESSING)


def resolve_source(name_or_path: str) -> str:
    """A zoo name becomes its local directory, a TransformerLens name its hub repository (gpt2-small ->
    gpt2); directories and other hub names pass through; a path that does not exist is an error."""
    from .hub import resolve_name

    return resolve_name(name_or_path)


def _explain_hub_error(name: str, err: Exception, **context) -> ModelAccessError:
    """The ModelAccessError subclass (gated, bad token, not found, no network, ...) for a failed load.

    Raise it outside the `except` block (or `from None`): huggingface_hub's exception is quoted in
    the message, scrubbed of anything token-shaped, and must not ride along as __context__.
    """
    from .hub import explain

    return explain(name, err, **context)


def _refuse_encoder(name: str, source: str, hub: dict) -> None:
    # Before any weights load: AutoModelForCausalLM would turn a BERT checkpoint into a BertLMHeadModel.
    from transformers import AutoConfig

    from .adapters import _registry

    arch = (AutoConfig.from_pretrained(source, **hub).architectures or [""])[0]
    adapter = _registry().get(arch)
    if adapter is not None and adapter.is_encoder:
        raise ConfigError(
            f"{name!r} is an encoder ({arch}), not a causal language model: it cannot generate or score next "
            f"tokens. Load it with lensutil.HookedEncoder.from_pretrained({name!r})."
        )


@contextmanager
def quiet_local_loading(local: bool = True) -> Iterator[None]:
    """Hide transformers' "Loading weights" progress bar while reading weights from local disk.

    A local model loads in a second or two, and in a notebook each bar is a widget left in the
    stored output of every cell that loads a model. Downloads from the hub keep their bars
    (local=False): there the bar tells the user something.
    """
    import huggingface_hub.utils as hub_utils
    from transformers.utils import logging as hf_logging

    was_enabled, hub_was_disabled = hf_logging.is_progress_bar_enabled(), hub_utils.are_progress_bars_disabled()
    if local and was_enabled:
        hf_logging.disable_progress_bar()  # transformers' switch turns the hub's bars off too ...
    try:
        yield
    finally:
        if local and was_enabled:
            hf_logging.enable_progress_bar()
            if hub_was_disabled:  # ... so put the hub's back as the user had them
                hub_utils.disable_progress_bars()


def load_hf(name_or_path: str, *, revision=None, token=None, dtype=torch.float32, attn_implementation="eager", **kwargs):
    """The HuggingFace model and tokenizer behind a lensutil name (zoo name, directory or hub name)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .hub import hub_kwargs

    source = resolve_source(name_or_path)
    local = os.path.isdir(source)
    hub = hub_kwargs(str(name_or_path), source, revision, token) if not local else {}
    # Mixture-of-experts models: HF's own per-expert loop (modeling_mixtral.py), the order lensutil
    # follows bit for bit; transformers' default "grouped_mm" sums each token's experts in another
    # order. Ignored by models without experts.
    kwargs.setdefault("experts_implementation", "eager")
    try:
        with quiet_local_loading(local or bool(hub.get("local_files_only"))):  # from disk: no bar (the cache, offline)
            tokenizer = AutoTokenizer.from_pretrained(source, **hub)
            _refuse_encoder(name_or_path, source, hub)
            hf_model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation=attn_implementation,
                                                            **hub, **kwargs)
        return hf_model.eval(), tokenizer
    except (OSError, ValueError) as err:
        if local and not isinstance(err, OSError):
            raise
        failure = _explain_hub_error(name_or_path, err, repo=source, revision=revision, token=token, local=local)
    raise failure  # outside the except block: the hub's exception is quoted, not chained (no token can ride along)


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
    attn_implementation: str | None = None,
    fold_ln: bool = True,
    center_writing_weights: bool | None = None,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
    # Quantisation (lensutil/quantization.py): HuggingFace's from_pretrained arguments.
    load_in_8bit: bool = False,
    load_in_4bit: bool = False,
    quantization_config=None,
    bnb_4bit_quant_type: str | None = None,
    bnb_4bit_compute_dtype: torch.dtype | str | None = None,
    bnb_4bit_use_double_quant: bool | None = None,
    # Placement over devices and disk (lensutil/placement.py): accelerate's arguments, and TransformerLens' n_devices.
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
    max_seq_len is read as n_ctx (the name a widely shared guide uses).
    """
    refuse_unknown_kwargs(unknown, from_pretrained)
    attn_implementation = attn_implementation or attention_mode_of(hf_model)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if max_seq_len is not None:
        if n_ctx is not None and n_ctx != max_seq_len:
            raise ConfigError(f"max_seq_len={max_seq_len} and n_ctx={n_ctx} disagree; max_seq_len means n_ctx, pass only n_ctx.")
        n_ctx = max_seq_len
    options = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                   center_unembed=center_unembed, fold_value_biases=fold_value_biases)
    quant = dict(load_in_8bit=load_in_8bit, load_in_4bit=load_in_4bit, quantization_config=quantization_config,
                 bnb_4bit_quant_type=bnb_4bit_quant_type, bnb_4bit_compute_dtype=bnb_4bit_compute_dtype,
                 bnb_4bit_use_double_quant=bnb_4bit_use_double_quant)
    placement = dict(device_map=device_map, max_memory=max_memory, offload_folder=offload_folder, n_devices=n_devices)
    from . import quantization as qz

    bnb_config = qz.config_from_kwargs(**quant)  # None, or a BitsAndBytesConfig; conflicting arguments fail here
    if hf_model is None and saving.is_lensutil_dir(name_or_path):  # from model.save_pretrained(): as saved, not reprocessed
        return saving.load_saved(name_or_path, tokenizer=tokenizer, dtype=dtype, device=device, bnb_config=bnb_config)
    dtype = dtype or torch.float32
    overrides = name_overrides(name_or_path, attn_implementation)
    if n_ctx is not None:
        overrides["n_ctx"] = n_ctx
    if default_prepend_bos is not None:
        overrides["default_prepend_bos"] = default_prepend_bos
    from . import placement as pl

    if pl.requested(**placement):  # over GPUs, CPU and disk: weights loaded straight to where they live
        if device is not None:
            raise ConfigError(f"Pass device={device!r} or a device_map/n_devices, not both (a device map says where every block goes).")
        from .placement_loading import load_placed

        return load_placed(name_or_path, hf_model=hf_model, tokenizer=tokenizer, dtype=dtype, revision=revision, token=token,
                           overrides=overrides, options=options, bnb_config=bnb_config, **placement)
    if hf_model is None:
        hf_model, loaded_tokenizer = load_hf(name_or_path, revision=revision, token=token)
        tokenizer = tokenizer or loaded_tokenizer
    # An hf_model that bitsandbytes already quantised: converted dequantised, then its quantised modules copied.
    hf_state_dict, bnb_config = qz.prepare_from_hf(hf_model, bnb_config, options)
    model = convert_into(HookedTransformer, hf_model, tokenizer, dtype, overrides, hf_state_dict)
    if any(v is not False for v in options.values()):
        from .processing import process_weights_

        process_weights_(model, **options)
    model = place(model, device, dtype)
    # Quantised last: weights processed in full precision, then quantised on their device (quantization.py).
    copies = hf_linears(hf_model, model) if hf_state_dict is not None else None  # HF's quantised modules, as they are
    return qz.quantize_(model, bnb_config, copies) if bnb_config is not None else model


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


def name_overrides(name_or_path: str, attn_implementation: str) -> dict:
    """The config fields every loaded model takes from how it was named and asked for."""
    from .model_names import official_name

    tokenizer_name = resolve_source(name_or_path) if zoo.is_zoo_name(name_or_path) else str(name_or_path)
    tokenizer_name = official_name(tokenizer_name) or tokenizer_name  # gpt2-small's tokenizer is gpt2's
    return {"attn_implementation": attn_implementation, "model_name": str(name_or_path), "tokenizer_name": tokenizer_name}


def convert_into(model_cls, hf_model, tokenizer, dtype: torch.dtype, overrides: dict, hf_state_dict: dict | None = None):
    """A `model_cls` (HookedTransformer or HookedEncoder) holding `hf_model`'s weights, strictly loaded.

    It is built in compute_dtype(dtype) (float32, or float64 for float64), so weight processing that
    follows adds no half-precision rounding of its own; `place` casts to `dtype` at the end.
    """
    adapter = get_adapter(hf_model.config)
    cfg = adapter.config_from_hf(hf_model.config, **overrides)
    cfg.dtype = compute_dtype(dtype)
    hf_state_dict = hf_model.state_dict() if hf_state_dict is None else hf_state_dict
    state_dict = {k: v.detach().to(cfg.dtype) for k, v in adapter.convert(hf_state_dict, cfg).items()}
    with loading_weights():  # no initial values: every weight is loaded next
        model = model_cls(cfg, tokenizer)
    _load_strict(model, state_dict)
    return model


def place(model, device: str | None, dtype: torch.dtype):
    """Move a freshly loaded model to `device` (the GPU where there is one) and cast it to `dtype`."""
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return model.to(dtype).eval()


def from_pretrained_no_processing(name_or_path: str, **kwargs) -> HookedTransformer:
    """from_pretrained with every weight-processing option off: weights exactly as HuggingFace's."""
    return from_pretrained(name_or_path, **{**kwargs, **{o: False for o in PROCESSING_OPTIONS}})


def _load_strict(model: HookedTransformer, state_dict: dict) -> None:
    from .saving import describe_mismatch

    mismatch = describe_mismatch(model.state_dict(), state_dict)
    if mismatch:
        raise WeightLoadError(mismatch)
    own = model.state_dict()  # each weight cast once, to its own parameter's dtype (an MoE router's stays float32)
    model.load_state_dict({k: torch.as_tensor(v).to(own[k].dtype) for k, v in state_dict.items()}, strict=True)


def load_and_process_state_dict(model: HookedTransformer, state_dict: dict, **options):
    """Load a lensutil state dict, or a HuggingFace one for the model's architecture, then process it.

    Options are those of from_pretrained (fold_ln, center_writing_weights, center_unembed,
    fold_value_biases; all on by default). Unprocessed weights (a HuggingFace state dict, or a
    lensutil one with norm weights, e.g. after fine-tuning) may be loaded into a processed model:
    its norms get their weights back, then the options process the new weights afresh. A lensutil
    state dict saved after fold_ln has no norm weights and loads only into a model whose config
    says so (normalization_type LNPre/RMSPre, e.g. HookedTransformer(processed_model.cfg)); pass
    the options off (re-applying them would be a no-op anyway).
    """
    unknown = set(options) - set(PROCESSING_OPTIONS)
    if unknown:
        raise LensError(f"Unknown options {sorted(unknown)}; the processing options are {PROCESSING_OPTIONS}.")
    if isinstance(state_dict, (str, os.PathLike)):  # a .safetensors or .pt file
        state_dict = load_torch_file(state_dict)
    from .saving import drop_transformerlens_buffers

    state_dict = drop_transformerlens_buffers(state_dict, model.cfg)  # TransformerLens 2.x's attn.mask, attn.IGNORE, ...
    if not any(k.startswith(("embed.", "blocks.", "unembed.")) for k in state_dict):
        from .adapters import _registry
        from .saving import describe_mismatch, looks_wrapped

        if looks_wrapped(state_dict):  # a training checkpoint, or DDP's "module." prefix: not HuggingFace names
            raise WeightLoadError(describe_mismatch(model.state_dict(), state_dict))

        arch = model.cfg.original_architecture
        if arch not in _registry():
            raise WeightLoadError(f"This looks like a HuggingFace state dict, but the model's architecture {arch!r} has no adapter.")
        state_dict = _registry()[arch].convert(state_dict, model.cfg)
    work = compute_dtype(model.cfg.dtype)  # float32, or float64 for a float64 model
    state_dict = {k: torch.as_tensor(v).to(work) for k, v in state_dict.items()}
    _prepare_norms_for(model, state_dict)
    settings = {o: options.get(o, default) for o, default in DEFAULT_PROCESSING.items()}
    if not any(v is not False for v in settings.values()):
        _load_strict(model, state_dict)
        return None
    from .processing import process_into_
    from .saving import describe_mismatch

    own = model.state_dict()
    mismatch = describe_mismatch(own, state_dict)
    if mismatch:
        raise WeightLoadError(mismatch)
    # Processed at full precision, laid out in memory as the model's parameters (so the sums round as
    # from_pretrained's do), then cast once into each parameter: a half-precision model's weights are
    # not rounded before processing.
    state_dict = {k: torch.empty_strided(own[k].shape, own[k].stride(), dtype=work, device=own[k].device).copy_(v)
                  for k, v in state_dict.items()}
    return process_into_(model, state_dict, **settings)


_UNFOLDED = {"LNPre": "LN", "RMSPre": "RMS"}


def _prepare_norms_for(model: HookedTransformer, state_dict: dict) -> None:
    """Make the model's norms fit the state dict, or explain why they cannot.

    Unprocessed weights (they have ln_final.w) loaded into a model whose norms were folded: give the
    model back its norm weights, so fine-tuned raw weights can be loaded and processed afresh.
    Folded weights (no ln_final.w) need a model whose norms are already folded.
    """
    cfg = model.cfg
    raw = "ln_final.w" in state_dict
    if raw:
        if cfg.normalization_type in _UNFOLDED and cfg.folded_ln:
            from .processing import rebuild_norms

            rebuild_norms(model, _UNFOLDED[cfg.normalization_type])
        if cfg.normalization_type not in _UNFOLDED:  # the weights are as saved: no processing is known
            cfg.folded_ln = cfg.centered_writing_weights = cfg.centered_unembed = cfg.folded_value_biases = False
    elif cfg.normalization_type in _UNFOLDED.values() and any(k.startswith("blocks.") for k in state_dict):
        raise WeightLoadError(
            f"This state dict has no norm weights (no 'ln_final.w'): it was saved after fold_ln, but this model's "
            f"normalization_type is {cfg.normalization_type!r} and expects them. Build the model from the processed "
            f"model's config (normalization_type={cfg.normalization_type + 'Pre'!r}, e.g. HookedTransformer(processed_model.cfg)) "
            "and load with the processing options off."
        )


def load_torch_file(path: str | Path) -> dict:
    """A state dict from a .safetensors file, or a .pt/.bin file read with torch.load(weights_only=True).

    weights_only=True unpickles tensors and plain containers only, so a file from an untrusted
    source cannot run code; a pickle that needs more (a whole model object, custom classes) is refused.
    """
    import pickle

    if not os.path.isfile(os.path.expanduser(str(path))):
        raise WeightLoadError(f"No such file: {str(path)!r}. Pass the path of a .safetensors or .pt state dict.")
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(os.path.expanduser(str(path)))
    try:
        return torch.load(os.path.expanduser(str(path)), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        import re

        found = re.search(r"GLOBAL ([\w.]+)", str(err))  # torch names the first class it would have to import
        needs = f"the class {found.group(1)}" if found else "objects other than tensors"
        failure = WeightLoadError(
            f"{str(path)!r} is not a plain state dict: unpickling it needs {needs}, and unpickling arbitrary objects can "
            "run code, so lensutil reads .pt files with torch.load(weights_only=True) only. Save weights, not objects: "
            "torch.save(model.state_dict(), path), or model.save_pretrained(directory). If you made this file yourself "
            "and trust it, torch.load(path, weights_only=False) and pass its state_dict()."
        )
    raise failure
