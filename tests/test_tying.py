"""Tied embeddings held once (issue 14): W_U is a view of W_E's storage while the two are equal."""

import copy
import io

import torch

from lensutil import HookedTransformer
from lensutil.tying import is_tied

from _models import hf, lens


def _weight_bytes(model) -> int:
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
    return sum(storages.values())


def test_tied_unembedding_shares_the_embedding_storage():
    model = HookedTransformer.from_pretrained_no_processing("tiny-qwen2")
    assert model.cfg.tie_word_embeddings and is_tied(model)
    assert model.W_U.data_ptr() == model.W_E.data_ptr() and torch.equal(model.W_U, model.W_E.T)
    W_U = model.unembed.W_U
    assert _weight_bytes(model) == sum(p.numel() * p.element_size() for p in model.parameters()) - W_U.numel() * W_U.element_size()


def test_weight_memory_equals_huggingface_for_a_tied_model():
    model, ref = lens("tiny-gpt2"), hf("tiny-gpt2")
    hf_bytes = sum({p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in ref.parameters()}.values())
    # The same memory but for b_U (zeros: HF's GPT-2 has no unembedding bias; TransformerLens keeps one).
    b_U = model.unembed.b_U
    assert _weight_bytes(model) == hf_bytes + b_U.numel() * b_U.element_size()


def test_an_untied_model_keeps_two_matrices():
    model = lens("tiny-llama")
    assert not model.cfg.tie_word_embeddings and not is_tied(model)


def test_processing_unties_and_the_report_says_so():
    model = HookedTransformer.from_pretrained_no_processing("tiny-qwen2")
    W_E = model.W_E.detach().clone()
    report = model.process_weights_()
    assert not is_tied(model) and "untied W_U" in str(report) and "fold_ln" in report.untied
    assert torch.equal(model.W_E, W_E)  # the embedding was not overwritten by the processed W_U


def test_processing_that_leaves_W_U_alone_keeps_it_tied():
    model = HookedTransformer.from_pretrained_no_processing("tiny-gpt2")
    report = model.process_weights_(fold_ln=False, center_unembed=False, center_writing_weights=False)
    assert is_tied(model) and report.untied == ""


def test_casting_and_moving_keep_the_weights_tied():
    model = HookedTransformer.from_pretrained_no_processing("tiny-qwen2", dtype=torch.bfloat16)
    assert is_tied(model) and model.W_E.dtype == torch.bfloat16
    model.float()
    assert is_tied(model) and model.W_U.dtype == torch.float32


def test_loading_a_different_W_U_unties_instead_of_overwriting_W_E():
    model = HookedTransformer.from_pretrained_no_processing("tiny-qwen2")
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["unembed.W_U"] = sd["unembed.W_U"] + 1.0
    model.load_state_dict(sd)
    assert not is_tied(model)
    assert torch.equal(model.W_E, sd["embed.W_E"]) and torch.equal(model.W_U, sd["unembed.W_U"])


def test_state_dict_keeps_both_keys_and_round_trips():
    model = HookedTransformer.from_pretrained_no_processing("tiny-qwen2")
    sd = model.state_dict()
    assert "embed.W_E" in sd and "unembed.W_U" in sd
    buf = io.BytesIO()
    torch.save(sd, buf)
    loaded = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert loaded["unembed.W_U"].data_ptr() == loaded["embed.W_E"].data_ptr()  # saved once
    other = HookedTransformer.from_pretrained_no_processing("tiny-qwen2")
    other.load_state_dict(loaded)
    assert is_tied(other) and torch.equal(other.W_U, model.W_U)


def test_tied_model_logits_unchanged():
    model, ref = lens("tiny-qwen2"), hf("tiny-qwen2")
    tokens = model.to_tokens("The Eiffel Tower is in the city of")
    with torch.no_grad():
        assert torch.equal(model(tokens), ref(tokens).logits)
    assert copy.deepcopy(model)(tokens).shape == model(tokens).shape
