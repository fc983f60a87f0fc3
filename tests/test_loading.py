"""Loading from names, directories and the hub, and what users see when it fails."""

import pytest
import torch

from _models import lens
from lensutil import HookedTransformer
from lensutil.loading import zoo
from lensutil.errors import ModelAccessError
from lensutil.loading.hf_source import load_hf
from lensutil.loading.state_dict import load_torch_file


def test_local_directory_loads_like_the_zoo_name():
    path = str(zoo.resolve("tiny-gpt2"))
    model = HookedTransformer.from_pretrained_no_processing(path)
    assert torch.equal(model("Hello there"), lens("tiny-gpt2")("Hello there"))


def _refuse(message):
    def from_pretrained(*args, **kwargs):
        raise OSError(message)

    return from_pretrained


@pytest.fixture
def offline(monkeypatch):
    # These two read transformers' message text alone; with the hub's own answers they are in test_hub.py.
    # Offline mode skips lensutil's network probe, which would otherwise answer first on this machine.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)


def test_gated_model_error_says_how_to_get_access_and_hides_the_token(monkeypatch, offline):
    import transformers

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        _refuse("403 Client Error. Access to model mistralai/Mistral-7B-v0.1 is gated."))
    secret = "not" + "-a-real-" + "value"
    with pytest.raises(ModelAccessError, match="HF_TOKEN") as err:
        HookedTransformer.from_pretrained("mistralai/Mistral-7B-v0.1", token=secret)
    assert "licence" in str(err.value) and secret not in str(err.value)


def test_unreachable_hub_points_to_the_zoo(monkeypatch, offline):
    import transformers

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", _refuse("We couldn't connect to the hub."))
    with pytest.raises(ModelAccessError, match="smollm2-135m"):
        HookedTransformer.from_pretrained("someone/some-model")


def test_fine_tuned_state_dict_round_trips_through_torch_save(tmp_path):
    model = HookedTransformer.from_pretrained_no_processing("tiny-llama")
    with torch.no_grad():
        model.blocks[0].mlp.W_out.mul_(1.5)  # stand-in for fine-tuning
    torch.save(model.state_dict(), tmp_path / "finetuned.pt")
    fresh = HookedTransformer.from_pretrained_no_processing("tiny-llama")
    fresh.load_and_process_state_dict(load_torch_file(tmp_path / "finetuned.pt"), fold_ln=False,
                                      center_writing_weights=False, center_unembed=False, fold_value_biases=False)
    assert torch.equal(fresh("Hello"), model("Hello"))


def test_local_loading_shows_no_progress_bar_and_restores_the_setting(capfd):
    # transformers draws a "Loading weights" bar for every model it reads; from local disk it is
    # noise (in a notebook, a widget in every stored output), so lensutil hides it there only.
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    load_hf("tiny-gpt2")
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # the user's setting is back


def test_unknown_keyword_names_the_closest_accepted_one_and_lists_them_all():
    from lensutil.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        HookedTransformer.from_pretrained("tiny-gpt2", fold_layernorm=True)
    text = str(err.value)
    assert "'fold_layernorm' (did you mean 'fold_ln'?)" in text
    assert "It accepts:" in text and "device_map" in text and "load_in_4bit" in text


def test_max_seq_len_and_n_ctx_that_disagree_are_refused():
    from lensutil.errors import ConfigError

    with pytest.raises(ConfigError, match="max_seq_len means n_ctx"):
        HookedTransformer.from_pretrained("tiny-llama", max_seq_len=32, n_ctx=64)


@pytest.mark.parametrize("mode", ["eager", "sdpa"])
def test_a_converted_hf_model_keeps_its_attention_mode_and_its_logits(mode):
    hf_model, tokenizer = load_hf("tiny-llama", attn_implementation=mode)
    model = HookedTransformer.from_pretrained_no_processing("tiny-llama", hf_model=hf_model, tokenizer=tokenizer)
    assert model.cfg.attn_implementation == mode
    assert HookedTransformer.from_pretrained_no_processing("tiny-llama").cfg.attn_implementation == "sdpa"
    tokens = model.to_tokens("The Eiffel Tower is in the city of")
    with torch.no_grad():
        assert torch.equal(model(tokens), hf_model(tokens).logits)


def _renamed_checkpoint(tmp_path, old: str, new: str):
    """tiny-llama re-saved with `old` in its weight names replaced by `new` (another version's layout)."""
    import shutil

    import safetensors.torch as st

    for f in zoo.resolve("tiny-llama").iterdir():
        shutil.copy(f, tmp_path)
    sd = st.load_file(tmp_path / "model.safetensors")
    st.save_file({k.replace(old, new): v for k, v in sd.items()}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    return tmp_path


def test_a_checkpoint_whose_keys_do_not_match_its_class_is_refused_not_filled_with_random_weights(tmp_path):
    # HuggingFace loads such a checkpoint with a MISSING/UNEXPECTED report and fresh random weights in
    # place of the missing ones; a hooked model converted from that would study noise.
    from lensutil.errors import WeightLoadError

    path = _renamed_checkpoint(tmp_path, "self_attn", "attention")
    with pytest.raises(WeightLoadError) as e:
        HookedTransformer.from_pretrained(str(path))
    msg = str(e.value)
    assert "model.layers.0.self_attn.q_proj.weight" in msg and "model.layers.0.attention.q_proj.weight" in msg
    assert "revision=" in msg
