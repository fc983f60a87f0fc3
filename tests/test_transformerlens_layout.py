"""Weights and config as TransformerLens lays them out: grouped-query W_K/W_V per query head with
the compact parameters under TransformerLens' names, and HookedTransformerConfig's defaults."""

from __future__ import annotations

import math

import pytest
import torch

from _models import hf, lens
from lensutil.architectures import llama
from lensutil.config import HookedTransformerConfig
from lensutil.errors import ConfigError
from lensutil.loading.pretrained import from_pretrained
from lensutil.loading.state_dict import load_and_process_state_dict
from lensutil.model.transformer import HookedTransformer

TEXT = "The Eiffel Tower is in the city of"


# ---- grouped-query attention ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_grouped_query_W_K_W_V_are_per_query_head_as_in_transformerlens(name):
    model = lens(name)
    cfg, attn = model.cfg, model.blocks[0].attn
    group = cfg.n_heads // cfg.n_kv_heads
    assert group > 1
    for w in ("W_K", "W_V"):
        assert getattr(attn, w).shape == (cfg.n_heads, cfg.d_model, cfg.d_head)
        assert getattr(attn, "_" + w).shape == (cfg.n_kv_heads, cfg.d_model, cfg.d_head)
        assert torch.equal(getattr(attn, w), getattr(attn, "_" + w).repeat_interleave(group, dim=0))
    for b in ("b_K", "b_V"):
        assert getattr(attn, b).shape == (cfg.n_heads, cfg.d_head)
        assert torch.equal(getattr(attn, b), getattr(attn, "_" + b).repeat_interleave(group, dim=0))
    assert model.W_K.shape == model.W_V.shape == (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head)


def test_per_query_head_keys_from_W_K_match_hook_k():
    # QK-circuit code written for TransformerLens: head h's keys are ln1(resid) @ W_K[h] + b_K[h].
    model = lens("tiny-qwen2")  # has k biases
    cfg = model.cfg
    _, cache = model.run_with_cache(TEXT, names_filter=lambda n: n in ("blocks.1.ln1.hook_normalized", "blocks.1.attn.hook_k"))
    normalized = cache["blocks.1.ln1.hook_normalized"] * model.blocks[1].ln1.w  # RMS: hook is before w
    attn = model.blocks[1].attn
    for h in range(cfg.n_heads):
        keys = normalized @ attn.W_K[h] + attn.b_K[h]
        assert torch.allclose(keys, cache["blocks.1.attn.hook_k"][:, :, h // (cfg.n_heads // cfg.n_kv_heads)], atol=1e-5)


def test_state_dict_keys_are_transformerlens_ones():
    gqa = lens("tiny-llama").state_dict()
    assert {"blocks.0.attn._W_K", "blocks.0.attn._W_V", "blocks.0.attn._b_K", "blocks.0.attn._b_V"} <= set(gqa)
    assert not {"blocks.0.attn.W_K", "blocks.0.attn.W_V", "blocks.0.attn.b_K", "blocks.0.attn.b_V"} & set(gqa)
    mha = lens("tiny-gpt2").state_dict()  # multi-head attention: plain names
    assert {"blocks.0.attn.W_K", "blocks.0.attn.b_V"} <= set(mha) and "blocks.0.attn._W_K" not in mha


def test_hook_k_and_hook_v_stay_compact_as_in_transformerlens():
    model = lens("tiny-llama")
    _, cache = model.run_with_cache(TEXT, names_filter=lambda n: n.startswith("blocks.0.attn.hook_"))
    batch, pos = cache["blocks.0.attn.hook_q"].shape[:2]
    for name in ("hook_k", "hook_v", "hook_rot_k"):
        assert cache[f"blocks.0.attn.{name}"].shape == (batch, pos, model.cfg.n_kv_heads, model.cfg.d_head)


def test_llama_with_as_many_kv_heads_as_heads_is_plain_multi_head_as_in_transformerlens():
    from transformers import LlamaConfig

    hf = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                     num_key_value_heads=4, vocab_size=100, architectures=["LlamaForCausalLM"])
    cfg = llama.config_from_hf(hf)
    assert cfg.n_key_value_heads is None and cfg.n_kv_heads == 4
    assert "blocks.0.attn.W_K" in HookedTransformer(cfg).state_dict()
    hf.num_key_value_heads = 2
    assert llama.config_from_hf(hf).n_key_value_heads == 2


def test_a_transformerlens_named_gqa_state_dict_loads():
    # K/V weights written as TransformerLens' convert_llama_weights writes them for GQA models:
    # "(n h) m -> n m h" under the keys blocks.{l}.attn._W_K / _W_V / _b_K / _b_V.
    source, ref = lens("tiny-llama"), hf("tiny-llama")
    cfg = source.cfg
    kv_names = ("W_K", "W_V", "b_K", "b_V")
    state_dict = {k: v.clone() for k, v in source.state_dict().items() if k.rsplit(".", 1)[-1].lstrip("_") not in kv_names}
    for i, layer in enumerate(ref.model.layers):
        for name in "KV":
            w = getattr(layer.self_attn, f"{name.lower()}_proj").weight.detach()
            state_dict[f"blocks.{i}.attn._W_{name}"] = w.reshape(cfg.n_kv_heads, cfg.d_head, cfg.d_model).transpose(1, 2)
            state_dict[f"blocks.{i}.attn._b_{name}"] = torch.zeros(cfg.n_kv_heads, cfg.d_head)
    model = HookedTransformer(cfg.__class__.from_dict(cfg.to_dict()), source.tokenizer)
    load_and_process_state_dict(model, state_dict, fold_ln=False, center_writing_weights=False,
                                center_unembed=False, fold_value_biases=False)
    with torch.no_grad():
        assert torch.equal(model(TEXT), source(TEXT))


# ---- config defaults ------------------------------------------------------------------------------


def test_config_defaults_as_transformerlens():
    cfg = HookedTransformerConfig(d_model=768, n_layers=12, n_ctx=1024, d_head=64, act_fn="gelu", d_vocab=50257)
    assert (cfg.n_heads, cfg.d_mlp, cfg.d_vocab_out) == (12, 3072, 50257)
    assert cfg.attn_scale == math.sqrt(64)
    bare = HookedTransformerConfig(d_model=128, n_layers=1, n_ctx=16, d_head=32)
    assert bare.d_vocab == -1 and bare.d_vocab_out == -1  # to be taken from a tokenizer
    assert HookedTransformerConfig(d_model=128, n_layers=1, n_ctx=16, d_head=32, attn_scale=-1.0).attn_scale == math.sqrt(32)
    model = HookedTransformer(HookedTransformerConfig(d_model=64, n_layers=1, n_ctx=8, d_head=16, d_vocab=20, d_vocab_out=7))
    assert model.unembed.W_U.shape == (64, 7) and model.embed.W_E.shape == (20, 64)


def test_config_refuses_sizes_that_do_not_fit():
    with pytest.raises(ConfigError, match="d_model=100 is not a multiple of d_head=64"):
        HookedTransformerConfig(d_model=100, n_layers=1, n_ctx=16, d_head=64, d_vocab=10)
    with pytest.raises(ConfigError, match="d_mlp"):
        HookedTransformerConfig(d_model=64, n_layers=1, n_ctx=16, d_head=16, d_mlp=0, d_vocab=10)
    with pytest.raises(ConfigError, match="d_vocab"):
        HookedTransformer(HookedTransformerConfig(d_model=64, n_layers=1, n_ctx=16, d_head=16))


def test_config_round_trips_through_dicts_with_defaults_filled():
    cfg = HookedTransformerConfig(d_model=768, n_layers=2, n_ctx=64, d_head=64, d_vocab=100, attn_scale_rule="multiply")
    again = HookedTransformerConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.attn_scale_rule == "multiply" and again.n_heads == 12


def test_from_pretrained_overrides_n_ctx():
    model = from_pretrained("tiny-llama", n_ctx=64)
    assert model.cfg.n_ctx == 64
