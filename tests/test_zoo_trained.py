"""tiny-moe-trained: a zoo MoE whose float32 output is right and whose bfloat16 router breaks it.

Notebook 07 rests on these facts; here they are checked on their own (the build trains for
~10-30 s the first time, then the cache answers)."""

from __future__ import annotations

import pytest
import torch

from lensutil.checks import routing_agreement
from lensutil.loading import zoo
from lensutil.loading.hf_source import load_hf
from lensutil.loading.pretrained import from_pretrained_no_processing
from lensutil.loading.zoo_trained import LISTS

NAME = "tiny-moe-trained"
# Two words of each list, and what follows them for a full turn of the list.
PROMPTS = {" ".join(words[s:s + 2]): " ".join(words[(s + 2 + i) % len(words)] for i in range(len(words)))
           for words, s in zip(LISTS, (6, 2, 4, 10))}  # fmt: skip


@pytest.fixture(scope="module")
def models():
    torch.set_grad_enabled(False)
    hf32, tokenizer = load_hf(NAME)
    load = lambda **kw: from_pretrained_no_processing(NAME, hf_model=hf32, tokenizer=tokenizer, **kw)  # noqa: E731
    bf16_router = load()
    bf16_router.cfg.router_dtype = torch.bfloat16
    yield hf32, load(), bf16_router, load(dtype=torch.bfloat16)
    torch.set_grad_enabled(True)


def _continuations(model):
    n = max(len(w) for w in LISTS)
    return {p: model.generate(p, max_new_tokens=n, do_sample=False, stop_at_eos=False)[len(p) + 1:] for p in PROMPTS}


def test_trained_moe_is_a_top1_mixtral_with_its_own_word_tokenizer():
    hf, tokenizer = load_hf(NAME)
    assert hf.config.architectures == ["MixtralForCausalLM"] and hf.config.num_experts_per_tok == 1
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)
    assert tokenizer.decode(tokenizer("July August").input_ids) == "July August"
    assert zoo.resolve(NAME).name == f"{NAME}-v1"


def test_float32_continues_every_list_and_equals_huggingface(models):
    hf32, lens32, _, _ = models
    got = _continuations(lens32)
    assert all(got[p].startswith(want) for p, want in PROMPTS.items()), got
    tokens = lens32.to_tokens(list(PROMPTS))
    assert torch.equal(lens32(tokens).argmax(-1), hf32(tokens).logits.argmax(-1))


def test_a_bfloat16_router_flips_experts_and_breaks_the_lists(models):
    hf32, _, bf16_router, _ = models
    agreement = routing_agreement(bf16_router, hf32, list(PROMPTS))
    assert max(agreement) < 0.95, agreement  # a rounded router sends many tokens elsewhere
    got = _continuations(bf16_router)
    assert sum(not got[p].startswith(want) for p, want in PROMPTS.items()) >= 2, got


def test_bfloat16_model_with_its_router_in_float32_routes_closer_than_a_bfloat16_router(models):
    hf32, _, bf16_router, fixed = models
    ours, theirs = routing_agreement(fixed, hf32, list(PROMPTS)), routing_agreement(bf16_router, hf32, list(PROMPTS))
    assert all(o > t for o, t in zip(ours, theirs)), (ours, theirs)
    right = lambda model: sum(g.startswith(PROMPTS[p]) for p, g in _continuations(model).items())  # noqa: E731
    assert right(fixed) > right(bf16_router)


def test_a_build_with_gradients_off_still_trains_and_a_short_one_is_refused(tmp_path, monkeypatch):
    # The zoo builds on first use, often where the caller switched gradients off (notebook 07 does): the
    # training must switch them on for itself, and a build that did not learn raises ZooError, not a crash.
    from lensutil.errors import ZooError
    from lensutil.loading import zoo_trained

    monkeypatch.setattr(zoo_trained, "_STEPS", 2)  # far too short to learn the lists
    threads = torch.get_num_threads()
    with torch.no_grad(), pytest.raises(ZooError, match="did not learn its lists"):
        zoo_trained.build_moe_trained(tmp_path)
    assert torch.get_num_threads() == threads
