"""The HookedTransformer's own behaviour: hooks on a real model, forward options, tokens, loading errors."""

import math

import pytest
import torch

from _models import lens
from lensutil.config import HookedTransformerConfig
from lensutil.errors import (ConfigError, HookFlagError, HookNameError, InputError, UnsupportedArchitectureError,
                             WeightLoadError)
from lensutil.loading.pretrained import from_pretrained_no_processing

TEXT = "The Eiffel Tower is in the city of"


def test_zeroing_attn_out_changes_the_logits():
    model = lens("tiny-llama")
    clean = model(TEXT)
    zeroed = model.run_with_hooks(TEXT, fwd_hooks=[("blocks.0.hook_attn_out", lambda x, hook: torch.zeros_like(x))])
    assert (clean - zeroed).abs().max() > 1e-3
    assert torch.equal(model(TEXT), clean)  # and the hook is gone afterwards


def test_hooks_removed_after_exception_in_forward():
    model = lens("tiny-gpt2")

    def boom(x, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        model.run_with_hooks(TEXT, fwd_hooks=[("blocks.1.hook_mlp_out", boom)])
    assert not any(hp.has_hooks for hp in model.hook_dict.values())


def test_names_filter_caches_exactly_the_named_hooks():
    model = lens("tiny-qwen2")
    names = ["blocks.0.attn.hook_pattern", "blocks.1.hook_resid_post", "ln_final.hook_normalized"]
    _, cache = model.run_with_cache(TEXT, names_filter=names)
    assert sorted(cache.keys()) == sorted(names)
    _, cache = model.run_with_cache(TEXT, names_filter="blocks.0.hook_mlp_out")
    assert list(cache.keys()) == ["blocks.0.hook_mlp_out"]


def test_every_transformerlens_hook_name_exists():
    model = lens("tiny-llama")
    per_block = ["hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v",
                 "attn.hook_rot_q", "attn.hook_rot_k", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z",
                 "attn.hook_result", "hook_attn_out", "hook_resid_mid", "ln2.hook_scale", "ln2.hook_normalized",
                 "mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_post", "hook_mlp_out", "hook_resid_post",
                 "hook_q_input", "hook_k_input", "hook_v_input", "hook_attn_in", "hook_mlp_in"]
    expected = {"hook_embed", "ln_final.hook_scale", "ln_final.hook_normalized"}
    expected |= {f"blocks.{i}.{n}" for i in range(model.cfg.n_layers) for n in per_block}
    assert expected <= set(model.hook_dict)
    assert "hook_pos_embed" in lens("tiny-gpt2").hook_dict


@pytest.mark.parametrize("hook,flag", [("blocks.0.attn.hook_result", "use_attn_result"),
                                       ("blocks.1.hook_q_input", "use_split_qkv_input"),
                                       ("blocks.0.hook_mlp_in", "use_hook_mlp_in"),
                                       ("blocks.0.hook_attn_in", "use_attn_in")])
def test_flag_gated_hook_names_its_flag_and_fires_once_on(hook, flag):
    model = from_pretrained_no_processing("tiny-gpt2")
    with pytest.raises(HookFlagError, match=rf"{flag}=True.*set_{flag}\(True\)"):
        model.run_with_hooks(TEXT, fwd_hooks=[(hook, lambda x, hook: None)])
    clean = model(TEXT)
    getattr(model, f"set_{flag}")(True)
    seen = []
    out = model.run_with_hooks(TEXT, fwd_hooks=[(hook, lambda x, hook: seen.append(x.shape))])
    assert seen and (out - clean).abs().max() <= 1e-5  # the flag changes what is computed, not the result


def test_use_attn_in_refused_for_grouped_query_attention():
    model = from_pretrained_no_processing("tiny-llama")
    with pytest.raises(ConfigError, match="use_split_qkv_input"):
        model.set_use_attn_in(True)
    assert model.cfg.use_attn_in is False


def test_unknown_hook_name_suggests_the_real_one():
    model = lens("tiny-gpt2")
    with pytest.raises(HookNameError, match=r"blocks\.0\.hook_mlp_out"):
        model.run_with_hooks(TEXT, fwd_hooks=[("blocks.0.mlp.hook_mlp_out", lambda x, hook: None)])


def test_stop_and_start_at_layer_compose_to_the_full_forward():
    model = lens("tiny-mistral")
    tokens = model.to_tokens(TEXT)
    residual = model(tokens, stop_at_layer=1)
    assert residual.shape == (1, tokens.shape[1], model.cfg.d_model)
    assert torch.equal(model(residual, start_at_layer=1), model(tokens))


def test_return_types():
    model = lens("tiny-gpt2")
    logits, loss = model(TEXT, return_type="both")
    assert logits.shape[-1] == model.cfg.d_vocab and loss.ndim == 0
    assert torch.equal(model(TEXT, return_type="loss"), loss)
    assert model(TEXT, return_type=None) is None
    with pytest.raises(InputError):
        model(TEXT, return_type="probs")


def test_tokens_round_trip():
    model = lens("tiny-llama")
    tokens = model.to_tokens(TEXT, prepend_bos=False)
    assert model.to_string(tokens[0]) == TEXT
    assert "".join(model.to_str_tokens(TEXT, prepend_bos=False)) == TEXT
    assert model.to_single_token(" Paris") in model.to_tokens(" Paris", prepend_bos=False)[0].tolist()
    with pytest.raises(InputError, match="not one"):
        model.to_single_token(" Paris is lovely")


def test_unsupported_architecture_lists_the_supported_ones():
    from transformers import T5Config

    from lensutil.architectures.registry import get_adapter

    # (BERT was the example here until lensutil gained HookedEncoder; T5 has no adapter.)
    with pytest.raises(UnsupportedArchitectureError, match="BertForMaskedLM.*GPT2LMHeadModel.*LlamaForCausalLM"):
        get_adapter(T5Config(architectures=["T5ForConditionalGeneration"]))


def test_missing_weight_is_an_error_not_a_fresh_init():
    from lensutil.loading.hf_source import load_hf

    hf_model, _ = load_hf("tiny-llama")
    state = hf_model.state_dict()
    del state["model.layers.1.mlp.down_proj.weight"]
    model = lens("tiny-llama")
    with pytest.raises(WeightLoadError, match="down_proj"):
        model.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False,
                                          center_unembed=False, fold_value_biases=False)


def test_config_refuses_inconsistent_heads():
    with pytest.raises(ConfigError, match="multiple"):
        HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=2, n_heads=4, d_mlp=8, d_vocab=5,
                                n_key_value_heads=3)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_sdpa_mode_agrees_with_eager_and_falls_back_when_the_pattern_is_hooked(name):
    eager = lens(name)
    fused = from_pretrained_no_processing(name, attn_implementation="sdpa")
    texts = ["The Eiffel Tower is in the city of", "Hi"]
    for side in ("left", "right"):
        ref = eager(texts, padding_side=side)
        out = fused(texts, padding_side=side)
        mask = eager.generate_attention_mask(eager.to_tokens(texts, padding_side=side), padding_side=side).bool()
        assert (out - ref)[mask].abs().max() <= 1e-5
    seen = []
    fused.run_with_hooks(texts[0], fwd_hooks=[("blocks.0.attn.hook_pattern", lambda x, hook: seen.append(x))])
    assert seen and torch.allclose(seen[0].sum(-1), torch.tensor(1.0))
    assert fused.generate(texts, max_new_tokens=6, do_sample=False) == eager.generate(texts, max_new_tokens=6, do_sample=False)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-mistral"])
def test_sdpa_mode_keeps_the_fused_value_for_reading_hooks_and_uses_an_edited_pattern(name):
    fused = from_pretrained_no_processing(name, attn_implementation="sdpa")
    plain = fused(TEXT)
    read = [lambda x, hook: None, lambda x, hook: x, lambda x, hook: x.clone().sum() and None]
    for hook in ("blocks.0.attn.hook_pattern", "blocks.1.attn.hook_attn_scores"):
        for fn in read:
            assert torch.equal(fused.run_with_hooks(TEXT, fwd_hooks=[(hook, fn)]), plain)
        with torch.inference_mode():
            assert torch.equal(fused.run_with_hooks(TEXT, fwd_hooks=[(hook, read[0])]), plain)

    def first_key_only(pattern, hook):  # every query attends to the first token alone
        pattern.zero_()[..., 0] = 1.0

    seen = {}
    fwd = [("blocks.0.attn.hook_pattern", first_key_only), ("blocks.0.attn.hook_v", lambda v, hook: seen.update(v=v)),
           ("blocks.0.attn.hook_z", lambda z, hook: seen.update(z=z))]
    edited = fused.run_with_hooks(TEXT, fwd_hooks=fwd)
    assert not torch.allclose(edited, plain, atol=1e-3)
    v0 = seen["v"][:, :1].repeat_interleave(fused.cfg.n_heads // fused.cfg.n_kv_heads, dim=2)  # the first token's v
    assert torch.equal(seen["z"], v0.expand_as(seen["z"]))  # z = edited pattern @ v: each query's z is that v
    returned = fused.run_with_hooks(TEXT, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda p, hook: first_key_only(p.clone(), hook) or p)])
    assert torch.equal(returned, plain)  # the hook edited a copy and returned the original: nothing changed
    with torch.inference_mode():
        assert torch.equal(fused.run_with_hooks(TEXT, fwd_hooks=fwd[:1]), edited)
    through_data = ("blocks.0.attn.hook_pattern", lambda p, hook: first_key_only(p.data, hook))  # no version bump
    with torch.no_grad():
        assert torch.equal(fused.run_with_hooks(TEXT, fwd_hooks=[through_data]), edited)
    scores_edit = ("blocks.0.attn.hook_attn_scores", lambda s, hook: s * 0)  # uniform over the allowed keys
    assert not torch.allclose(fused.run_with_hooks(TEXT, fwd_hooks=[scores_edit]), plain, atol=1e-3)


def test_reading_the_pattern_keeps_gradients_flowing_through_it():
    fused = from_pretrained_no_processing("tiny-llama", attn_implementation="sdpa")
    loss, cache = fused.run_with_cache(TEXT, return_type="loss", incl_bwd=True)
    assert torch.equal(loss, fused(TEXT, return_type="loss"))
    assert cache["blocks.0.attn.hook_pattern_grad"].abs().max() > 0
    fused.zero_grad()
    fused(TEXT, return_type="loss").backward()
    plain_grad = fused.blocks[0].attn.W_Q.grad.clone()
    fused.zero_grad()
    fused.run_with_hooks(TEXT, return_type="loss", fwd_hooks=[("blocks.0.attn.hook_pattern", lambda p, hook: None)]).backward()
    assert torch.allclose(fused.blocks[0].attn.W_Q.grad, plain_grad, atol=1e-6, rtol=1e-4)
    fused.zero_grad()


def test_rotary_hooks_exist_only_where_they_fire():
    assert "blocks.0.attn.hook_rot_q" in lens("tiny-llama").hook_dict
    with pytest.raises(HookNameError):  # on GPT-2 it would be a hook that silently never fires
        lens("tiny-gpt2").run_with_hooks(TEXT, fwd_hooks=[("blocks.0.attn.hook_rot_q", lambda x, hook: None)])


@pytest.mark.parametrize("hook", ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_attn_scores"])
def test_sdpa_mode_runs_backward_and_forward_pre_hooks_on_the_attention(hook):
    # The fused kernel never makes the pattern, so any hook there (not only a forward one) must turn it off.
    fused = from_pretrained_no_processing("tiny-llama", attn_implementation="sdpa")
    grads = []
    fused.add_hook(hook, lambda grad, hook: grads.append(grad.shape), dir="bwd")
    fused(TEXT, return_type="loss").backward()
    fused.reset_hooks()
    assert len(grads) == 1 and grads[0][-2:] == grads[0][-1:] * 2
    seen = []
    handle = fused.hook_dict[hook].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    with torch.no_grad():
        fused(TEXT)
    handle.remove()
    assert seen == [grads[0]]


def _fresh(name: str = "tiny-llama", dtype: torch.dtype = torch.float32):
    return from_pretrained_no_processing(name, dtype=dtype)  # not the shared lens() copy: these move it


@pytest.mark.parametrize("method,dtype", [("half", torch.float16), ("bfloat16", torch.bfloat16),
                                          ("double", torch.float64), ("float", torch.float32)])
def test_cfg_dtype_follows_every_dtype_method(method, dtype):
    model = _fresh(dtype=torch.float16 if method == "float" else torch.float32)
    assert getattr(model, method)() is model
    assert model.cfg.dtype == dtype == model.W_E.dtype
    model.type(torch.float64)  # nn.Module.type too
    assert model.cfg.dtype == torch.float64


def test_cfg_device_follows_cpu():
    model = _fresh()
    model.cfg.device = "meta"  # as if it had been moved and cfg had been left behind
    model.cpu()
    assert model.cfg.device == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cfg_device_follows_cuda_and_cpu():
    model = _fresh()
    model.cuda()
    assert model.cfg.device == "cuda:0" and model(TEXT).device.type == "cuda"
    model.cpu()
    assert model.cfg.device == "cpu" and model(TEXT).device.type == "cpu"


def test_a_bfloat16_model_made_float_computes_like_a_float32_one():
    # Rotary angles are built in cfg.dtype: after .float() they must be float32 again.
    converted = _fresh(dtype=torch.bfloat16).float()
    fresh = _fresh()
    fresh.load_state_dict(converted.state_dict())  # the same (bfloat16-rounded) weights
    assert torch.equal(converted(TEXT), fresh(TEXT))


def test_compare_with_hf_loads_its_reference_in_the_models_current_dtype(monkeypatch):
    import lensutil.loading.hf_source
    from lensutil.checks import compare_with_hf

    model = _fresh(dtype=torch.bfloat16).float()
    asked = []
    real_load_hf = lensutil.loading.hf_source.load_hf
    monkeypatch.setattr(lensutil.loading.hf_source, "load_hf", lambda *a, **kw: asked.append(kw.get("dtype")) or real_load_hf(*a, **kw))
    compare_with_hf(model, prompts="Hi")
    assert asked == [torch.float32]


def _documented_shape(comment: str, cfg, batch: int, pos: int) -> list[int]:
    sizes = {"batch": batch, "pos": pos, "key_pos": pos, "head_index": cfg.n_heads, "kv_head_index": cfg.n_kv_heads,
             "d_head": cfg.d_head, "d_model": cfg.d_model, "d_mlp": cfg.d_mlp, "d_vocab": cfg.d_vocab_out, "1": 1}
    return [math.prod(sizes[part] for part in axis.split("*")) for axis in comment.split()]


FAMILY_HOOKS = {  # hooks each family adds to the usual ones, in block 0
    "tiny-qwen3": ["attn.q_norm.hook_scale", "attn.q_norm.hook_normalized", "attn.k_norm.hook_normalized"],
}


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", *FAMILY_HOOKS])
def test_every_hook_fires_with_its_documented_shape(name):
    model = lens(name)
    for flag in ("use_attn_result", "use_hook_mlp_in"):  # (split q/k/v inputs give ln1 a head axis, as in TransformerLens)
        getattr(model, f"set_{flag}")(True)
    try:
        tokens = model.to_tokens(["The Eiffel Tower is in the city of", "Hi"], padding_side="left")
        _, cache = model.run_with_cache(tokens, attention_mask=model.generate_attention_mask(tokens, padding_side="left"))
    finally:
        for flag in ("use_attn_result", "use_hook_mlp_in"):
            getattr(model, f"set_{flag}")(False)
    split = ("hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input")
    assert set(cache.keys()) == {n for n in model.hook_dict if not n.endswith(split)}
    assert {f"blocks.0.{n}" for n in FAMILY_HOOKS.get(name, [])} <= set(cache.keys())
    for hook_name, act in cache.items():
        expected = _documented_shape(model.hook_dict[hook_name].shape_comment, model.cfg, *tokens.shape)
        assert list(act.shape) == expected, f"{name} {hook_name}: {list(act.shape)} != {expected}"
