"""Fine-tuned weights: training, save_pretrained, loading back three ways, and state dicts that do not fit."""

from __future__ import annotations

import pytest
import torch

from lensutil import HookedTransformer
from lensutil.errors import LensError, WeightLoadError
from lensutil.loading.state_dict import load_torch_file

TEXT = "Fine-tuning changes every weight a little"


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_processed_model_reloads_with_identical_logits_and_is_not_processed_twice(name, tmp_path):
    model = HookedTransformer.from_pretrained(name)  # every default processing option
    model.save_pretrained(tmp_path / "saved")
    again = HookedTransformer.from_pretrained(str(tmp_path / "saved"))
    assert torch.equal(again(TEXT), model(TEXT))
    _assert_same_weights(again, model)
    assert (again.cfg.folded_ln, again.cfg.centered_unembed, again.cfg.normalization_type) == (
        model.cfg.folded_ln, model.cfg.centered_unembed, model.cfg.normalization_type)
    assert again.tokenizer is not None and again.to_str_tokens("Hi") == model.to_str_tokens("Hi")


def test_tied_or_shared_weights_save(tmp_path):
    model = HookedTransformer.from_pretrained_no_processing("tiny-gpt2")
    with torch.no_grad():  # an unembedding that is a view of the embedding: safetensors refuses shared storage
        model.unembed.W_U = torch.nn.Parameter(model.embed.W_E.T)
    model.save_pretrained(tmp_path / "tied")
    again = HookedTransformer.from_pretrained(tmp_path / "tied")
    assert torch.equal(again(TEXT), model(TEXT))


def test_failed_save_leaves_no_half_written_directory(tmp_path, monkeypatch):
    import safetensors.torch

    model = HookedTransformer.from_pretrained_no_processing("tiny-gpt2")

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        model.save_pretrained(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_to_write_over_another_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(LensError, match="will not write over it"):
        HookedTransformer.from_pretrained_no_processing("tiny-gpt2").save_pretrained(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_fine_tuning_trains_with_a_plain_optimiser_and_hooks_fire_during_training():
    model = HookedTransformer.from_pretrained_no_processing("tiny-gpt2")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = model.to_tokens(TEXT)
    fired = []

    def watch_and_scale(resid, hook):
        fired.append(hook.name)
        return resid * 1.0  # an identity edit: the gradient flows through the hook's output

    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        optimiser.zero_grad()
        loss = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[("blocks.0.hook_resid_post", watch_and_scale)])
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert fired == ["blocks.0.hook_resid_post"] * 5
    assert losses[-1] < losses[0]
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "blocks.0.attn.W_Q" in changed and "embed.W_E" in changed and "blocks.1.mlp.W_out" in changed


def test_fine_tuned_huggingface_directory_loads_like_the_model_in_memory(tmp_path):
    from lensutil.loading.hf_source import load_hf

    hf_model, tokenizer = load_hf("tiny-llama", attn_implementation="sdpa")  # the mode of a model loaded by name
    with torch.no_grad():
        hf_model.model.layers[0].mlp.down_proj.weight.mul_(1.5)  # stand-in for fine-tuning
    hf_model.save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    from_dir = HookedTransformer.from_pretrained(str(tmp_path / "hf"))
    in_memory = HookedTransformer.from_pretrained("tiny-llama", hf_model=hf_model, tokenizer=tokenizer)
    assert torch.equal(from_dir(TEXT), in_memory(TEXT))
    assert not torch.equal(in_memory(TEXT), HookedTransformer.from_pretrained("tiny-llama")(TEXT))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_state_dict_file_loads_by_path(suffix, tmp_path):
    from safetensors.torch import save_file

    tuned = HookedTransformer.from_pretrained_no_processing("tiny-llama")
    with torch.no_grad():
        tuned.blocks[1].attn.W_O.mul_(0.5)
    path = tmp_path / f"tuned{suffix}"
    sd = {k: v.contiguous() for k, v in tuned.state_dict().items()}
    torch.save(sd, path) if suffix == ".pt" else save_file(sd, str(path))
    fresh = HookedTransformer.from_pretrained("tiny-llama")  # processed: gets its norms back, then reprocessed
    fresh.load_and_process_state_dict(path)
    processed_tuned = HookedTransformer.from_pretrained_no_processing("tiny-llama")
    processed_tuned.load_and_process_state_dict(sd)
    assert torch.equal(fresh(TEXT), processed_tuned(TEXT))


def test_a_pickled_model_object_is_refused_with_the_reason(tmp_path):
    torch.save(HookedTransformer.from_pretrained_no_processing("tiny-gpt2"), tmp_path / "whole_model.pt")
    with pytest.raises(WeightLoadError, match=r"weights_only=True") as err:
        load_torch_file(tmp_path / "whole_model.pt")
    assert "torch.save(model.state_dict(), path)" in str(err.value) and err.value.__context__ is None


def test_wrong_architecture_gets_a_table_and_the_likely_cause():
    gpt2 = HookedTransformer.from_pretrained_no_processing("tiny-gpt2")
    llama_weights = HookedTransformer.from_pretrained_no_processing("tiny-llama").state_dict()
    with pytest.raises(WeightLoadError) as err:
        gpt2.load_and_process_state_dict(llama_weights, fold_ln=False, center_writing_weights=False,
                                         center_unembed=False, fold_value_biases=False)
    text = str(err.value)
    assert "missing" in text and "unexpected" in text and "wrong shape" in text
    assert "blocks.0.mlp.W_gate" in text and "Likely cause: another architecture" in text


def test_other_sizes_and_wrapped_checkpoints_are_named():
    model = HookedTransformer.from_pretrained_no_processing("tiny-gpt2")
    sd = model.state_dict()
    fewer = {k: v for k, v in sd.items() if not k.startswith("blocks.1.")}
    with pytest.raises(WeightLoadError, match="the weights have 1 layers, the model 2"):
        model.load_and_process_state_dict(fewer)
    with pytest.raises(WeightLoadError, match=r"starts with 'module\.'"):
        model.load_and_process_state_dict({"module." + k: v for k, v in sd.items()})
    with pytest.raises(WeightLoadError, match=r"a training checkpoint.*Pass checkpoint\['state_dict'\]"):
        model.load_and_process_state_dict({"state_dict": sd, "epoch": 3})


def _transformerlens_state_dict(model, n_ctx=None, rotary=False):
    """model's state dict with the persistent buffers TransformerLens 2.x (v2.18) writes into every attention
    layer (components/abstract_attention.py): a causal bool mask [n_ctx, n_ctx], IGNORE = -inf, and for rotary
    models rotary_sin / rotary_cos [n_ctx, rotary_dim]."""
    n = n_ctx or model.cfg.n_ctx
    sd = dict(model.state_dict())
    for i in range(model.cfg.n_layers):
        sd[f"blocks.{i}.attn.mask"] = torch.tril(torch.ones((n, n)).bool())
        sd[f"blocks.{i}.attn.IGNORE"] = torch.tensor(-torch.inf)
        if rotary:
            d = model.cfg.rotary_dim
            angles = torch.arange(n)[:, None] * (10000.0 ** (-torch.arange(d // 2) / (d // 2)))[None].repeat(1, 2)
            sd[f"blocks.{i}.attn.rotary_sin"], sd[f"blocks.{i}.attn.rotary_cos"] = angles.sin(), angles.cos()
    return sd


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_a_transformerlens_state_dict_with_its_attention_buffers_loads(name):
    model = HookedTransformer.from_pretrained_no_processing(name)
    sd = _transformerlens_state_dict(model, rotary=model.cfg.positional_embedding_type == "rotary")
    fresh = HookedTransformer(model.cfg, model.tokenizer)
    fresh.load_and_process_state_dict(sd, fold_ln=False, center_writing_weights=False, center_unembed=False,
                                      fold_value_biases=False)
    assert torch.equal(fresh(TEXT), model(TEXT))
    processed = HookedTransformer.from_pretrained(name)
    fresh = HookedTransformer(model.cfg, model.tokenizer)
    fresh.load_and_process_state_dict(sd)  # processed on loading, as from_pretrained processes
    assert torch.equal(fresh(TEXT), processed(TEXT))


def test_attention_buffers_that_are_not_transformerlens_causal_ones_are_refused():
    model = HookedTransformer.from_pretrained_no_processing("tiny-gpt2")
    sd = _transformerlens_state_dict(model)
    sd["blocks.0.attn.mask"] = torch.ones_like(sd["blocks.0.attn.mask"])  # bidirectional: not a causal model's
    with pytest.raises(WeightLoadError, match="blocks.0.attn.mask"):
        HookedTransformer(model.cfg, model.tokenizer).load_and_process_state_dict(sd)
    sd = _transformerlens_state_dict(model)
    sd["blocks.1.attn.IGNORE"] = torch.tensor(-1e5)
    with pytest.raises(WeightLoadError, match="blocks.1.attn.IGNORE"):
        HookedTransformer(model.cfg, model.tokenizer).load_and_process_state_dict(sd)


def test_an_offloaded_models_state_dict_and_save_pretrained_hold_its_real_weights(tmp_path):
    from lensutil.loading import placement as pl

    single = HookedTransformer.from_pretrained("tiny-llama")
    n = single.cfg.n_layers
    device_map = {u: "disk" if u.startswith("blocks.") and int(u.split(".")[1]) >= n // 2 else "cpu" for u in pl.units(single)}
    placed = HookedTransformer.from_pretrained("tiny-llama", device_map=device_map, offload_folder=str(tmp_path / "offload"))
    sd = placed.state_dict()
    assert not any(v.is_meta for v in sd.values())  # not meta tensors that torch.save writes as a few KB
    _assert_same_weights(placed, single)
    torch.save(sd, tmp_path / "weights.pt")
    fresh = HookedTransformer(single.cfg, single.tokenizer)
    fresh.load_state_dict(torch.load(tmp_path / "weights.pt"))
    assert torch.equal(fresh(TEXT), single(TEXT))
    placed.save_pretrained(tmp_path / "saved")
    again = HookedTransformer.from_pretrained(str(tmp_path / "saved"))
    _assert_same_weights(again, single)
    assert torch.equal(again(TEXT), placed(TEXT))
    assert next(placed.blocks[n - 1].parameters()).is_meta  # still offloaded: reading them loaded nothing for good


@pytest.mark.parametrize("mode", ["8-bit", "4-bit nf4"])
def test_saving_a_quantised_model_is_refused_before_anything_is_written_and_says_what_to_do(mode, tmp_path):
    pytest.importorskip("bitsandbytes")
    from lensutil.errors import QuantizationError
    from lensutil.loading.quantization import config_for_mode

    model = HookedTransformer.from_pretrained("tiny-llama", quantization_config=config_for_mode(mode))
    with pytest.raises(QuantizationError, match="save the full-precision model") as err:
        model.save_pretrained(tmp_path / "saved")
    assert "load_in_" in str(err.value) and not (tmp_path / "saved").exists()
    assert list(tmp_path.iterdir()) == []
    # What the message advises: save before quantising, quantise on loading; the same quantised model.
    HookedTransformer.from_pretrained("tiny-llama").save_pretrained(tmp_path / "full")
    again = HookedTransformer.from_pretrained(str(tmp_path / "full"), quantization_config=config_for_mode(mode))
    assert again.quantization_config is not None
    with torch.no_grad():
        assert torch.equal(again(TEXT), model(TEXT))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_save_reloads_in_its_own_dtype_unless_another_is_asked(dtype, tmp_path):
    model = HookedTransformer.from_pretrained("tiny-llama", dtype=dtype)
    model.save_pretrained(tmp_path / "saved")
    again = HookedTransformer.from_pretrained(str(tmp_path / "saved"))
    assert again.cfg.dtype == dtype and {p.dtype for p in again.parameters()} == {dtype}
    _assert_same_weights(again, model)
    assert torch.equal(again(TEXT), model(TEXT))
    wider = HookedTransformer.from_pretrained(str(tmp_path / "saved"), dtype="float32")
    assert wider.cfg.dtype == torch.float32 and torch.equal(wider.W_E, model.W_E.float())
