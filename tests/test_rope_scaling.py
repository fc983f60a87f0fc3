"""RoPE scaling bit for bit as HuggingFace computes it (issue 26): llama3, linear, dynamic, yarn, longrope.

tiny-llama3 and tiny-phi3 (longrope) run the whole equivalence suite (test_equivalence.py); the
other kinds are config variants of a small random Llama here, since dynamic NTK depends on the
sequence lengths a model has seen and so on the order of the calls made to it.
"""

import pytest
import torch

from lensutil.loading.pretrained import from_pretrained_no_processing
from lensutil.model.rotary_scaling import RopeState, inv_freq_and_factor

ORIGINAL = 16  # original_max_position_embeddings: sequences of 40 tokens pass it
VARIANTS = {
    "linear": dict(rope_type="linear", factor=4.0),
    "dynamic": dict(rope_type="dynamic", factor=2.0),
    "yarn": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=ORIGINAL),
    "yarn-mscale": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=ORIGINAL, mscale=0.8,
                        mscale_all_dim=0.5, beta_fast=16, beta_slow=2, truncate=False),
    "llama3": dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=ORIGINAL),
}


def _hf_llama(scaling: dict, max_pos: int = 32, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=max_pos,
                         rope_parameters={"rope_theta": 10000.0, **scaling}, attn_implementation="eager",
                         architectures=["LlamaForCausalLM"], initializer_range=0.08)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config).eval()


def _pair(scaling, mode="eager", max_pos=32):
    ref = _hf_llama(scaling, max_pos)
    ref.config._attn_implementation = mode
    model = from_pretrained_no_processing(f"llama-{scaling['rope_type']}", hf_model=ref, attn_implementation=mode, n_ctx=128)
    return model, ref


@pytest.mark.parametrize("kind", VARIANTS)
def test_inverse_frequencies_and_factor_are_huggingfaces_bit_for_bit(kind):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    model, ref = _pair(VARIANTS[kind])
    ours, factor = inv_freq_and_factor(model.cfg)
    theirs, their_factor = ROPE_INIT_FUNCTIONS[ref.config.rope_parameters["rope_type"]](ref.config)
    assert torch.equal(ours, theirs) and factor == their_factor
    if kind == "dynamic":  # grown for a sequence of 40: recomputed in float32, as HF's forward does
        seq_len = torch.tensor(40)
        ours = inv_freq_and_factor(model.cfg, seq_len=seq_len)[0]
        assert torch.equal(ours, ROPE_INIT_FUNCTIONS["dynamic"](ref.config, seq_len=seq_len)[0])
    default = inv_freq_and_factor(from_pretrained_no_processing("llama", hf_model=_hf_llama({"rope_type": "default"})).cfg)[0]
    assert not torch.equal(ours, default)  # the scaling changes the angles, so a model that ignored it would differ


@pytest.mark.parametrize("mode", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", VARIANTS)
def test_logits_bit_exact_with_huggingface(kind, mode):
    model, ref = _pair(VARIANTS[kind], mode)
    tokens = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # past max_position_embeddings (32); shorter but still past it (dynamic keeps the inv_freq grown for 40,
        # as HF keeps it); back under it (the original again)
        for length in (40, 36, 8, 24):
            assert torch.equal(model(tokens[:, :length]), ref(tokens[:, :length]).logits), f"{kind} {mode} at {length}"


def test_dynamic_ntk_generation_with_the_kv_cache_matches_huggingface():
    # Generation past max_position_embeddings (32): each step's longer sequence regrows inv_freq, while
    # the keys already cached keep the rotation they were given, in HF as in lensutil.
    model, ref = _pair(VARIANTS["dynamic"])
    tokens = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(2))
    ours = model.generate(tokens, max_new_tokens=25, do_sample=False, stop_at_eos=False)
    theirs = ref.generate(tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=25, min_new_tokens=25,
                          do_sample=False, pad_token_id=0)
    assert ours.tolist() == theirs.tolist()
    # and the state after it is HF's: the same next logits for a fresh forward of the whole sequence
    with torch.no_grad():
        assert torch.equal(model(ours), ref(ours).logits)


def test_dynamic_state_is_per_model_and_restarts_when_the_config_changes():
    model, _ = _pair(VARIANTS["dynamic"])
    state = RopeState()
    positions = torch.arange(40)[None]
    grown, _ = state.frequencies(model.cfg, positions)
    assert state.max_seq_len_cached == 40 and not torch.equal(grown, state.original)
    model.cfg.rope_scaling = {**model.cfg.rope_scaling, "factor": 3.0}
    state.frequencies(model.cfg, positions[:, :8])
    assert state.max_seq_len_cached == 32  # a fresh start for the new config


def _phi3_longrope(mode="eager"):
    from transformers import Phi3Config, Phi3ForCausalLM

    # Phi-3 128k's shape of it: factor from max / original (4), attention factor sqrt(1 + ln 4 / ln 16)
    config = Phi3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=256, max_position_embeddings=4 * ORIGINAL,
                        original_max_position_embeddings=ORIGINAL, initializer_range=0.08, pad_token_id=0,
                        rope_parameters=dict(rope_type="longrope", rope_theta=10000.0, partial_rotary_factor=0.5,
                                             short_factor=[1.0, 1.3, 1.9, 2.6], long_factor=[1.1, 2.2, 4.7, 9.5]),
                        attn_implementation=mode, architectures=["Phi3ForCausalLM"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ref = Phi3ForCausalLM(config).eval()
    return from_pretrained_no_processing("phi3-longrope", hf_model=ref, attn_implementation=mode), ref


@pytest.mark.parametrize("mode", ["eager", "sdpa"])
def test_longrope_switches_to_the_long_factors_past_the_original_length(mode):
    model, ref = _phi3_longrope(mode)
    assert model.cfg.rope_scaling["rope_type"] == "longrope"
    tokens = torch.randint(0, 256, (2, ORIGINAL + 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(model(tokens), ref(tokens).logits)  # the long factors over the whole sequence
        short = model(tokens[:, :ORIGINAL])
        assert torch.equal(short, ref(tokens[:, :ORIGINAL]).logits)
        assert not torch.equal(short, model(tokens)[:, :ORIGINAL])  # the factors differ, so the angles do


def test_longrope_generation_recomputes_the_cache_where_huggingface_does():
    # Crossing original_max_position_embeddings mid-generation, HF's Phi-3 drops its KV cache (whose keys
    # have the short factors) and recomputes it with the long ones; lensutil's generate does the same.
    model, ref = _phi3_longrope()
    tokens = torch.randint(1, 256, (1, 8), generator=torch.Generator().manual_seed(4))
    ours = model.generate(tokens, max_new_tokens=20, do_sample=False, stop_at_eos=False)
    theirs = ref.generate(tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=20, min_new_tokens=20,
                          do_sample=False)
    assert ours.tolist() == theirs.tolist()
    assert ours.tolist() == model.generate(tokens, max_new_tokens=20, do_sample=False, stop_at_eos=False,
                                           use_past_kv_cache=False).tolist()


def _hf_gemma3(full: dict, local_theta: float = 10000.0):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=16, vocab_size=256, max_position_embeddings=64,
                              sliding_window=8, layer_types=["sliding_attention", "full_attention"] * 2,
                              rope_parameters={"full_attention": {"rope_theta": 1e6, **full},
                                               "sliding_attention": {"rope_type": "default", "rope_theta": local_theta}},
                              attn_implementation="eager", architectures=["Gemma3ForCausalLM"], initializer_range=0.08)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Gemma3ForCausalLM(config).eval()


@pytest.mark.parametrize("local_theta", [10000.0, 1e6])  # 1e6: the local layers share the base, yet stay unscaled
def test_gemma3_linear_scaling_of_its_global_layers_is_huggingfaces_bit_for_bit(local_theta):
    # Gemma 3 4B and larger: "linear" factor 8 on the full_attention layers only; the sliding ones keep their own base.
    ref = _hf_gemma3({"rope_type": "linear", "factor": 8.0}, local_theta)
    model = from_pretrained_no_processing("gemma3-linear", hf_model=ref, attn_implementation="eager")
    tokens = torch.randint(1, 256, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(tokens), ref(tokens).logits
    assert (ours - theirs).abs().max().item() == 0
    unscaled = _hf_gemma3({"rope_type": "default"}, local_theta)
    unscaled.load_state_dict(ref.state_dict())
    with torch.no_grad():
        assert not torch.equal(unscaled(tokens).logits, theirs)  # the scaling changes the logits: ignoring it would show


def test_gemma3_scaling_on_its_sliding_layers_or_of_an_unimplemented_kind_is_refused():
    from lensutil.errors import ConfigError

    ref = _hf_gemma3({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 16})
    with pytest.raises(ConfigError, match="full_attention.*'yarn'"):
        from_pretrained_no_processing("gemma3-yarn", hf_model=ref)
    ref.config.rope_parameters["sliding_attention"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}
    ref.config.rope_parameters["full_attention"] = {"rope_type": "default", "rope_theta": 1e6}
    with pytest.raises(ConfigError, match="sliding_attention"):
        from_pretrained_no_processing("gemma3-local-linear", hf_model=ref)
