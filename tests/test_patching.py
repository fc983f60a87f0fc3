"""run_with_cache_from_cache: every edit to a cache takes effect, or the call fails loudly."""

import pytest
import torch

from _models import lens as _lens
from lensutil import run_with_cache_from_cache
from lensutil.errors import LensError

TEXT = "The Eiffel Tower is in the city of"


def lens(name):
    # Eager attention on both sides: run_with_cache_from_cache caches every hook, hook_pattern included,
    # which runs the written-out attention, while the references below hook no pattern (with the
    # default "sdpa" they would take the fused kernel and differ in the last bits).
    return _lens(name, attn_implementation="eager")


def _reference(model, patches):
    return model.run_with_hooks(TEXT, fwd_hooks=[(n, lambda x, hook, v=v: v) for n, v in patches.items()])


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_unedited_cache_resumes_to_the_same_logits(name):
    model = lens(name)
    logits, cache = model.run_with_cache(TEXT)
    resumed, _ = run_with_cache_from_cache(model, cache, start_at_layer=1)
    assert torch.equal(resumed, logits)


def test_edit_after_start_layer_is_patched_in():
    model = lens("tiny-llama")
    _, cache = model.run_with_cache(TEXT)
    edit = torch.zeros_like(cache["blocks.1.hook_mlp_out"])
    cache["blocks.1.hook_mlp_out"] = edit
    resumed, new_cache = model.run_with_cache_from_cache(cache, start_at_layer=1)
    assert torch.equal(resumed, _reference(model, {"blocks.1.hook_mlp_out": edit}))
    assert torch.equal(new_cache["blocks.1.hook_mlp_out"], edit)


@pytest.mark.parametrize("edit", [lambda t: t.zero_(), lambda t: t.__setitem__(slice(None), 0)],
                         ids=["zero_", "slice_assign"])
def test_in_place_edit_takes_effect_like_an_assignment(edit):
    model = lens("tiny-llama")
    logits, cache = model.run_with_cache(TEXT)
    zeros = torch.zeros_like(cache["blocks.1.hook_mlp_out"])
    edit(cache["blocks.1.hook_mlp_out"])
    resumed, new_cache = model.run_with_cache_from_cache(cache, start_at_layer=1)
    assert torch.equal(resumed, _reference(model, {"blocks.1.hook_mlp_out": zeros}))
    assert not torch.equal(resumed, logits)
    assert not new_cache["blocks.1.hook_mlp_out"].any()


def test_in_place_edit_before_start_layer_shows_in_the_starting_residual():
    model = lens("tiny-gpt2")
    _, cache = model.run_with_cache(TEXT)
    cache["blocks.0.attn.hook_z"].mul_(0.5)
    edit = cache["blocks.0.attn.hook_z"].clone()
    resumed, _ = run_with_cache_from_cache(model, cache, start_at_layer=1)
    assert torch.allclose(resumed, _reference(model, {"blocks.0.attn.hook_z": edit}), atol=1e-6)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_in_place_edit_of_a_residual_shared_by_two_hooks_is_one_edit(name):
    # blocks.0.hook_resid_post and blocks.1.hook_resid_pre are one tensor; editing it is not a conflict.
    model = lens(name)
    logits, cache = model.run_with_cache(TEXT)
    cache["blocks.0.hook_resid_post"].mul_(0.5)
    edit = cache["blocks.1.hook_resid_pre"].clone()
    resumed, _ = run_with_cache_from_cache(model, cache, start_at_layer=1)
    assert torch.equal(resumed, model(edit, start_at_layer=1))
    assert not torch.allclose(resumed, logits)


def test_edit_before_start_layer_shows_in_the_starting_residual():
    model = lens("tiny-gpt2")
    _, cache = model.run_with_cache(TEXT)
    edit = cache["blocks.0.attn.hook_z"] * 0.5
    cache["blocks.0.attn.hook_z"] = edit
    resumed, new_cache = run_with_cache_from_cache(model, cache, start_at_layer=1)
    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_z", lambda x, hook: edit)]):
        reference, ref_cache = model.run_with_cache(TEXT)
    assert torch.allclose(resumed, reference, atol=1e-6)
    assert torch.allclose(new_cache["blocks.1.hook_resid_pre"], ref_cache["blocks.1.hook_resid_pre"], atol=1e-6)
    assert not torch.allclose(new_cache["blocks.1.hook_resid_pre"], cache["blocks.1.hook_resid_pre"])


def test_edited_embedding_is_used():
    model = lens("tiny-gpt2")
    logits, cache = model.run_with_cache(TEXT)
    cache["hook_embed"] = cache["hook_embed"] * 0
    resumed, _ = run_with_cache_from_cache(model, cache, start_at_layer=1)
    assert torch.allclose(resumed, _reference(model, {"hook_embed": cache["hook_embed"]}), atol=1e-6)
    assert not torch.allclose(resumed, logits)


def test_edit_overwritten_by_a_later_residual_edit_fails_loudly():
    model = lens("tiny-gpt2")
    _, cache = model.run_with_cache(TEXT)
    cache["blocks.0.hook_mlp_out"] = cache["blocks.0.hook_mlp_out"] * 0
    cache["blocks.1.hook_resid_pre"] = cache["blocks.1.hook_resid_pre"] * 2
    with pytest.raises(LensError, match="could not take effect"):
        run_with_cache_from_cache(model, cache, start_at_layer=1)
    assert not any(hp.has_hooks for hp in model.hook_dict.values())


def test_edit_with_wrong_shape_fails_and_leaves_no_hooks():
    model = lens("tiny-gpt2")
    _, cache = model.run_with_cache(TEXT)
    cache["blocks.1.hook_mlp_out"] = torch.zeros(1, 2, 3)
    with pytest.raises(LensError):
        run_with_cache_from_cache(model, cache, start_at_layer=1)
    assert not any(hp.has_hooks for hp in model.hook_dict.values())


def test_missing_start_residual_says_how_to_cache_it():
    model = lens("tiny-gpt2")
    _, cache = model.run_with_cache(TEXT, names_filter="blocks.0.hook_mlp_out")
    with pytest.raises(LensError, match="names_filter"):
        run_with_cache_from_cache(model, cache, start_at_layer=1)
