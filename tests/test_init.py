"""A model built from a config gets TransformerLens' initial weights; a loaded model pays for none (issue 24)."""

import math

import pytest
import torch

import lensutil.model.initialization as init
from lensutil import HookedEncoder, HookedTransformer, HookedTransformerConfig
from lensutil.errors import ConfigError
from lensutil.loading.pretrained import from_pretrained, from_pretrained_no_processing

CONFIGS = {
    "gpt2-like": dict(n_layers=2, d_model=64, n_ctx=32, d_head=16, d_vocab=101, act_fn="gelu_new", fused_qkv=True,
                      weight_layout="in_out"),
    "llama-like": dict(n_layers=2, d_model=64, n_ctx=32, d_head=16, d_vocab=101, act_fn="silu", normalization_type="RMS",
                       positional_embedding_type="rotary", mlp_type="gated", n_key_value_heads=2),
    "mixtral-like": dict(n_layers=1, d_model=64, n_ctx=32, d_head=16, d_vocab=101, act_fn="silu", normalization_type="RMS",
                         positional_embedding_type="rotary", mlp_type="moe", num_experts=4, experts_per_token=2),
}
TOKENS = torch.tensor([[1, 5, 9, 42, 7, 100]])


def _kind(name: str) -> str:
    leaf = name.split(".")[-1].lstrip("_")
    return "matrix" if leaf.startswith("W") else "norm weight" if leaf == "w" else "bias"


def _check_initialised(model, std: float) -> None:
    for name, p in model.named_parameters():
        kind = _kind(name)
        if kind == "norm weight":
            assert torch.equal(p, torch.ones_like(p)), name
        elif kind == "bias":
            assert torch.equal(p, torch.zeros_like(p)), name
        else:
            assert torch.isfinite(p).all(), name
            assert abs(p.float().mean().item()) < 4 * std / math.sqrt(p.numel()), name
            assert p.float().std().item() == pytest.approx(std, rel=0.2 if p.numel() >= 1000 else 0.35), name


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_a_model_built_from_a_config_is_initialised_as_transformerlens_does(kind):
    torch.manual_seed(0)
    model = HookedTransformer(HookedTransformerConfig(**CONFIGS[kind]))
    assert model.cfg.init_weights and model.cfg.init_mode == "gpt2"
    assert model.cfg.initializer_range == pytest.approx(0.8 / math.sqrt(64))  # TransformerLens' default
    _check_initialised(model, 0.8 / math.sqrt(64))
    logits = model(TOKENS)
    assert torch.isfinite(logits).all()
    torch.manual_seed(0)
    again = HookedTransformer(HookedTransformerConfig(**CONFIGS[kind]))
    assert torch.equal(again(TOKENS), logits)  # torch.manual_seed makes it reproducible
    torch.manual_seed(1)
    assert not torch.equal(HookedTransformer(HookedTransformerConfig(**CONFIGS[kind])).W_E, model.W_E)


def test_gpt2_layout_keeps_W_Q_W_K_W_V_in_their_fused_storage_after_initialising():
    model = HookedTransformer(HookedTransformerConfig(**CONFIGS["gpt2-like"]))
    attn = model.blocks[0].attn
    base = attn._qkv_storage.untyped_storage().data_ptr()
    assert all(w.untyped_storage().data_ptr() == base for w in (attn.W_Q, attn.W_K, attn.W_V))
    assert not torch.equal(attn.W_Q, attn.W_K)  # each drawn, not one copied into the others


def test_seed_and_initializer_range_in_the_config():
    cfg = lambda **kw: HookedTransformerConfig(**CONFIGS["llama-like"], **kw)  # noqa: E731
    a, b = HookedTransformer(cfg(seed=3)), HookedTransformer(cfg(seed=3))
    assert torch.equal(a(TOKENS), b(TOKENS))
    before = torch.get_rng_state()
    HookedTransformer(cfg(seed=3))
    assert torch.equal(torch.get_rng_state(), before)  # a seeded config leaves the global generator alone
    wide = HookedTransformer(cfg(initializer_range=0.5))
    assert wide.W_E.std().item() == pytest.approx(0.5, rel=0.1)


def test_other_init_modes_and_init_weights_false():
    cfg = HookedTransformerConfig(**CONFIGS["llama-like"], init_mode="xavier_normal")
    assert cfg.initializer_range == 1.0  # TransformerLens: the gain, 1 unless set
    model = HookedTransformer(cfg)
    W_in = model.blocks[0].mlp.W_in  # [d_model, d_mlp]: fan_in 64, fan_out 256
    assert W_in.std().item() == pytest.approx(math.sqrt(2 / (64 + 256)), rel=0.1)
    assert torch.isfinite(model(TOKENS)).all()
    with pytest.raises(ConfigError, match="init_mode"):
        HookedTransformerConfig(**CONFIGS["llama-like"], init_mode="orthogonal")
    called = []
    original = init.init_weights
    try:
        init.init_weights = lambda model: called.append(model)
        HookedTransformer(HookedTransformerConfig(**CONFIGS["llama-like"], init_weights=False))
    finally:
        init.init_weights = original
    assert called == []  # init_weights=False: TransformerLens' switch to leave the weights empty


def test_hooked_encoder_accepts_a_plain_config_and_initialises_it():
    cfg = HookedTransformerConfig(n_layers=2, d_model=64, n_ctx=32, d_head=16, d_vocab=101, act_fn="gelu")
    torch.manual_seed(0)
    model = HookedEncoder(cfg)
    assert (model.cfg.attention_dir, model.cfg.norm_position, model.cfg.n_token_types) == ("bidirectional", "post", 2)
    assert cfg.attention_dir == "causal"  # the caller's config is not changed
    _check_initialised(model, 0.8 / math.sqrt(64))
    logits = model(TOKENS)
    assert logits.shape == (1, 6, 101) and torch.isfinite(logits).all()
    torch.manual_seed(0)
    assert torch.equal(HookedEncoder(cfg)(TOKENS), logits)


def _refuse_init(monkeypatch):
    def refuse(model):
        raise AssertionError(f"{type(model).__name__} was initialised, then overwritten by the loaded weights")

    monkeypatch.setattr(init, "init_weights", refuse)


def test_a_model_built_from_a_config_calls_the_initialiser(monkeypatch):
    _refuse_init(monkeypatch)
    with pytest.raises(AssertionError, match="initialised"):
        HookedTransformer(HookedTransformerConfig(**CONFIGS["llama-like"]))


def test_loading_weights_does_not_initialise_first(monkeypatch, tmp_path):
    saved = from_pretrained_no_processing("tiny-llama")
    saved.save_pretrained(tmp_path / "saved")
    _refuse_init(monkeypatch)
    from_pretrained("tiny-gpt2")
    model = from_pretrained_no_processing("tiny-llama")
    from_pretrained(str(tmp_path / "saved"))
    from_pretrained_no_processing("tiny-llama", device_map={"": "cpu"})  # built on meta, then placed
    HookedEncoder.from_pretrained("tiny-bert")
    # The loaded model's config still initialises a model built from it (TransformerLens' loaded
    # configs say init_weights=False, so that HookedTransformer(model.cfg) would be left empty).
    assert model.cfg.init_weights
    monkeypatch.undo()
    fresh = HookedTransformer(model.cfg)
    assert torch.isfinite(fresh(TOKENS)).all()
