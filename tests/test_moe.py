"""Mixture of experts (Mixtral, Qwen2-MoE, Qwen3-MoE): routing as HuggingFace routes it, in every dtype; the float32 router."""

import functools

import pytest
import torch

from _models import hf, lens
from lensutil import checks
from lensutil.config import HookedTransformerConfig
from lensutil.errors import ConfigError, LensError
from lensutil.text.generation import KVCache
from lensutil.loading.pretrained import from_pretrained, from_pretrained_no_processing
from lensutil.loading.hf_source import load_hf

NAME = "tiny-mixtral"
# Every MoE family in the zoo. tiny-qwen2-moe: MoE on layers 0 and 2, a dense MLP on layer 1, a shared expert;
# tiny-qwen3-moe: a dense layer 0, MoE on layer 1, per-head q/k norms.
MOE = [NAME, "tiny-qwen2-moe", "tiny-qwen3-moe"]
PROMPTS = ["The Eiffel Tower is in the city of", "def fibonacci(n):\n    return", "1, 2, 3, 5, 8, 13,",
           *checks.DEFAULT_PROMPTS]


@functools.lru_cache(maxsize=None)
def hf_bf16(name=NAME):
    return load_hf(name, dtype=torch.bfloat16, attn_implementation="sdpa")[0]  # lensutil's default mode


def _moe_layers(model):
    return [i for i in range(model.cfg.n_layers) if model.cfg.is_moe_layer(i)]


def test_mixtral_is_configuration_with_transformerlens_field_names():
    cfg = lens(NAME).cfg
    assert (cfg.mlp_type, cfg.num_experts, cfg.experts_per_token) == ("moe", 4, 2)
    assert cfg.n_kv_heads < cfg.n_heads and cfg.normalization_type == "RMS" and cfg.positional_embedding_type == "rotary"
    assert HookedTransformerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="experts_per_token"):
        HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=8, d_head=4, d_vocab=10, mlp_type="moe", num_experts=2, experts_per_token=3)


def test_qwen2_moe_is_configuration_moe_layers_shared_expert_and_unnormalised_top_k():
    model = lens("tiny-qwen2-moe")
    cfg = model.cfg
    assert (cfg.mlp_type, cfg.moe_layers, cfg.num_experts, cfg.experts_per_token) == ("moe", (0, 2), 4, 2)
    assert (cfg.d_mlp, cfg.d_mlp_expert, cfg.d_mlp_shared_expert, cfg.norm_topk_prob, cfg.cast_routing_weights) == (128, 64, 96, False, True)
    assert "b_Q" not in cfg.absent_biases and model.blocks[0].attn.b_Q.abs().sum() > 0  # q/k/v biases taken
    assert HookedTransformerConfig.from_dict(cfg.to_dict()) == cfg
    assert type(model.blocks[1].mlp).__name__ == "MLP" and model.blocks[1].mlp.gated  # mlp_only_layers=[1]
    assert model.blocks[0].mlp.experts[0].W_in.shape == (64, 64) and model.blocks[0].mlp.shared_expert.W_in.shape == (64, 96)
    tokens = model.to_tokens(PROMPTS[0])
    _, cache = model.run_with_cache(tokens)
    n = tokens.shape[1]
    assert cache["blocks.0.mlp.shared_expert.hook_post"].shape == (1, n, 96)
    gate = cache["blocks.0.mlp.hook_shared_expert_gate"]
    assert gate.shape == (1, n, 1) and ((gate > 0) & (gate < 1)).all()
    assert "blocks.1.mlp.hook_pre_linear" in cache and "blocks.1.mlp.hook_expert_indices" not in cache
    with torch.no_grad():
        plain = model(tokens)
        no_shared = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.mlp.hook_shared_expert_gate", lambda g, hook: g * 0)])
    assert not torch.allclose(no_shared, plain, atol=1e-3)  # the shared expert counts


def test_qwen2_moe_norm_topk_prob_renormalises_only_when_set():
    import dataclasses

    from lensutil import HookedTransformer

    model = lens("tiny-qwen2-moe")
    renorm = HookedTransformer(dataclasses.replace(model.cfg, norm_topk_prob=True), model.tokenizer)
    renorm.load_state_dict(model.state_dict())
    tokens = model.to_tokens(PROMPTS[0])
    with torch.no_grad():
        assert not torch.allclose(renorm(tokens), model(tokens), atol=1e-3)


@pytest.mark.parametrize("step, only, expected", [(1, [1], (0, 2, 3)), (2, [], (1, 3)), (2, [3], (1,)), (1, [], None)])
def test_qwen2_moe_layers_follow_decoder_sparse_step_and_mlp_only_layers(step, only, expected):
    from transformers import Qwen2MoeConfig

    from lensutil.architectures import qwen_moe

    hf_cfg = Qwen2MoeConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                            vocab_size=100, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                            decoder_sparse_step=step, mlp_only_layers=only, architectures=["Qwen2MoeForCausalLM"])
    assert qwen_moe.config_from_hf(hf_cfg).moe_layers == expected


def test_qwen2_moe_slides_its_window_on_the_layers_layer_types_names():
    # Experts 48 wide: torch's SIMD kernels round the tail of a 48-wide row apart from a contiguous tensor's,
    # so this also checks that routed experts lay gate and up out as HF's fused experts do (moe.Expert).
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    hf_cfg = Qwen2MoeConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                            vocab_size=300, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=48,
                            shared_expert_intermediate_size=96, use_sliding_window=True, sliding_window=4, max_window_layers=3,
                            initializer_range=0.08, attn_implementation="eager", architectures=["Qwen2MoeForCausalLM"],
                            # HF's per-expert loop, which lensutil follows (and load_hf asks for); a model built from a
                            # config gets transformers' "grouped_mm", which sums in another order: 1e-7 under MKL's AVX2
                            experts_implementation="eager")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ref = Qwen2MoeForCausalLM(hf_cfg).eval()
    model = from_pretrained_no_processing("random-qwen2-moe", hf_model=ref, attn_implementation="eager")
    assert (model.cfg.attn_types, model.cfg.window_size) == (["local", "global", "local", "global"], 4)  # layers 0 and 2 slide
    tokens = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(1))  # longer than the window
    with torch.no_grad():
        assert torch.equal(model(tokens), ref(tokens).logits)


def test_qwen3_moe_is_configuration_qk_norms_dense_first_layer_no_shared_expert():
    model, ref = lens("tiny-qwen3-moe"), hf("tiny-qwen3-moe")
    cfg = model.cfg
    assert (cfg.mlp_type, cfg.moe_layers, cfg.d_mlp_expert, cfg.d_mlp_shared_expert, cfg.norm_topk_prob) == ("moe", (1,), 64, None, True)
    assert cfg.use_qk_norm and cfg.d_head == 32 and cfg.tie_word_embeddings
    assert torch.equal(model.blocks[1].attn.q_norm.w, ref.model.layers[1].self_attn.q_norm.weight)
    assert not hasattr(model.blocks[1].mlp, "shared_expert") and type(model.blocks[0].mlp).__name__ == "MLP"
    _, cache = model.run_with_cache(model.to_tokens(PROMPTS[0]))
    weights = cache["blocks.1.mlp.hook_expert_weights"]
    assert torch.allclose(weights.sum(-1), torch.tensor(1.0)) and "blocks.0.mlp.hook_pre_linear" in cache


@pytest.mark.parametrize("name", MOE)
def test_float32_logits_and_routing_match_huggingface(name):
    model, ref = lens(name), hf(name)
    for prompt in PROMPTS:
        tokens = model.to_tokens(prompt)
        with torch.no_grad():
            diff = (model(tokens) - ref(tokens).logits).abs().max().item()
        assert diff <= 1e-5, f"max |Δ logit| {diff:.2e} on {prompt!r}"
    assert checks.routing_agreement(model, ref, PROMPTS) == [1.0] * len(_moe_layers(model))


@pytest.mark.parametrize("name", MOE)
def test_bf16_router_dtype_reproduces_huggingface_bf16_bit_for_bit(name):
    model = from_pretrained_no_processing(name, dtype=torch.bfloat16)
    model.cfg.router_dtype = torch.bfloat16  # HF runs its router in the model's dtype
    tokens = model.to_tokens(PROMPTS[0])
    with torch.no_grad():
        assert torch.equal(model(tokens), hf_bf16(name)(tokens).logits)
    assert checks.routing_agreement(model, hf_bf16(name), PROMPTS) == [1.0] * len(_moe_layers(model))


@pytest.mark.parametrize("name", MOE)
def test_float32_router_in_bf16_routes_at_least_as_well_as_huggingface_bf16(name):
    ours = checks.routing_agreement(from_pretrained_no_processing(name, dtype=torch.bfloat16), hf(name), PROMPTS)
    # HuggingFace's own bfloat16 model against its float32 one (lensutil float32 == HF float32, tested above).
    theirs = checks.routing_agreement(lens(name), hf_bf16(name), PROMPTS)
    assert min(theirs) < 1.0, f"the zoo model should show bfloat16 flipping experts; HF bf16 agreement {theirs}"
    assert all(o >= t for o, t in zip(ours, theirs)), f"float32 router {ours} vs HF bfloat16 {theirs}"
    assert sum(ours) > sum(theirs)


@pytest.mark.parametrize("name", MOE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_loads_and_runs_in_every_dtype_with_the_router_weight_in_float32(dtype, name):
    model = from_pretrained(name, dtype=dtype)
    assert model.cfg.dtype == dtype and model.blocks[_moe_layers(model)[0]].mlp.experts[0].W_in.dtype == dtype
    assert model.blocks[_moe_layers(model)[0]].mlp.W_gate.dtype == torch.float32
    logits = model("Hello world")
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    assert model.to(torch.float64).blocks[_moe_layers(model)[0]].mlp.W_gate.dtype == torch.float64


@pytest.mark.parametrize("name", MOE)
def test_kv_cache_equals_the_uncached_forward(name):
    model = lens(name)
    tokens = model.to_tokens(PROMPTS[1])
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache(model.cfg.n_layers)
        first = model(tokens[:, :-3], past_kv_cache=cache)
        rest = model(tokens[:, -3:], past_kv_cache=cache)
    assert (torch.cat([first, rest], dim=1) - full).abs().max() <= 1e-5


@pytest.mark.parametrize("name", MOE)
def test_remove_batch_dim_squeezes_batch_hooks_and_keeps_the_routed_axis_of_expert_hooks(name):
    # An expert's hooks are [routed, d_mlp] (tokens routed to it, over batch and pos): no batch axis to drop.
    # (TransformerLens 2.18 takes [0] of every tensor, which keeps only an expert's first routed token.)
    model = lens(name)
    tokens = model.to_tokens(PROMPTS[0])
    with torch.no_grad():
        _, full = model.run_with_cache(tokens)
        _, squeezed = model.run_with_cache(tokens, remove_batch_dim=True)
        _, later = model.run_with_cache(tokens)
    experts = [f"blocks.{i}.mlp.experts.{e}.hook_post" for i in _moe_layers(model) for e in range(model.cfg.num_experts)]
    assert all(torch.equal(squeezed[name], full[name]) for name in experts)
    assert any(full[name].shape[0] > 1 for name in experts)
    first = f"blocks.{_moe_layers(model)[0]}.mlp.hook_expert_indices"
    assert torch.equal(squeezed[first], full[first][0])
    assert torch.equal(squeezed["resid_post", 1], full["resid_post", 1][0])
    assert later.remove_batch_dim() is later and all(torch.equal(later[k], squeezed[k]) for k in squeezed.keys())
    _, wide = model.run_with_cache(model.to_tokens(PROMPTS[:2]))
    with pytest.raises(LensError, match="hook_resid_pre|hook_embed"):
        wide.remove_batch_dim()


@pytest.mark.parametrize("name", MOE)
def test_padded_batch_routes_each_prompt_as_alone(name):
    model = lens(name)
    batched = model(PROMPTS[:3], padding_side="left")
    mask = model.generate_attention_mask(model.to_tokens(PROMPTS[:3], padding_side="left"))
    for row, prompt in enumerate(PROMPTS[:3]):
        assert (batched[row, mask[row].bool()] - model(prompt)[0]).abs().max() <= 1e-5


@pytest.mark.parametrize("name", MOE)
def test_moe_hooks_have_transformerlens_names_and_editing_them_changes_routing(name):
    model = lens(name)
    tokens = model.to_tokens(PROMPTS[0])
    _, cache = model.run_with_cache(tokens)
    n, k, e = tokens.shape[1], model.cfg.experts_per_token, model.cfg.num_experts
    m = f"blocks.{_moe_layers(model)[0]}.mlp."  # the first MoE layer
    assert cache[m + "hook_expert_indices"].shape == (1, n, k)
    assert cache[m + "hook_expert_weights"].shape == (1, n, e)
    assert torch.allclose(cache[m + "hook_expert_weights"].sum(-1), torch.tensor(1.0))
    routed = sum(cache[f"{m}experts.{i}.hook_post"].shape[0] for i in range(e))
    assert routed == n * k and cache[m + "experts.0.hook_gate"].shape[-1] == (model.cfg.d_mlp_expert or model.cfg.d_mlp)
    assert m + "experts.0.hook_pre" in cache and m + "hook_router_logits" in cache
    plain = model(tokens)
    chosen = cache[m + "hook_expert_indices"]
    other = [i for i in range(e) if i not in chosen[0, -1].tolist()][:k]  # experts the last token did not use

    def reroute(indices, hook):
        indices = indices.clone()
        indices[0, -1] = torch.tensor(other)
        return indices

    rerouted = model.run_with_hooks(tokens, fwd_hooks=[(m + "hook_expert_indices", reroute)])
    # Earlier tokens: the same experts (an expert's matmul has other rows now, so only ~1e-7 apart).
    assert torch.allclose(rerouted[0, :-1], plain[0, :-1], atol=1e-5) and not torch.allclose(rerouted[0, -1], plain[0, -1], atol=1e-3)
    last = _moe_layers(model)[-1]
    flat = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{last}.mlp.hook_expert_weights", lambda w, hook: torch.ones_like(w))])
    assert not torch.allclose(flat, plain)  # all tied: top-k picks other experts


def test_locate_divergence_names_the_moe_router_when_routing_is_where_models_part():
    # Eager attention on both sides: on this prompt its bf16 rounding is what tips a token to other experts.
    hf_bf16 = load_hf(NAME, dtype=torch.bfloat16, attn_implementation="eager")[0]
    model = from_pretrained_no_processing(NAME, dtype=torch.bfloat16, attn_implementation="eager")  # float32 router; HF's is bf16
    report = checks.locate_divergence(model, hf_bf16, input=PROMPTS[3])
    assert report.first is not None and report.first["component"] == "blocks.0 MoE router logits", str(report)
    assert any(r["component"].endswith("MoE expert choice") and r["max"] == 1.0 for r in report.table)
    model.cfg.router_dtype = torch.bfloat16
    assert checks.locate_divergence(model, hf_bf16, input=PROMPTS[3]).first is None


@pytest.mark.parametrize("name", MOE)
def test_weight_processing_on_moe_keeps_function_and_routing(name):
    model = from_pretrained(name)  # fold_ln (into the router, every expert, a shared expert and its gate), center_unembed, ...
    assert model.cfg.folded_ln and model.cfg.normalization_type == "RMSPre"
    assert checks.compare_with_hf(model, hf(name), PROMPTS).max <= 1e-4
    assert checks.routing_agreement(model, hf(name), PROMPTS) == [1.0] * len(_moe_layers(model))
    with pytest.warns(UserWarning, match="center_writing_weights"):
        report = from_pretrained_no_processing(name).process_weights_(center_writing_weights=True)
    assert "RMSNorm" in report.skipped["center_writing_weights"]


@pytest.mark.parametrize("name", MOE)
def test_processing_a_bf16_model_keeps_its_float32_router_weight(name):
    model = from_pretrained_no_processing(name, dtype=torch.bfloat16)
    router = model.blocks[_moe_layers(model)[0]].mlp
    before = router.W_gate.detach().clone()
    model.process_weights_(fold_ln=False, center_writing_weights=False, center_unembed=True, fold_value_biases=False)
    assert torch.equal(router.W_gate, before)  # not rounded through bfloat16


def test_routing_agreement_refuses_a_dense_model():
    with pytest.raises(LensError, match="mixture-of-experts"):
        checks.routing_agreement(lens("tiny-llama"), hf("tiny-llama"), "Hello")


@pytest.mark.parametrize("name", MOE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_validate_model_setup_passes_on_an_moe_model(dtype, name):
    report = checks.validate_model_setup(from_pretrained(name, dtype=dtype))
    failed = [line for line in str(report).splitlines() if line.startswith("✗")]
    assert not failed, str(report)


def _same_parameters(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    differ = [k for k in sa if sa[k].dtype != sb[k].dtype or not torch.equal(sa[k], sb[k])]
    assert not differ, f"{len(differ)} weights differ, e.g. {differ[:3]}"


@pytest.mark.parametrize("name", ["tiny-llama", *MOE])
def test_load_and_process_state_dict_on_a_bf16_model_equals_from_pretrained_in_bf16(name):
    # The float32 state dict is processed in float32 and cast once: not rounded to bfloat16 first.
    import dataclasses

    from lensutil import HookedTransformer

    raw = lens(name)
    model = HookedTransformer(dataclasses.replace(raw.cfg, dtype=torch.bfloat16), raw.tokenizer)
    model.load_and_process_state_dict({k: v.clone() for k, v in raw.state_dict().items()})
    direct = from_pretrained(name, dtype=torch.bfloat16)
    _same_parameters(model, direct)
    tokens = raw.to_tokens(PROMPTS[:3])
    assert torch.equal(model(tokens), direct(tokens))


@pytest.mark.parametrize("name", MOE)
def test_bf16_save_pretrained_reloads_in_bf16_with_the_float32_router_exactly(tmp_path, name):
    direct = from_pretrained(name, dtype=torch.bfloat16)
    direct.save_pretrained(tmp_path / "saved")
    for again in (from_pretrained(str(tmp_path / "saved"), dtype=torch.bfloat16), from_pretrained(str(tmp_path / "saved"))):
        assert again.cfg.dtype == torch.bfloat16 and again.blocks[_moe_layers(again)[0]].mlp.W_gate.dtype == torch.float32
        _same_parameters(again, direct)
        tokens = direct.to_tokens(PROMPTS[:3])
        assert torch.equal(again(tokens), direct(tokens))
