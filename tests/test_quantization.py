"""8-bit and 4-bit models (bitsandbytes, CPU): against HuggingFace's own quantised models, and the errors."""

import functools
import logging
import sys

import pytest
import torch

from _models import TINY, hf, lens

from lensutil import HookedEncoder, HookedTransformer
from lensutil.errors import LensError
from lensutil.loading.pretrained import from_pretrained_no_processing
from lensutil.loading.hf_source import load_hf
from lensutil.loading.quantization import config_for_mode, make_bnb_linear, quantize_, weight_memory
from lensutil.model.linear import _cpu_packable

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "inputs will be cast to float16", once per 8-bit matmul

MODES = ["8-bit", "4-bit nf4", "4-bit fp4"]
PROMPTS = ["The Eiffel Tower is in the city of", "def fibonacci(n):\n    return", "1, 2, 3, 5, 8, 13,"]
# transformers 5 does not quantise a Mixtral's or a Qwen MoE's fused experts; like for like, lensutil skips them
# too. A Qwen2-MoE's shared expert is quantised on both sides; its one-row gate never is in lensutil (moe.py).
SKIPS = {name: {"llm_int8_skip_modules": ["lm_head", "experts"]} for name in ("tiny-mixtral", "tiny-qwen3-moe")}
SKIPS["tiny-qwen2-moe"] = {"llm_int8_skip_modules": ["lm_head", "experts", "shared_expert_gate"]}


def _config(name, mode, like_hf=True):
    return config_for_mode(mode, **(SKIPS.get(name, {}) if like_hf else {}))


def lens_q(name, mode, like_hf=True):
    return _lens_q(name, mode, like_hf or name not in SKIPS)  # one cached model where both configs are the same


@functools.lru_cache(maxsize=None)
def _lens_q(name, mode, like_hf):
    return from_pretrained_no_processing(name, quantization_config=_config(name, mode, like_hf), attn_implementation="eager")


@functools.lru_cache(maxsize=None)
def hf_q(name, mode):
    model = load_hf(name, quantization_config=_config(name, mode))[0]
    # HF's 4-bit linears get the guard lensutil's QuantizedLinear applies (a weight bitsandbytes cannot repack
    # for its AVX512-BF16 CPU kernel keeps the plain CPU path), or tiny-qwen2-moe's 96-wide shared expert
    # dies in bitsandbytes on such CPUs: like for like, the same kernels on both sides.
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False) and not _cpu_packable(module):
            module.support_avx512bf16_for_cpu = False
    return model


def _tokens(name):
    return [lens(name).to_tokens(p) for p in PROMPTS]


def _run(model, tokens, hf_side=False):
    with torch.no_grad():
        return torch.cat([(model(input_ids=t).logits if hf_side else model(t))[0] for t in tokens])


# Logits on PROMPTS, computed once per model and shared by the tests that compare them (read-only).
@functools.lru_cache(maxsize=None)
def logits_q(name, mode):
    return _run(lens_q(name, mode), _tokens(name))


@functools.lru_cache(maxsize=None)
def logits_hf_q(name, mode):
    return _run(hf_q(name, mode), _tokens(name), hf_side=True)


@functools.lru_cache(maxsize=None)
def logits_32(name, hf_side=False):
    return _run(hf(name) if hf_side else lens(name), _tokens(name), hf_side=hf_side)


@functools.lru_cache(maxsize=None)
def hook_names_32(name):
    return frozenset(lens(name).run_with_cache(lens(name).to_tokens(PROMPTS[0]))[1].keys())


def _top1(a, b):
    return (a.argmax(-1) == b.argmax(-1)).float().mean().item()


# ---- against HuggingFace's quantised model ------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", TINY)
def test_logits_match_huggingface_quantised_model(name, mode):
    ours, theirs = logits_q(name, mode), logits_hf_q(name, mode)
    diff = (ours - theirs).abs().max().item()
    # Same bytes, same bitsandbytes kernels, same process: the same logits.
    assert diff == 0, f"{name} {mode}: max |Δ logit| vs HF's quantised model {diff:.2e}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", TINY)
def test_top1_agreement_with_float32_is_huggingfaces(name, mode):
    ours = _top1(logits_q(name, mode), logits_32(name))
    theirs = _top1(logits_hf_q(name, mode), logits_32(name, hf_side=True))
    assert abs(ours - theirs) <= 0.02, f"{name} {mode}: top-1 vs float32 {ours:.2f}, HF's {theirs:.2f}"
    assert ours < 1.0 or mode == "8-bit"  # 4-bit really rounds: the model is not secretly float32


@pytest.mark.parametrize("mode", ["8-bit", "4-bit nf4"])
def test_greedy_generation_matches_huggingface_quantised(mode):
    model, ref = lens_q("tiny-llama", mode), hf_q("tiny-llama", mode)
    tokens = model.to_tokens(PROMPTS[0])
    ours = model.generate(tokens, max_new_tokens=12, do_sample=False, stop_at_eos=False)
    theirs = ref.generate(tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert ours.tolist() == theirs.tolist()
    text = model.generate(PROMPTS[0], max_new_tokens=5, do_sample=False)
    assert isinstance(text, str) and text.startswith(PROMPTS[0]) and len(text) > len(PROMPTS[0])


def test_padded_batch_matches_huggingface_quantised():
    model, ref = lens_q("tiny-llama", "4-bit nf4"), hf_q("tiny-llama", "4-bit nf4")
    tokens = model.to_tokens(PROMPTS, padding_side="left")
    mask = model.generate_attention_mask(tokens, padding_side="left")
    assert not mask.all()
    with torch.no_grad():
        ours = model(tokens, attention_mask=mask)
        theirs = ref(tokens, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    assert torch.equal(ours[mask.bool()], theirs[mask.bool()])


# ---- hooks, cache, generation on every architecture and mode ------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", TINY)
def test_hooks_fire_and_edit_and_generation_runs(name, mode):
    model = lens_q(name, mode, like_hf=False)  # every linear quantised (a Mixtral's experts too)
    assert model.quantization_config.load_in_8bit == (mode == "8-bit")
    tokens = model.to_tokens(PROMPTS[0])
    with torch.no_grad():
        plain = model(tokens)
        logits, cache = model.run_with_cache(tokens)
        fired = []
        edited = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_mlp_out", lambda x, hook: fired.append(hook.name) or x * 0)])
    assert set(cache.keys()) == hook_names_32(name)  # the same hook names as float32
    assert torch.allclose(logits, plain, atol=1e-3)  # cached runs attention written out (eager) in each layer
    assert fired == ["blocks.0.hook_mlp_out"] and not torch.allclose(edited, plain)
    text = model.generate(PROMPTS[0], max_new_tokens=4, do_sample=False)
    assert isinstance(text, str) and text.startswith(PROMPTS[0])


@pytest.mark.parametrize("mode", MODES)
def test_load_in_8bit_and_load_in_4bit_keywords_quantise_like_the_config(mode):
    kwargs = {"load_in_8bit": True} if mode == "8-bit" else {"load_in_4bit": True, "bnb_4bit_quant_type": mode.split()[-1]}
    model = from_pretrained_no_processing("tiny-llama", attn_implementation="eager", **kwargs)
    assert model.quantization_config.load_in_8bit == (mode == "8-bit")
    assert torch.equal(_run(model, _tokens("tiny-llama")), logits_q("tiny-llama", mode))  # the config's model, bit for bit


@pytest.mark.parametrize("mode", ["8-bit", "4-bit nf4"])
# GPT-2: W_Q, W_K, W_V rows of one quantised c_attn; Phi-3: of one qkv_proj (grouped-query), W_gate and W_in of one gate_up_proj
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-phi3"])
def test_split_qkv_input_and_attn_result_keep_the_quantised_maths(name, mode):
    model = from_pretrained_no_processing(name, quantization_config=config_for_mode(mode), attn_implementation="eager")
    assert model.blocks[0].attn.quantized_linear("W_Q") is not None
    if name == "tiny-phi3":  # one quantised matrix each, as HF's; each part reads back its own rows, in TL's shape
        attn, mlp, cfg = model.blocks[0].attn, model.blocks[0].mlp, model.cfg
        assert set(attn.quantized) == {"W_QKV", "W_O"} and set(mlp.quantized) == {"W_GATE_UP", "W_out"}
        assert attn._W_K.shape == (cfg.n_kv_heads, cfg.d_model, cfg.d_head) and attn.W_K.shape == attn.W_Q.shape
        assert mlp.W_gate.shape == mlp.W_in.shape == (cfg.d_model, cfg.d_mlp)
        whole = mlp.quantized["W_GATE_UP"].dequantize()
        assert torch.equal(mlp.W_in, whole[cfg.d_mlp:].T) and torch.equal(mlp.W_gate, whole[:cfg.d_mlp].T)
    tokens = model.to_tokens(PROMPTS[0])
    with torch.no_grad():
        plain, cache = model.run_with_cache(tokens, names_filter="blocks.0.hook_attn_out")
        model.set_use_split_qkv_input(True)
        split = model(tokens)  # each head's copy of the input through the quantised projections: the same rows
        model.set_use_split_qkv_input(False)
        model.set_use_attn_result(True)
        _, per_head = model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_result")
        model.set_use_attn_result(False)
    assert torch.allclose(split, plain, atol=1e-4)
    result = per_head["blocks.0.attn.hook_result"]
    assert result.shape[2] == model.cfg.n_heads
    attn_out = cache["blocks.0.hook_attn_out"]
    # Heads' results sum to attn_out up to the kernel's activation rounding: bfloat16 (4-bit CPU
    # kernel, 2^-8 relative) or LLM.int8()'s per-row int8 scale (8-bit, 1/127 of the row's max).
    bound = attn_out.abs().max().item() * (2 ** -7 if mode != "8-bit" else 2 / 127)
    assert (result.sum(2) + model.blocks[0].attn.b_O - attn_out).abs().max().item() <= bound


# ---- what is quantised, memory, weight attributes -----------------------------------------------


def test_four_bit_linear_weights_take_at_most_035_of_float32():
    mem = weight_memory(lens_q("tiny-llama", "4-bit nf4"))
    cfg = lens("tiny-llama").cfg  # every attention and MLP matrix is counted: q, k, v, o, gate, up, down
    d, f, kv = cfg.d_model, cfg.d_mlp, cfg.n_kv_heads * cfg.d_head
    assert mem["linear_float32"] == 4 * cfg.n_layers * (2 * d * d + 2 * d * kv + 3 * d * f)
    assert 0 < mem["linear"] <= 0.35 * mem["linear_float32"]
    assert weight_memory(lens_q("tiny-llama", "8-bit"))["linear"] <= 0.30 * mem["linear_float32"]


def test_embeddings_norms_unembed_and_router_stay_full_precision_experts_quantised():
    model = lens_q("tiny-mixtral", "4-bit nf4", like_hf=False)
    params = dict(model.named_parameters())
    for kept in ["embed.W_E", "unembed.W_U", "blocks.0.ln1.w", "blocks.0.mlp.W_gate", "blocks.0.attn.b_Q"]:
        assert params[kept].dtype == torch.float32, kept
    assert "blocks.0.attn.W_Q" not in params and "blocks.0.mlp.experts.0.W_in" not in params
    expert = model.blocks[0].mlp.experts[0]  # gate and up one matrix, as HF's experts.gate_up_proj[e]
    assert set(expert.quantized) == {"W_GATE_UP", "W_out"} and expert.W_gate.shape == expert.W_in.shape
    assert set(lens_q("tiny-mixtral", "4-bit nf4").blocks[0].mlp.experts[0]._parameters) == {"W_gate", "W_in", "W_out"}


def test_weight_attributes_are_dequantised_read_only_copies():
    model, ref = lens_q("tiny-llama", "4-bit nf4"), hf_q("tiny-llama", "4-bit nf4")
    import bitsandbytes.functional as bf

    q = ref.model.layers[0].self_attn.q_proj.weight
    expected = bf.dequantize_4bit(q.data, q.quant_state) if not getattr(q.quant_state, "packing_format_for_cpu", False) else None
    W_Q = model.blocks[0].attn.W_Q
    assert W_Q.shape == lens("tiny-llama").blocks[0].attn.W_Q.shape and model.W_Q.shape == lens("tiny-llama").W_Q.shape
    dequantised = model.blocks[0].attn.quantized["W_Q"].dequantize()
    assert torch.equal(W_Q.transpose(1, 2).reshape(dequantised.shape), dequantised)
    if expected is not None:
        assert torch.equal(dequantised, expected)
    assert not torch.equal(W_Q, lens("tiny-llama").blocks[0].attn.W_Q) and torch.allclose(W_Q, lens("tiny-llama").blocks[0].attn.W_Q, atol=0.1)
    assert model.blocks[0].attn.W_K.shape[0] == model.cfg.n_heads  # grouped-query: repeated per query head
    with pytest.raises(RuntimeError, match="[Ii]nference tensor"):
        model.blocks[0].attn.W_Q[0] = 0


def test_weights_are_processed_in_float32_then_quantised():
    config = config_for_mode("4-bit nf4")
    model = HookedTransformer.from_pretrained("tiny-llama", quantization_config=config)  # fold_ln etc. on
    folded = HookedTransformer.from_pretrained("tiny-llama", device="cpu")
    assert model.cfg.normalization_type == "RMSPre" and model.cfg.folded_ln
    w = folded.blocks[1].mlp.W_in.detach().T
    expected = make_bnb_linear(w, config).weight
    got = model.blocks[1].mlp.quantized["W_in"].linear.weight
    got_unpacked = model.blocks[1].mlp.quantized["W_in"].dequantize()
    import bitsandbytes.functional as bf

    assert torch.equal(got_unpacked, bf.dequantize_4bit(expected.data, expected.quant_state))
    assert got.quant_state.shape == expected.quant_state.shape


def test_an_hf_model_quantised_by_huggingface_loads_without_processing():
    for mode in ["8-bit", "4-bit nf4"]:
        ref = hf_q("tiny-llama", mode)
        model = from_pretrained_no_processing("tiny-llama", hf_model=ref, attn_implementation="eager")
        tokens = _tokens("tiny-llama")
        assert model.quantization_config.load_in_8bit == (mode == "8-bit")
        assert torch.equal(_run(model, tokens), _run(ref, tokens, hf_side=True)), mode


@pytest.mark.parametrize("mode", ["8-bit", "4-bit nf4"])
def test_an_hf_mixtral_quantised_by_huggingface_keeps_its_full_precision_experts(mode):
    ref = load_hf("tiny-mixtral", quantization_config=config_for_mode(mode))[0]  # HF's default: fused experts not quantised
    model = from_pretrained_no_processing("tiny-mixtral", hf_model=ref, attn_implementation="eager")
    assert "quantized" not in model.blocks[0].mlp.experts[0]._modules and "W_Q" in model.blocks[0].attn.quantized
    tokens = _tokens("tiny-mixtral")
    assert torch.equal(_run(model, tokens), _run(ref, tokens, hf_side=True))


# ---- encoders ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_bert_quantised_matches_huggingface_quantised(mode):
    import transformers

    from lensutil.loading.zoo import resolve

    model = HookedEncoder.from_pretrained("tiny-bert", quantization_config=config_for_mode(mode))
    ref = transformers.AutoModelForMaskedLM.from_pretrained(str(resolve("tiny-bert")), quantization_config=config_for_mode(mode),
                                                            attn_implementation="eager").eval()
    assert set(model.mlm_head.quantized) == {"W"} and set(model.blocks[0].attn.quantized) == {"W_Q", "W_K", "W_V", "W_O"}
    ids, types, mask = model.to_tokens("The capital of France is [MASK].")
    with torch.no_grad():
        diff = (model(ids, token_type_ids=types, one_zero_attention_mask=mask) - ref(input_ids=ids, token_type_ids=types,
                                                                                    attention_mask=mask).logits).abs().max().item()
    assert diff == 0, f"tiny-bert {mode}: {diff:.2e}"


def test_double_quantised_hf_bert_loads_as_it_is():
    import transformers

    from lensutil.loading.zoo import resolve

    config = config_for_mode("4-bit nf4", bnb_4bit_use_double_quant=True)
    ref = transformers.AutoModelForMaskedLM.from_pretrained(str(resolve("tiny-bert")), quantization_config=config,
                                                            attn_implementation="eager").eval()
    model = HookedEncoder.from_pretrained("tiny-bert", hf_model=ref, tokenizer=HookedEncoder.from_pretrained("tiny-bert").tokenizer)
    ids, types, mask = model.to_tokens("The capital of France is [MASK].")
    with torch.no_grad():
        assert torch.equal(model(ids, token_type_ids=types, one_zero_attention_mask=mask),
                           ref(input_ids=ids, token_type_ids=types, attention_mask=mask).logits)


# ---- errors ------------------------------------------------------------------------------------


def test_missing_bitsandbytes_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(LensError, match=r'pip install "bitsandbytes>=0.48"'):
        from_pretrained_no_processing("tiny-llama", load_in_8bit=True)


def test_both_four_and_eight_bit_is_refused():
    with pytest.raises(LensError, match="load_in_8bit=True and load_in_4bit=True"):
        HookedTransformer.from_pretrained("tiny-llama", load_in_8bit=True, load_in_4bit=True)
    with pytest.raises(LensError, match="only apply to 4-bit"):
        HookedTransformer.from_pretrained("tiny-llama", bnb_4bit_quant_type="nf4")
    with pytest.raises(LensError, match="not both"):
        HookedTransformer.from_pretrained("tiny-llama", load_in_4bit=True, quantization_config=config_for_mode("8-bit"))


def test_a_mode_this_build_cannot_run_names_the_ones_that_can(monkeypatch):
    from lensutil.loading import quantization as qz

    monkeypatch.setattr(qz, "probe_mode", lambda mode, device: "RuntimeError: no kernel" if mode == "4-bit fp4" else None)
    with pytest.raises(LensError, match=r"4-bit fp4 does not run on cpu.*What runs here: 8-bit, 4-bit nf4"):
        from_pretrained_no_processing("tiny-llama", load_in_4bit=True)  # HF's default 4-bit type is fp4


def test_quantising_twice_and_processing_a_quantised_model_are_refused():
    model = from_pretrained_no_processing("tiny-llama", load_in_8bit=True)
    with pytest.raises(LensError, match="already quantised"):
        quantize_(model, config_for_mode("4-bit nf4"))
    from lensutil.model.processing import process_weights_

    with pytest.raises(LensError, match="needs full-precision weights"):
        process_weights_(model)


def test_fold_ln_on_an_hf_model_quantised_by_huggingface_is_refused():
    with pytest.raises(LensError, match="fold_ln.*already quantised.*full-precision"):
        HookedTransformer.from_pretrained("tiny-llama", hf_model=hf_q("tiny-llama", "4-bit nf4"))
    with pytest.raises(LensError, match="already quantised"):
        from_pretrained_no_processing("tiny-llama", hf_model=hf_q("tiny-llama", "8-bit"), load_in_4bit=True)


# ---- the support table -------------------------------------------------------------------------


def test_support_table_is_measured_and_printable(monkeypatch):
    from lensutil import quantization_support

    table = quantization_support(models=("tiny-llama",), modes=("none", "4-bit nf4"))
    assert [r.mode for r in table.rows] == ["none (float32)", "4-bit nf4"]
    row = table.rows[1]
    assert row.works and row.linear_memory <= 0.35 and 0 < row.top1 < 1 and row.vs_hf == 0
    assert row.hf_top1 == row.top1 and row.max_dlogit > 0
    assert "4-bit nf4" in str(table) and table.to_markdown().startswith("| architecture | mode |")
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(LensError, match="pip install pandas"):
        table.to_dataframe()


# ---- flags never change outputs (issue 24, item 1.6) -------------------------------------------


@pytest.mark.parametrize("mode", [None, "8-bit", "4-bit nf4"])
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_hook_flags_never_change_the_output(name, mode):
    model = lens(name) if mode is None else lens_q(name, mode)
    tokens = model.to_tokens(PROMPTS[0])
    with torch.no_grad():
        plain = model(tokens)
        for flag in ["set_use_attn_result", "set_use_split_qkv_input", "set_use_hook_mlp_in"]:
            getattr(model, flag)(True)
            try:
                flagged, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_result"))
                cached = cache if flag == "set_use_attn_result" else cached
                assert torch.equal(model(tokens), plain) and torch.equal(flagged, plain), flag
            finally:
                getattr(model, flag)(False)
        # an edit of a head's result still reaches the output, as zeroing that head's z does
        model.set_use_attn_result(True)
        try:
            no_head_0 = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_result", lambda r, hook: r.index_fill(2, torch.tensor([0]), 0))])
        finally:
            model.set_use_attn_result(False)
        no_z_0 = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", lambda z, hook: z.index_fill(2, torch.tensor([0]), 0))])
    assert "blocks.0.attn.hook_result" in cached and not torch.allclose(no_head_0, plain)
    assert torch.allclose(no_head_0, no_z_0, atol=1e-4 if mode is None else 0.1)


# ---- weight memory counts what is held (issue 24, item 1.7) -------------------------------------


def _shares_storage(a, b):
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def test_weight_memory_counts_each_storage_once():
    import copy

    model = lens("tiny-gpt2")  # tied: HF holds wte once, as lm_head too
    W_U, b_U = model.unembed.W_U, model.unembed.b_U
    apart = 0 if _shares_storage(W_U, model.embed.W_E) else W_U.nbytes
    mem = weight_memory(model)
    assert mem["unembed_apart"] == apart and weight_memory(hf("tiny-gpt2"))["unembed_apart"] == 0
    assert mem["total"] == weight_memory(hf("tiny-gpt2"))["total"] + apart + b_U.nbytes  # b_U: zeros HF does not hold
    assert weight_memory(lens("tiny-llama"))["unembed_apart"] == 0  # untied: HF holds lm_head apart too
    shared, separate = copy.deepcopy(model), copy.deepcopy(model)
    shared.unembed.W_U = torch.nn.Parameter(shared.embed.W_E.detach().T)  # one storage, two parameters
    separate.unembed.W_U = torch.nn.Parameter(separate.embed.W_E.detach().T.clone())
    assert weight_memory(separate)["total"] - weight_memory(shared)["total"] == W_U.nbytes
    assert weight_memory(separate)["unembed_apart"] == W_U.nbytes and weight_memory(shared)["unembed_apart"] == 0


# ---- llm_int8_skip_modules with HuggingFace's module names (issue 24, item 1.6) -----------------


@pytest.mark.parametrize("name, mode, skip, kept", [
    ("tiny-llama", "8-bit", ["lm_head", "down_proj"], ["blocks.{i}.mlp.W_out"]),
    ("tiny-llama", "4-bit nf4", ["lm_head", "model.layers.0.self_attn"], ["blocks.0.attn.W_Q", "blocks.0.attn.W_O"]),
    ("tiny-gpt2", "4-bit nf4", ["lm_head", "c_attn"], ["blocks.{i}.attn.W_Q", "blocks.{i}.attn.W_K", "blocks.{i}.attn.W_V"]),
    ("tiny-gpt2", "8-bit", ["lm_head", "mlp.c_proj"], ["blocks.{i}.mlp.W_out"]),
])
def test_skip_modules_named_as_in_huggingface_keep_the_same_weights_full_precision(name, mode, skip, kept):
    config = config_for_mode(mode, llm_int8_skip_modules=skip)
    model = from_pretrained_no_processing(name, quantization_config=config, attn_implementation="eager")
    params = dict(model.named_parameters())
    for k in kept:
        for i in range(model.cfg.n_layers) if "{i}" in k else [None]:
            assert k.format(i=i) in params, k.format(i=i)
    assert "blocks.1.attn.W_O" not in params  # the rest is quantised
    tokens = _tokens(name)
    assert torch.equal(_run(model, tokens), _run(load_hf(name, quantization_config=config)[0], tokens, hf_side=True))


def test_skip_modules_that_name_nothing_or_drop_lm_head_are_refused():
    with pytest.raises(LensError, match=r"'down_prj'.*down_proj"):
        from_pretrained_no_processing("tiny-llama", quantization_config=config_for_mode("8-bit", llm_int8_skip_modules=["lm_head", "down_prj"]))
    with pytest.raises(LensError, match=r"lm_head"):  # HF would quantise lm_head (a list replaces its default); lensutil does not
        from_pretrained_no_processing("tiny-llama", quantization_config=config_for_mode("8-bit", llm_int8_skip_modules=["down_proj"]))


# ---- 4-bit double quantisation (issue 24, item 1.6) ---------------------------------------------
# Double quantisation quantises each matrix's block scales again, in blocks of 256 around their mean
# over the whole matrix: GPT-2's fused c_attn is one matrix (W_Q, W_K, W_V quantised apart held other
# bytes); and re-quantising HF's dequantised weights (hf_model=) does not give its codes back once the
# scales are rounded, so HF's quantised modules are copied as they are.
DOUBLE = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)


def test_double_quantised_gpt2_matches_huggingface():
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(**DOUBLE)
    model = from_pretrained_no_processing("tiny-gpt2", quantization_config=config, attn_implementation="eager")
    attn, float_attn = model.blocks[0].attn, lens("tiny-gpt2").blocks[0].attn
    assert set(attn.quantized) == {"W_QKV", "W_O"} and attn._qkv_storage is None  # c_attn as one matrix; no float copy kept
    for name in ["W_Q", "W_K", "W_V"]:  # each read as its rows of it
        assert getattr(attn, name).shape == getattr(float_attn, name).shape
        assert torch.allclose(getattr(attn, name), getattr(float_attn, name), atol=0.1)
    tokens = _tokens("tiny-gpt2")
    assert torch.equal(_run(model, tokens), _run(load_hf("tiny-gpt2", quantization_config=config)[0], tokens, hf_side=True))


@pytest.mark.parametrize("name, ran_first", [("tiny-llama", False), ("tiny-llama", True), ("tiny-gpt2", False)])
def test_double_quantised_hf_model_loads_as_it_is(name, ran_first):
    from transformers import BitsAndBytesConfig

    ref, tokenizer = load_hf(name, quantization_config=BitsAndBytesConfig(**DOUBLE))
    tokens = _tokens(name)
    expected = _run(ref, tokens, hf_side=True)  # ran_first: its weights are repacked for the CPU kernel when copied
    if not ran_first:
        ref, tokenizer = load_hf(name, quantization_config=BitsAndBytesConfig(**DOUBLE))
    model = from_pretrained_no_processing(name, hf_model=ref, tokenizer=tokenizer, attn_implementation="eager")
    assert torch.equal(_run(model, tokens), expected)
    assert torch.equal(_run(ref, tokens, hf_side=True), expected)  # the HF model is left as it was


def test_support_table_markdown_escapes_pipes_in_the_header_as_in_the_body():
    """`max|Δ|` in the header once split it into extra columns: a wall of pipes in JupyterLab and the book."""
    import re

    from lensutil.checks.quantization_support import SupportRow, SupportTable

    table = SupportTable([SupportRow("tiny-llama", "LlamaForCausalLM", "4-bit nf4", True, max_dlogit=0.5, top1=1.0)], "cpu")
    lines = table.to_markdown().splitlines()[:3]
    columns = [len(re.split(r"(?<!\\)\|", line)) for line in lines]  # cells between unescaped pipes
    assert len(set(columns)) == 1, lines


def test_a_4bit_matrix_bitsandbytes_cannot_pack_for_its_cpu_kernel_still_runs_under_no_grad():
    # bitsandbytes 0.50 repacks each 4-bit weight for its AVX512-BF16 CPU kernel on the first no-grad
    # call, which needs in_features a multiple of the quantisation block (64): tiny-qwen2-moe's shared
    # expert is 96 wide, and its W_out died in a reshape there (HuggingFace's own quantised model too).
    model = _lens_q.__wrapped__("tiny-qwen2-moe", "4-bit nf4", True)  # a fresh one: no earlier call has repacked it
    w_out = model.blocks[0].mlp.shared_expert.quantized["W_out"].linear
    assert w_out.in_features % w_out.weight.blocksize != 0  # the case itself, else this proves nothing
    tokens = model.to_tokens("The Eiffel Tower is in the city of")
    with torch.enable_grad():
        unpacked = model(tokens)  # no repacking with grad on: bitsandbytes' plain CPU path everywhere
    with torch.no_grad():
        logits = model(tokens)
    assert torch.equal(logits.argmax(-1), unpacked.argmax(-1)) and (logits - unpacked).abs().max() < 0.1
