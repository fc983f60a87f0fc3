"""tiny-bert-mlm-trained: a zoo masked LM whose guesses mean something, and lensutil equals HF on it.

Notebook 06 rests on these facts; here they are checked on their own (the build trains for
~30-60 s the first time, then the cache answers)."""

from __future__ import annotations

import pytest
import torch

from lensutil import checks
from lensutil.loading import zoo
from lensutil.loading.zoo_mlm import FACTS, MIN_P, NAME, fact_probabilities

from _models import encoder, hf_encoder


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def test_trained_mlm_is_a_bert_masked_lm_with_minilms_tokenizer_and_an_encoder_entry():
    model, ref = encoder(NAME), hf_encoder(NAME)
    assert ref.config.architectures == ["BertForMaskedLM"] and model.cfg.mlm_head
    assert model.tokenizer.vocab_size == encoder("tiny-bert").tokenizer.vocab_size
    assert NAME in zoo.ENCODER_NAMES and NAME in zoo.TRAINED_NAMES
    assert zoo.resolve(NAME).name == f"{NAME}-v1"


def test_it_fills_every_fact_of_its_corpus_as_huggingface_does():
    ref, model = hf_encoder(NAME), encoder(NAME)
    got = fact_probabilities(ref, model.tokenizer)
    assert all(guess == answer and p >= MIN_P for _, answer, guess, p in got), got
    for masked, answer, _, _ in got:
        assert model.predict_masked(masked, top_k=1)[0][0] == answer, masked
    assert model.predict_masked("The capital of France is [MASK].", top_k=1)[0][0] == "paris"


def test_random_tiny_bert_does_not_know_the_facts():
    # What the trained entry adds: the random one of the same shape and tokenizer gets (almost) none.
    ref = hf_encoder("tiny-bert")
    right = sum(g == w for _, w, g, _ in fact_probabilities(ref, encoder("tiny-bert").tokenizer))
    assert right <= 2 < len(FACTS)


def test_lensutil_equals_huggingface_bit_for_bit_on_the_trained_mlm():
    model, ref = encoder(NAME), hf_encoder(NAME)
    assert checks.compare_with_hf(model, ref).max == 0
    texts = [s.format("[MASK]") for s, _ in FACTS[::5]]
    enc = model.to_tokens(texts, return_token_type_ids=True)
    real = enc["attention_mask"].bool()
    assert not real.all()  # a padded batch
    ours = model(enc["input_ids"], "logits", enc["token_type_ids"], enc["attention_mask"])
    assert (ours - ref(**enc).logits).abs()[real].max() == 0


def test_a_build_that_did_not_learn_its_facts_is_refused_and_writes_nothing(tmp_path, monkeypatch):
    from lensutil.errors import ZooError
    from lensutil.loading import zoo_mlm

    monkeypatch.setattr(zoo_mlm, "_STEPS", 20)  # far too short to learn anything
    threads = torch.get_num_threads()
    with pytest.raises(ZooError, match="did not learn its facts.*nothing was cached"):
        zoo_mlm.build_mlm_trained(tmp_path, zoo.resolve)
    assert not any(tmp_path.iterdir()) and torch.get_num_threads() == threads
