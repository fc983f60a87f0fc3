"""Inputs lensutil must read as TransformerLens does, or refuse with a clear error (issue 8)."""

import types

import pytest
import torch

from _models import ALL, lens
from lensutil.errors import AttentionMaskError, InputError
from lensutil.text.generation import KVCache
from lensutil.text.tokens import generate_attention_mask, tokenize

PROMPTS = ["The Eiffel Tower is in the city of", "Hi", "Once upon a time, in a land far away, there"]


def _param(name):
    return pytest.param(name, marks=pytest.mark.slow) if name == "smollm2-135m" else name


def _with_pad_as_bos(model):
    """The model's tokenizer with pad id == BOS id (as GPT-2's is when pad is set to its BOS/EOS)."""
    import copy

    tokenizer = copy.deepcopy(model.tokenizer)
    tokenizer.pad_token = tokenizer.bos_token
    assert tokenizer.pad_token_id == tokenizer.bos_token_id != tokenizer.eos_token_id
    return types.SimpleNamespace(tokenizer=tokenizer, cfg=model.cfg)


# ---- generate_attention_mask reads the padding side from the tokens ---------------------------

@pytest.mark.parametrize("prepend_bos", [True, False])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", [_param(n) for n in ALL])
def test_generate_attention_mask_infers_the_padding_side(name, side, prepend_bos):
    model = lens(name)
    tokens, mask = tokenize(model, PROMPTS, prepend_bos=prepend_bos, padding_side=side)
    assert torch.equal(model.generate_attention_mask(tokens), mask)
    assert torch.equal(model.generate_attention_mask(tokens, padding_side=side), mask)


def test_generate_attention_mask_of_unpadded_tokens_is_all_ones():
    model = lens("tiny-llama")
    tokens = model.to_tokens(PROMPTS[0])
    assert torch.equal(model.generate_attention_mask(tokens), torch.ones_like(tokens))


def test_generate_attention_mask_refuses_pads_at_both_ends_and_says_what_to_pass():
    model = lens("tiny-llama")
    pad = model.tokenizer.pad_token_id
    tokens = model.to_tokens(["a b c", "d e f"], prepend_bos=False)
    tokens[0, 0] = pad  # one row starts with the pad id, another ends with it: no side is clear
    tokens[1, -1] = pad
    with pytest.raises(AttentionMaskError, match=r"padding_side=.*tokenize"):
        model.generate_attention_mask(tokens)
    expected = torch.ones_like(tokens)
    expected[1, -1] = 0
    assert torch.equal(model.generate_attention_mask(tokens, padding_side="right"), expected)


def test_generate_attention_mask_refuses_to_guess_when_pad_is_bos():
    model = _with_pad_as_bos(lens("tiny-llama"))
    # Right-padded rows all start with BOS == pad, so they look left-padded too.
    tokens, mask = tokenize(model, PROMPTS, prepend_bos=True, padding_side="right")
    with pytest.raises(AttentionMaskError, match="BOS"):
        generate_attention_mask(model, tokens)
    assert torch.equal(generate_attention_mask(model, tokens, padding_side="right"), mask)


@pytest.mark.parametrize("side", ["left", "right"])
def test_generate_attention_mask_keeps_a_bos_that_shares_the_pad_id(side):
    model = _with_pad_as_bos(lens("tiny-llama"))
    # The empty prompt is BOS alone: on the right, a row of pad ids whose first one is BOS.
    tokens, mask = tokenize(model, [*PROMPTS, ""], prepend_bos=True, padding_side=side)
    assert torch.equal(generate_attention_mask(model, tokens, padding_side=side), mask)
    tokens, mask = tokenize(model, PROMPTS, prepend_bos=False, padding_side=side)
    assert torch.equal(generate_attention_mask(model, tokens, padding_side=side, prepend_bos=False), mask)


# ---- token ids outside the vocabulary ---------------------------------------------------------

@pytest.mark.parametrize("past_the_end", [0, 10**6, None])
def test_token_id_outside_the_vocabulary_names_id_position_and_d_vocab(past_the_end):
    model = lens("tiny-gpt2")
    bad = -1 if past_the_end is None else model.cfg.d_vocab + past_the_end
    tokens = model.to_tokens(["The cat sat on", "A dog"])
    tokens[1, 2] = bad
    with pytest.raises(InputError, match=rf"{bad}.*batch row 1, position 2.*d_vocab={model.cfg.d_vocab}"):
        model(tokens)


# ---- per-token loss masks padding as TransformerLens does -------------------------------------

def test_per_token_loss_is_zero_at_padded_transitions_and_averages_to_the_loss():
    model = lens("tiny-llama")
    tokens, mask = tokenize(model, PROMPTS, padding_side="right")
    with torch.no_grad():
        per_token = model(tokens, return_type="loss", attention_mask=mask, loss_per_token=True)
        loss = model(tokens, return_type="loss", attention_mask=mask)
    assert per_token.shape == (len(PROMPTS), tokens.shape[1] - 1)
    counted = (mask[:, :-1] * mask[:, 1:]).bool()
    assert not counted.all()  # the batch does have padded transitions
    assert (per_token[~counted] == 0).all()
    assert (per_token[counted] > 0).all()
    assert torch.equal(per_token.sum() / counted.sum(), loss)


# ---- generate on right-padded tokens ----------------------------------------------------------

@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_on_right_padded_tokens_continues_each_prompt_as_alone(use_cache):
    model = lens("tiny-llama")
    kw = dict(max_new_tokens=6, do_sample=False, stop_at_eos=False, use_past_kv_cache=use_cache)
    tokens, mask = tokenize(model, PROMPTS, padding_side="right")
    out = model.generate(tokens, attention_mask=mask, **kw)
    n = tokens.shape[1]
    assert out.shape == (len(PROMPTS), n + 6)
    aligned_mask = mask.sort(-1).values  # the documented mask of the returned, left-aligned prompts
    for row, prompt in enumerate(PROMPTS):
        solo_tokens = model.to_tokens(prompt)
        solo = model.generate(solo_tokens, **kw)
        assert out[row, n:].tolist() == solo[0, solo_tokens.shape[1]:].tolist()
        assert out[row, :n][aligned_mask[row].bool()].tolist() == solo_tokens[0].tolist()
        assert out[row, n - solo_tokens.shape[1] : n].tolist() == solo_tokens[0].tolist()


# ---- to_str_tokens and tokens_to_residual_directions shapes, as TransformerLens --------------

def test_to_str_tokens_of_any_list_is_a_list_of_lists():
    model = lens("tiny-llama")
    one = model.to_str_tokens("one text")
    assert isinstance(one, list) and all(isinstance(s, str) for s in one)
    assert model.to_str_tokens(["one text"]) == [one]
    assert model.to_str_tokens(["one text", "two"]) == [one, model.to_str_tokens("two")]
    tokens = model.to_tokens("one text")
    assert model.to_str_tokens(tokens) == one  # [1, pos]: the batch of one is squeezed
    assert model.to_str_tokens(tokens[0]) == one
    assert model.to_str_tokens([tokens[0]]) == [one]
    with pytest.raises(InputError, match="one sequence"):
        model.to_str_tokens(model.to_tokens(["one text", "two words"]))
    with pytest.raises(InputError, match=r"torch\.tensor\(ids\)"):
        model.to_str_tokens(tokens[0].tolist())


def test_tokens_to_residual_directions_squeezes_a_single_token():
    model = lens("tiny-llama")
    t = model.to_single_token(" Paris")
    d_model = model.cfg.d_model
    direction = model.W_U[:, t]
    for single in (t, " Paris", torch.tensor(t), torch.tensor([t]), torch.tensor([[t]])):
        assert torch.equal(model.tokens_to_residual_directions(single), direction)
    assert model.tokens_to_residual_directions(torch.tensor([t, t])).shape == (2, d_model)
    assert model.tokens_to_residual_directions(torch.tensor([[t, t]])).shape == (1, 2, d_model)


# ---- stop_at_layer with a key/value cache ------------------------------------------------------

def test_partial_forward_with_a_kv_cache_is_refused_and_leaves_the_cache_usable():
    model = lens("tiny-mistral")
    tokens = model.to_tokens(PROMPTS[0])
    cache = KVCache(model.cfg.n_layers)
    with torch.no_grad():
        with pytest.raises(InputError, match="stop_at_layer"):
            model(tokens[:, :4], past_kv_cache=cache, stop_at_layer=1)
        residual = model(tokens[:, :4], stop_at_layer=1)
        with pytest.raises(InputError, match="start_at_layer"):
            model(residual, past_kv_cache=cache, start_at_layer=1)
        assert cache.past_len == 0
        # The cache still works, and a full-depth stop_at_layer (generate's call) is allowed.
        first = model(tokens[:, :4], past_kv_cache=cache, stop_at_layer=model.cfg.n_layers)
        rest = model(tokens[:, 4:], past_kv_cache=cache)
        full_residual = model(tokens, stop_at_layer=model.cfg.n_layers)
        full = model(tokens)
    assert cache.past_len == tokens.shape[1]
    assert (first - full_residual[:, :4]).abs().max() <= 1e-5
    assert (rest - full[:, 4:]).abs().max() <= 1e-5
