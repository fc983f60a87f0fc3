"""Models placed over devices and disk with accelerate (lensutil/placement.py): same results, clear refusals."""

import functools
import io
from contextlib import redirect_stdout

import pytest
import torch

from _models import TINY, lens
from lensutil.loading import placement as pl
from lensutil.errors import ConfigError, LensError
from lensutil.loading.pretrained import from_pretrained, from_pretrained_no_processing
from lensutil.loading.hf_source import load_hf
from lensutil.errors import OffloadedWeightError
from lensutil.loading.offloaded_weights import read_weight
from lensutil.model.weight_layout import memory_order

TOKENS = torch.tensor([[1, 5, 7, 9, 200, 300, 11, 12], [1, 40, 41, 42, 43, 44, 45, 46]])


def _param(name):
    return pytest.param(name, marks=pytest.mark.slow) if name == "smollm2-135m" else name


def half_on_disk(model) -> dict:
    """The first half of the blocks (and everything outside them) on the CPU, the second half on disk."""
    n = model.cfg.n_layers
    return {u: ("disk" if u.startswith("blocks.") and int(u.split(".")[1]) >= n // 2 else "cpu") for u in pl.units(model)}


@functools.lru_cache(maxsize=None)
def single(name):
    return from_pretrained(name)


def test_units_name_lensutils_modules():
    model = single("tiny-gpt2")
    assert pl.units(model) == ["embed", "pos_embed", "blocks.0", "blocks.1", "unembed"]  # ln_final folded away


@pytest.mark.parametrize("name", [*TINY, _param("smollm2-135m")])
def test_half_the_blocks_on_disk_gives_the_single_device_logits_cache_and_generation(name, tmp_path):
    ref = single(name)
    device_map = half_on_disk(ref)
    placed = from_pretrained(name, device_map=device_map, offload_folder=str(tmp_path))
    last = placed.blocks[-1]
    assert next(last.parameters()).device.type == "meta"  # really offloaded: loaded for each forward only
    assert next(placed.blocks[0].parameters()).device.type == "cpu"
    assert any(tmp_path.rglob("*.dat"))
    logits, cache = placed.run_with_cache(TOKENS)
    ref_logits, ref_cache = ref.run_with_cache(TOKENS)
    assert torch.equal(logits, ref_logits)
    assert set(cache.keys()) == set(ref_cache.keys())
    assert all(torch.equal(cache[k], ref_cache[k]) for k in ref_cache.keys())
    prompt = TOKENS[:1, :5]
    assert torch.equal(placed.generate(prompt, 6, do_sample=False), ref.generate(prompt, 6, do_sample=False))
    assert torch.equal(placed.generate(prompt, 6, do_sample=False, use_past_kv_cache=False),
                       ref.generate(prompt, 6, do_sample=False))
    assert torch.equal(placed(TOKENS, return_type="loss"), ref(TOKENS, return_type="loss"))


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-qwen2"])
def test_placed_model_equals_huggingface_with_the_same_device_map(name, tmp_path):
    ours = from_pretrained_no_processing(name, attn_implementation="eager", device_map=half_on_disk(lens(name)),
                                         offload_folder=str(tmp_path / "ours"))
    hf_map = pl.hf_device_map(ours.hf_device_map, load_hf(name)[0])
    hf, _ = load_hf(name, device_map=hf_map, offload_folder=str(tmp_path / "hf"))
    assert any(d == "disk" for d in hf.hf_device_map.values())
    with torch.no_grad():
        assert (ours(TOKENS) - hf(TOKENS).logits).abs().max().item() == 0.0


def test_hooks_on_an_offloaded_block_see_and_edit_its_activations(tmp_path):
    ref = single("tiny-llama")
    placed = from_pretrained("tiny-llama", device_map=half_on_disk(ref), offload_folder=str(tmp_path))
    assert next(placed.blocks[1].parameters()).device.type == "meta"  # on disk between forwards
    seen = []

    def ablate(z, hook):
        seen.append(z.device)
        z[:, :, 0] = 0.0
        return z

    hooks = [("blocks.1.attn.hook_z", ablate)]
    assert torch.equal(placed.run_with_hooks(TOKENS, fwd_hooks=hooks), ref.run_with_hooks(TOKENS, fwd_hooks=hooks))
    assert seen[0] == seen[1] == torch.device("cpu")  # the block's execution device
    assert not torch.equal(placed(TOKENS), placed.run_with_hooks(TOKENS, fwd_hooks=hooks))


def test_run_with_cache_gathers_onto_one_device_and_cfg_says_where_blocks_are(tmp_path):
    placed = from_pretrained("tiny-llama", device_map=half_on_disk(single("tiny-llama")), offload_folder=str(tmp_path))
    _, cache = placed.run_with_cache(TOKENS, device="cpu")
    assert {t.device.type for t in cache.values()} == {"cpu"}
    assert placed.cfg.device == "cpu"
    assert pl.block_devices(placed) == ["cpu", "disk"]
    out = io.StringIO()
    with redirect_stdout(out):
        placed.print_hook_list("hook_z")
    lines = out.getvalue().splitlines()
    assert lines[0].split()[-1] == "cpu" and lines[1].split()[-1] == "disk"


def test_auto_device_map_with_small_max_memory_offloads_and_agrees(tmp_path):
    ref = single("tiny-llama")
    sizes = pl.memory_footprint(ref)
    budget = sizes["embed"] + sizes["unembed"] + sizes["blocks.0"] + 1000  # room for less than the whole model
    placed = from_pretrained("tiny-llama", device_map="auto", max_memory={"cpu": budget}, offload_folder=str(tmp_path))
    assert "disk" in placed.hf_device_map.values()
    assert torch.equal(placed(TOKENS), ref(TOKENS))


def test_disk_placement_reads_the_checkpoint_block_by_block_without_loading_the_hf_model(monkeypatch, tmp_path):
    import lensutil.loading.hf_source

    def refuse(*args, **kwargs):
        raise AssertionError("the whole HuggingFace model was loaded into RAM")

    monkeypatch.setattr(lensutil.loading.hf_source, "load_hf", refuse)
    placed = from_pretrained("tiny-gpt2", device_map=half_on_disk(single("tiny-gpt2")), offload_folder=str(tmp_path))
    assert torch.equal(placed(TOKENS), single("tiny-gpt2")(TOKENS))


def test_device_map_auto_on_one_device_is_the_plain_model():
    placed = from_pretrained("tiny-qwen2", device_map="auto")
    assert set(placed.hf_device_map.values()) == {"cuda:0" if torch.cuda.is_available() else "cpu"}
    assert torch.equal(placed(TOKENS), single("tiny-qwen2")(TOKENS.to(placed.cfg.device)).to(placed.cfg.device))


def _cpu_map(model, **changes):
    return {**{u: "cpu" for u in pl.units(model)}, **changes}


@pytest.mark.parametrize("bad, message", [
    (lambda m: {**_cpu_map(m), "embd": "cpu"}, r"'embd', which is not a module.*did you mean 'embed'"),
    (lambda m: {"model.embed_tokens": "cpu", **_cpu_map(m)}, r"not a module.*hf_device_map"),
    (lambda m: _cpu_map(m, **{"blocks.1": "cuda:7"}), r"'cuda:7', which this machine does not have\. It has: .*cpu, disk"),
    (lambda m: {**_cpu_map(m), "blocks.0.attn": "disk"}, r"splits block blocks\.0.*never split"),
    (lambda m: {k: v for k, v in _cpu_map(m).items() if k != "blocks.1"}, r"no device for blocks\.1"),
    (lambda m: "balance", r"not one of accelerate's strategies.*did you mean 'balanced'"),
])
def test_bad_device_maps_are_refused_with_what_to_do(bad, message):
    with pytest.raises(LensError, match=message):
        from_pretrained("tiny-llama", device_map=bad(single("tiny-llama")))


def test_max_memory_too_small_for_any_placement_without_offload_folder_is_refused():
    with pytest.raises(LensError, match=r"on disk, but no offload_folder.*raise max_memory"):
        from_pretrained("tiny-llama", device_map="auto", max_memory={"cpu": "1KB"})
    with pytest.raises(LensError, match=r"max_memory names device 'cuda:5'"):
        from_pretrained("tiny-llama", device_map="auto", max_memory={"cuda:5": "1GB", "cpu": "1GB"})
    with pytest.raises(ConfigError, match="only with a device_map"):
        from_pretrained("tiny-llama", max_memory={"cpu": "1GB"})


def test_n_devices_beyond_the_gpus_present_is_refused_naming_what_exists():
    gpus = torch.cuda.device_count()
    asked = max(gpus + 1, 2)  # n_devices=1 is TransformerLens' default: one device, nothing to split
    with pytest.raises(LensError, match=rf"n_devices={asked} .* this machine has {gpus} \(devices: .*cpu, disk\)"):
        from_pretrained("tiny-llama", n_devices=asked)


def test_n_devices_splits_the_blocks_in_even_contiguous_runs():
    assert pl.even_runs(5, 2) == [0, 0, 0, 1, 1]
    assert pl.even_runs(30, 4) == [0] * 8 + [1] * 8 + [2] * 7 + [3] * 7  # never a fifth device


def test_max_seq_len_keeps_the_first_learned_positions_as_transformerlens():
    short = from_pretrained("tiny-gpt2", max_seq_len=64)
    assert short.cfg.n_ctx == 64 and short.pos_embed.W_pos.shape[0] == 64
    assert torch.equal(short.pos_embed.W_pos, single("tiny-gpt2").pos_embed.W_pos[:64])
    assert torch.equal(short(TOKENS), single("tiny-gpt2")(TOKENS))


def test_max_seq_len_beyond_the_learned_positions_is_refused():
    n_positions = single("tiny-gpt2").cfg.n_ctx
    with pytest.raises(ConfigError, match=rf"exceeds GPT-2's {n_positions} learned positions.*n_ctx <= {n_positions}"):
        from_pretrained("tiny-gpt2", n_ctx=n_positions + 1)


def test_device_with_a_device_map_is_refused():
    with pytest.raises(ConfigError, match="not both"):
        from_pretrained("tiny-llama", device="cpu", device_map="auto")


def test_the_guides_out_of_memory_recipe_works_on_a_zoo_model():
    # from_pretrained("llama-2-13b", dtype=torch.bfloat16, load_in_4bit=True, device_map="auto", max_seq_len=512)
    recipe = dict(dtype=torch.bfloat16, load_in_4bit=True, max_seq_len=512)
    model = from_pretrained("tiny-llama", device_map="auto", **recipe)
    assert model.cfg.n_ctx == 512 and model.cfg.dtype == torch.bfloat16
    assert set(model.hf_device_map.values()) == {model.cfg.device}  # "auto": everything fits on one device here
    assert type(model.blocks[0].attn.quantized["W_Q"]).__name__ == "QuantizedLinear"
    tokens = model.to_tokens("The Eiffel Tower is in")
    assert torch.equal(model(tokens), from_pretrained("tiny-llama", **recipe)(tokens))


def test_a_quantised_model_is_not_offloaded(tmp_path):
    with pytest.raises(LensError, match=r"quantised model cannot be offloaded.*llm_int8_enable_fp32_cpu_offload"):
        from_pretrained("tiny-llama", load_in_4bit=True, device_map={"": "disk"}, offload_folder=str(tmp_path))


def test_an_hf_model_passed_in_is_placed_after_converting_in_ram(tmp_path):
    hf_model, tokenizer = load_hf("tiny-llama", attn_implementation="sdpa")  # the mode of a model loaded by name
    placed = from_pretrained("not-a-name-lensutil-reads", hf_model=hf_model, tokenizer=tokenizer,
                             device_map={"": "disk"}, offload_folder=str(tmp_path))
    assert set(placed.hf_device_map.values()) == {"disk"}
    assert torch.equal(placed(TOKENS), single("tiny-llama")(TOKENS))


# ---- tied embeddings, placed -----------------------------------------------------------------------


def _resident_bytes(model) -> int:
    """Bytes of weight storage in memory, each storage once; meta tensors hold none."""
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters() if not p.is_meta}
    return sum(storages.values())


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-qwen2"])
@pytest.mark.parametrize("path", ["streamed from the checkpoint", "converted in RAM"])
def test_a_placed_tied_model_holds_W_E_and_W_U_apart_as_the_unplaced_one(name, path, tmp_path):
    ref = from_pretrained_no_processing(name)
    hf_model = load_hf(name, attn_implementation="sdpa")[0] if path == "converted in RAM" else None  # as loaded by name
    hf_in = dict(hf_model=hf_model, tokenizer=ref.tokenizer) if hf_model is not None else {}
    placed = from_pretrained_no_processing(name, device_map=half_on_disk(ref), offload_folder=str(tmp_path), **hf_in)
    assert placed.cfg.tie_word_embeddings and torch.equal(placed.W_U, placed.W_E.T)
    assert placed.W_U.untyped_storage().data_ptr() != placed.W_E.untyped_storage().data_ptr()  # two parameters, as TransformerLens
    with torch.no_grad():
        placed.unembed.W_U[:, 5] = 0.0
        assert torch.equal(placed.W_E, ref.W_E)
        placed.unembed.W_U[:, 5] = ref.W_U[:, 5]
    sizes = pl.memory_footprint(ref)
    on_disk = sum(sizes[u] for u, d in placed.hf_device_map.items() if d == "disk")
    # GPT-2's W_Q, W_K, W_V allocated with their fused strides, 3x theirs: the same bytes as unplaced.
    assert _resident_bytes(placed) == _resident_bytes(ref) - on_disk
    assert torch.equal(placed(TOKENS), ref(TOKENS))


def test_a_tied_unembedding_offloaded_apart_from_the_embedding_reads_back_as_W_U(tmp_path):
    ref = from_pretrained_no_processing("tiny-gpt2")
    placed = from_pretrained_no_processing("tiny-gpt2", device_map=_cpu_map(ref, unembed="disk"), offload_folder=str(tmp_path))
    assert placed.embed.W_E.device.type == "cpu" and next(placed.unembed.parameters()).is_meta
    assert torch.equal(read_weight(placed, "unembed.W_U"), ref.W_U)
    assert torch.equal(placed(TOKENS), ref(TOKENS))


# ---- weights of offloaded blocks between forwards ------------------------------------------------


def _offloaded(name, folder):
    return from_pretrained(name, device_map=half_on_disk(single(name)), offload_folder=folder)


@pytest.fixture(scope="module")
def offloaded_llama(tmp_path_factory):
    return _offloaded("tiny-llama", str(tmp_path_factory.mktemp("offloaded")))


@pytest.mark.parametrize("read, name", [
    (lambda m: m.blocks[1].attn.W_Q, "blocks.1.attn.W_Q"),
    (lambda m: m.W_Q, "blocks.1.attn.W_Q"),  # stacks every block's, so meets block 1's
    (lambda m: m.blocks[1].mlp.W_in, "blocks.1.mlp.W_in"),
    (lambda m: m.blocks[1].attn.W_K, "blocks.1.attn._W_K"),  # grouped-query: W_K repeats the stored _W_K
])
def test_reading_an_offloaded_weight_between_forwards_says_why_and_what_to_do(offloaded_llama, read, name):
    escaped = name.replace(".", r"\.")
    with pytest.raises(OffloadedWeightError, match=(
        rf"^{escaped} is not in memory between forwards: the device map offloads blocks\.1 to disk.*"
        rf"read_weight\(model, '{escaped}'\).*inside a hook in blocks\.1.*load without offload"
    )):
        read(offloaded_llama)


def test_weights_in_memory_stay_readable_beside_offloaded_ones(offloaded_llama):
    assert torch.equal(offloaded_llama.blocks[0].attn.W_Q, single("tiny-llama").blocks[0].attn.W_Q)
    assert torch.equal(offloaded_llama.W_E, single("tiny-llama").W_E)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])  # GPT-2: W_Q, W_K, W_V views of one fused storage
def test_read_weight_loads_each_offloaded_weight_as_the_whole_model_holds_it(name, tmp_path):
    placed, ref = _offloaded(name, str(tmp_path)), single(name)
    offloaded = [k for k in ref.state_dict() if pl.device_for(placed.hf_device_map, k) == "disk"]
    assert offloaded
    for key, value in ref.state_dict().items():
        got = read_weight(placed, key)
        assert torch.equal(got, value) and memory_order(got) == memory_order(value), key
    assert all(read_weight(placed, k).device.type == "cpu" for k in offloaded)
    with pytest.raises(LensError, match=r"'blocks\.1\.attn\.W_Qq' is not a weight.*did you mean 'blocks\.1\.attn\.W_Q'"):
        read_weight(placed, "blocks.1.attn.W_Qq")


def test_a_hook_inside_an_offloaded_block_reads_its_loaded_weights(offloaded_llama):
    seen = {}

    def read_weights(resid, hook):
        seen["W_Q"] = offloaded_llama.blocks[1].attn.W_Q.clone()

    offloaded_llama.run_with_hooks(TOKENS, fwd_hooks=[("blocks.1.hook_resid_pre", read_weights)])
    assert torch.equal(seen["W_Q"], single("tiny-llama").blocks[1].attn.W_Q)
    assert next(offloaded_llama.blocks[1].parameters()).is_meta  # and off again after the forward


def test_after_a_forward_no_loaded_weight_of_an_offloaded_block_stays_in_memory(offloaded_llama):
    import gc
    import weakref

    loaded = []

    def remember(resid, hook):  # inside block 1's forward its weights are loaded: note them, weakly
        loaded.extend(weakref.ref(p) for p in offloaded_llama.blocks[1].parameters())

    with torch.no_grad():
        offloaded_llama.run_with_hooks(TOKENS, fwd_hooks=[("blocks.1.hook_resid_pre", remember)])
    assert loaded and all(p.is_meta for p in offloaded_llama.blocks[1].parameters())
    gc.collect()
    assert [r for r in loaded if r() is not None] == [], "a loaded weight of an offloaded block outlived its forward"


def test_head_results_of_an_offloaded_block_read_its_w_o_from_the_offload_folder(offloaded_llama):
    # ActivationCache.stack_head_results multiplies each head's z by W_O, read after the forward.
    _, placed_cache = offloaded_llama.run_with_cache(TOKENS)
    _, cache = single("tiny-llama").run_with_cache(TOKENS)
    assert torch.equal(placed_cache.stack_head_results(layer=2), cache.stack_head_results(layer=2))


def test_moving_an_offloaded_model_is_refused_before_anything_moves_unless_it_changes_nothing(offloaded_llama):
    model = offloaded_llama
    assert model.to(model.cfg.device) is model and model.float() is model  # no-ops, as notebooks write them
    with pytest.raises(OffloadedWeightError, match=r"Cannot move or cast the model: the device map offloads blocks\.1.*dtype=\.\.\."):
        model.to(torch.float64)
    with pytest.raises(OffloadedWeightError, match=r"Cannot move or cast blocks\.1\.attn"):
        model.blocks[1].attn.half()
    assert model.W_E.dtype == model.blocks[0].attn.W_Q.dtype == torch.float32 and model.cfg.dtype == torch.float32
    assert torch.equal(model(TOKENS), single("tiny-llama")(TOKENS))


# ---- hub names, placed: the loopback hub -------------------------------------------------------


@pytest.fixture(scope="module")
def hub_placement(tmp_path_factory):
    """A tiny model published on the loopback hub, placed by its hub name: online, then offline from the cache."""
    from _hub_server import HubServer, Repo
    from test_hub import run_scenarios

    from lensutil.loading import zoo

    tmp = tmp_path_factory.mktemp("hub_placement")
    code = f"""
import lensutil.loading.hf_source
real_load_hf = lensutil.loading.hf_source.load_hf

def placed_equals_zoo(name, folder):
    def refuse(*args, **kwargs):
        raise AssertionError("the whole HuggingFace model was loaded into RAM")
    lensutil.loading.hf_source.load_hf = refuse  # a hub name is placed from the snapshot's safetensors, block by block
    try:
        placed = HookedTransformer.from_pretrained(name, device_map={{"": "cpu", "blocks.1": "disk"}}, offload_folder=folder)
    finally:
        lensutil.loading.hf_source.load_hf = real_load_hf
    tokens = torch.tensor([[1, 5, 7, 9, 200, 300]])
    on_disk = next(placed.blocks[1].parameters()).is_meta
    return on_disk and bool(torch.equal(placed(tokens), HookedTransformer.from_pretrained("tiny-gpt2")(tokens)))

attempt("placed", lambda: placed_equals_zoo("lensutil-tests/tiny-gpt2", {str(tmp / "offload")!r}))
attempt("missing", lambda: HookedTransformer.from_pretrained("lensutil-tests/tiny-gtp2", device_map="auto"))
"""
    offline = f"""
attempt("placed", lambda: bool(torch.equal(
    HookedTransformer.from_pretrained("lensutil-tests/tiny-gpt2", device_map={{"": "disk"}}, offload_folder={str(tmp / "off2")!r})("Hi"),
    HookedTransformer.from_pretrained("tiny-gpt2")("Hi"))))
attempt("not cached", lambda: HookedTransformer.from_pretrained("lensutil-tests/tiny-llama", device_map="auto"))
"""
    with HubServer([Repo.from_dir("lensutil-tests/tiny-gpt2", zoo.resolve("tiny-gpt2"))]) as hub:
        online = run_scenarios(code, tmp, hub.url, tmp / "cache")
        requests = list(hub.requests)
    cached = run_scenarios(offline, tmp, hub.url, tmp / "cache", HF_HUB_OFFLINE="1")
    return {"online": online, "offline": cached, "requests": requests}


def test_a_hub_name_is_placed_from_its_downloaded_safetensors_with_the_zoo_models_logits(hub_placement):
    placed = hub_placement["online"]["placed"]
    assert placed["ok"] and placed["value"] is True, placed
    fetched = [path for method, path, _ in hub_placement["requests"] if method == "GET"]
    assert any(p.startswith("/lensutil-tests/tiny-gpt2/resolve/") and p.endswith("/model.safetensors") for p in fetched), fetched


def test_a_missing_hub_name_on_the_placement_path_gets_the_hubs_advice(hub_placement):
    missing = hub_placement["online"]["missing"]
    assert missing["error"] == "ModelNotFoundError" and missing["lens_error"], missing


def test_offline_a_cached_hub_name_is_placed_and_an_uncached_one_says_what_is_missing(hub_placement):
    offline = hub_placement["offline"]
    assert offline["placed"] == {"ok": True, "value": True, "seconds": offline["placed"]["seconds"]}
    assert offline["not cached"]["error"] == "HubUnreachableError" and offline["not cached"]["lens_error"], offline
