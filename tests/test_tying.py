"""Tied embeddings are two independent parameters, as in TransformerLens (issue 24).

A checkpoint with tied word embeddings (GPT-2, SmolLM2, Qwen2) has one matrix for both; lensutil
loads it into W_E and W_U, each with its own storage, so an edit of one never reaches the other.
"""

import copy
import io

import torch

from lensutil import HookedTransformer

from _models import hf, lens


def _own_storage(model) -> bool:
    W_E, W_U = model.embed.W_E, model.unembed.W_U
    return W_E.untyped_storage().data_ptr() != W_U.untyped_storage().data_ptr()


def _assert_independent(model) -> None:
    """Zeroing a column of W_U leaves W_E as it was, and the other way round; both edits are undone."""
    assert model.cfg.tie_word_embeddings and _own_storage(model)
    token = 5
    with torch.no_grad():
        W_E, W_U = model.W_E.detach().clone(), model.W_U.detach().clone()
        model.unembed.W_U[:, token] = 0.0
        assert torch.equal(model.W_E, W_E)
        model.embed.W_E.data[token + 1] = 0.0  # through .data too
        assert torch.equal(model.W_U[:, token + 1], W_U[:, token + 1]) and not model.W_U[:, token].any()
        model.embed.W_E.copy_(W_E), model.unembed.W_U.copy_(W_U)


def test_a_tied_checkpoint_loads_into_two_independent_parameters():
    for name in ("tiny-qwen2", "tiny-gpt2"):
        model = HookedTransformer.from_pretrained_no_processing(name)
        assert torch.equal(model.W_U, model.W_E.T)  # equal values, two storages
        _assert_independent(model)
        _assert_independent(HookedTransformer.from_pretrained(name))  # processed (fold_ln changed W_U)


def test_zeroing_an_unembedding_column_leaves_the_logits_of_that_token_only():
    model = HookedTransformer.from_pretrained_no_processing("tiny-qwen2")
    tokens = model.to_tokens("The Eiffel Tower is in")
    with torch.no_grad():
        before = model(tokens)
        W_U = model.unembed.W_U.detach().clone()
        model.unembed.W_U[:, 7] = 0.0
        after = model(tokens)
        model.unembed.W_U.copy_(W_U)
    assert torch.equal(after[..., :7], before[..., :7]) and torch.equal(after[..., 8:], before[..., 8:])
    assert not after[..., 7].any()


def test_casting_moving_copying_and_reloading_keep_them_independent(tmp_path):
    model = HookedTransformer.from_pretrained_no_processing("tiny-qwen2", dtype=torch.bfloat16)
    _assert_independent(model)
    model.float()
    _assert_independent(model)
    model.to("cpu")
    _assert_independent(model)
    _assert_independent(copy.deepcopy(model))
    sd = model.state_dict()
    buf = io.BytesIO()
    torch.save(sd, buf)
    loaded = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert loaded["unembed.W_U"].untyped_storage().data_ptr() != loaded["embed.W_E"].untyped_storage().data_ptr()
    other = HookedTransformer.from_pretrained_no_processing("tiny-qwen2")
    other.load_state_dict(loaded)
    _assert_independent(other)
    model.save_pretrained(tmp_path / "saved")
    _assert_independent(HookedTransformer.from_pretrained(tmp_path / "saved"))


def test_loading_a_state_dict_with_another_W_U_leaves_W_E_as_loaded():
    model = HookedTransformer.from_pretrained_no_processing("tiny-qwen2")
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["unembed.W_U"] = sd["unembed.W_U"] + 1.0
    model.load_state_dict(sd)
    assert torch.equal(model.W_E, sd["embed.W_E"]) and torch.equal(model.W_U, sd["unembed.W_U"])


def test_processing_leaves_the_embedding_alone():
    model = HookedTransformer.from_pretrained_no_processing("tiny-qwen2")
    W_E = model.W_E.detach().clone()
    report = model.process_weights_(center_writing_weights=None)  # where valid (not on RMSNorm)
    assert "fold_ln" in report.applied and torch.equal(model.W_E, W_E)


def test_weight_memory_is_huggingfaces_plus_an_unembedding_of_its_own():
    model, ref = lens("tiny-gpt2"), hf("tiny-gpt2")
    hf_bytes = sum({p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in ref.parameters()}.values())
    own = sum({p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}.values())
    # HF holds the tied matrix once and has no unembedding bias; lensutil holds W_U and b_U (zeros) as TransformerLens does.
    W_U, b_U = model.unembed.W_U, model.unembed.b_U
    assert own == hf_bytes + W_U.numel() * W_U.element_size() + b_U.numel() * b_U.element_size()


def test_tied_model_logits_unchanged():
    model, ref = lens("tiny-qwen2"), hf("tiny-qwen2")
    tokens = model.to_tokens("The Eiffel Tower is in the city of")
    with torch.no_grad():
        assert torch.equal(model(tokens), ref(tokens).logits)
    assert copy.deepcopy(model)(tokens).shape == model(tokens).shape
