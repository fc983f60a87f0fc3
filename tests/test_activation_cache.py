"""ActivationCache: lookups (and why a lookup fails), and TransformerLens' residual-stream analysis
checked against the model's own activations on a LayerNorm model with learned positions
(tiny-gpt2) and an RMSNorm rotary grouped-query model (tiny-llama)."""

from __future__ import annotations

import pytest
import torch

from lensutil.errors import CacheKeyError, LensError
from lensutil.model.transformer import HookedTransformer

ATOL = 1e-5


def _load(name: str) -> HookedTransformer:
    # Unprocessed weights: the norms keep w and b, so the checks below exercise the scale-only semantics.
    model = HookedTransformer.from_pretrained_no_processing(name)
    model.eval()
    return model


@pytest.fixture(scope="module")
def gpt2() -> HookedTransformer:
    return _load("tiny-gpt2")


@pytest.fixture(scope="module", params=["tiny-gpt2", "tiny-llama"])
def model(request) -> HookedTransformer:
    return _load(request.param)


def tokens(batch: int = 2, pos: int = 6) -> torch.Tensor:
    return torch.randint(1, 1000, (batch, pos), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def run(model):
    toks = tokens()
    with torch.no_grad():
        logits, cache = model.run_with_cache(toks)
    return model, toks, logits, cache


# ---- lookups ------------------------------------------------------------------------------------

def test_short_keys_resolve_like_transformerlens(gpt2):
    _, cache = gpt2.run_with_cache(tokens())
    assert cache["pattern", 0] is cache["blocks.0.attn.hook_pattern"]
    assert cache["pattern", 0, "attn"] is cache["blocks.0.attn.hook_pattern"]
    assert cache["resid_post", -1] is cache["blocks.1.hook_resid_post"]  # negative layers count from the end
    assert cache["scale", 1, "ln2"] is cache["blocks.1.ln2.hook_scale"]
    assert cache["embed"] is cache["hook_embed"]
    assert cache["scale"] is cache["ln_final.hook_scale"]


def test_mapping_protocol(gpt2):
    _, cache = gpt2.run_with_cache(tokens(), names_filter=["hook_embed", "blocks.0.hook_resid_pre"])
    assert len(cache) == 2 and list(cache) == list(cache.keys()) == ["hook_embed", "blocks.0.hook_resid_pre"]
    assert [k for k, _ in cache.items()] == list(cache.keys())
    assert all(isinstance(v, torch.Tensor) for v in cache.values())
    assert "hook_embed" in cache and ("resid_pre", 0) in cache
    assert ("resid_pre", 1) not in cache and "not a name" not in cache and 3 not in cache
    assert "hook_embed" in repr(cache)


def test_setitem_records_edited_names(gpt2):
    _, cache = gpt2.run_with_cache(tokens())
    assert cache.edited == set()
    cache["resid_pre", 1] = torch.zeros_like(cache["resid_pre", 1])
    cache["blocks.0.attn.hook_z"] = cache["blocks.0.attn.hook_z"] * 2
    assert cache.edited == {"blocks.1.hook_resid_pre", "blocks.0.attn.hook_z"}
    assert not cache["resid_pre", 1].any()


@pytest.mark.parametrize("edit", [lambda t: t.zero_(), lambda t: t.__setitem__(slice(None), 0),
                                  lambda t: t[0, -1].mul_(2)], ids=["zero_", "slice_assign", "part_of_it"])
def test_in_place_edits_count_as_edits(gpt2, edit):
    _, cache = gpt2.run_with_cache(tokens())
    edit(cache["blocks.0.attn.hook_z"])
    assert cache.edited == {"blocks.0.attn.hook_z"}


def test_in_place_edit_of_a_tensor_two_hooks_share_marks_both(gpt2):
    # A block's output is the next block's input: one tensor, cached under both names.
    _, cache = gpt2.run_with_cache(tokens())
    cache["blocks.0.hook_resid_post"].zero_()
    assert cache.edited == {"blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"}


def test_in_place_edits_survive_moving_the_cache(gpt2):
    _, cache = gpt2.run_with_cache(tokens(batch=1))
    cache["blocks.0.hook_mlp_out"].zero_()
    cache.to("cpu").remove_batch_dim()
    assert cache.edited == {"blocks.0.hook_mlp_out"}
    cache["blocks.1.hook_mlp_out"].zero_()  # and edits after the move are seen too
    assert cache.edited == {"blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"}


def test_a_deep_copy_tracks_its_own_in_place_edits(gpt2):
    import copy

    _, cache = gpt2.run_with_cache(tokens(), names_filter=["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"])
    cache["blocks.0.hook_mlp_out"].zero_()
    twin = copy.deepcopy(cache)
    twin["blocks.1.hook_mlp_out"].zero_()
    assert twin.edited == {"blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"}
    assert cache.edited == {"blocks.0.hook_mlp_out"}


def test_reading_a_cache_is_not_an_edit(gpt2):
    _, cache = gpt2.run_with_cache(tokens())
    cache.accumulated_resid(apply_ln=True)
    cache.decompose_resid(apply_ln=True)
    cache.stack_head_results(apply_ln=True)
    (cache["blocks.0.attn.hook_z"] * 2).sum()
    assert cache.edited == set()


def test_missing_key_is_a_key_error_with_an_unquoted_message(gpt2):
    _, cache = gpt2.run_with_cache(tokens())
    with pytest.raises(KeyError) as err:
        cache["blocks.0.mlp.hook_mlp_out"]
    assert isinstance(err.value, CacheKeyError)
    assert str(err.value).startswith("No hook named 'blocks.0.mlp.hook_mlp_out'")


def test_unknown_name_suggests_close_matches(gpt2):
    _, cache = gpt2.run_with_cache(tokens())
    with pytest.raises(CacheKeyError, match=r"Did you mean: 'blocks\.0\.hook_mlp_out'"):
        cache["blocks.0.mlp.hook_mlp_out"]


def test_filtered_out_name_says_which_filter_and_how_to_include_it(gpt2):
    _, cache = gpt2.run_with_cache(tokens(), names_filter="blocks.0.hook_resid_pre")
    with pytest.raises(CacheKeyError) as err:
        cache["resid_pre", 1]
    msg = str(err.value)
    assert "'blocks.1.hook_resid_pre' was left out by names_filter='blocks.0.hook_resid_pre'" in msg
    assert "names_filter=None" in msg

    _, cache = gpt2.run_with_cache(tokens(), names_filter=lambda n: n.endswith("pattern"))
    with pytest.raises(CacheKeyError, match="<lambda> \\(a filter function\\)"):
        cache["blocks.0.hook_resid_pre"]


def test_flag_gated_name_names_the_flag(gpt2):
    _, cache = gpt2.run_with_cache(tokens())
    with pytest.raises(CacheKeyError, match=r"needs use_attn_result=True\. Call model\.set_use_attn_result\(True\)"):
        cache["result", 0]


def test_hook_that_did_not_fire_says_so(gpt2):
    _, cache = gpt2.run_with_cache(tokens(), stop_at_layer=1)  # blocks after 0 never run
    with pytest.raises(CacheKeyError, match="did not fire"):
        cache["blocks.1.hook_resid_pre"]
    with pytest.raises(CacheKeyError):  # learned positions: GPT-2 has no rotary hooks at all
        cache["rot_q", 0]


def test_missing_gradient_says_to_use_incl_bwd(gpt2):
    _, cache = gpt2.run_with_cache(tokens())
    with pytest.raises(CacheKeyError, match="incl_bwd=True"):
        cache["blocks.0.hook_resid_pre_grad"]


def test_unresolvable_short_key_is_a_cache_key_error(gpt2):
    _, cache = gpt2.run_with_cache(tokens())
    with pytest.raises(CacheKeyError, match="give a layer"):
        cache["resid_pre"]


def test_to_and_remove_batch_dim(gpt2):
    _, cache = gpt2.run_with_cache(tokens(batch=1))
    shape = cache["resid_pre", 0].shape
    assert cache.remove_batch_dim() is cache and cache["resid_pre", 0].shape == shape[1:]
    assert cache.to("meta") is cache and cache["resid_pre", 0].device.type == "meta"
    _, wide = gpt2.run_with_cache(tokens(batch=2))
    with pytest.raises(LensError, match="batch size 1"):
        wide.remove_batch_dim()


# ---- residual stream analysis -------------------------------------------------------------------

def test_decompose_resid_sums_to_final_residual(run):
    model, _, _, cache = run
    stack, labels = cache.decompose_resid(return_labels=True)
    assert torch.allclose(stack.sum(0), cache["resid_post", -1], atol=ATOL)
    embeds = ["embed", "pos_embed"] if model.cfg.positional_embedding_type == "standard" else ["embed"]
    assert labels == embeds + ["0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out"]


def test_decompose_resid_up_to_a_layer_and_by_mode(run):
    model, _, _, cache = run
    assert torch.allclose(cache.decompose_resid(layer=1).sum(0), cache["resid_pre", 1], atol=ATOL)
    mid = cache.decompose_resid(layer=1, mlp_input=True)
    assert torch.allclose(mid.sum(0), cache["resid_mid", 1], atol=ATOL)
    _, labels = cache.decompose_resid(mode="attn", incl_embeds=False, return_labels=True)
    assert labels == ["0_attn_out", "1_attn_out"]
    _, labels = cache.decompose_resid(mode="mlp", incl_embeds=False, return_labels=True)
    assert labels == ["0_mlp_out", "1_mlp_out"]
    with pytest.raises(LensError, match="mode"):
        cache.decompose_resid(mode="heads")


def test_accumulated_resid_last_entry_is_final_residual(run):
    _, _, _, cache = run
    stack, labels = cache.accumulated_resid(return_labels=True)
    assert labels == ["0_pre", "1_pre", "final_post"]
    assert torch.equal(stack[-1], cache["resid_post", -1])
    assert torch.equal(stack[0], cache["resid_pre", 0])


def test_accumulated_resid_options(run):
    _, _, _, cache = run
    _, labels = cache.accumulated_resid(incl_mid=True, return_labels=True)
    assert labels == ["0_pre", "0_mid", "1_pre", "1_mid", "final_post"]
    _, labels = cache.accumulated_resid(layer=1, return_labels=True)
    assert labels == ["0_pre", "1_pre"]
    _, labels = cache.accumulated_resid(layer=1, mlp_input=True, return_labels=True)
    assert labels == ["0_pre", "1_pre", "1_mid"]
    last = cache.accumulated_resid(pos_slice=-1)
    assert last.shape == (3, 2, cache["resid_pre", 0].shape[-1])
    assert torch.equal(last[-1], cache["resid_post", -1][:, -1])


def test_stack_head_results_summed_over_heads_plus_b_O_is_attn_out(run):
    model, _, _, cache = run
    stack, labels = cache.stack_head_results(return_labels=True)
    n = model.cfg.n_heads
    assert labels[: n + 1] == [f"L0H{h}" for h in range(n)] + ["L1H0"] and len(labels) == 2 * n
    for layer in range(model.cfg.n_layers):
        heads = stack[layer * n : (layer + 1) * n].sum(0)
        assert torch.allclose(heads + model.blocks[layer].attn.b_O.detach(), cache["attn_out", layer], atol=ATOL)


def test_stack_head_results_uses_cached_hook_result():
    model = _load("tiny-gpt2")
    toks = tokens()
    with torch.no_grad():
        _, without = model.run_with_cache(toks)
        model.set_use_attn_result(True)
        _, with_result = model.run_with_cache(toks)
    assert "blocks.0.attn.hook_result" in with_result
    assert torch.allclose(with_result.stack_head_results(), without.stack_head_results(), atol=ATOL)
    with_result["result", 0] = torch.zeros_like(with_result["result", 0])  # proves the cached one is read
    assert not with_result.stack_head_results(layer=1).any()


def test_stack_head_results_remainder_completes_the_residual(run):
    _, _, _, cache = run
    stack, labels = cache.stack_head_results(incl_remainder=True, return_labels=True, pos_slice=-1)
    assert labels[-1] == "remainder"
    assert torch.allclose(stack.sum(0), cache["resid_post", -1][:, -1], atol=ATOL)


def _scale_only(model, x):
    """A norm without its weights, written out: centre (LayerNorm), divide by sqrt(mean square + eps)."""
    if model.cfg.normalization_type in ("LN", "LNPre"):
        x = x - x.mean(-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()


def _norm_input_share(model, cache, norm: str):
    """What the scale-only norm should give: the norm's own input, normalised without w (and b)."""
    return _scale_only(model, cache["resid_post", -1] if norm == "ln_final" else cache["resid_pre", 1])


def test_apply_ln_to_stack_matches_the_models_norm(run):
    model, _, _, cache = run
    final = cache.apply_ln_to_stack(cache["resid_post", -1][None])[0]
    assert torch.allclose(final, _norm_input_share(model, cache, "ln_final"), atol=1e-4)
    before_1 = cache.apply_ln_to_stack(cache["resid_pre", 1][None], layer=1)[0]
    assert torch.allclose(before_1, _norm_input_share(model, cache, "blocks.1.ln1"), atol=1e-4)


def test_apply_ln_to_stack_is_additive_over_components(run):
    _, _, _, cache = run
    parts = cache.decompose_resid(apply_ln=True, pos_slice=-1)
    whole = cache.apply_ln_to_stack(cache["resid_post", -1][None, :, -1], pos_slice=-1)[0]
    assert torch.allclose(parts.sum(0), whole, atol=1e-4)


def _final_norm_by_hand(model, x):
    """ln_final written out: the scale-only norm, times w (plus b for LayerNorm)."""
    ln = model.ln_final
    x = _scale_only(model, x)
    if hasattr(ln, "w"):
        x = x * ln.w.detach()
    return x + ln.b.detach() if hasattr(ln, "b") else x


def test_recompute_ln_on_the_final_residual_is_ln_finals_output(run):
    model, _, logits, cache = run
    recomputed = cache.apply_ln_to_stack(cache["resid_post", -1][None], recompute_ln=True)[0]
    # TransformerLens 2.18 runs the whole final norm (weight and bias too) on each component, so
    # the final residual comes out as what the unembed reads: unembedding it gives the logits.
    with torch.no_grad():
        assert torch.allclose(model.unembed(recomputed), logits, atol=1e-5)
    assert torch.allclose(recomputed, _final_norm_by_hand(model, cache["resid_post", -1]), atol=1e-5)
    last = cache.apply_ln_to_stack(cache["resid_post", -1][None, :, -1], pos_slice=-1, recompute_ln=True)[0]
    assert torch.allclose(last, recomputed[:, -1], atol=1e-6)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_recompute_ln_on_a_processed_model_is_the_cached_scale_on_the_final_residual(name):
    # With fold_ln the final norm has no weights left, so both readings of the final residual agree.
    model = HookedTransformer.from_pretrained(name)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens())
    final = cache["resid_post", -1][None]
    recomputed = cache.apply_ln_to_stack(final, recompute_ln=True)[0]
    assert torch.allclose(recomputed, cache.apply_ln_to_stack(final)[0], atol=1e-6)
    assert torch.allclose(recomputed, cache["ln_final.hook_normalized"], atol=1e-6)


def test_accumulated_resid_apply_ln_normalises_each_snapshot_with_its_own_statistics(run):
    # TransformerLens 2.18: apply_ln=True up to the unembed recomputes ln_final per snapshot (logit lens).
    model, _, logits, cache = run
    raw = cache.accumulated_resid(incl_mid=True, pos_slice=-1)
    normed = cache.accumulated_resid(incl_mid=True, pos_slice=-1, apply_ln=True)
    assert torch.allclose(normed, _final_norm_by_hand(model, raw), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(model.unembed(normed[-1]), logits[:, -1], atol=1e-5)
    for layer in (None, -1, model.cfg.n_layers):
        assert torch.equal(cache.accumulated_resid(layer=layer, incl_mid=True, pos_slice=-1, apply_ln=True), normed)


def test_accumulated_resid_apply_ln_before_a_layer_uses_that_layers_cached_scale(run):
    _, _, _, cache = run  # as in TransformerLens: only the stack that reaches the unembed is recomputed
    for mlp_input in (False, True):
        raw = cache.accumulated_resid(layer=1, mlp_input=mlp_input)
        cached = cache.apply_ln_to_stack(raw, layer=1, mlp_input=mlp_input)
        assert torch.equal(cache.accumulated_resid(layer=1, mlp_input=mlp_input, apply_ln=True), cached)


def test_recompute_ln_before_a_layer_warns_that_it_uses_the_cached_scale(run):
    _, _, _, cache = run
    raw = cache.accumulated_resid(layer=1)
    with pytest.warns(UserWarning, match="recompute_ln"):
        out = cache.apply_ln_to_stack(raw, layer=1, recompute_ln=True)
    assert torch.equal(out, cache.apply_ln_to_stack(raw, layer=1))


def test_logit_attrs_sum_to_the_tokens_direct_logit(run):
    model, toks, _, cache = run
    target = toks[:, -1]
    attrs = cache.logit_attrs(cache.decompose_resid(pos_slice=-1), target, pos_slice=-1)
    assert attrs.shape == (len(cache.decompose_resid(return_labels=True)[1]), toks.shape[0])
    share = _norm_input_share(model, cache, "ln_final")[:, -1]
    expected = (share * model.unembed.W_U.detach()[:, target].T).sum(-1)
    assert torch.allclose(attrs.sum(0), expected, atol=1e-4)


def test_logit_attrs_with_incorrect_tokens_is_a_difference(run):
    _, toks, _, cache = run
    stack = cache.accumulated_resid(pos_slice=-1)
    right, wrong = toks[:, -1], toks[:, 0]
    diff = cache.logit_attrs(stack, right, incorrect_tokens=wrong, pos_slice=-1)
    expected = cache.logit_attrs(stack, right, pos_slice=-1) - cache.logit_attrs(stack, wrong, pos_slice=-1)
    assert torch.allclose(diff, expected, atol=1e-5)
    with pytest.raises(LensError, match="incorrect_tokens"):
        cache.logit_attrs(stack, right, incorrect_tokens=toks[:1, 0], pos_slice=-1)


def test_analysis_works_without_batch_dim(gpt2):
    with torch.no_grad():
        _, cache = gpt2.run_with_cache(tokens(batch=1), remove_batch_dim=True)
    stack = cache.decompose_resid()
    assert stack.shape[1:] == cache["resid_post", -1].shape
    assert torch.allclose(stack.sum(0), cache["resid_post", -1], atol=ATOL)
    assert cache.stack_head_results(apply_ln=True).shape[1:] == cache["resid_post", -1].shape


def test_missing_positional_embedding_is_reported_not_skipped(gpt2):
    _, cache = gpt2.run_with_cache(tokens(), names_filter=lambda n: "pos_embed" not in n)
    with pytest.raises(CacheKeyError, match="hook_pos_embed"):
        cache.decompose_resid()
