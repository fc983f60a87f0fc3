"""lensutil against HuggingFace (eager attention) on the same weights, float32."""

import pytest
import torch

from _models import ALL, TINY, hf, lens

PROMPTS = ["The Eiffel Tower is in the city of", "def fibonacci(n):\n    return", "1, 2, 3, 5, 8, 13,"]


def _param(name):
    return pytest.param(name, marks=pytest.mark.slow) if name == "smollm2-135m" else name


@pytest.mark.parametrize("name", [_param(n) for n in ALL])
def test_logits_match_huggingface(name):
    model, ref = lens(name), hf(name)
    for prompt in PROMPTS:
        tokens = model.to_tokens(prompt)
        with torch.no_grad():
            diff = (model(tokens) - ref(tokens).logits).abs().max().item()
        assert diff == 0, f"{name}: max |Δ logit| {diff:.2e} on {prompt!r}"


@pytest.mark.parametrize("name", [_param(n) for n in ALL])
def test_run_with_cache_of_everything_gives_the_plain_forwards_logits_exactly(name):
    # Caching everything reads hook_pattern and hook_attn_scores, which the fused kernel never makes: they are
    # written out for the hooks, while z stays the fused kernel's (the hooks only read), so the logits and
    # every activation after the attention are the plain forward's, bit for bit, in either mode.
    model, eager = lens(name), lens(name, attn_implementation="eager")
    assert model.cfg.attn_implementation == "sdpa"
    tokens = model.to_tokens(PROMPTS[0])
    with torch.no_grad():
        cached, cache = model.run_with_cache(tokens)
        assert torch.equal(model(tokens), cached)
        assert torch.equal(eager(tokens), eager.run_with_cache(tokens)[0])
        last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
        assert torch.equal(cache[last], model.run_with_cache(tokens, names_filter=last)[1][last])
        batch = model.run_with_cache(PROMPTS, padding_side="left")[0]  # padded: the masked kernel call
        assert torch.equal(model(PROMPTS, padding_side="left"), batch)
        assert torch.allclose(cache["pattern", 0], eager.run_with_cache(tokens)[1]["pattern", 0])
    assert len(cache) > 10 * model.cfg.n_layers


@pytest.mark.parametrize("name", [_param(n) for n in ALL])
def test_greedy_generation_matches_huggingface(name):
    model, ref = lens(name), hf(name)
    tokens = model.to_tokens(PROMPTS[0])
    ours = model.generate(tokens, max_new_tokens=30, do_sample=False, stop_at_eos=False)
    theirs = ref.generate(tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=30,
                          min_new_tokens=30, do_sample=False)
    assert ours.tolist() == theirs.tolist()


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_greedy_generation_same_with_and_without_kv_cache(name):
    model = lens(name)
    cached = model.generate(PROMPTS[1], max_new_tokens=20, do_sample=False, stop_at_eos=False)
    uncached = model.generate(PROMPTS[1], max_new_tokens=20, do_sample=False, stop_at_eos=False, use_past_kv_cache=False)
    assert isinstance(cached, str) and cached == uncached and cached.startswith(PROMPTS[1])


def test_variants_are_covered():
    # The zoo spans the variants the equivalence tests are meant to cover.
    cfgs = {n: lens(n).cfg for n in ALL}
    assert {c.normalization_type for c in cfgs.values()} == {"LN", "RMS"}
    assert {c.positional_embedding_type for c in cfgs.values()} == {"standard", "rotary"}
    assert any(c.n_kv_heads < c.n_heads for c in cfgs.values())  # grouped-query attention
    assert lens("tiny-qwen2").blocks[0].attn.b_Q.abs().sum() > 0  # q/k/v bias taken
    assert {c.tie_word_embeddings for c in cfgs.values()} == {True, False}
    assert cfgs["tiny-llama"].rotary_base == 50000.0


def _random_llama(head_dim: int, seed: int = 0):
    """A seeded random HF Llama with the given head size, in eager attention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=head_dim, vocab_size=512, max_position_embeddings=128,
                         attn_implementation="eager", architectures=["LlamaForCausalLM"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
        with torch.no_grad():  # norm weights off their constant 1, so each one matters
            for name, p in model.named_parameters():
                if p.ndim == 1:
                    p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_logits_bit_exact_with_huggingface_at_d_head_128(attn_implementation):
    # At d_head 128 (every 7B/8B Llama), sqrt(d_head) is not a power of two, so dividing the scores
    # by it and multiplying them by head_dim ** -0.5 (HuggingFace's rule) round differently.
    from lensutil.loading.pretrained import from_pretrained_no_processing

    ref = _random_llama(head_dim=128)
    model = from_pretrained_no_processing("random-llama-d128", hf_model=ref, attn_implementation=attn_implementation)
    assert model.cfg.d_head == 128
    tokens = torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(1))
    if attn_implementation == "sdpa":
        ref.config._attn_implementation = "sdpa"
    try:
        with torch.no_grad():
            diff = (model(tokens) - ref(tokens).logits).abs().max().item()
    finally:
        ref.config._attn_implementation = "eager"
    assert diff == 0, f"max |Δ logit| {diff:.2e} at d_head 128 ({attn_implementation})"


# ---- the default attention mode (issue 14) ----------------------------------------------------------

SAME_MATHS = TINY  # every architecture: the same maths in the same order as HuggingFace's, in either mode


def test_from_pretrained_and_the_config_default_to_the_fused_kernel():
    from lensutil import HookedTransformer, HookedTransformerConfig

    assert HookedTransformer.from_pretrained("tiny-llama").cfg.attn_implementation == "sdpa"
    assert HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=10).attn_implementation == "sdpa"


def test_an_unknown_attention_mode_is_refused():
    from lensutil import HookedTransformerConfig
    from lensutil.errors import ConfigError

    with pytest.raises(ConfigError, match="'sdpa'.*'eager'.*flash_attention_2"):
        HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=10, attn_implementation="flash_attention_2")


@pytest.mark.parametrize("mode", ["sdpa", "eager"])
@pytest.mark.parametrize("name", SAME_MATHS)
def test_logits_bit_exact_with_huggingface_in_the_same_mode(name, mode):
    from _models import hf_positions

    model, ref = lens(name, attn_implementation=mode), hf(name, mode)
    with torch.no_grad():
        tokens = model.to_tokens(PROMPTS[0])
        assert torch.equal(model(tokens), ref(tokens).logits)
        if model.cfg.mlp_type == "moe":  # which tokens share an expert's matmul (pads included) sets its rounding
            return
        for side in ("left", "right"):
            tokens = model.to_tokens(PROMPTS, padding_side=side)
            mask = model.generate_attention_mask(tokens, padding_side=side)
            ours = model(tokens, attention_mask=mask)
            theirs = ref(tokens, attention_mask=mask, position_ids=hf_positions(mask)).logits
            assert torch.equal(ours[mask.bool()], theirs[mask.bool()]), f"{name} {mode} {side}-padded"


@pytest.mark.parametrize("mode", ["sdpa", "eager"])
def test_compare_with_hf_loads_huggingface_in_the_model_mode(mode):
    from lensutil import checks

    assert checks.compare_with_hf(lens("tiny-llama", attn_implementation=mode), on="logits").max == 0


# ---- per-layer attention types: sliding windows on some layers (issue 26) --------------------------


def _random_qwen2_sliding(max_window_layers: int, seed: int = 0):
    """A seeded random HF Qwen2 whose layers i >= max_window_layers see only the last 4 keys."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=128, use_sliding_window=True,
                         sliding_window=4, max_window_layers=max_window_layers, architectures=["Qwen2ForCausalLM"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).eval()
    return model


@pytest.mark.parametrize("mode", ["eager", "sdpa"])
@pytest.mark.parametrize("max_window_layers", [0, 1, 3])
def test_qwen2_sliding_window_only_on_layers_from_max_window_layers(max_window_layers, mode):
    # HF's Qwen2Config.layer_types: layer i slides iff use_sliding_window and i >= max_window_layers, so
    # max_window_layers == num_hidden_layers means no layer slides (lensutil once slid them all: 0.9 logit error).
    from lensutil.loading.pretrained import from_pretrained_no_processing

    ref = _random_qwen2_sliding(max_window_layers)
    ref.config._attn_implementation = mode
    model = from_pretrained_no_processing("random-qwen2-sliding", hf_model=ref, attn_implementation=mode)
    expected = ["global" if i < max_window_layers else "local" for i in range(3)]
    assert [model.cfg.attn_type(i) for i in range(3)] == expected
    tokens = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))  # 12 > the window
    with torch.no_grad():
        assert torch.equal(model(tokens), ref(tokens).logits)
        mask = torch.ones_like(tokens)
        mask[0, :3] = 0  # left padding on one row
        from _models import hf_positions

        ours = model(tokens, attention_mask=mask)
        theirs = ref(tokens, attention_mask=mask, position_ids=hf_positions(mask)).logits
        assert torch.equal(ours[mask.bool()], theirs[mask.bool()])
    prompt = tokens[:1, :6]
    ours = model.generate(prompt, max_new_tokens=10, do_sample=False, stop_at_eos=False)
    theirs = ref.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10, min_new_tokens=10, do_sample=False)
    assert ours.tolist() == theirs.tolist()


@pytest.mark.parametrize("name", ["tiny-gemma2", "tiny-gemma3", "tiny-olmo2"])
def test_bfloat16_logits_bit_exact_with_huggingface_where_norms_and_rotary_round_in_float32(name):
    # Gemma's norms multiply by (1 + w) in float32, OLMo 2's by w in float32 and its rotary angles stay
    # float32 (norm_weight_offset, norm_upcast_weight, rotary_upcast): each would round otherwise in bfloat16.
    from lensutil.loading.hf_source import load_hf

    model = lens(name, torch.bfloat16, "eager")
    ref = load_hf(name, dtype=torch.bfloat16, attn_implementation="eager")[0]
    tokens = model.to_tokens(PROMPTS[0])
    with torch.no_grad():
        assert torch.equal(model(tokens), ref(tokens).logits)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["eager", "sdpa"])
def test_real_gemma3_270m_matches_huggingface_and_generates_its_tokens(mode):
    # The real Gemma 3 270M (de-quantised from Q4_K_M: lensutil/loading/zoo_gemma3.py): 18 layers, sliding
    # windows on 15 of them, q/k norms, two rotary bases, tied 262k-token unembedding.
    model, ref = lens("gemma3-270m", attn_implementation=mode), hf("gemma3-270m", mode)
    for prompt in PROMPTS:
        tokens = model.to_tokens(prompt)
        with torch.no_grad():
            assert torch.equal(model(tokens), ref(tokens).logits), f"{mode} {prompt!r}"
    tokens = model.to_tokens(PROMPTS[0])
    ours = model.generate(tokens, max_new_tokens=12, do_sample=False, stop_at_eos=False)
    theirs = ref.generate(tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert ours.tolist() == theirs.tolist() and "Paris" in model.to_string(ours[0, tokens.shape[1]:])
