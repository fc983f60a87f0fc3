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

from . import zoo
from .adapters import get_adapter
from .components import compute_dtype
from .errors import ConfigError, LensError, ModelAccessError, WeightLoadError
from .model import HookedTransformer

# On by default, as in TransformerLens. center_writing_weights=None: "where valid" (LayerNorm
# models); on RMSNorm models it is skipped quietly, and recorded in the ProcessingReport.
DEFAULT_PROCESSING = {"fold_ln": True, "center_writing_weights": None, "center_unembed": True, "fold_value_biases": True}
PROCESSING_OPTIONS = tuple(DEFAULT_PROCESSING)


def resolve_source(name_or_path: str) -> str:
    """A zoo name becomes its local directory; paths and hub names pass through."""
    if zoo.is_zoo_name(name_or_path):
        return str(zoo.resolve(name_or_path))
    return str(name_or_path)


def _explain_hub_error(name: str, err: Exception) -> ModelAccessError:
    text = f"{type(err).__name__}: {err}"
    if "gated" in text.lower() or "403" in text or "401" in text:
        advice = (
            f"{name!r} is a gated model. Accept its licence on the model's hub page, create a read token, "
            "then set the HF_TOKEN environment variable, run huggingface_hub.login(), or pass token=... "
            "(lensutil never prints or stores the token)."
        )
    else:
        advice = (
            f"Could not load {name!r} from the hub or from disk. Offline? Use a zoo name "
            f"({', '.join(zoo.ZOO_NAMES)}) or a local directory written by save_pretrained()."
        )
    return ModelAccessError(f"{advice}\n(underlying error: {text.splitlines()[0][:300]})")


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


def load_hf(name_or_path: str, *, revision=None, token=None, dtype=torch.float32, **kwargs):
    """The HuggingFace model and tokenizer behind a lensutil name (zoo name, directory or hub name)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_source(name_or_path)
    local = os.path.isdir(source)
    hub = {"revision": revision, "token": token} if not local else {}
    # Mixture-of-experts models: HF's own per-expert loop (modeling_mixtral.py), the order lensutil
    # follows bit for bit; transformers' default "grouped_mm" sums each token's experts in another
    # order. Ignored by models without experts.
    kwargs.setdefault("experts_implementation", "eager")
    try:
        with quiet_local_loading(local):
            tokenizer = AutoTokenizer.from_pretrained(source, **hub)
            _refuse_encoder(name_or_path, source, hub)
            hf_model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation="eager", **hub, **kwargs)
    except (OSError, ValueError) as err:
        if os.path.isdir(source) and not isinstance(err, OSError):
            raise
        raise _explain_hub_error(name_or_path, err) from err
    return hf_model.eval(), tokenizer


def from_pretrained(
    name_or_path: str,
    *,
    hf_model=None,
    tokenizer=None,
    dtype: torch.dtype | str = torch.float32,
    device: str | None = None,
    revision: str | None = None,
    token: str | None = None,
    n_ctx: int | None = None,
    default_prepend_bos: bool | None = None,
    attn_implementation: str = "eager",
    fold_ln: bool = True,
    center_writing_weights: bool | None = None,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
) -> HookedTransformer:
    """Load a model by zoo name, local directory or hub name, convert it, and process its weights.

    Weights are converted and processed in float32 (float64 for a float64 model) and only then cast
    to `dtype`, so processing adds no half-precision rounding of its own. attn_implementation="sdpa" uses torch's fused attention
    whenever no hook reads the scores or pattern (faster; rounds like HuggingFace's "sdpa");
    the default "eager" rounds like HuggingFace's eager attention, bit for bit.
    """
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if hf_model is None:
        hf_model, loaded_tokenizer = load_hf(name_or_path, revision=revision, token=token)
        tokenizer = tokenizer or loaded_tokenizer
    overrides = name_overrides(name_or_path, attn_implementation)
    if n_ctx is not None:
        overrides["n_ctx"] = n_ctx
    if default_prepend_bos is not None:
        overrides["default_prepend_bos"] = default_prepend_bos
    model = convert_into(HookedTransformer, hf_model, tokenizer, dtype, overrides)
    options = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                   center_unembed=center_unembed, fold_value_biases=fold_value_biases)
    if any(v is not False for v in options.values()):
        from .processing import process_weights_

        process_weights_(model, **options)
    return place(model, device, dtype)


def name_overrides(name_or_path: str, attn_implementation: str) -> dict:
    """The config fields every loaded model takes from how it was named and asked for."""
    tokenizer_name = resolve_source(name_or_path) if zoo.is_zoo_name(name_or_path) else str(name_or_path)
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
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = [f"{k}: checkpoint {list(v.shape)} vs model {list(own[k].shape)}"
             for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else "",
                 f"wrong shapes {wrong[:5]}" if wrong else ""]
        raise WeightLoadError(
            "The weights do not fit this model's config (" + "; ".join(p for p in parts if p) + "). "
            "The architecture must match exactly (layers, widths, heads), and so must the processing: a state dict "
            "saved after fold_ln has no LayerNorm weights, so load it into a model made with the same options."
        )
    dtype = next(model.parameters()).dtype
    model.load_state_dict({k: v.to(dtype) for k, v in state_dict.items()}, strict=True)


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
    if not any(k.startswith(("embed.", "blocks.", "unembed.")) for k in state_dict):
        from .adapters import _registry

        arch = model.cfg.original_architecture
        if arch not in _registry():
            raise WeightLoadError(f"This looks like a HuggingFace state dict, but the model's architecture {arch!r} has no adapter.")
        state_dict = _registry()[arch].convert(state_dict, model.cfg)
    work = compute_dtype(model.cfg.dtype)  # float32, or float64 for a float64 model
    state_dict = {k: torch.as_tensor(v).to(work) for k, v in state_dict.items()}
    _prepare_norms_for(model, state_dict)
    _load_strict(model, state_dict)
    settings = {o: options.get(o, default) for o, default in DEFAULT_PROCESSING.items()}
    if any(v is not False for v in settings.values()):
        from .processing import process_weights_

        return process_weights_(model, **settings)
    return None


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
    """torch.load with weights_only=True: a pickle from an untrusted source cannot run code."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)
