"""lensutil.notebook.widgets.HookExplorer: the view follows the controls, and says what gates a hook."""

from __future__ import annotations

import pytest
import torch

from lensutil import HookedTransformer
from lensutil.errors import ConfigError
from lensutil.notebook.widgets import HookExplorer, hook_summary, pattern_html

PROMPT = "The cat sat on the mat"


@pytest.fixture(scope="module")
def model():
    # Its own copy (not tests/_models.lens): one test turns a hook flag on.
    return HookedTransformer.from_pretrained("tiny-llama")


def test_explorer_draws_the_cached_pattern_of_the_chosen_layer_and_head(model):
    _, cache = model.run_with_cache(PROMPT)
    explorer = HookExplorer(model, PROMPT, cache=cache)
    tokens = model.to_str_tokens(PROMPT)
    assert explorer.pattern.value == pattern_html(cache["blocks.0.attn.hook_pattern"][0, 0], tokens, "layer 0, head 0")
    explorer.layer.value, explorer.head.value = 1, 3
    want = pattern_html(cache["blocks.1.attn.hook_pattern"][0, 3], tokens, "layer 1, head 3")
    assert explorer.pattern.value == want
    assert want != pattern_html(cache["blocks.1.attn.hook_pattern"][0, 2], tokens, "layer 1, head 3")  # heads differ
    assert explorer.pattern.value.count("<td") == len(tokens) ** 2


def test_pattern_cells_carry_the_weights():
    pattern = torch.tensor([[1.0, 0.0], [0.25, 0.75]])
    page = pattern_html(pattern, ["A", " b"], "t")
    assert 'title="␣b → A: 0.250"' in page and "rgba(33,102,172,0.750)" in page
    with pytest.raises(ConfigError, match="query_pos, key_pos"):
        pattern_html(pattern[None], ["A", " b"])


def test_explorer_names_the_flag_a_hook_needs_and_the_shape_once_it_fires(model):
    explorer = HookExplorer(model, PROMPT)
    explorer.hook.value = "blocks.0.attn.hook_result"
    assert "cfg.use_attn_result, which is off" in explorer.hook_info.value
    assert "model.set_use_attn_result(True)" in explorer.hook_info.value
    explorer.hook.value = "blocks.0.hook_resid_post"
    assert "shape (1, 7, 64) on this prompt; no config flag gates it" in explorer.hook_info.value
    model.set_use_attn_result(True)
    try:
        _, cache = model.run_with_cache(PROMPT)
        line = hook_summary(model, cache, "blocks.0.attn.hook_result")
    finally:
        model.set_use_attn_result(False)
    assert line == "blocks.0.attn.hook_result: shape (1, 7, 4, 64) on this prompt; gated by cfg.use_attn_result (on)"


def test_explorer_stores_facts_as_text_and_a_snapshot_for_static_pages(model):
    explorer = HookExplorer(model, PROMPT)
    bundle = explorer._repr_mimebundle_()
    assert bundle["text/plain"] == f"HookExplorer(tiny-llama: 2 layers x 4 heads, {len(model.hook_dict)} hooks, a prompt of 7 tokens)"
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert explorer.pattern.value in bundle["text/html"] and explorer.hook_info.value in bundle["text/html"]
    explorer.close()
    assert explorer.widget.comm is None and explorer.pattern.comm is None


def test_explorer_wants_one_prompt(model):
    with pytest.raises(ConfigError, match="one prompt"):
        HookExplorer(model, ["two", "prompts"])
