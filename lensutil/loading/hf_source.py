"""From a name to its source (zoo directory, local directory, hub) and the HuggingFace model, config and tokenizer there."""

from __future__ import annotations

import os

import torch

from ..architectures.registry import get_adapter
from ..errors import ConfigError, ModelAccessError, WeightLoadError
from ..model import doors
from .hub import explain, hub_kwargs, resolve_name
from .progress_bars import quiet_local_loading


def resolve_source(name_or_path: str) -> str:
    """A zoo name becomes its local directory, a TransformerLens name its hub repository (gpt2-small ->
    gpt2); directories and other hub names pass through; a path that does not exist is an error."""
    return resolve_name(name_or_path)


def _explain_hub_error(name: str, err: Exception, **context) -> ModelAccessError:
    """The ModelAccessError subclass (gated, bad token, not found, no network, ...) for a failed load.

    Raise it outside the `except` block (or `from None`): huggingface_hub's exception is quoted in
    the message, scrubbed of anything token-shaped, and must not ride along as __context__.
    """
    return explain(name, err, **context)


def _refuse_encoder(name: str, source: str, hub: dict) -> str:
    """config.architectures[0], after refusing what AutoModelForCausalLM must not load.

    Before any weights load: AutoModelForCausalLM would turn a BERT checkpoint into a BertLMHeadModel,
    and fail on an architecture it has no causal class for (T5) with transformers' ValueError; Gemma 3's
    multimodal model is refused with what to load instead (registry.refuse_known, via get_adapter)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, **hub)
    adapter = get_adapter(config)  # UnsupportedArchitectureError, listing what is supported
    arch = config.architectures[0]
    if adapter.is_encoder:
        raise ConfigError(
            f"{name!r} is an encoder ({arch}), not a causal language model: it cannot generate or score next "
            f"tokens. Load it with lensutil.HookedEncoder.from_pretrained({name!r})."
        )
    return arch


def _hf_attention(arch: str, attn_implementation: str) -> str:
    """The mode HF runs `arch` in when asked for `attn_implementation`: a class without an sdpa path
    (Gemma 2: its scores are soft-capped, which the kernel cannot do) refuses "sdpa" and runs eager by
    default; lensutil's "sdpa" mode writes such attention out too, so eager is the reference it matches."""
    import transformers

    cls = getattr(transformers, arch, None)
    if attn_implementation == "sdpa" and cls is not None and getattr(cls, "_supports_sdpa", True) is False:
        return "eager"
    return attn_implementation


def _refuse_incomplete(name: str, hf_class: str, info: dict) -> None:
    """A checkpoint that lacks weights its class expects is an error, not a model with random weights.

    transformers loads it anyway: it prints a LOAD REPORT (MISSING / UNEXPECTED) and fills each missing
    weight with fresh initial values. That happens when the checkpoint's key names come from another
    transformers version or architecture (SYMPTOMS item 2). Unexpected keys alone leave the model whole.
    """
    missing, mismatched = sorted(info.get("missing_keys") or ()), list(info.get("mismatched_keys") or ())
    if not missing and not mismatched:
        return
    unexpected = sorted(info.get("unexpected_keys") or ())
    found = [f"{len(missing)} weights its class {hf_class} expects are missing, e.g. {missing[:3]}"] if missing else []
    found += [f"{len(mismatched)} have another shape, e.g. {[m[0] for m in mismatched[:3]]}"] if mismatched else []
    found += [f"it has {len(unexpected)} weights the class does not know, e.g. {unexpected[:3]}"] if unexpected else []
    raise WeightLoadError(
        f"The checkpoint {name!r} does not match its architecture: {'; '.join(found)}. HuggingFace would fill the "
        "missing weights with random values. Its key names or sizes come from another transformers version or "
        "architecture: pin revision= to a commit saved in this layout, load it with the transformers version it "
        "was saved with, or correct config.architectures."
    )


def load_hf(name_or_path: str, *, revision=None, token=None, dtype=torch.float32, attn_implementation="eager", **kwargs):
    """The HuggingFace model and tokenizer behind a lensutil name (zoo name, directory or hub name)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
            arch = _refuse_encoder(name_or_path, source, hub)
            hf_model, info = AutoModelForCausalLM.from_pretrained(
                source, dtype=dtype, attn_implementation=_hf_attention(arch, attn_implementation), output_loading_info=True,
                **hub, **kwargs)
        _refuse_incomplete(name_or_path, type(hf_model).__name__, info)
        return hf_model.eval(), tokenizer
    except (OSError, ValueError) as err:
        if local and not isinstance(err, OSError):
            raise
        failure = _explain_hub_error(name_or_path, err, repo=source, revision=revision, token=token, local=local)
    raise failure  # outside the except block: the hub's exception is quoted, not chained (no token can ride along)


def load_tokenizer(name_or_path: str):
    """The tokenizer behind a name (zoo name, directory or hub name): a config's tokenizer_name, which
    HookedTransformer(cfg) and HookedEncoder(cfg) load when no tokenizer is passed (as TransformerLens)."""
    from transformers import AutoTokenizer

    source = resolve_source(name_or_path)
    local = os.path.isdir(source)
    hub = hub_kwargs(str(name_or_path), source, None, None) if not local else {}
    try:
        with quiet_local_loading(local or bool(hub.get("local_files_only"))):
            return AutoTokenizer.from_pretrained(source, **hub)
    except (OSError, ValueError) as err:
        if local and not isinstance(err, OSError):
            raise
        failure = _explain_hub_error(name_or_path, err, repo=source, local=local)
    raise failure


doors.provide("model.tokenizer_from_name", load_tokenizer)  # the model's constructors (model/doors.py says why)
