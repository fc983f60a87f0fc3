"""HookedEncoder (BERT) against HuggingFace, and its inputs: token types, masks, pairs, refusals."""

from __future__ import annotations

import pytest
import torch

from _models import encoder, hf_encoder
from lensutil import HookedEncoder, HookedTransformer, LensError
from lensutil.errors import AttentionMaskError, ConfigError, InputError

SINGLE = ("The cat sat on the mat.",)
PAIR = ("How old are you?", "I am six years old.")
BATCH = (["Hi.", "A much longer sentence that needs padding at the end."],)
PAIRS = (["Hi.", "Where does the long river go?"], ["Yes.", "It runs far to the sea and back again."])
INPUTS = {"single": SINGLE, "pair": PAIR, "padded batch": BATCH, "padded pairs": PAIRS}


def _run_both(name, args):
    model, ref = encoder(name), hf_encoder(name)
    enc = model.to_tokens(*args, return_token_type_ids=True)
    with torch.no_grad():
        theirs = ref(**enc)
    return model, enc, theirs


def _max_real(ours, theirs, mask):
    # Real positions only: padding positions' outputs are not used by anything (and their LayerNorm
    # inputs are near-degenerate, so rounding is larger there); checks.compare_with_hf does the same.
    return (ours - theirs).abs()[mask.bool()].max().item()


@pytest.mark.parametrize("kind", INPUTS)
def test_tiny_bert_mlm_logits_match_huggingface(kind):
    model, enc, theirs = _run_both("tiny-bert", INPUTS[kind])
    with torch.no_grad():
        ours = model(enc["input_ids"], token_type_ids=enc["token_type_ids"], one_zero_attention_mask=enc["attention_mask"])
    assert _max_real(ours, theirs.logits, enc["attention_mask"]) == 0


@pytest.mark.parametrize("kind", INPUTS)
def test_minilm_hidden_states_and_pooler_match_huggingface(kind):
    model, enc, theirs = _run_both("minilm-l6", INPUTS[kind])
    args = (enc["input_ids"], "embeddings", enc["token_type_ids"], enc["attention_mask"])
    with torch.no_grad():
        hidden, pooled = model(*args), model(*args[:1], "pooled", *args[2:])
    assert _max_real(hidden, theirs.last_hidden_state, enc["attention_mask"]) == 0
    assert (pooled - theirs.pooler_output).abs().max().item() == 0


def test_text_input_tokenises_itself_with_token_types_and_mask():
    model = encoder("tiny-bert")
    tokens, types, mask = model.to_tokens(*PAIRS)
    with torch.no_grad():
        assert torch.equal(model(list(zip(*PAIRS))), model(tokens, token_type_ids=types, one_zero_attention_mask=mask))
        assert torch.equal(model(PAIR), model(*model.to_tokens(*PAIR)[:1], token_type_ids=model.to_tokens(*PAIR)[1]))


def test_padded_batch_of_pairs_equals_each_pair_alone():
    model = encoder("minilm-l6")
    with torch.no_grad():
        tokens, types, mask = model.to_tokens(*PAIRS)
        batch = model(tokens, "embeddings", types, mask)
        assert not mask.all()  # the batch really is padded
        for i, pair in enumerate(zip(*PAIRS)):
            alone = model(pair, return_type="embeddings")[0]
            n = alone.shape[0]
            assert mask[i].sum() == n and (batch[i, :n] - alone).abs().max() <= 1e-5


def test_to_tokens_gives_transformerlens_triple_and_the_guides_mapping():
    model = encoder("tiny-bert")
    tokens, types, mask = model.to_tokens(*PAIR)
    tok = model.tokenizer
    assert tokens[0, 0] == tok.cls_token_id and (tokens[0] == tok.sep_token_id).sum() == 2
    first_sep = (tokens[0] == tok.sep_token_id).nonzero()[0].item()
    assert types[0, : first_sep + 1].eq(0).all() and types[0, first_sep + 1 :].eq(1).all()
    assert mask.eq(1).all()
    mapping = model.to_tokens(*PAIR, return_token_type_ids=True)
    assert set(mapping) == {"input_ids", "token_type_ids", "attention_mask"}
    assert torch.equal(mapping["token_type_ids"], types)
    _, _, batch_mask = model.to_tokens(*BATCH)
    assert batch_mask[0].tolist()[-1] == 0 and batch_mask[1].all()  # padded on the right
    assert model.to_str_tokens(PAIR)[0] == "[CLS]" and model.to_str_tokens(PAIR).count("[SEP]") == 2


def test_token_types_change_the_output_of_a_pair():
    model = encoder("minilm-l6")
    tokens, types, mask = model.to_tokens(*PAIR)
    with torch.no_grad():
        with_types = model(tokens, "embeddings", types, mask)
        without = model(tokens, "embeddings", None, mask)
    assert types.any() and (with_types - without).abs().max() > 1e-3


def test_masked_keys_get_exactly_zero_attention():
    model = encoder("tiny-bert")
    tokens, types, mask = model.to_tokens(*PAIRS)
    _, cache = model.run_with_cache(tokens, token_type_ids=types, one_zero_attention_mask=mask)
    for i in range(model.cfg.n_layers):
        pattern = cache[f"blocks.{i}.attn.hook_pattern"]  # [batch, head, query, key]
        assert (pattern[0, :, :, ~mask[0].bool()] == 0).all()
        assert (pattern[0, :, :, mask[0].bool()] > 0).all()  # bidirectional: every real key is seen


def test_hooks_fire_and_edit_and_the_cache_changes_nothing():
    model = encoder("tiny-bert")
    tokens, types, mask = model.to_tokens(*PAIR)
    with torch.no_grad():
        plain = model(tokens, token_type_ids=types)
        cached, cache = model.run_with_cache(tokens, token_type_ids=types)
        zeroed = model.run_with_hooks(tokens, token_type_ids=types,
                                      fwd_hooks=[("blocks.0.hook_attn_out", lambda act, hook: torch.zeros_like(act))])
    assert torch.equal(plain, cached)
    assert (zeroed - plain).abs().max() > 1e-3
    assert cache["blocks.0.hook_attn_out"].abs().max() > 0


def test_return_type_none_still_runs_the_mlm_head_so_its_hooks_fire():
    # TransformerLens' HookedEncoder computes the MLM head and unembed, then returns None.
    model = encoder("tiny-bert")
    head_hooks = sorted(n for n in model.hook_dict if n.startswith("mlm_head."))
    assert head_hooks
    with torch.no_grad():
        out, cache = model.run_with_cache(PAIR, return_type=None)
        _, full = model.run_with_cache(PAIR)
    assert out is None
    assert set(head_hooks) <= set(cache.keys())
    for name in head_hooks:
        assert torch.equal(cache[name], full[name])


def test_hook_names_follow_transformerlens_hooked_encoder():
    names = set(encoder("tiny-bert").hook_dict)
    expected = {"embed.hook_embed", "embed.hook_pos_embed", "embed.hook_token_type_embed", "embed.ln.hook_normalized",
                "hook_full_embed", "blocks.0.hook_resid_pre", "blocks.0.hook_attn_out", "blocks.0.hook_resid_mid",
                "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post", "blocks.0.hook_normalized_resid_post",
                "blocks.1.attn.hook_pattern", "mlm_head.ln.hook_normalized"}
    assert expected <= names
    assert "pooler.hook_pooler_out" in encoder("minilm-l6").hook_dict
    assert "blocks.0.hook_normalized_resid_post" not in HookedTransformer.from_pretrained_no_processing("tiny-gpt2").hook_dict


def test_predict_masked_agrees_with_huggingface_argmax():
    model, ref = encoder("tiny-bert"), hf_encoder("tiny-bert")
    text = "The capital of France is [MASK]."
    top = model.predict_masked(text, top_k=3)
    assert len(top) == 3 and all(isinstance(t, str) and 0 < p < 1 for t, p in top)
    enc = model.to_tokens(text, return_token_type_ids=True)
    with torch.no_grad():
        logits = ref(**enc).logits[0, enc["input_ids"][0] == model.tokenizer.mask_token_id][0]
    assert top[0][0] == model.tokenizer.convert_ids_to_tokens(logits.argmax().item())


# ---- refusals: each a LensError that says what to do ------------------------------------------


def test_padded_tokens_without_a_mask_are_refused_with_how_to_get_one():
    model = encoder("tiny-bert")
    tokens, types, mask = model.to_tokens(*BATCH)
    with pytest.raises(AttentionMaskError, match="one_zero_attention_mask=mask"):
        model(tokens)
    model(tokens, one_zero_attention_mask=mask)  # with the mask it runs
    model(tokens, attention_mask=mask)  # HF's name too


def test_decoder_calls_on_an_encoder_say_what_to_call_instead():
    model = encoder("tiny-bert")
    with pytest.raises(LensError, match="encoder.*predict_masked"):
        model.generate("The capital of France is", max_new_tokens=3)
    with pytest.raises(InputError, match="encoder.*predict_masked"):
        model("Hello", return_type="loss")
    with pytest.raises(ConfigError, match="HookedEncoder.from_pretrained"):
        HookedTransformer.from_pretrained("tiny-bert")
    with pytest.raises(ConfigError, match="HookedTransformer.from_pretrained"):
        HookedEncoder.from_pretrained("tiny-gpt2")
    with pytest.raises(ConfigError, match="HookedEncoder"):
        HookedTransformer(model.cfg)


def test_encoder_without_mlm_head_refuses_logits_and_predict_masked():
    model = encoder("minilm-l6")
    with pytest.raises(InputError, match="return_type='embeddings'"):
        model("Hello")
    with pytest.raises(InputError, match="BertForMaskedLM"):
        model.predict_masked("Hello [MASK].")
    with pytest.raises(InputError, match=r"No \[MASK\]"):
        encoder("tiny-bert").predict_masked("Hello there.")


def test_bad_options_and_inputs_are_lens_errors():
    model = encoder("tiny-bert")
    tokens, types, mask = model.to_tokens(*PAIR)
    with pytest.raises(ConfigError, match="not implemented for encoders"):
        HookedEncoder.from_pretrained("tiny-bert", fold_ln=True)
    with pytest.raises(InputError, match="not both"):
        model(tokens, one_zero_attention_mask=mask, attention_mask=mask)
    with pytest.raises(InputError, match="token_type_ids has shape"):
        model(tokens, token_type_ids=types[:, :-1])
    with pytest.raises(InputError, match="from 0 to 1"):
        model(tokens, token_type_ids=types + 1)
    with pytest.raises(InputError, match="text_pair has 1"):
        model.to_tokens(["a", "b"], ["c"])


def test_text_pair_keyword_is_the_spelling_taught_and_matches_the_positional_one():
    # TransformerLens' HookedEncoder.to_tokens(input, move_to_device, truncate) reads a positional second
    # text as move_to_device and silently drops sentence B, so the keyword is what notebook 06 and the errors teach.
    model = encoder("tiny-bert")
    by_keyword = model.to_tokens(PAIR[0], text_pair=PAIR[1])
    assert set(by_keyword[1][0].tolist()) == {0, 1}
    assert all(torch.equal(k, p) for k, p in zip(by_keyword, model.to_tokens(*PAIR)))
    tokens, types, _ = by_keyword
    with pytest.raises(InputError, match=r"to_tokens\(text_a, text_pair=text_b\)"):
        model(tokens, token_type_ids=types[:, :-1])


# ---- lensutil.checks on encoders ------------------------------------------------------------------


def test_checks_compare_and_locate_divergence_accept_encoders():
    from lensutil import checks

    assert checks.compare_with_hf(encoder("tiny-bert"), hf_encoder("tiny-bert")).max == 0
    stats = checks.compare_with_hf(encoder("minilm-l6"), hf_encoder("minilm-l6"), prompts=[PAIR, ("Hi.", "Yes.")])
    assert stats.on == "hidden states" and stats.max == 0
    report = checks.locate_divergence(encoder("minilm-l6"), hf_encoder("minilm-l6"), input=PAIR)
    assert report.first is None and report.table[-1]["component"] == "pooler"


def test_locate_divergence_names_a_broken_encoder_component():
    from lensutil import checks

    broken = HookedEncoder.from_pretrained("tiny-bert")
    with torch.no_grad():
        broken.blocks[1].mlp.b_out.add_(0.01)
    report = checks.locate_divergence(broken, hf_encoder("tiny-bert"))
    assert report.first["component"] == "blocks.1 MLP output"


# ---- loading --------------------------------------------------------------------------------------


def _refuse(message):
    def from_pretrained(*args, **kwargs):
        raise OSError(message)

    return from_pretrained


def test_hub_errors_are_the_decoders(monkeypatch):
    import transformers

    from lensutil.errors import ModelAccessError

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # skip the network probe (tests/test_hub.py has the real hub)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", _refuse("403 Client Error. Access to model x/bert is gated."))
    with pytest.raises(ModelAccessError, match="HF_TOKEN"):
        HookedEncoder.from_pretrained("x/bert")
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", _refuse("We couldn't connect to the hub."))
    with pytest.raises(ModelAccessError, match="minilm-l6"):
        HookedEncoder.from_pretrained("bert-base-uncased")


def test_local_directory_loads_like_the_zoo_name():
    from lensutil.loading import zoo

    model = HookedEncoder.from_pretrained(str(zoo.resolve("tiny-bert")))
    tokens, types, mask = model.to_tokens(*PAIR)
    with torch.no_grad():
        assert torch.equal(model(tokens, token_type_ids=types), encoder("tiny-bert")(tokens, token_type_ids=types))


def test_unknown_keyword_of_encoder_from_pretrained_names_the_closest_one():
    from lensutil import HookedEncoder
    from lensutil.errors import ConfigError

    with pytest.raises(ConfigError, match="'dtpye' \\(did you mean 'dtype'\\?\\).*It accepts:"):
        HookedEncoder.from_pretrained("tiny-bert", dtpye="float32")
