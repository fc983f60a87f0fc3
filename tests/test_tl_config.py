"""HookedTransformerConfig takes TransformerLens 2.x's names and maps them onto lensutil's fields (issue 27)."""

import pytest
import torch

from lensutil import HookedTransformer, HookedTransformerConfig
from lensutil.config import ACT_FNS
from lensutil.errors import ConfigError
from lensutil.model.activations import ACTIVATIONS

SMALL = dict(n_layers=1, d_model=8, n_ctx=6, d_head=4, d_vocab=13)


def test_gated_mlp_is_tl_spelling_of_mlp_type_gated():
    cfg = HookedTransformerConfig(**SMALL, gated_mlp=True)
    assert cfg.mlp_type == "gated" and cfg.gated_mlp
    assert HookedTransformerConfig(**SMALL, gated_mlp=False).mlp_type == "dense"
    with pytest.raises(ConfigError, match="gated_mlp"):
        HookedTransformerConfig(**SMALL, gated_mlp=True, mlp_type="dense")


def test_num_experts_builds_an_moe_as_in_transformerlens():
    cfg = HookedTransformerConfig(**SMALL, gated_mlp=True, num_experts=4, experts_per_token=2, act_fn="silu")
    assert cfg.mlp_type == "moe"


def test_tl_none_means_lensutils_default():
    cfg = HookedTransformerConfig(**SMALL, act_fn=None, device=None, original_architecture=None)
    assert (cfg.act_fn, cfg.device, cfg.original_architecture) == ("gelu_new", "cpu", "")


def test_use_attn_scale_false_leaves_scores_unscaled():
    cfg = HookedTransformerConfig(**SMALL, use_attn_scale=False)
    assert cfg.attn_scale == 1.0 and not cfg.use_attn_scale
    assert HookedTransformerConfig(**SMALL).use_attn_scale


# (use_qk_norm and parallel_attn_mlp, once on this list, are real fields now: Qwen3/Gemma 3, GPT-NeoX.)
@pytest.mark.parametrize("name, value", [("final_rms", True), ("load_in_4bit", True), ("n_devices", 2)])
def test_unimplemented_tl_feature_is_refused_by_name(name, value):
    with pytest.raises(ConfigError, match=name):
        HookedTransformerConfig(**SMALL, **{name: value})


def test_unimplemented_tl_feature_off_is_accepted_and_reads_back_off():
    cfg = HookedTransformerConfig(**SMALL, use_qk_norm=False, load_in_4bit=False, n_devices=1)
    assert cfg.load_in_4bit is False and cfg.n_devices == 1
    with pytest.raises(ConfigError, match="final_rms"):
        cfg.final_rms = True


def test_unknown_name_suggests_the_close_field():
    with pytest.raises(ConfigError, match="'d_model'"):
        HookedTransformerConfig(n_layers=1, d_modl=8, d_model=8, n_ctx=4, d_head=4)


@pytest.mark.parametrize("kind", ["alibi", "relative_positional_bias"])  # shortformer: test_tl_compat_shortformer.py
def test_unimplemented_positions_are_refused(kind):
    with pytest.raises(ConfigError, match="positional_embedding_type"):
        HookedTransformerConfig(**SMALL, positional_embedding_type=kind)


def test_unwrap_returns_a_config_as_is_and_builds_one_from_a_dict():
    cfg = HookedTransformerConfig(**SMALL)
    assert HookedTransformerConfig.unwrap(cfg) is cfg
    built = HookedTransformerConfig.unwrap({**SMALL, "attn_only": True, "gated_mlp": True})
    assert isinstance(built, HookedTransformerConfig) and built.attn_only and built.gated_mlp


def test_to_dict_from_dict_round_trip_keeps_tl_fields():
    cfg = HookedTransformerConfig(**SMALL, attn_only=True, checkpoint_index=3, act_fn="solu_ln")
    again = HookedTransformerConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.checkpoint_index == 3


def test_is_layer_norm_activation():
    assert HookedTransformerConfig(**SMALL, act_fn="solu_ln").is_layer_norm_activation()
    assert not HookedTransformerConfig(**SMALL, act_fn="solu").is_layer_norm_activation()


def test_n_params_counts_attention_and_mlp_matrices():
    assert HookedTransformerConfig(**SMALL, attn_only=True).n_params == 1 * 8 * 4 * 2 * 4
    assert HookedTransformerConfig(**SMALL, d_mlp=16).n_params == 8 * 4 * 2 * 4 + 8 * 16 * 2
    assert HookedTransformerConfig(**SMALL, d_mlp=16, gated_mlp=True).n_params == 8 * 4 * 2 * 4 + 8 * 16 * 3


def test_set_seed_everywhere_seeds_torch():
    HookedTransformerConfig.set_seed_everywhere(5)
    a = torch.rand(3)
    HookedTransformerConfig.set_seed_everywhere(5)
    assert torch.equal(a, torch.rand(3))


def test_a_configs_seed_leaves_the_global_generator_alone():
    # TransformerLens seeds torch, random and numpy from its config; lensutil seeds only the model's generator.
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    HookedTransformer(HookedTransformerConfig(**SMALL, seed=123))
    assert torch.equal(torch.rand(2), expected)


def test_every_act_fn_name_has_a_function():
    assert set(ACT_FNS) == set(ACTIVATIONS)
    with pytest.raises(ConfigError, match="act_fn"):
        HookedTransformerConfig(**SMALL, act_fn="swish")
