"""TransformerLens' shortformer positions (positional_embedding_type="shortformer", issue 27): the learned
position embedding is added to the inputs of the queries and keys of every layer, after ln1, and never to
the residual stream or to the values."""

import pytest
import torch

import lensutil
from lensutil.errors import InputError


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = lensutil.HookedTransformerConfig(n_layers=2, d_model=16, d_head=4, n_heads=4, d_mlp=32, n_ctx=12,
                                           d_vocab=50, act_fn="relu", positional_embedding_type="shortformer")
    model = lensutil.HookedTransformer(cfg).eval()
    with torch.no_grad():  # norms that are not the identity, so folding them would show
        for name, p in model.named_parameters():
            if ".ln" in name or name.startswith("ln_final"):
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith(".w") else 0.0))
    return model


TOKENS = torch.tensor([[3, 7, 7, 1, 9, 2], [4, 4, 8, 0, 5, 6]])


def test_positions_join_queries_and_keys_only(model):
    _, cache = model.run_with_cache(TOKENS)
    pos = cache["hook_pos_embed"]
    assert pos.shape == (2, 6, 16)
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], cache["hook_embed"], rtol=0, atol=0)
    for layer in range(2):
        attn, normed = model.blocks[layer].attn, cache[f"blocks.{layer}.ln1.hook_normalized"]  # LN: after w, b
        q = torch.einsum("bpd,hde->bphe", normed + pos, attn.W_Q) + attn.b_Q
        k = torch.einsum("bpd,hde->bphe", normed + pos, attn.W_K) + attn.b_K
        v = torch.einsum("bpd,hde->bphe", normed, attn.W_V) + attn.b_V
        for name, want in (("q", q), ("k", k), ("v", v)):
            torch.testing.assert_close(cache[f"blocks.{layer}.attn.hook_{name}"], want, rtol=1e-5, atol=1e-5)


def test_positions_change_the_output(model):
    import copy

    moved = copy.deepcopy(model)
    with torch.no_grad():
        moved.pos_embed.W_pos.add_(1.0)
    _, cache = moved.run_with_cache(TOKENS)
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], model.embed(TOKENS), rtol=0, atol=0)
    assert not torch.allclose(moved(TOKENS), model(TOKENS))


def test_start_at_layer_with_input_to_embed_matches_the_full_forward(model):
    residual, tokens, pos, mask = model.input_to_embed(TOKENS)
    assert pos is not None and pos.shape == (2, 6, 16)
    torch.testing.assert_close(residual, model.embed(TOKENS), rtol=0, atol=0)
    out = model(residual, start_at_layer=0, tokens=tokens, shortformer_pos_embed=pos, attention_mask=mask)
    torch.testing.assert_close(out, model(TOKENS), rtol=0, atol=0)
    with pytest.raises(InputError, match="shortformer_pos_embed"):
        model(residual, start_at_layer=0, tokens=tokens)


def test_shortformer_pos_embed_is_refused_for_other_models():
    cfg = lensutil.HookedTransformerConfig(n_layers=1, d_model=8, d_head=4, n_heads=2, n_ctx=8, d_vocab=20,
                                           act_fn="relu")
    plain = lensutil.HookedTransformer(cfg)
    residual, tokens, pos, _ = plain.input_to_embed(torch.tensor([[1, 2, 3]]))
    assert pos is None
    with pytest.raises(InputError, match="shortformer"):
        plain(residual, start_at_layer=0, shortformer_pos_embed=torch.zeros(1, 3, 8))


def test_weight_processing_that_would_change_the_function_is_skipped(model):
    import copy

    processed = copy.deepcopy(model)
    with pytest.warns(UserWarning, match="shortformer"):
        report = processed.process_weights_(fold_ln=True, center_writing_weights=True)
    assert {"fold_ln", "center_writing_weights"} <= set(report.skipped)
    # center_unembed (applied) shifts each position's logits by a constant: compare probabilities
    torch.testing.assert_close(processed(TOKENS).log_softmax(-1), model(TOKENS).log_softmax(-1), rtol=1e-5, atol=1e-5)
