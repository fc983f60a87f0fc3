"""Pythia (GPT-NeoX) and Phi-3, and Llama 3: what their config says, and every hook firing with its documented shape.

Their logits, generation, padded batches (each row as its prompt alone), sdpa/eager equality with
HuggingFace and weight processing run in the suites parametrised over the zoo's tiny-* decoders
(test_equivalence.py, test_masks.py, test_checks.py, test_processing.py).
"""

import pytest
import torch

from _models import hf, lens

FAMILIES = ["tiny-llama3", "tiny-pythia", "tiny-phi3"]


def test_configs_carry_what_each_family_brings():
    pythia, phi3, llama3 = lens("tiny-pythia").cfg, lens("tiny-phi3").cfg, lens("tiny-llama3").cfg
    assert pythia.parallel_attn_mlp and pythia.rotary_dim == pythia.d_head // 4 and pythia.normalization_type == "LN"
    assert not pythia.tie_word_embeddings and "b_Q" not in pythia.absent_biases
    assert phi3.rotary_dim == phi3.d_head // 2 and phi3.n_kv_heads < phi3.n_heads
    assert llama3.use_NTK_by_parts_rope and llama3.NTK_original_ctx_len == 64 and llama3.NTK_by_parts_factor == 8.0


def test_a_parallel_block_has_no_resid_mid_and_adds_both_outputs_to_its_input():
    model = lens("tiny-pythia")
    assert "blocks.0.hook_resid_mid" not in model.hook_dict
    tokens = model.to_tokens("The Eiffel Tower is in the city of")
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    block = cache["blocks.0.hook_mlp_out"] + cache["blocks.0.hook_attn_out"] + cache["blocks.0.hook_resid_pre"]
    assert torch.equal(block, cache["blocks.0.hook_resid_post"])
    # The MLP reads the block's input, not the input plus attention's output
    ln2 = model.blocks[0].ln2
    assert torch.equal(cache["blocks.0.ln2.hook_normalized"], ln2(cache["blocks.0.hook_resid_pre"]))


def _dims(model) -> dict:
    cfg = model.cfg
    return {"batch": 1, "head_index": cfg.n_heads, "kv_head_index": cfg.n_kv_heads, "d_head": cfg.d_head,
            "d_model": cfg.d_model, "d_mlp": cfg.d_mlp, "d_vocab": cfg.d_vocab, "1": 1}


@pytest.mark.parametrize("name", FAMILIES)
def test_every_hook_fires_with_its_documented_shape(name):
    model = lens(name)
    model.cfg.use_attn_result = model.cfg.use_hook_mlp_in = True  # the flag-gated ones too (not both qkv flags at once)
    try:
        tokens = model.to_tokens("The Eiffel Tower is in the city of")
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens)
    finally:
        model.cfg.use_attn_result = model.cfg.use_hook_mlp_in = False
    pos, dims = tokens.shape[1], _dims(model)
    skipped = {n for n in model.hook_dict if n.endswith(("hook_q_input", "hook_k_input", "hook_v_input", "hook_attn_in"))}
    assert set(cache.keys()) == set(model.hook_dict) - skipped
    for hook_name, value in cache.items():
        comment = model.hook_dict[hook_name].shape_comment
        want = [pos if axis in ("pos", "key_pos") else dims[axis] for axis in comment.split()]
        assert list(value.shape) == want, f"{hook_name}: {list(value.shape)} is not {comment}"


def test_compare_with_hf_reports_zero_on_each_family():
    from lensutil import checks

    for name in FAMILIES:
        assert checks.compare_with_hf(lens(name), on="logits").max == 0, name
    assert hf("tiny-pythia").config.use_parallel_residual


@pytest.mark.parametrize("name", FAMILIES)
def test_doctor_passes_on_each_family(name, capsys):
    from lensutil.checks import cli

    assert cli.main(["doctor", "--model", name]) == 0, capsys.readouterr().out
