"""generate()'s TransformerLens 2.18 options: return_type, padding_side, freq_penalty, verbose, a list of
eos_token_id, stop_at_eos, use_past_kv_cache and prepend_bos, each as TransformerLens documents it."""

import pytest
import torch

from _models import lens
from lensutil.errors import InputError

PROMPTS = ["The Eiffel Tower is in the city of", "Hi", "Once upon a time, in a land far away, there"]
GREEDY = dict(do_sample=False, stop_at_eos=False)


def _greedy_new(model, prompt, n):
    tokens = model.to_tokens(prompt)
    return model.generate(tokens, n, **GREEDY)[0, tokens.shape[1]:].tolist()


def test_return_type_input_mirrors_the_input_and_str_or_tokens_convert():
    model = lens("tiny-llama")
    tokens = model.to_tokens(PROMPTS[0])
    text = model.generate(PROMPTS[0], 5, **GREEDY)
    out = model.generate(tokens, 5, **GREEDY)
    assert isinstance(text, str) and isinstance(model.generate(PROMPTS, 5, **GREEDY), list)
    assert model.generate(PROMPTS[0], 5, return_type="input", **GREEDY) == text
    assert torch.equal(model.generate(tokens, 5, return_type="input", **GREEDY), out)
    # "str": text for token ids too (the prompt's BOS dropped, as text in gives); "tokens": ids for text.
    assert model.generate(tokens, 5, return_type="str", **GREEDY) == text
    assert torch.equal(model.generate(PROMPTS[0], 5, return_type="tokens", **GREEDY), out)
    assert model.to_string(out[0, 1:]) == text
    with torch.no_grad():  # "embeds": the token embeddings of what "tokens" gives (TransformerLens' self.embed)
        assert torch.equal(model.generate(tokens, 5, return_type="embeds", **GREEDY), model.embed(out))
    with pytest.raises(InputError, match="return_type"):
        model.generate(tokens, 5, return_type="logits")


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_side_lays_out_the_returned_prompts_as_to_tokens_and_continues_each_as_alone(side):
    model = lens("tiny-llama")
    prompt_tokens = model.to_tokens(PROMPTS, padding_side=side)
    n = prompt_tokens.shape[1]
    out = model.generate(PROMPTS, 4, return_type="tokens", padding_side=side, **GREEDY)
    assert torch.equal(out[:, :n], prompt_tokens)  # TransformerLens' layout: to_tokens(input), then the new tokens
    assert [row[n:].tolist() for row in out] == [_greedy_new(model, p, 4) for p in PROMPTS]
    assert model.generate(PROMPTS, 4, padding_side=side, **GREEDY) == [model.generate(p, 4, **GREEDY) for p in PROMPTS]
    # Padded token ids: padding_side says where the pads are (as TransformerLens' forward finds left pads).
    padded = model.generate(prompt_tokens, 4, padding_side=side, **GREEDY)
    assert [row[n:].tolist() for row in padded] == [_greedy_new(model, p, 4) for p in PROMPTS]
    with pytest.raises(InputError, match="padding_side"):
        model.generate(PROMPTS, 4, padding_side="middle")


def test_freq_penalty_subtracts_penalty_times_count_after_temperature_as_transformerlens_sample_logits():
    model = lens("tiny-llama")
    temperature, penalty, n = 0.7, 0.4, 10
    tokens = model.to_tokens(PROMPTS[0])
    # top_k=1 makes sampling the argmax of the penalised logits, so the reference is exact.
    out = model.generate(tokens, n, temperature=temperature, top_k=1, freq_penalty=penalty, stop_at_eos=False)
    ref = tokens
    with torch.no_grad():
        for _ in range(n):
            logits = model(ref)[0, -1] / temperature
            logits = logits - penalty * torch.bincount(ref[0], minlength=logits.shape[-1])
            ref = torch.cat([ref, logits.argmax().view(1, 1)], dim=1)
    assert out.tolist() == ref.tolist()
    assert out.tolist() != model.generate(tokens, n, temperature=temperature, top_k=1, stop_at_eos=False).tolist()
    # Each row counts its own real tokens (not the pads of a batch): batched equals alone.
    kw = dict(temperature=temperature, top_k=1, freq_penalty=penalty, stop_at_eos=False)
    assert model.generate(PROMPTS, n, **kw) == [model.generate(p, n, **kw) for p in PROMPTS]
    # Greedy decoding ignores it, as TransformerLens' (argmax of the raw logits).
    assert model.generate(tokens, n, freq_penalty=penalty, **GREEDY).tolist() == model.generate(tokens, n, **GREEDY).tolist()
    with pytest.raises(InputError, match="freq_penalty"):
        model.generate(tokens, n, freq_penalty=-1.0)


def test_verbose_shows_a_progress_bar_and_is_quiet_otherwise(capsys):
    model = lens("tiny-llama")
    model.generate(PROMPTS[0], 3, verbose=False, **GREEDY)
    assert capsys.readouterr().err == ""
    model.generate(PROMPTS[0], 3, verbose=True, **GREEDY)
    assert "3/3" in capsys.readouterr().err


def test_a_list_of_eos_token_ids_stops_each_row_at_any_of_them():
    model = lens("tiny-llama")
    pair = [PROMPTS[0], "def fibonacci(n):\n    return"]
    g0, g1 = _greedy_new(model, pair[0], 6), _greedy_new(model, pair[1], 6)
    stops = [g0[0], g1[2]]
    assert g1[2] not in g0[:1] and not set(stops) & set(g1[:2]), "pick prompts whose stop tokens first appear where expected"
    out = model.generate(pair, 6, do_sample=False, eos_token_id=stops, return_type="tokens", padding_side="left")
    eos = model.tokenizer.eos_token_id  # rows that stopped are padded with the tokenizer's EOS, as TransformerLens
    assert out.shape[1] == model.to_tokens(pair).shape[1] + 3  # all rows stopped: no more steps
    assert out[0, -3:].tolist() == [g0[0], eos, eos] and out[1, -3:].tolist() == g1[:3]
    texts = model.generate(pair, 6, do_sample=False, eos_token_id=stops)
    assert texts == [pair[0], pair[1] + model.to_string(torch.tensor(g1[:2]))]
    assert model.generate(pair[0], 6, do_sample=False, eos_token_id=[g0[0]]) == pair[0]


def test_stop_at_eos_use_past_kv_cache_and_prepend_bos_as_transformerlens():
    model = lens("tiny-llama")
    g0 = _greedy_new(model, PROMPTS[0], 6)
    tokens = model.to_tokens(PROMPTS[0])
    # stop_at_eos=False runs all max_new_tokens past an EOS; True stops there.
    assert model.generate(tokens, 6, do_sample=False, eos_token_id=g0[0], stop_at_eos=False)[0, -6:].tolist() == g0
    assert model.generate(tokens, 6, do_sample=False, eos_token_id=g0[0]).shape[1] == tokens.shape[1] + 1
    # use_past_kv_cache=False recomputes every position: the same tokens.
    assert model.generate(tokens, 6, use_past_kv_cache=False, **GREEDY)[0, -6:].tolist() == g0
    # prepend_bos=False tokenises the text without BOS, and the text comes back whole.
    no_bos = model.generate(PROMPTS[0], 3, prepend_bos=False, return_type="tokens", **GREEDY)
    bare = model.to_tokens(PROMPTS[0], prepend_bos=False)
    assert torch.equal(no_bos[:, : bare.shape[1]], bare)
    assert model.generate(PROMPTS[0], 3, prepend_bos=False, **GREEDY).startswith(PROMPTS[0])
