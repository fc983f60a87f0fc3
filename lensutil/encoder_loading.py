"""From a name to a HookedEncoder: zoo names, local directories and hub names (e.g. bert-base-uncased).

The same strict loading and the same errors as the decoder's loading.py. No weight processing:
BERT's LayerNorms follow the residual additions, so fold_ln and centring (which assume a norm
before each layer reads the stream) do not apply; TransformerLens' HookedEncoder does none either.
"""

from __future__ import annotations

import os

import torch

from .adapters import get_adapter
from .encoder import HookedEncoder
from .errors import ConfigError, WeightLoadError
from .loading import _explain_hub_error, convert_into, name_overrides, place, quiet_local_loading, resolve_source

_PROCESSING = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")


def _decoder_advice(name: str, arch: str) -> ConfigError:
    return ConfigError(
        f"{name!r} is a causal decoder ({arch}), not an encoder: load it with "
        f"lensutil.HookedTransformer.from_pretrained({name!r})."
    )


def load_hf_encoder(name_or_path: str, *, revision=None, token=None, dtype=torch.float32):
    """The HuggingFace encoder (eager attention) and tokenizer behind a lensutil name."""
    import transformers

    source = resolve_source(name_or_path)
    local = os.path.isdir(source)
    hub = {"revision": revision, "token": token} if not local else {}
    try:
        with quiet_local_loading(local):
            config = transformers.AutoConfig.from_pretrained(source, **hub)
            adapter = get_adapter(config)
            if not adapter.is_encoder:
                raise _decoder_advice(str(name_or_path), config.architectures[0])
            tokenizer = transformers.AutoTokenizer.from_pretrained(source, **hub)
            auto = getattr(transformers, adapter.auto_class)
            hf_model, info = auto.from_pretrained(source, dtype=dtype, attn_implementation="eager",
                                                  output_loading_info=True, **hub)
    except (OSError, ValueError) as err:
        if local and not isinstance(err, OSError):
            raise
        raise _explain_hub_error(name_or_path, err) from err
    missing = list(info.get("missing_keys", []))
    if missing and all(k.startswith("pooler.") for k in missing) and getattr(hf_model, "pooler", None) is not None:
        hf_model.pooler, missing = None, []  # a BertModel saved without a pooler: none, not a random one
    if missing:
        raise WeightLoadError(
            f"The checkpoint {name_or_path!r} lacks weights {sorted(missing)[:4]}, which HuggingFace would fill with "
            "random values. Check that config.architectures names the model these weights were saved from."
        )
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
    attn_implementation: str = "eager",
    **processing,
) -> HookedEncoder:
    """Load an encoder (BertForMaskedLM or BertModel) by zoo name, local directory or hub name."""
    unknown = set(processing) - set(_PROCESSING)
    if unknown:
        raise ConfigError(f"Unknown options {sorted(unknown)} for HookedEncoder.from_pretrained.")
    if any(processing.values()):
        raise ConfigError(
            f"Weight processing ({', '.join(k for k, v in processing.items() if v)}) is not implemented for encoders: "
            "BERT's LayerNorms come after the residual additions, so they cannot be folded into the next layer. "
            "Load without these options (TransformerLens' HookedEncoder does no processing either)."
        )
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if hf_model is None:
        hf_model, loaded_tokenizer = load_hf_encoder(name_or_path, revision=revision, token=token)
        tokenizer = tokenizer or loaded_tokenizer
    adapter = get_adapter(hf_model.config)
    if not adapter.is_encoder:
        raise _decoder_advice(str(name_or_path), hf_model.config.architectures[0])
    hf_sd = hf_model.state_dict()
    overrides = {**name_overrides(name_or_path, attn_implementation), "pooler": any(k.startswith("pooler.") for k in hf_sd)}
    return place(convert_into(HookedEncoder, hf_model, tokenizer, dtype, overrides, hf_sd), device, dtype)
