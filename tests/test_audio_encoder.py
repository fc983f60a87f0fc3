"""HookedAudioEncoder (HuBERT, TransformerLens 2.18's class; issue 27) against HuggingFace's HubertModel in float32:
a tiny random checkpoint saved to a directory, loaded back, compared exactly (max |diff| == 0)."""

import numpy as np
import pytest
import torch

import lensutil
from lensutil.errors import ConfigError, InputError
from lensutil.transformer_lens import HookedAudioEncoder


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    import transformers

    torch.manual_seed(0)
    config = transformers.HubertConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, conv_dim=(8, 8),
        conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2,
        vocab_size=12, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        layerdrop=0.0, architectures=["HubertModel"])
    hf = transformers.HubertModel(config).eval()
    with torch.no_grad():  # LayerNorms that are not the identity, so a wrong mapping shows
        for name, p in hf.named_parameters():
            if "layer_norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    path = tmp_path_factory.mktemp("hubert")
    hf.save_pretrained(path)
    extractor = transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                                      do_normalize=True, return_attention_mask=True)
    extractor.save_pretrained(path)
    hf = transformers.HubertModel.from_pretrained(path, attn_implementation="eager").eval()
    return HookedAudioEncoder.from_pretrained(str(path), device="cpu"), hf, extractor


def _waves():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(400).astype(np.float32), rng.standard_normal(290).astype(np.float32)]


def test_matches_huggingface_exactly_on_one_waveform(pair):
    model, hf, extractor = pair
    wave = _waves()[0]
    want = hf(extractor([wave], sampling_rate=16000, return_tensors="pt")["input_values"]).last_hidden_state
    got = model(torch.from_numpy(wave))
    assert got.shape == want.shape == (1, 39, 16)
    assert (got - want).abs().max().item() == 0.0


def test_matches_huggingface_exactly_on_a_padded_batch(pair):
    model, hf, extractor = pair
    inputs = extractor(_waves(), sampling_rate=16000, return_tensors="pt", padding=True, return_attention_mask=True)
    want = hf(inputs["input_values"], attention_mask=inputs["attention_mask"]).last_hidden_state
    frames, mask = model.to_frames(_waves())
    assert mask.tolist()[1].count(1) == 28 and mask[0].all()  # 290 samples reach 28 frames
    got = model((frames, mask))
    real = mask.bool()
    assert (got[real] - want[real]).abs().max().item() == 0.0  # padded frames' outputs are not compared (HF's too are junk)


def test_hooks_and_cache_are_the_encoders(pair):
    model, _, _ = pair
    _, cache = model.run_with_cache(torch.from_numpy(_waves()[0]))
    assert cache["blocks.0.attn.hook_pattern"].shape == (1, 2, 39, 39)
    assert cache["hook_full_embed"].shape == (1, 39, 16)

    def zero_head(pattern, hook):
        pattern[:, 0] = 0.0
        return pattern

    base = model(torch.from_numpy(_waves()[0]))
    ablated = model.run_with_hooks(torch.from_numpy(_waves()[0]), fwd_hooks=[("blocks.1.attn.hook_pattern", zero_head)])
    assert not torch.allclose(base, ablated)


def test_built_from_a_config_it_runs_on_frames_and_asks_for_a_front_end_for_waveforms():
    cfg = lensutil.HookedTransformerConfig(n_layers=1, d_model=8, d_head=4, n_heads=2, d_mlp=16, n_ctx=64, d_vocab=4,
                                           act_fn="gelu", attention_dir="bidirectional", norm_position="post")
    model = HookedAudioEncoder(cfg)
    with pytest.raises(ConfigError, match="front end"):
        model(torch.zeros(400))
    with pytest.raises(ConfigError, match="front end"):
        model.encoder_output(torch.zeros(1, 5, 8))
    with pytest.raises(ConfigError, match="bidirectional"):
        HookedAudioEncoder(lensutil.HookedTransformerConfig(n_layers=1, d_model=8, d_head=4, n_heads=2, d_vocab=4, n_ctx=8))


def test_frames_of_the_wrong_width_and_stereo_waves_are_refused(pair):
    with pytest.raises(InputError, match="frames must be"):
        pair[0].encoder_output(torch.zeros(1, 5, 7))
    with pytest.raises(InputError, match="1-D"):
        pair[0]([np.zeros((400, 2), dtype=np.float32)])


def test_a_batch_tensor_is_one_waveform_per_row(pair):
    model = pair[0]
    waves = torch.from_numpy(np.stack([_waves()[0], _waves()[0][::-1].copy()]))
    both = model(waves)
    assert both.shape == (2, 39, 16)
    # (the same values up to the batch's matmul rounding; TransformerLens would flatten the batch into one waveform)
    torch.testing.assert_close(both[1:], model(waves[1]), rtol=1e-5, atol=1e-5)


def test_weight_views_are_the_blocks(pair):
    model, hf, _ = pair
    q = hf.encoder.layers[1].attention.q_proj.weight  # [n_heads * d_head, d_model]
    assert torch.equal(model.W_Q[1], q.reshape(2, 8, 16).transpose(1, 2))
    assert model.OV.shape == (2, 2, 16, 16) and model.W_in.shape == (2, 16, 32)
    assert model.all_head_labels()[:2] == ["L0H0", "L0H1"]
