"""TransformerLens 2.18 surface beyond the module paths: from_pretrained's TL arguments, TL's name tables,
head_detector, the key-value cache class and other names TL's tests and tutorials call.

(Split from test_tl_compat.py to keep files small.)
"""

import pytest
import torch

import lensutil
from lensutil.errors import ConfigError

# TransformerLens' own logit comparisons after weight processing use atol 1e-4 (e.g. its
# test_hooked_transformer's processed-vs-unprocessed checks); the refactoring is held to that too.
TL_ATOL = 1e-4


@pytest.fixture(scope="module")
def gpt2_pair():
    plain = lensutil.HookedTransformer.from_pretrained("tiny-gpt2")
    refactored = lensutil.HookedTransformer.from_pretrained("tiny-gpt2", refactor_factored_attn_matrices=True)
    return plain, refactored


def test_refactor_factored_attn_matrices_keeps_logits_and_circuits(gpt2_pair):
    plain, refactored = gpt2_pair
    tokens = torch.randint(0, plain.cfg.d_vocab, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(refactored(tokens), plain(tokens), atol=TL_ATOL, rtol=0)
        torch.testing.assert_close(refactored.OV.AB, plain.OV.AB, atol=1e-6, rtol=0)
        torch.testing.assert_close(refactored.QK.AB, plain.QK.AB, atol=1e-6, rtol=0)


def test_refactor_factored_attn_matrices_changes_the_factors_as_tl_describes(gpt2_pair):
    plain, refactored = gpt2_pair
    attn, before = refactored.blocks[0].attn, plain.blocks[0].attn
    assert not torch.allclose(attn.W_V, before.W_V)  # the weights did change
    assert torch.count_nonzero(attn.b_V) == 0  # b_V moved into b_O
    eye = torch.eye(attn.W_O.shape[1])
    with torch.no_grad():
        # W_O has orthonormal rows (a rotation onto its image); W_V's columns are orthogonal
        torch.testing.assert_close(attn.W_O @ attn.W_O.transpose(-1, -2), eye.expand_as(attn.W_O @ attn.W_O.transpose(-1, -2)), atol=1e-5, rtol=0)
        gram = attn.W_V.transpose(-1, -2) @ attn.W_V
        off_diagonal = gram - torch.diag_embed(torch.diagonal(gram, dim1=-2, dim2=-1))
        assert off_diagonal.abs().max() < 1e-5 * gram.abs().max()
        # W_Q and W_K (with the bias row) share the singular values evenly: equal column norms
        q = torch.cat([attn.W_Q, attn.b_Q[:, None, :]], dim=1).norm(dim=1)
        k = torch.cat([attn.W_K, attn.b_K[:, None, :]], dim=1).norm(dim=1)
        torch.testing.assert_close(q, k, atol=1e-5, rtol=1e-4)


def test_refactor_is_refused_for_rotary_models():
    model = lensutil.HookedTransformer.from_pretrained("tiny-llama")
    w_q = model.blocks[0].attn.W_Q.detach().clone()
    with pytest.raises(ConfigError, match="rotary"):
        model.process_weights_(refactor_factored_attn_matrices=True)
    assert torch.equal(model.blocks[0].attn.W_Q, w_q)  # refused before anything changed


@pytest.mark.parametrize("kwargs", [{"checkpoint_index": 3}, {"checkpoint_value": 1000}, {"first_n_layers": 1}])
def test_tl_arguments_resting_on_tl_tables_are_refused_clearly(kwargs):
    with pytest.raises(ConfigError, match="not supported"):
        lensutil.HookedTransformer.from_pretrained("tiny-gpt2", **kwargs)


def test_default_padding_side_and_move_to_device():
    model = lensutil.HookedTransformer.from_pretrained("tiny-gpt2", default_padding_side="left", move_to_device=False)
    assert model.cfg.default_padding_side == "left"
    tokens = model.to_tokens(["a", "a b c d"])
    assert tokens[0, 0] == model.tokenizer.pad_token_id  # the short row is padded on the left
    assert next(model.parameters()).device.type == "cpu"
    with pytest.raises(ConfigError, match="default_padding_side"):
        lensutil.HookedTransformer.from_pretrained("tiny-gpt2", default_padding_side="middle")


def test_official_model_names_are_transformer_lens_tables_in_full():
    from lensutil.transformer_lens import loading_from_pretrained as loading

    # families lensutil has no adapter for are still TransformerLens names (as TL answers them)
    assert loading.get_official_model_name("pythia-14m") == "EleutherAI/pythia-14m"
    assert loading.get_official_model_name("facebook/opt-125m") == "facebook/opt-125m"
    assert loading.get_official_model_name("GPT2-SMALL") == "gpt2"  # any case, as TL
    assert "llama-7b-hf" in loading.NON_HF_HOSTED_MODEL_NAMES
    assert loading.DEFAULT_MODEL_ALIASES[loading.OFFICIAL_MODEL_NAMES.index("gpt2")] == "gpt2-small"
    with pytest.raises(ValueError, match="not-a-model not found"):
        loading.get_official_model_name("not-a-model")


def test_get_pretrained_model_config_reads_the_hf_config_through_the_adapter():
    from lensutil.transformer_lens import loading_from_pretrained as loading

    model = lensutil.HookedTransformer.from_pretrained("tiny-gpt2", fold_ln=False)
    cfg = loading.get_pretrained_model_config("tiny-gpt2", n_ctx=64)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_vocab) == (model.cfg.n_layers, model.cfg.d_model, model.cfg.n_heads, model.cfg.d_vocab)
    assert cfg.n_ctx == 64 and cfg.normalization_type == "LN"
    assert loading.get_pretrained_model_config("tiny-gpt2", fold_ln=True).normalization_type == "LNPre"
    with pytest.raises(ConfigError, match="revision"):
        loading.get_pretrained_model_config("tiny-gpt2", checkpoint_index=1)


def test_detection_patterns_by_hand():
    from lensutil.transformer_lens.head_detector import (
        get_duplicate_token_head_detection_pattern as dup,
        get_induction_head_detection_pattern as ind,
        get_previous_token_head_detection_pattern as prev,
    )

    tokens = torch.tensor([[7, 1, 2, 1, 2]])
    assert prev(tokens).tolist()[2] == [0, 1, 0, 0, 0]
    # position 3 (token 1) duplicates position 1; position 4 (token 2) duplicates position 2
    assert dup(tokens).nonzero().tolist() == [[3, 1], [4, 2]]
    # induction: attend to the token after the earlier copy
    assert ind(tokens).nonzero().tolist() == [[3, 2], [4, 3]]


@pytest.fixture(scope="module")
def tiny():
    return lensutil.HookedTransformer.from_pretrained("tiny-gpt2")


def test_detect_head_scores_a_head_forced_to_the_pattern_as_perfect(tiny):
    from lensutil.transformer_lens.head_detector import detect_head, get_previous_token_head_detection_pattern

    text = " one two three four five"
    target = get_previous_token_head_detection_pattern(tiny.to_tokens(text))
    target[0, 0] = 1  # the first query has only itself to attend to

    def force(pattern, hook):
        pattern[:] = target
        return pattern

    with tiny.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", force)]):
        for measure in ("mul", "abs"):
            scores = detect_head(tiny, text, "previous_token_head", error_measure=measure, exclude_bos=True)
            assert torch.allclose(scores[0], torch.ones(tiny.cfg.n_heads)), (measure, scores)
            assert (scores[1:] < 1).all()


def test_detect_head_mul_score_is_the_share_of_attention_and_keeps_the_cache(tiny):
    from lensutil.transformer_lens.head_detector import detect_head, get_induction_head_detection_pattern

    text = " red green blue red green blue"
    _, cache = tiny.run_with_cache(text, remove_batch_dim=True)
    before = cache["pattern", 1].clone()
    scores = detect_head(tiny, text, "induction_head", heads=[(1, 2)], cache=cache, exclude_bos=True)
    pattern = before[2].clone()
    pattern[:, 0] = 0
    detection = get_induction_head_detection_pattern(tiny.to_tokens(text))
    assert scores[1, 2].item() == pytest.approx(((pattern * detection).sum() / pattern.sum()).item(), abs=1e-6)
    assert (scores[0] == -1).all() and scores[1, 0] == -1  # heads not asked for
    assert torch.equal(cache["pattern", 1], before)  # the cache's patterns are not written to


def test_detect_head_on_a_list_averages_and_refusals_are_assertion_errors(tiny):
    from lensutil.errors import HeadDetectionError
    from lensutil.transformer_lens.head_detector import detect_head

    a, b = " a b c", " one two three one two three"
    both = detect_head(tiny, [a, b], "duplicate_token_head")
    torch.testing.assert_close(both, (detect_head(tiny, a, "duplicate_token_head") + detect_head(tiny, b, "duplicate_token_head")) / 2)
    for bad in [dict(seq="", detection_pattern="previous_token_head"),
                dict(seq=" a b c", detection_pattern=torch.ones(4, 4)),
                dict(seq=" a b c", detection_pattern="no_such_head"),
                dict(seq=" a b c", detection_pattern="induction_head", error_measure="l2")]:
        with pytest.raises(HeadDetectionError) as err:
            detect_head(tiny, **bad)
        assert isinstance(err.value, AssertionError)


def test_key_value_cache_at_tl_path_matches_a_full_forward_and_freezes(tiny):
    from lensutil.transformer_lens.past_key_value_caching import HookedTransformerKeyValueCache

    prefix = tiny.to_tokens(" I went to the island,")
    one, two = tiny.to_tokens(" and then home", prepend_bos=False), tiny.to_tokens(" by boat", prepend_bos=False)
    cache = HookedTransformerKeyValueCache.init_cache(tiny.cfg, tiny.cfg.device, 1)
    with torch.no_grad():
        tiny(prefix, past_kv_cache=cache)
        cache.freeze()
        kept = cache[0].past_keys.clone()
        for cont in (one, two):  # both continue from the prefix only: the frozen cache keeps nothing new
            cached = tiny(cont, past_kv_cache=cache)
            full = tiny(torch.cat([prefix, cont], dim=1))[:, -cont.shape[1]:]
            torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
        assert torch.equal(cache[0].past_keys, kept) and cache.past_len == prefix.shape[1]
        cache.unfreeze()
        tiny(one, past_kv_cache=cache)
    assert cache[0].past_keys.shape[1] == prefix.shape[1] + one.shape[1]


def test_svd_interpreter_projects_the_top_singular_vectors_onto_the_vocabulary(tiny):
    from lensutil.errors import SVDInterpreterError
    from lensutil.transformer_lens import SVDInterpreter

    svd = SVDInterpreter(tiny)
    ov = svd.get_singular_vectors("OV", layer_index=1, num_vectors=3, head_index=2)
    assert ov.shape == (tiny.cfg.d_vocab, 1, 3)
    W_OV = (tiny.blocks[1].attn.W_V[2] @ tiny.blocks[1].attn.W_O[2]).detach().double()
    _, S, Vh = torch.linalg.svd(W_OV)
    for i in range(3):  # each column is ± (the i-th right singular vector of W_OV) @ W_U
        expected = (Vh[i] @ tiny.W_U.detach().double()).float()
        got = ov[:, 0, i]
        sign = torch.sign((got * expected).sum())
        torch.testing.assert_close(sign * got, expected, atol=1e-4, rtol=1e-3)
    w_out = svd.get_singular_vectors("w_out", layer_index=0, num_vectors=2)
    top = torch.linalg.svd(tiny.blocks[0].mlp.W_out.detach())[2][0] @ tiny.W_U.detach()
    assert torch.allclose(w_out[:, 0, 0].abs(), top.abs(), atol=1e-4)
    assert svd.get_singular_vectors("w_in", layer_index=0, num_vectors=1).shape == (tiny.cfg.d_vocab, 1, 1)
    for args, kwargs, message in [(("OV", 0), {}, "Head index optional"), (("w_in", 9), {}, "Layer index must be between 0 and 1"),
                                  (("OV", 0), {"head_index": 99}, "Head index must be between"), (("QK", 0), {"head_index": 0}, "Vector type")]:
        with pytest.raises(SVDInterpreterError, match=message):
            svd.get_singular_vectors(*args, **kwargs)


def test_tl_private_enable_hook_attaches_at_the_context_level(tiny):
    seen = []
    with tiny.hooks():  # context level 1: leaving it removes what _enable_hook attached at that level
        tiny._enable_hook("blocks.0.hook_resid_pre", lambda x, hook: seen.append(hook.name), "fwd")
        tiny._enable_hook(lambda n: n.endswith("hook_resid_post"), lambda x, hook: seen.append(hook.name), "fwd")
        tiny(torch.tensor([[1, 2, 3]]))
    assert seen == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    tiny(torch.tensor([[1, 2, 3]]))
    assert len(seen) == 3  # removed with the context


def test_d_vocab_minus_one_is_taken_from_the_tokenizer(tiny):
    from lensutil.loading.hf_source import resolve_source

    def cfg(**kw):
        return lensutil.HookedTransformerConfig(n_layers=1, d_model=10, d_head=5, n_heads=2, d_mlp=10, n_ctx=20, act_fn="relu", **kw)

    size = max(tiny.tokenizer.get_vocab().values()) + 1
    model = lensutil.HookedTransformer(cfg(), tokenizer=tiny.tokenizer)
    assert model.cfg.d_vocab == model.cfg.d_vocab_out == size and model.W_U.shape == (10, size)
    named = lensutil.HookedTransformer(cfg(tokenizer_name=resolve_source("tiny-gpt2"), d_vocab_out=90))
    assert (named.cfg.d_vocab, named.cfg.d_vocab_out) == (size, 90) and named.tokenizer is not None
    with pytest.raises(ConfigError, match="d_vocab=-1"):
        lensutil.HookedTransformer(cfg())
