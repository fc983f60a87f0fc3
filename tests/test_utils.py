"""get_act_name speaks TransformerLens' short names; slice_along follows its pos_slice rules."""

from __future__ import annotations

import pytest
import torch

from lensutil.errors import LensError
from lensutil.utils import get_act_name, slice_along


@pytest.mark.parametrize(
    "args, expected",
    [
        (("pattern", 0), "blocks.0.attn.hook_pattern"),
        (("attn_scores", 1), "blocks.1.attn.hook_attn_scores"),
        (("q", 2), "blocks.2.attn.hook_q"),
        (("k", 2), "blocks.2.attn.hook_k"),
        (("v", 2), "blocks.2.attn.hook_v"),
        (("z", 0), "blocks.0.attn.hook_z"),
        (("result", 0), "blocks.0.attn.hook_result"),
        (("rot_q", 0), "blocks.0.attn.hook_rot_q"),
        (("rot_k", 0), "blocks.0.attn.hook_rot_k"),
        (("pre", 3), "blocks.3.mlp.hook_pre"),
        (("post", 3), "blocks.3.mlp.hook_post"),
        (("pre_linear", 3), "blocks.3.mlp.hook_pre_linear"),
        (("mlp_out", 0), "blocks.0.hook_mlp_out"),
        (("attn_out", 0), "blocks.0.hook_attn_out"),
        (("resid_pre", 0), "blocks.0.hook_resid_pre"),
        (("resid_mid", 0), "blocks.0.hook_resid_mid"),
        (("resid_post", 11), "blocks.11.hook_resid_post"),
        (("q_input", 0), "blocks.0.hook_q_input"),
        (("k_input", 0), "blocks.0.hook_k_input"),
        (("v_input", 0), "blocks.0.hook_v_input"),
        (("attn_in", 0), "blocks.0.hook_attn_in"),
        (("mlp_in", 0), "blocks.0.hook_mlp_in"),
        (("embed",), "hook_embed"),
        (("pos_embed",), "hook_pos_embed"),
        (("scale",), "ln_final.hook_scale"),
        (("normalized",), "ln_final.hook_normalized"),
        (("scale", 4, "ln1"), "blocks.4.ln1.hook_scale"),
        (("normalized", 1, "ln2"), "blocks.1.ln2.hook_normalized"),
        (("scale", None, "ln_final"), "ln_final.hook_scale"),
        (("pattern", 0, "attn"), "blocks.0.attn.hook_pattern"),
        (("pattern", 0, "a"), "blocks.0.attn.hook_pattern"),
    ],
)
def test_short_names_expand_to_full_hook_names(args, expected):
    assert get_act_name(*args) == expected


@pytest.mark.parametrize(
    "short, expected",
    [
        ("scale4ln1", "blocks.4.ln1.hook_scale"),
        ("pattern0", "blocks.0.attn.hook_pattern"),
        ("resid_pre5", "blocks.5.hook_resid_pre"),
        ("attn2", "blocks.2.attn.hook_pattern"),  # TransformerLens: "attn" means the pattern
    ],
)
def test_transformerlens_shorthand_is_understood(short, expected):
    assert get_act_name(short) == expected


@pytest.mark.parametrize("alias, expected", [("attn", "pattern"), ("key", "k"), ("query", "q"), ("value", "v"),
                                             ("attn_logits", "attn_scores"), ("mlp_pre", "pre"), ("mlp_post", "post")])
def test_transformerlens_synonyms_map_to_the_same_hook(alias, expected):
    assert get_act_name(alias, 1) == get_act_name(expected, 1)


@pytest.mark.parametrize("full", ["blocks.0.hook_resid_pre", "hook_embed", "ln_final.hook_scale", "blocks.3.attn.hook_z"])
def test_full_name_passes_through_unchanged(full):
    assert get_act_name(full) == full


def test_unknown_alias_lists_known_aliases():
    with pytest.raises(LensError, match="Unknown activation name 'patern'.*'pattern'"):
        get_act_name("patern", 0)


def test_unknown_layer_type_is_refused():
    with pytest.raises(LensError, match="layer_type 'ln3'"):
        get_act_name("scale", 0, "ln3")


def test_block_activation_without_layer_asks_for_one():
    with pytest.raises(LensError, match="give a layer"):
        get_act_name("resid_pre")


def test_norm_activation_in_a_block_asks_which_norm():
    with pytest.raises(LensError, match="ln1"):
        get_act_name("scale", 2)


def test_slice_along_follows_pos_slice_rules():
    x = torch.arange(24).reshape(2, 3, 4)
    assert torch.equal(slice_along(x, None, 1), x)
    assert torch.equal(slice_along(x, -1, 1), x[:, -1])  # an int drops the axis
    assert torch.equal(slice_along(x, (0, 2), 1), x[:, 0:2])  # a tuple is slice(*tuple)
    assert torch.equal(slice_along(x, slice(1, None), -2), x[:, 1:])
    assert torch.equal(slice_along(x, [0, 2], 1), x[:, [0, 2]])
    assert torch.equal(slice_along(x, torch.tensor([2]), 1), x[:, [2]])
