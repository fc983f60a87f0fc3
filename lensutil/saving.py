"""Saving a lensutil model, loading it back, and saying why a state dict does not fit.

`save_pretrained(model, directory)` writes three things (lensutil's own format; TransformerLens has
no save_pretrained, its users torch.save(model.state_dict()) and rebuild the model from its cfg):

- lensutil_config.json: the HookedTransformerConfig, including how the weights were processed
  (folded_ln, centered_writing_weights, centered_unembed, folded_value_biases);
- lensutil_weights.safetensors: the state dict, every tensor contiguous and owning its storage
  (safetensors refuses tensors that share memory, e.g. a tied unembedding);
- the tokenizer's files, so the directory is complete.

It writes into a temporary directory beside the target and renames it into place, so a failure
leaves no half-written directory. `from_pretrained(directory)` recognises the format and loads the
weights exactly as saved: processed weights are not processed again, and the logits are identical.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from .errors import LensError, WeightLoadError

CONFIG_FILE = "lensutil_config.json"
WEIGHTS_FILE = "lensutil_weights.safetensors"
FORMAT_VERSION = 1
_PROCESSING_FLAGS = ("folded_ln", "centered_writing_weights", "centered_unembed", "folded_value_biases")


def is_lensutil_dir(path) -> bool:
    return os.path.isfile(os.path.join(os.path.expanduser(str(path)), CONFIG_FILE))


def _owning_contiguous(state_dict: dict) -> dict:
    """Each tensor contiguous, on the CPU, and alone in its storage (shared ones are copied)."""
    seen, out = set(), {}
    for name, tensor in state_dict.items():
        t = tensor.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()  # sharing another's storage, or a view into a larger tensor: safetensors wants one storage per tensor
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def save_pretrained(model, directory) -> Path:
    """Write `model` (weights, config, tokenizer) to `directory`, atomically. Returns the directory.

    `directory` must not exist, be empty, or hold an earlier save_pretrained (which is replaced).
    """
    from safetensors.torch import save_file

    target = Path(os.path.expanduser(str(directory))).absolute()
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not is_lensutil_dir(target))):
        raise LensError(
            f"{str(directory)!r} exists and is not an earlier save_pretrained() directory; lensutil will not write over it. "
            "Pick a new directory (or an empty one)."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        cfg = model.cfg.to_dict()
        cfg["device"] = "cpu"  # where it loads by default is from_pretrained's choice, not the saver's
        info = {"lensutil_format": FORMAT_VERSION, "cfg": cfg,
                "processing": {flag: bool(getattr(model.cfg, flag)) for flag in _PROCESSING_FLAGS}}
        (staging / CONFIG_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
        save_file(_owning_contiguous(model.state_dict()), str(staging / WEIGHTS_FILE),
                  metadata={"format": "pt", "lensutil_format": str(FORMAT_VERSION)})
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(str(staging))
        if target.exists():  # an earlier save: swap it out, then remove it
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "saved")
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def load_saved(directory, *, tokenizer=None, dtype: torch.dtype = torch.float32, device: str | None = None):
    """A HookedTransformer from a save_pretrained() directory: weights exactly as saved, no processing."""
    from safetensors.torch import load_file

    from .config import HookedTransformerConfig
    from .initialization import loading_weights
    from .loading import _load_strict, place
    from .model import HookedTransformer

    path = Path(os.path.expanduser(str(directory)))
    info = json.loads((path / CONFIG_FILE).read_text())
    if info.get("lensutil_format") != FORMAT_VERSION:
        raise WeightLoadError(
            f"{str(directory)!r} was saved in lensutil format {info.get('lensutil_format')!r}; this lensutil reads "
            f"format {FORMAT_VERSION}. Load it with the lensutil version that saved it and save it again."
        )
    cfg = HookedTransformerConfig.from_dict(info["cfg"])
    if tokenizer is None and (path / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path))
    saved_dtype = cfg.dtype
    with loading_weights():  # no initial values: every weight is loaded next
        model = HookedTransformer(cfg, tokenizer)
    _load_strict(model, load_file(str(path / WEIGHTS_FILE)))
    return place(model, device, dtype or saved_dtype)


# ---- a state dict that does not fit -------------------------------------------------------------

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_CHECKPOINT_KEYS = {"state_dict", "model", "model_state_dict", "optimizer", "optimizer_state_dict", "epoch", "step"}
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")  # DistributedDataParallel, torch.compile, a wrapper module


def _shape(t) -> str:
    return str(list(t.shape)) if hasattr(t, "shape") else type(t).__name__


def _n_layers(keys) -> int | None:
    found = [int(m.group(1)) for k in keys if (m := _BLOCK.match(k))]
    return max(found) + 1 if found else None


def _likely_cause(own: dict, state_dict: dict, missing: list, unexpected: list, wrong: list) -> str:
    keys = set(state_dict)
    if keys & _CHECKPOINT_KEYS:
        inner = sorted(keys & {"state_dict", "model", "model_state_dict"})
        return ("a training checkpoint, not a state dict: it holds " + ", ".join(sorted(keys & _CHECKPOINT_KEYS))
                + (f". Pass checkpoint[{inner[0]!r}]." if inner else "."))
    for prefix in _WRAPPER_PREFIXES:
        if unexpected and all(k.startswith(prefix) for k in unexpected) and {k[len(prefix):] for k in unexpected} & set(own):
            return (f"every key starts with {prefix!r} (saved from a wrapped model: DistributedDataParallel, torch.compile "
                    f"or a module holding the model). Strip it: {{k.removeprefix({prefix!r}): v for k, v in state_dict.items()}}.")
    if any(k.startswith(("transformer.", "model.layers.", "model.embed_tokens", "lm_head")) for k in unexpected):
        return ("HuggingFace key names (e.g. 'transformer.h.0...' or 'model.layers.0...') that this model's adapter did not "
                "convert: weights from another architecture, or key names from another transformers version (renamed "
                "since). Load the checkpoint with the transformers version it was saved with and pass hf_model=..., or "
                "rename the keys to this version's names.")
    n_sd, n_own = _n_layers(keys), _n_layers(own)
    if n_sd is not None and n_own is not None and n_sd != n_own:
        return (f"another size: the weights have {n_sd} layers, the model {n_own}. Build the model from the config the "
                "weights were trained with (from_pretrained of the same base model).")
    suffix = lambda ks: {_BLOCK.sub("blocks.*.", k) for k in ks}  # noqa: E731
    foreign = sorted(suffix(unexpected) - suffix(own))
    if foreign:
        return (f"another architecture: the weights have {', '.join(foreign[:3])}, which this model has no place for "
                f"(and lack {', '.join(sorted(suffix(missing) - suffix(keys))[:3]) or 'nothing'}). Load them into a model "
                "of the architecture they came from (e.g. W_gate: a gated MLP as in Llama; b_Q: attention biases as in GPT-2 or Qwen2).")
    if missing and all(k.endswith(("ln1.w", "ln1.b", "ln2.w", "ln2.b", "ln_final.w", "ln_final.b")) for k in missing):
        return ("the weights were saved after fold_ln (no norm weights): load them into a model built from the processed "
                "model's config (HookedTransformer(processed_model.cfg)) with the processing options off.")
    if wrong and not missing and not unexpected:
        return ("another size of the same architecture (widths, heads or vocabulary differ). Build the model from the config "
                "the weights were trained with (from_pretrained of the same base model).")
    return "the weights and the model were built from different configs; compare model.cfg with the config the weights came from."


def describe_mismatch(own: dict, state_dict: dict, limit: int = 6) -> str | None:
    """A table of missing, unexpected and mis-shaped keys, and the likely cause; None if the state dict fits."""
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = sorted(k for k, v in state_dict.items() if k in own and getattr(v, "shape", None) != own[k].shape)
    if not (missing or unexpected or wrong):
        return None
    rows = [("", "key", "in the weights", "in the model")]
    for kind, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        for k in names[:limit]:
            rows.append((kind, k, _shape(state_dict[k]) if k in state_dict else "-", _shape(own[k]) if k in own else "-"))
        if len(names) > limit:
            rows.append((kind, f"... and {len(names) - limit} more", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    table = "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of the wrong shape"
    cause = _likely_cause(own, state_dict, missing, unexpected, wrong)
    return f"The weights do not fit this model ({counts}):\n{table}\nLikely cause: {cause}"


def looks_wrapped(state_dict: dict) -> bool:
    """A training checkpoint ({"state_dict": ..., "epoch": ...}) or lensutil names under a wrapper's prefix."""
    keys = set(state_dict)
    if keys & _CHECKPOINT_KEYS:
        return True
    lens = ("embed.", "blocks.", "unembed.", "pos_embed.", "ln_final.")
    return any(keys and all(k.startswith(p) and k[len(p):].startswith(lens) for k in keys) for p in _WRAPPER_PREFIXES)
