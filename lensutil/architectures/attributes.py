"""Which HuggingFace config attributes an adapter understands; any other that changes the maths is refused.

penzai's rule, made declarative: each adapter names the attributes its `config_from_hf` reads
(`Adapter(..., understands={...})`), each with the values it implements. Every attribute of the
checkpoint's config is then one of:
- bookkeeping that never changes the maths (token ids, output flags, dtype, names, dropout rates:
  lensutil runs in eval, where dropout is the identity): ignored;
- understood by the adapter: its value must be one the adapter accepts;
- anything else: accepted only at the value the config class defaults to (the value the tiny-model
  tests cover); a different value is a ConfigError that names it. So an attribute a newer
  transformers adds, or one nobody taught an adapter, never changes the maths silently.

A declaration maps an attribute to READ (the adapter reads every value and refuses those it does
not implement itself), to a tuple of accepted values, or to a predicate `value -> bool`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Union

from ..errors import ConfigError

READ = object()  # the adapter reads this attribute and handles (or refuses) every value itself
Accept = Union[object, tuple, Callable[[Any], bool]]

# Attributes of every PreTrainedConfig, and those common to many families, that only label,
# route or size something outside the forward pass.
BOOKKEEPING = frozenset({
    "_name_or_path", "architectures", "model_type", "transformers_version", "dtype", "torch_dtype",
    "id2label", "label2id", "problem_type", "num_labels", "finetuning_task", "tokenizer_class", "prefix",
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "output_attentions", "output_hidden_states", "return_dict", "use_cache", "use_return_dict",
    "output_router_logits", "router_aux_loss_coef",  # the training loss, not the logits
    "initializer_range", "init_std", "gradient_checkpointing", "chunk_size_feed_forward", "torchscript", "auto_map", "task_specific_params",
    "quantization_config",  # read by lensutil/loading/quantization.py, which refuses what it cannot do
    # transformers 5 keeps no tensor-parallel split in the forward (4.x sliced the matmuls, same maths)
    "pretraining_tp", "base_model_tp_plan", "base_model_pp_plan",
    "is_encoder_decoder", "tie_encoder_decoder",  # an encoder-decoder has no adapter: the registry refuses it first
})


def _is_bookkeeping(name: str) -> bool:
    # Dropout rates (attention_dropout, resid_pdrop, hidden_dropout_prob, ...): identity in eval. Token
    # ids (unk_token_id, ...) and private names (_model_name_or_path, written by GGUF conversion) label things.
    return (name in BOOKKEEPING or name.startswith("_") or name.endswith("_token_id") or "dropout" in name
            or name.endswith("_pdrop"))


def _accepts(rule: Accept, value) -> bool:
    if rule is READ:
        return True
    if isinstance(rule, tuple):
        return value in rule
    return bool(rule(value))


def _class_defaults(hf_config) -> dict:
    try:
        return type(hf_config)().to_dict()
    except Exception:  # a config class that needs arguments: nothing counts as its default
        return {}


def check_attributes(hf_config, understands: Mapping[str, Accept], family: str) -> None:
    """Raise ConfigError naming every attribute of `hf_config` that would change the maths unimplemented."""
    defaults = _class_defaults(hf_config)
    refused = []
    for name, value in hf_config.to_dict().items():
        if _is_bookkeeping(name):
            continue
        if name in understands:
            if not _accepts(understands[name], value):
                rule = understands[name]
                allowed = f"lensutil implements {rule!r}" if isinstance(rule, tuple) else "lensutil does not implement this value"
                refused.append(f"{name}={value!r} ({allowed})")
        elif name not in defaults or defaults[name] != value:
            where = f"its default is {defaults[name]!r}" if name in defaults else "not an attribute lensutil knows"
            refused.append(f"{name}={value!r} ({where})")
    if refused:
        raise ConfigError(
            f"This {family} config sets {'; '.join(refused)}. Such a setting can change the forward pass, and lensutil "
            "has not implemented it for this family, so the model could differ from HuggingFace's without a word. "
            "Load a checkpoint without it, or, if the checkpoint does not really use it, set it to the default on the "
            "config (AutoConfig.from_pretrained(...), edit, then from_pretrained(..., hf_model=...))."
        )
