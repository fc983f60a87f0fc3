"""From a name to a HookedEncoder: zoo names, local directories and hub names (e.g. bert-base-uncased).

The same strict loading and the same errors as the decoder's loading.py. No weight processing:
BERT's LayerNorms follow the residual additions, so fold_ln and centring (which assume a norm
before each layer reads the stream) do not apply; TransformerLens' HookedEncoder does none either.
"""

from __future__ import annotations

import os

import torch

from ..architectures.registry import get_adapter
from ..errors import ConfigError, WeightLoadError
from ..model import doors
from ..model.encoder import HookedEncoder
from . import quantization as qz
from .convert import convert_into, name_overrides, place
from .hf_quantized import hf_linears
from .hf_source import _explain_hub_error, resolve_source
from .hub import hub_kwargs
from .pretrained import refuse_unknown_kwargs
from .progress_bars import quiet_local_loading

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
    hub = hub_kwargs(str(name_or_path), source, revision, token) if not local else {}
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
        raise _explain_hub_error(name_or_path, err, repo=source, revision=revision, token=token, local=local) from None
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
    load_in_8bit: bool = False,
    load_in_4bit: bool = False,
    quantization_config=None,
    bnb_4bit_quant_type: str | None = None,
    bnb_4bit_compute_dtype: torch.dtype | str | None = None,
    bnb_4bit_use_double_quant: bool | None = None,
    **processing,
) -> HookedEncoder:
    """Load an encoder (BertForMaskedLM or BertModel) by zoo name, local directory or hub name.

    Quantisation arguments are HuggingFace's (lensutil/loading/quantization.py): the encoder's attention,
    MLP, MLM-head and pooler matrices are quantised, as HuggingFace quantises BertForMaskedLM.
    """
    bnb_config = qz.config_from_kwargs(load_in_8bit, load_in_4bit, quantization_config, bnb_4bit_quant_type,
                                       bnb_4bit_compute_dtype, bnb_4bit_use_double_quant)
    refuse_unknown_kwargs({k: v for k, v in processing.items() if k not in _PROCESSING}, from_pretrained)
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
    dequantized, bnb_config = qz.prepare_from_hf(hf_model, bnb_config, {})  # an HF encoder bitsandbytes quantised
    hf_sd = hf_model.state_dict() if dequantized is None else dequantized
    overrides = {**name_overrides(name_or_path, attn_implementation), "pooler": any(k.startswith("pooler.") for k in hf_sd)}
    model = place(convert_into(HookedEncoder, hf_model, tokenizer, dtype, overrides, hf_sd), device, dtype)
    copies = hf_linears(hf_model, model) if dequantized is not None else None  # HF's quantised modules, as they are
    return qz.quantize_(model, bnb_config, copies) if bnb_config is not None else model


# The model's TransformerLens doors (lensutil/model/doors.py says why they are filled from here).
doors.provide("HookedEncoder.from_pretrained", from_pretrained)
