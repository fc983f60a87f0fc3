"""A state dict into an existing model (load_and_process_state_dict), and state dicts read safely from files."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..architectures.registry import _registry
from ..config import compute_dtype
from ..errors import LensError, WeightLoadError
from ..model import doors
from ..model.processing import process_into_, rebuild_norms
from ..model.transformer import HookedTransformer
from .convert import DEFAULT_PROCESSING, PROCESSING_OPTIONS
from .saving import drop_transformerlens_buffers
from .strict import _load_strict, describe_mismatch, looks_wrapped


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
    unknown = set(options) - set(PROCESSING_OPTIONS) - {"refactor_factored_attn_matrices"}  # that one: off unless asked
    if unknown:
        raise LensError(f"Unknown options {sorted(unknown)}; the processing options are {PROCESSING_OPTIONS} "
                        "and refactor_factored_attn_matrices.")
    if isinstance(state_dict, (str, os.PathLike)):  # a .safetensors or .pt file
        state_dict = load_torch_file(state_dict)
    state_dict = drop_transformerlens_buffers(state_dict, model.cfg)  # TransformerLens 2.x's attn.mask, attn.IGNORE, ...
    if not any(k.startswith(("embed.", "blocks.", "unembed.")) for k in state_dict):
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
    settings["refactor_factored_attn_matrices"] = options.get("refactor_factored_attn_matrices", False)
    if not any(v is not False for v in settings.values()):
        _load_strict(model, state_dict)
        return None
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


# The model's TransformerLens doors (lensutil/model/doors.py says why they are filled from here).
doors.provide("HookedTransformer.load_and_process_state_dict", load_and_process_state_dict)
