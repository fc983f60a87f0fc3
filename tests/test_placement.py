"""Models placed over devices and disk with accelerate (lensutil/placement.py): same results, clear refusals."""

import functools
import io
from contextlib import redirect_stdout

import pytest
import torch

from _models import TINY, lens
from lensutil import placement as pl
from lensutil.errors import ConfigError, LensError
from lensutil.loading import from_pretrained, from_pretrained_no_processing, load_hf

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


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])  # GPT-2's fused c_attn rounds otherwise (test_equivalence)
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
    import lensutil.loading

    def refuse(*args, **kwargs):
        raise AssertionError("the whole HuggingFace model was loaded into RAM")

    monkeypatch.setattr(lensutil.loading, "load_hf", refuse)
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
