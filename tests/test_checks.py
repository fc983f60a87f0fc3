"""lensutil.checks: the HuggingFace comparisons, the divergence finder and the setup checklist."""

import pytest
import torch

from _models import ALL, hf, lens
from lensutil import checks
from lensutil.errors import LensError
from lensutil.loading.pretrained import from_pretrained, from_pretrained_no_processing


def _param(name):
    return pytest.param(name, marks=pytest.mark.slow) if name == "smollm2-135m" else name


@pytest.mark.parametrize("name", [_param(n) for n in ALL])
def test_no_processing_matches_huggingface_logits(name):
    stats = checks.compare_with_hf(lens(name), hf(name), on="logits")
    assert stats.max <= 1e-5, str(stats)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-qwen2"])
def test_all_processing_preserves_log_probs_but_not_logits(name):
    # Each option alone is covered by test_processing.py; here, the checks' own API on the default load.
    model = from_pretrained(name)
    assert checks.compare_with_hf(model, hf(name), on="logprobs").max <= 1e-4
    assert checks.compare_with_hf(model, hf(name), on="logits").max > 1e-4  # centre_unembed shifts logits


# Gemma 2/3 and OLMo 2 norm attention's and the MLP's outputs (ln1_post, ln2_post) before the residual add.
@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-gemma", "tiny-gemma2", "tiny-gemma3", "tiny-olmo2"])
def test_locate_divergence_names_the_corrupted_mlp_first(name):
    model = from_pretrained_no_processing(name)
    assert checks.locate_divergence(model, hf(name), input="The cat sat on the mat", atol=1e-4).first is None
    torch.manual_seed(0)
    with torch.no_grad():
        model.blocks[1].mlp.W_out.add_(0.05 * torch.randn_like(model.blocks[1].mlp.W_out))
    report = checks.locate_divergence(model, hf(name), input="The cat sat on the mat", atol=1e-4)
    assert report.first is not None and "blocks.1" in str(report.first) and "mlp" in str(report.first).lower()
    assert "blocks.1" in str(report)


def test_locate_divergence_refuses_a_processed_model():
    with pytest.raises(LensError, match="from_pretrained_no_processing"):
        checks.locate_divergence(from_pretrained("tiny-gpt2"), hf("tiny-gpt2"), input="Hello")


def test_validate_model_setup_passes_on_a_good_model():
    report = checks.validate_model_setup(lens("tiny-qwen2"))
    assert report.ok, str(report)


def test_validate_model_setup_fails_with_a_fix_when_the_config_lies():
    model = from_pretrained_no_processing("tiny-gpt2")
    model.cfg.device = "meta"  # the config now lies about where the parameters are
    report = checks.validate_model_setup(model)
    assert not report.ok
    failed = report.failed[0]
    assert failed.fix and "✗" in str(report)


def test_error_table_has_a_row_per_dtype_and_option():
    table = checks.error_table("tiny-gpt2", dtypes=("float32", "bfloat16"), options=("none", "fold_ln", "all"))
    assert len(table.rows) == 6
    assert {"max", "mean", "median", "std"} <= set(table.rows[0])
    assert table.get("float32", "none")["max"] <= 1e-5
    # Each cell is measured against HuggingFace in the same dtype, so half precision can agree exactly.
    assert all(0 <= row["max"] < 1 for row in table.rows)
    assert "bfloat16" in str(table)


def test_validate_model_setup_catches_padding_that_is_not_masked(monkeypatch):
    model = from_pretrained_no_processing("tiny-llama")
    monkeypatch.setattr("lensutil.text.tokens.check_attention_mask", lambda mask, *args, **kwargs: None)  # masks ignored
    report = checks.validate_model_setup(model)
    row = next(r for r in report.rows if r.name == "padding keys get zero attention")
    assert not row.passed and "attention_mask" in row.fix and row.notebook == "04_attention_masks_and_padding"
    assert "notebooks/04_attention_masks_and_padding.ipynb" in str(report)


def test_error_table_reference_float32_measures_accuracy_not_agreement():
    table = checks.error_table("tiny-gpt2", dtypes=("bfloat16",), options=("none",), reference="float32")
    assert table.get("bfloat16", "none")["max"] > 0  # bfloat16 rounds; against float32 that shows
    assert "in float32" in str(table) and table.to_markdown().startswith("| dtype | option |")


def test_moe_models_are_compared_as_a_padded_batch_and_every_real_token_counts():
    from lensutil.checks.compare import compare_with_hf

    moe = lens("tiny-mixtral")
    prompts = ["The capital of France is", "1, 2, 3"]
    alone = compare_with_hf(moe, prompts=prompts, on="logits", batched=False)
    batched = compare_with_hf(moe, prompts=prompts, on="logits")
    assert alone.n == batched.n == sum(moe.to_tokens(p).shape[1] for p in prompts) * moe.cfg.d_vocab
    # the pads are HF's too (the experts multiply them with the real tokens): exact either way
    assert alone.max == batched.max == 0
