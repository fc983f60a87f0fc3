"""Unknown architectures and unimplemented config attributes are refused before anything loads (issue 26)."""

import pytest
import torch

from lensutil.architectures.registry import _registry
from lensutil.errors import ConfigError, UnsupportedArchitectureError


def _save_tiny_t5(path):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0)
    T5ForConditionalGeneration(config).save_pretrained(path)


def test_a_t5_checkpoint_is_an_unsupported_architecture_listing_the_supported(tmp_path):
    from lensutil import HookedTransformer

    _save_tiny_t5(tmp_path)
    with pytest.raises(UnsupportedArchitectureError, match="T5ForConditionalGeneration.*GPT2LMHeadModel.*LlamaForCausalLM"):
        HookedTransformer.from_pretrained(str(tmp_path))


def test_every_registered_adapter_declares_the_attributes_it_understands():
    undeclared = sorted(arch for arch, adapter in _registry().items() if adapter.understands is None)
    assert not undeclared, f"adapters without an `understands=` declaration: {undeclared}"


def _llama(**extra):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
                       architectures=["LlamaForCausalLM"], **extra)


def _config(hf):
    return _registry()[hf.architectures[0]].config_from_hf(hf)


def test_bookkeeping_attributes_are_ignored():
    cfg = _config(_llama(attention_dropout=0.3, pad_token_id=5, output_hidden_states=True, initializer_range=0.5,
                         pretraining_tp=2, use_cache=False))
    assert cfg.d_model == 32


@pytest.mark.parametrize("extra, named", [
    (dict(some_new_switch=True), "some_new_switch=True"),  # an attribute nobody taught the adapter
    (dict(rope_parameters={"rope_type": "su", "rope_theta": 1e4, "factor": 2.0}), "'su'"),
    (dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}), "partial_rotary_factor"),
    (dict(rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0, "low_freq_factor": 1.0}), "low_freq_factor"),
])
def test_a_maths_attribute_lensutil_does_not_implement_is_a_config_error_naming_it(extra, named):
    with pytest.raises(ConfigError, match=named):
        _config(_llama(**extra))


def test_gpt2_reordered_upcast_attention_is_refused():
    from transformers import GPT2Config

    hf = GPT2Config(n_embd=16, n_layer=1, n_head=2, reorder_and_upcast_attn=True, architectures=["GPT2LMHeadModel"])
    with pytest.raises(ConfigError, match="reorder_and_upcast_attn=True"):
        _config(hf)


def test_qwen2_sliding_window_on_no_layer_is_no_window():
    # use_sliding_window with max_window_layers == the layer count: HF slides on no layer (layer_types).
    from transformers import Qwen2Config

    hf = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, vocab_size=64,
                     use_sliding_window=True, sliding_window=4, max_window_layers=2, architectures=["Qwen2ForCausalLM"])
    assert _config(hf).window_size is None
    hf.layer_types = ["full_attention", "sliding_attention"]  # a window on the second layer only, as HF's Qwen2Attention
    assert (_config(hf).window_size, _config(hf).attn_types) == (4, ["global", "local"])
    hf.layer_types = ["full_attention", "chunked_attention"]
    with pytest.raises(ConfigError, match="layer_types"):
        _config(hf)
    hf.layer_types = ["sliding_attention"] * 2
    assert _config(hf).window_size == 4


_SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
              vocab_size=64)
_NEW_FAMILIES = {  # config class, architecture, its own extra sizes
    "GemmaConfig": ("GemmaForCausalLM", dict(head_dim=16)),
    "Gemma2Config": ("Gemma2ForCausalLM", dict(head_dim=16, sliding_window=4)),
    "Gemma3TextConfig": ("Gemma3ForCausalLM", dict(head_dim=16, sliding_window=4)),
    "Qwen3Config": ("Qwen3ForCausalLM", dict(head_dim=16)),
    "Olmo2Config": ("Olmo2ForCausalLM", {}),
    "Qwen2MoeConfig": ("Qwen2MoeForCausalLM", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                                   shared_expert_intermediate_size=24)),
    "Qwen3MoeConfig": ("Qwen3MoeForCausalLM", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)),
}


@pytest.mark.parametrize("cls", _NEW_FAMILIES)
def test_each_new_family_reads_its_own_sizes_and_refuses_an_attribute_it_does_not_implement(cls):
    import transformers

    arch, extra = _NEW_FAMILIES[cls]
    make = lambda **more: getattr(transformers, cls)(architectures=[arch], **_SMALL, **extra, **more)  # noqa: E731
    assert _config(make()).d_model == 32  # every size and setting it reads is declared: nothing refused
    with pytest.raises(ConfigError, match="some_new_switch=True"):
        _config(make(some_new_switch=True))


@pytest.mark.parametrize("cls, attribute", [
    ("Olmo2Config", dict(sliding_window=4)),  # HF's OLMo 2 has no sliding window; lensutil's Llama code would apply one
    ("Qwen3MoeConfig", dict(layer_types=["sliding_attention", "full_attention"])),  # Qwen3-MoE ignores layer_types
    ("Qwen2MoeConfig", dict(attention_bias=True)),  # its biases are qkv_bias
])
def test_an_attribute_a_family_does_not_read_is_refused_off_its_default(cls, attribute):
    import transformers

    arch, extra = _NEW_FAMILIES[cls]
    hf = getattr(transformers, cls)(architectures=[arch], **_SMALL, **extra)
    for name, value in attribute.items():
        setattr(hf, name, value)
    with pytest.raises(ConfigError, match=next(iter(attribute))):
        _config(hf)
