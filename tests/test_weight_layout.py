"""Weights laid out as HuggingFace lays them out (lensutil/weight_layout.py), so float32 logits are its bits.

GPT-2 stores its matrices as Conv1D [in, out] and computes q, k, v in one matmul (c_attn); the Llama
family stores nn.Linear [out, in]. BLAS picks its kernel by layout and width, and for a single token
(a matrix-vector product) three narrow matmuls round unlike one wide one.
"""

from __future__ import annotations

import copy

import pytest
import torch

from _models import lens
from lensutil import HookedTransformerConfig
from lensutil.errors import ConfigError
from lensutil.loading.pretrained import from_pretrained_no_processing
from lensutil.model.weight_layout import _still_shared


@pytest.fixture(scope="module")
def gpt2_768():
    """A seeded random GPT-2 at GPT-2 small's width (768), where one token's q/k/v round differently split."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=768, n_layer=2, n_head=12, vocab_size=512, n_positions=64, bos_token_id=0,
                        eos_token_id=0, architectures=["GPT2LMHeadModel"], attn_implementation="eager")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ref = GPT2LMHeadModel(config).eval()
    return ref, from_pretrained_no_processing("random-gpt2-768", hf_model=ref)


def _shared(attn) -> bool:
    return _still_shared(attn._qkv_storage, [attn.W_Q, attn.W_K, attn.W_V])


@pytest.mark.parametrize("shape", [(1, 1), (2, 1), (1, 7), (3, 33)])
def test_gpt2_logits_equal_huggingfaces_for_one_token_and_for_many(gpt2_768, shape):
    ref, model = gpt2_768
    tokens = torch.randint(0, 512, shape, generator=torch.Generator().manual_seed(sum(shape)))
    with torch.no_grad():
        assert torch.equal(model(tokens), ref(tokens).logits), shape


def test_gpt2_q_k_v_are_views_of_one_storage_laid_out_as_c_attn(gpt2_768):
    ref, model = gpt2_768
    attn, c_attn = model.blocks[0].attn, ref.transformer.h[0].attn.c_attn.weight  # [d_model, 3 * d_model]
    assert model.cfg.fused_qkv and model.cfg.weight_layout == "in_out" and _shared(attn)
    assert torch.equal(attn._qkv_storage.view(768, -1), c_attn)
    mlp = model.blocks[0].mlp
    assert mlp.W_in.is_contiguous() and mlp.W_out.is_contiguous()  # Conv1D's [in, out], as they are
    llama = lens("tiny-llama").blocks[0].mlp
    assert llama.W_in.T.is_contiguous() and not llama.W_in.is_contiguous()  # nn.Linear's [out, in]


def test_dtype_round_trip_keeps_one_storage_and_the_logits(gpt2_768):
    _, model = gpt2_768
    model = copy.deepcopy(model)
    tokens = torch.randint(0, 512, (1, 1))
    with torch.no_grad():
        before = model(tokens)
        model.to(torch.float64)
        assert _shared(model.blocks[1].attn) and model.blocks[1].attn.W_Q.dtype == torch.float64
        model.to(torch.float32)
        assert _shared(model.blocks[1].attn) and torch.equal(model(tokens), before)


def test_separate_storages_give_the_same_values(gpt2_768):
    # An offloaded block (and a deep copy) gives each weight its own storage: the forward concatenates them then.
    _, model = gpt2_768
    apart = copy.deepcopy(model)
    for block in apart.blocks:
        for name in ("W_Q", "W_K", "W_V"):
            getattr(block.attn, name).data = getattr(block.attn, name).data.clone()
    assert not _shared(apart.blocks[0].attn)
    tokens = torch.randint(0, 512, (2, 5))
    with torch.no_grad():
        assert torch.equal(apart(tokens), model(tokens))


def test_gradients_reach_w_q_w_k_w_v_through_the_fused_matmul(gpt2_768):
    _, model = gpt2_768
    fused = copy.deepcopy(model)
    split_cfg = copy.deepcopy(model.cfg)
    split_cfg.fused_qkv = False
    split = type(model)(split_cfg)
    split.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 512, (1, 6))
    for m in (fused, split):
        m(tokens)[0, -1].logsumexp(-1).backward()
    for name in ("W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V"):
        ours, ref = getattr(fused.blocks[0].attn, name).grad, getattr(split.blocks[0].attn, name).grad
        assert ours is not None and ours.abs().max() > 0, name
        assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-7), name


def test_fused_qkv_in_conv1d_layout_needs_one_key_value_head_per_query_head():
    with pytest.raises(ConfigError, match="needs one key/value head per query head"):
        HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=10, n_key_value_heads=1, fused_qkv=True,
                                weight_layout="in_out")
    HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=10, n_key_value_heads=1, fused_qkv=True)  # Phi-3's
    with pytest.raises(ConfigError, match="fused_gate_up needs a gated MLP"):
        HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=10, fused_gate_up=True)
    with pytest.raises(ConfigError, match="fused_gate_up needs a gated MLP"):
        HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=10, fused_gate_up=True, gated_mlp=True,
                                weight_layout="in_out")
    with pytest.raises(ConfigError, match="weight_layout must be"):
        HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=10, weight_layout="columns")


# ---- Phi-3: qkv_proj (grouped-query) and gate_up_proj, one matmul each -----------------------------


@pytest.fixture(scope="module")
def phi3():
    from _models import hf
    return hf("tiny-phi3"), lens("tiny-phi3")


def _phi3_shared(model) -> bool:
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    return (_still_shared(attn._qkv_storage, [attn.W_Q, attn._W_K, attn._W_V])
            and _still_shared(mlp._gate_up_storage, [mlp.W_gate, mlp.W_in]))


def test_phi3_fused_weights_are_views_of_one_storage_laid_out_as_hfs(phi3):
    # BLAS rounds one wide product otherwise than several narrow ones (MKL's AVX2 kernels, which AMD CPUs
    # get, for every size): Phi-3's logits equal HF's there only when lensutil multiplies as HF does.
    ref, model = phi3
    layer = ref.model.layers[0]
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    assert model.cfg.fused_qkv and model.cfg.fused_gate_up and model.cfg.n_key_value_heads is not None
    assert _phi3_shared(model)
    assert torch.equal(attn._qkv_storage.view(-1, model.cfg.d_model), layer.self_attn.qkv_proj.weight)
    assert torch.equal(mlp._gate_up_storage.view(-1, model.cfg.d_model), layer.mlp.gate_up_proj.weight)


def test_phi3_dtype_round_trip_and_separate_storages_keep_the_logits(phi3):
    _, model = phi3
    model = copy.deepcopy(model)
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(tokens)
        model.to(torch.float64)
        assert _phi3_shared(model) and model.blocks[0].mlp.W_in.dtype == torch.float64
        model.to(torch.float32)
        assert _phi3_shared(model) and torch.equal(model(tokens), before)
        for block in model.blocks:
            for module, names in ((block.attn, ("W_Q", "_W_K", "_W_V")), (block.mlp, ("W_gate", "W_in"))):
                for name in names:
                    module._parameters[name].data = module._parameters[name].data.clone()
        assert not _phi3_shared(model)
        assert torch.equal(model(tokens), before)


def test_phi3_gradients_reach_each_fused_weight(phi3):
    _, model = phi3
    fused = copy.deepcopy(model)
    split_cfg = copy.deepcopy(model.cfg)
    split_cfg.fused_qkv = split_cfg.fused_gate_up = False
    split = type(model)(split_cfg)
    split.load_state_dict(model.state_dict())
    tokens = torch.randint(0, model.cfg.d_vocab, (1, 6), generator=torch.Generator().manual_seed(1))
    for m in (fused, split):
        m(tokens)[0, -1].logsumexp(-1).backward()
    for module, name in [("attn", "W_Q"), ("attn", "_W_K"), ("attn", "_W_V"), ("mlp", "W_gate"), ("mlp", "W_in")]:
        ours = getattr(getattr(fused.blocks[0], module), name).grad
        ref = getattr(getattr(split.blocks[0], module), name).grad
        assert ours is not None and ours.abs().max() > 0, name
        assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-7), name


@pytest.mark.parametrize("name", ["tiny-mixtral", "tiny-qwen2-moe"])
def test_routed_experts_gate_and_up_view_hfs_gate_up_proj(name):
    # transformers 5 runs each expert's gate and up as one F.linear over experts.gate_up_proj[e]; so does lensutil.
    from _models import hf
    ref, model = hf(name), lens(name)
    layer = next(i for i in range(model.cfg.n_layers) if hasattr(model.blocks[i].mlp, "experts"))
    hf_experts = ref.model.layers[layer].mlp.experts
    for e, expert in enumerate(model.blocks[layer].mlp.experts):
        assert _still_shared(expert._gate_up_storage, [expert.W_gate, expert.W_in]) and expert._fuses_gate_up()
        assert torch.equal(expert._gate_up_storage.view(-1, model.cfg.d_model), hf_experts.gate_up_proj[e])
    shared = getattr(model.blocks[layer].mlp, "shared_expert", None)
    assert shared is None or shared._gate_up_storage is None  # HF's plain MLP: gate_proj and up_proj apart


def test_phi3_in_place_edits_and_a_reload_reach_the_fused_matmul(phi3):
    _, model = phi3
    model = copy.deepcopy(model).to("cpu")  # a deep copy clones each parameter apart; any .to() shares them again
    assert _phi3_shared(model)
    original = copy.deepcopy(model.state_dict())
    split_cfg = copy.deepcopy(model.cfg)
    split_cfg.fused_qkv = split_cfg.fused_gate_up = False
    split = type(model)(split_cfg)
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(tokens)
        model.blocks[0].mlp.W_in.data.mul_(0.5)  # edits through .data, in place: the shared storage sees them
        model.blocks[0].attn._W_K.data.mul_(0.5)
        assert _phi3_shared(model)
        edited = model(tokens)
        split.load_state_dict(model.state_dict())
        assert not torch.allclose(edited, before) and torch.allclose(edited, split(tokens), atol=1e-5)
        model.load_state_dict(original)  # a reload copies into the views: one storage still, the first logits again
        assert _phi3_shared(model) and torch.equal(model(tokens), before)
