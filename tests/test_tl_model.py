"""Model behaviours TransformerLens 2.x code relies on (issue 27): attention-only and norm-free models,
SoLU/xIELU activations, input_to_embed, prepended hooks, and BERT's next-sentence head."""

import pytest
import torch
import torch.nn.functional as F

from lensutil import BertNextSentencePrediction, HookedEncoder, HookedTransformer, HookedTransformerConfig
from lensutil.errors import InputError
from lensutil.hooks.hook_points import HookPoint
from lensutil.model.activations import XIELU, gelu_fast, gelu_new, solu, xielu

TOKENS = torch.tensor([[1, 5, 2, 7, 3]])


def model(**kw) -> HookedTransformer:
    base = dict(n_layers=2, d_model=16, n_ctx=8, d_head=4, d_vocab=11, seed=0)
    return HookedTransformer(HookedTransformerConfig(**{**base, **kw}))


def test_attn_only_block_adds_attention_to_the_stream_and_has_no_mlp():
    m = model(attn_only=True)
    assert not hasattr(m.blocks[0], "mlp") and not hasattr(m.blocks[0], "ln2")
    assert "blocks.0.hook_resid_mid" not in m.hook_dict and "blocks.0.hook_mlp_out" not in m.hook_dict
    _, cache = m.run_with_cache(TOKENS)
    b = "blocks.1."
    assert torch.equal(cache[b + "hook_resid_post"], cache[b + "hook_resid_pre"] + cache[b + "hook_attn_out"])


def test_attn_only_model_processes_its_weights_without_changing_its_outputs():
    m = model(attn_only=True)
    before = m(TOKENS).log_softmax(-1)  # center_unembed shifts each position's logits by a constant
    m.process_weights_()
    assert m.cfg.folded_ln and torch.allclose(m(TOKENS).log_softmax(-1), before, atol=1e-5)


def test_normalization_none_leaves_the_stream_unnormalised():
    m = model(normalization_type=None)
    assert not any(".ln" in name or name.startswith("ln_final") for name in m.hook_dict)
    _, cache = m.run_with_cache(TOKENS)
    final = cache["blocks.1.hook_resid_post"]
    assert torch.allclose(m(TOKENS), final @ m.W_U + m.unembed.b_U)


def test_solu_ln_normalises_the_activation_over_d_mlp_after_hook_mid():
    m = model(act_fn="solu_ln", d_mlp=12)
    mlp = m.blocks[0].mlp
    assert mlp.ln.w.shape == (12,)
    _, cache = m.run_with_cache(TOKENS)
    pre, mid = cache["blocks.0.mlp.hook_pre"], cache["blocks.0.mlp.hook_mid"]
    assert torch.allclose(mid, pre * pre.softmax(-1))
    expected = F.layer_norm(mid, (12,), mlp.ln.w, mlp.ln.b, m.cfg.eps)
    assert torch.allclose(cache["blocks.0.mlp.hook_post"], expected, atol=1e-6)


def test_solu_ln_in_a_model_with_folded_norms_uses_a_weightless_layernorm():
    m = model(act_fn="solu_ln", normalization_type="LNPre")
    assert m.blocks[0].mlp.ln.kind == "LNPre" and not hasattr(m.blocks[0].mlp.ln, "w")


def test_gated_solu_ln_keeps_the_linear_branch():
    m = model(act_fn="solu_ln", gated_mlp=True)
    _, cache = m.run_with_cache(TOKENS)
    normed = cache["blocks.0.mlp.ln.hook_normalized"]
    mlp = m.blocks[0].mlp
    normed = normed * mlp.ln.w + mlp.ln.b
    assert torch.allclose(cache["blocks.0.mlp.hook_post"], normed * cache["blocks.0.mlp.hook_pre_linear"], atol=1e-6)


def test_activation_formulas():
    x = torch.linspace(-3, 3, 13)
    assert torch.allclose(gelu_fast(x), gelu_new(x), atol=1e-6)
    assert torch.allclose(solu(x), x * x.softmax(-1))
    positive, negative = torch.tensor([2.0]), torch.tensor([-2.0])
    assert torch.allclose(xielu(positive), torch.tensor([0.8 * 4 + 0.5 * 2]))
    assert torch.allclose(xielu(negative), (torch.expm1(negative) + 2) * 0.8 - 1.0)


def test_xielu_module_starts_as_the_fixed_function_and_its_parameters_are_in_the_state_dict():
    x = torch.randn(4, 6)
    assert torch.allclose(XIELU()(x), xielu(x), atol=1e-6)
    m = model(act_fn="xielu")
    assert {"blocks.0.mlp.act_fn.alpha_p", "blocks.0.mlp.act_fn.alpha_n"} <= set(m.state_dict())
    assert torch.allclose(F.softplus(m.blocks[0].mlp.act_fn.alpha_p), torch.tensor(0.8))  # init leaves it alone


def test_input_to_embed_then_start_at_layer_zero_is_the_whole_forward():
    m = model()
    residual, tokens, shortformer, mask = m.input_to_embed(TOKENS[0])
    assert residual.shape == (1, 5, 16) and torch.equal(tokens, TOKENS) and shortformer is None and mask is None
    assert torch.equal(m(residual, start_at_layer=0), m(TOKENS))
    assert torch.equal(m(residual, start_at_layer=0, tokens=tokens, return_type="loss"), m(TOKENS, return_type="loss"))


def test_input_to_embed_fires_the_embedding_hooks_only():
    m = model()
    seen = []
    m.run_with_hooks(TOKENS, fwd_hooks=[(lambda n: True, lambda t, hook: seen.append(hook.name))], stop_at_layer=0)
    with m.hooks(fwd_hooks=[(lambda n: True, lambda t, hook: seen.append(hook.name))]):
        m.input_to_embed(TOKENS)
    assert seen[: len(seen) // 2] == seen[len(seen) // 2:] == ["hook_embed", "hook_pos_embed"]


def test_input_to_embed_refuses_a_kv_cache_and_forward_a_shortformer_embed():
    m = model()
    with pytest.raises(InputError, match="past_kv_cache"):
        m.input_to_embed(TOKENS, past_kv_cache=object())
    with pytest.raises(InputError, match="shortformer"):
        m(torch.zeros(1, 5, 16), start_at_layer=0, shortformer_pos_embed=torch.zeros(1, 5, 16))


def test_prepended_hook_is_listed_first_as_it_runs_first():
    point = HookPoint()
    first = point.add_hook(lambda t, hook: None)
    second = point.add_hook(lambda t, hook: None, prepend=True)
    assert point.fwd_hooks == [second, first]
    point.add_hook(lambda t, hook: None, dir="bwd")
    back = point.add_hook(lambda t, hook: None, dir="bwd", prepend=True)
    assert point.bwd_hooks[0] is back


def test_d_vocab_comes_from_the_tokenizer_when_unset():
    class Tokenizer:
        def get_vocab(self):
            return {"a": 0, "b": 4, "c": 2}

    m = HookedTransformer(HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4), tokenizer=Tokenizer())
    assert (m.cfg.d_vocab, m.cfg.d_vocab_out, m.W_U.shape[1]) == (5, 5, 5)


def _bert():
    cfg = HookedTransformerConfig(d_head=4, d_model=12, n_ctx=6, n_layers=2, act_fn="gelu", d_vocab=22, seed=1)
    return HookedEncoder(cfg)


def test_config_built_encoder_has_all_of_berts_heads():
    m = _bert()
    assert m.cfg.mlm_head and m.cfg.pooler and m.cfg.nsp_head and m.nsp_head.W.shape == (12, 2)


def test_next_sentence_prediction_is_the_pooled_encoder_output_through_the_nsp_head():
    m = _bert()
    tokens, types = torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([[0, 0, 0, 1, 1]])
    resid = m.encoder_output(tokens, types)
    assert torch.equal(resid, m(tokens, "embeddings", types))
    expected = torch.tanh(resid[:, 0] @ m.pooler.W + m.pooler.b) @ m.nsp_head.W + m.nsp_head.b
    nsp = BertNextSentencePrediction(m)
    assert torch.allclose(nsp(tokens, token_type_ids=types), expected, atol=1e-6)
    sentence = nsp(tokens, "predictions", types)
    assert sentence == ("The sentences are sequential" if expected[0, 0] > expected[0, 1] else "The sentences are NOT sequential")
    logits, cache = nsp.run_with_cache(tokens, token_type_ids=types)
    assert torch.equal(cache["nsp_head.hook_nsp_out"], logits)


def test_next_sentence_prediction_on_ids_needs_token_types():
    with pytest.raises(InputError, match="token_type_ids"):
        BertNextSentencePrediction(_bert())(torch.tensor([[1, 2, 3]]))


def test_nsp_run_with_cache_takes_the_encoders_options_and_gives_the_encoder_its_forward_back():
    m = _bert()
    nsp = BertNextSentencePrediction(m)
    tokens, types = torch.tensor([[1, 2, 3]]), torch.tensor([[0, 0, 1]])
    _, cache = nsp.run_with_cache(tokens, token_type_ids=types, names_filter="pooler.hook_pooler_out")
    assert list(cache.keys()) == ["pooler.hook_pooler_out"]
    with pytest.raises(InputError):
        nsp.run_with_cache(tokens)  # no token types: refused inside the swapped forward
    assert "forward" not in vars(m) and m(tokens, "embeddings", types).shape == (1, 3, 12)


def test_input_errors_are_value_errors_as_transformerlens_code_expects():
    with pytest.raises(ValueError):
        BertNextSentencePrediction(_bert()).to_tokens(["only one"])


def test_frozen_kv_cache_is_read_but_not_extended():
    from lensutil.text.generation import KVCache

    m = model()
    cache = KVCache.init_cache(m.cfg, "cpu", 1)
    m(TOKENS[:, :3], past_kv_cache=cache)
    cache.freeze()
    first = m(TOKENS[:, 3:4], past_kv_cache=cache)
    again = m(TOKENS[:, 3:4], past_kv_cache=cache)  # the same continuation of the same prefix
    assert cache.past_len == 3 and cache[0].k.shape[1] == 3 and torch.equal(first, again)
    assert torch.allclose(first[:, -1], m(TOKENS[:, :4])[:, -1], atol=1e-5)
    cache.unfreeze()
    m(TOKENS[:, 3:4], past_kv_cache=cache)
    assert cache.past_len == 4


def test_tl_private_hook_steps_attach_at_the_current_context_level():
    m = model()
    seen = []
    with m.hooks():
        m._enable_hook("hook_embed", hook=lambda t, hook: seen.append(hook.name), dir="fwd")
        m._enable_hook(lambda n: n == "hook_pos_embed", hook=lambda t, hook: seen.append(hook.name), dir="fwd")
        m(TOKENS)
    m(TOKENS)  # removed with the context that added them
    assert seen == ["hook_embed", "hook_pos_embed"]


def test_from_pretrained_takes_tls_default_padding_side():
    m = HookedTransformer.from_pretrained("tiny-gpt2", default_padding_side="left")
    tokens = m.to_tokens(["a b c d", "a"])
    assert m.cfg.default_padding_side == "left" and tokens[1, -1] != m.tokenizer.pad_token_id
    with pytest.raises(Exception, match="default_padding_side"):
        HookedTransformer.from_pretrained("tiny-gpt2", default_padding_side="middle")
