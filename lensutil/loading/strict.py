"""Strict loading: a state dict loads only if it fits the model exactly, and a mismatch is explained (missing, unexpected, wrongly shaped)."""

from __future__ import annotations

import re

import torch

from ..errors import WeightLoadError
from ..model.transformer import HookedTransformer


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


def _load_strict(model: HookedTransformer, state_dict: dict) -> None:

    mismatch = describe_mismatch(model.state_dict(), state_dict)
    if mismatch:
        raise WeightLoadError(mismatch)
    own = model.state_dict()  # each weight cast once, to its own parameter's dtype (an MoE router's stays float32)
    model.load_state_dict({k: torch.as_tensor(v).to(own[k].dtype) for k, v in state_dict.items()}, strict=True)
