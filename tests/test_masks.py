"""Attention masks, padding, position ids and batched generation (issue: padding bugs)."""

import pytest
import torch

from _models import ALL, TINY, hf, hf_positions, lens
from lensutil.errors import AttentionMaskError, InputError
from lensutil.text.generation import KVCache
from lensutil.text.tokens import positions_from_mask, tokenize

PROMPTS = ["The Eiffel Tower is in the city of", "Hi", "Once upon a time, in a land far away, there"]


def _param(name):
    return pytest.param(name, marks=pytest.mark.slow) if name == "smollm2-135m" else name


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", [_param(n) for n in ALL])
def test_padded_batch_equals_each_prompt_alone_and_huggingface(name, side):
    model, ref = lens(name), hf(name)
    tokens, mask = tokenize(model, PROMPTS, padding_side=side)
    with torch.no_grad():
        batched = model(PROMPTS, padding_side=side)  # the mask is built automatically
        ref_batched = ref(tokens, attention_mask=mask, position_ids=hf_positions(mask)).logits
        for row, prompt in enumerate(PROMPTS):
            real = mask[row].bool()
            alone, ref_alone = model(prompt)[0], ref(model.to_tokens(prompt)).logits[0]
            assert (batched[row, real] - ref_batched[row, real]).abs().max() <= 1e-5
            # float32 matrix products round differently at different sequence lengths, so a row
            # padded to a longer length can drift from itself alone. HuggingFace's own drift is
            # the floor; on tiny models it is ~1e-6, on the 30-layer smollm2 ~8e-5 (see the
            # float64 test below for the masking logic itself, free of rounding).
            bound = max(1e-5, (ref_batched[row, real] - ref_alone).abs().max().item())
            assert (batched[row, real] - alone).abs().max() <= bound


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", TINY)
def test_padded_batch_equals_huggingfaces_at_every_position_pads_included(name, side, impl):
    # A pad is computed as HF computes it: under right padding it attends to the real tokens before it; a
    # pad that sees no key (left padding) gets 0 in sdpa mode and, in eager mode, HF's even spread over every
    # key. A MoE routes the pads too, and with some BLAS kernels (MKL's AVX2 ones, what AMD CPUs get) the
    # number of rows an expert multiplies changes its real tokens' last bits: only the same pads give HF's bits.
    model, ref = lens(name, attn_implementation=impl), hf(name, attn_implementation=impl)
    tokens, mask = tokenize(model, PROMPTS, padding_side=side)
    with torch.no_grad():
        ours = model(tokens, attention_mask=mask)
        theirs = ref(tokens, attention_mask=mask, position_ids=hf_positions(mask)).logits
    assert torch.equal(ours, theirs), (ours - theirs).abs().amax(-1)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", [_param(n) for n in ALL])
def test_padded_batch_equals_each_prompt_alone_in_float64(name, side):
    model = lens(name, torch.float64)
    tokens, mask = tokenize(model, PROMPTS, padding_side=side)
    with torch.no_grad():
        batched = model(tokens, attention_mask=mask)
        for row, prompt in enumerate(PROMPTS):
            assert (batched[row, mask[row].bool()] - model(prompt)[0]).abs().max() <= 1e-9


@pytest.mark.parametrize("side", ["left", "right"])
def test_pattern_is_exactly_zero_at_masked_keys(side):
    model = lens("tiny-llama")
    tokens, mask = tokenize(model, PROMPTS, padding_side=side)
    _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=lambda n: n.endswith("hook_pattern"))
    pad_keys = ~mask.bool()[:, None, None, :]  # [batch, 1, 1, key_pos]
    for layer in range(model.cfg.n_layers):
        pattern = cache["pattern", layer]
        assert (pattern.masked_select(pad_keys.expand_as(pattern)) == 0).all()  # pad queries' rows too
        seen = mask.bool()[:, None, :].cumsum(-1) > 0  # queries with a real token at or before them
        rows = pattern.sum(-1)
        assert torch.equal(rows == 0, ~seen.expand_as(rows))  # a query that sees no key: a row of 0, not NaN
        real_queries = mask.bool()[:, None, :]
        sums = pattern.sum(-1)
        assert torch.allclose(sums[real_queries.expand_as(sums)], torch.tensor(1.0))


def test_left_padding_positions_count_from_first_real_token():
    model = lens("tiny-gpt2")  # learned positions: a wrong position id changes the logits a lot
    _, mask = tokenize(model, ["a b c d e", "a"], padding_side="left")
    positions = positions_from_mask(mask.bool(), 0)
    assert positions[1, -2:].tolist() == [0, 1]  # BOS then "a", whatever the padding before them
    assert positions[0].tolist() == list(range(mask.shape[1]))


@pytest.mark.parametrize("name", [_param(n) for n in ALL])
@pytest.mark.parametrize("use_cache", [True, False])
def test_batched_greedy_generation_equals_solo(name, use_cache):
    model = lens(name)
    kw = dict(max_new_tokens=8, do_sample=False, use_past_kv_cache=use_cache)
    batched = model.generate(PROMPTS, **kw)
    assert isinstance(batched, list) and len(batched) == len(PROMPTS)
    assert batched == [model.generate(p, **kw) for p in PROMPTS]


def test_batched_generation_matches_huggingface_with_same_padding():
    model, ref = lens("tiny-qwen2"), hf("tiny-qwen2")
    tokens, mask = tokenize(model, PROMPTS, padding_side="left")
    ours = model.generate(tokens, attention_mask=mask, max_new_tokens=10, do_sample=False, stop_at_eos=False)
    theirs = ref.generate(tokens, attention_mask=mask, max_new_tokens=10, min_new_tokens=10, do_sample=False)
    assert ours.tolist() == theirs.tolist()


def test_each_row_stops_at_its_own_eos():
    model = lens("tiny-llama")
    eos = model.tokenizer.eos_token_id
    first = model.generate(PROMPTS[1], max_new_tokens=1, do_sample=False)
    # Declare the first prompt's first greedy token to be EOS: that row stops, the other goes on.
    first_token = model.generate(model.to_tokens(PROMPTS[0]), max_new_tokens=1, do_sample=False)[0, -1].item()
    out = model.generate(PROMPTS[:2], max_new_tokens=5, do_sample=False, eos_token_id=first_token)
    assert out[0] == PROMPTS[0]
    assert len(out[1]) >= len(first) and eos is not None


def test_kv_cache_matches_uncached_forward_token_by_token():
    model = lens("tiny-mistral")
    tokens, mask = tokenize(model, PROMPTS, padding_side="left")
    with torch.no_grad():
        full = model(tokens, attention_mask=mask)
        cache = KVCache(model.cfg.n_layers)
        first = int((mask == 0).sum(-1).max()) + 1  # every row needs a real token in the first chunk
        pieces = [model(tokens[:, :first], attention_mask=mask[:, :first], past_kv_cache=cache)]
        for i in range(first, tokens.shape[1]):
            pieces.append(model(tokens[:, i : i + 1], attention_mask=mask[:, : i + 1], past_kv_cache=cache))
    stepwise = torch.cat(pieces, dim=1)
    real = mask.bool()
    assert (stepwise[real] - full[real]).abs().max() <= 1e-5


def test_sampling_is_reproducible_under_a_seed_and_temperature_zero_is_greedy():
    model = lens("tiny-gpt2")
    a = model.generate(PROMPTS[0], max_new_tokens=12, seed=7, top_k=50)
    b = model.generate(PROMPTS[0], max_new_tokens=12, seed=7, top_k=50)
    assert a == b
    greedy = model.generate(PROMPTS[0], max_new_tokens=12, do_sample=False)
    assert model.generate(PROMPTS[0], max_new_tokens=12, temperature=0) == greedy


@pytest.mark.parametrize("top_k,top_p", [(5, None), (None, 0.8), (20, 0.5), (None, 0.01)])
def test_top_k_top_p_filter_like_huggingface(top_k, top_p):
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    from lensutil.text.generation import filter_logits

    logits = torch.randn(3, 100, generator=torch.Generator().manual_seed(0))
    expected = TemperatureLogitsWarper(0.7)(None, logits.clone())
    if top_k:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p:
        expected = TopPLogitsWarper(top_p)(None, expected)
    ours = filter_logits(logits, 0.7, top_k, top_p)
    assert torch.equal(torch.isinf(ours), torch.isinf(expected))
    assert torch.allclose(ours[~torch.isinf(ours)], expected[~torch.isinf(expected)])


# ---- bad input gets a clear error -------------------------------------------------------------

def test_mask_of_another_length_is_refused_with_both_shapes():
    model = lens("tiny-gpt2")
    tokens = model.to_tokens(["The cat sat", "A dog"])
    with pytest.raises(AttentionMaskError, match=r"shape \[2, 3\].*\[2, %d\]" % tokens.shape[1]):
        model(tokens, attention_mask=torch.tensor([[1, 1, 0], [1, 0, 0]]))


def test_additive_mask_is_refused_and_explained():
    model = lens("tiny-gpt2")
    tokens = model.to_tokens("The cat sat")
    additive = torch.zeros(tokens.shape)
    additive[0, 1] = float("-inf")
    with pytest.raises(AttentionMaskError, match="additive"):
        model(tokens, attention_mask=additive)


def test_row_with_no_attended_token_is_refused():
    model = lens("tiny-gpt2")
    tokens = model.to_tokens(["The cat sat", "A dog"])
    mask = torch.ones_like(tokens)
    mask[1] = 0
    with pytest.raises(AttentionMaskError, match=r"rows \[1\]"):
        model(tokens, attention_mask=mask)


def test_tokens_longer_than_n_ctx_are_refused():
    model = lens("tiny-gpt2")
    with pytest.raises(InputError, match="n_ctx"):
        model(torch.zeros(1, model.cfg.n_ctx + 1, dtype=torch.long))


def test_bool_and_float_masks_agree():
    model = lens("tiny-llama")
    tokens, mask = tokenize(model, PROMPTS, padding_side="right")
    with torch.no_grad():
        as_int = model(tokens, attention_mask=mask)
        assert torch.equal(as_int, model(tokens, attention_mask=mask.bool()))
        assert torch.equal(as_int, model(tokens, attention_mask=mask.float()))


@pytest.mark.parametrize("side", ["left", "right"])
def test_generate_attention_mask_recovers_the_tokenizer_mask(side):
    model = lens("tiny-llama")
    tokens, mask = tokenize(model, PROMPTS, padding_side=side)
    assert torch.equal(model.generate_attention_mask(tokens, padding_side=side), mask)


def test_mask_given_as_nested_lists_works_like_a_tensor():
    model = lens("tiny-gpt2")
    tokens, mask = tokenize(model, PROMPTS[:2], padding_side="right")
    with torch.no_grad():
        assert torch.equal(model(tokens, attention_mask=mask.tolist()), model(tokens, attention_mask=mask))
