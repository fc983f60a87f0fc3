"""Weight processing keeps the model's function: log-probs match HuggingFace's after every option,
each option visibly changes the weights it claims to, options that would change the function are
skipped out loud, processing twice is safe, and processed state dicts load back."""

from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest
import torch

from lensutil.config import HookedTransformerConfig
from lensutil.errors import ConfigError, LensError, WeightLoadError
from lensutil.loading.convert import PROCESSING_OPTIONS
from lensutil.loading.pretrained import from_pretrained, from_pretrained_no_processing
from lensutil.loading.state_dict import load_and_process_state_dict
from lensutil.loading.hf_source import load_hf
from lensutil.model.transformer import HookedTransformer
from lensutil.model.processing import (
    ProcessingReport,
    center_unembed,
    center_writing_weights,
    fold_layer_norm,
    fold_value_biases,
    process_weights_,
)

# A few lengths, batched with right padding; only real positions are compared.
PROMPTS = [
    "Hello",
    "The quick brown fox jumps over the lazy dog.",
    "In 1905, Albert Einstein published four papers that changed physics, among them one on special relativity and",
]
TINY = ["tiny-gpt2", "tiny-llama", "tiny-qwen2", "tiny-mistral", "tiny-qwen3", "tiny-gemma", "tiny-gemma2", "tiny-gemma3",
        "tiny-olmo2", "tiny-llama3", "tiny-pythia", "tiny-phi3"]
MODELS = TINY + [pytest.param("smollm2-135m", marks=pytest.mark.slow)]
VARIANTS = {"none": (), **{o: (o,) for o in PROCESSING_OPTIONS}, "all": PROCESSING_OPTIONS}

LOGIT_ATOL = 1e-5  # unprocessed vs HuggingFace (float32)
LOGPROB_ATOL = 1e-4  # processed vs HuggingFace: processing rounds differently, and center_unembed shifts logits


@dataclasses.dataclass
class Subject:
    name: str
    hf: object
    model: HookedTransformer  # unprocessed
    tokens: torch.Tensor  # [batch, pos], right-padded
    mask: torch.Tensor  # [batch, pos], 1 = real token
    hf_logits: torch.Tensor

    @property
    def real(self) -> torch.Tensor:
        return self.mask.bool()

    def fresh(self) -> HookedTransformer:
        """An unprocessed copy (its own cfg and weights) to process."""
        m = HookedTransformer(copy.deepcopy(self.model.cfg), self.model.tokenizer)
        m.load_state_dict(self.model.state_dict())
        return m.eval()

    @torch.no_grad()
    def logits(self, model: HookedTransformer) -> torch.Tensor:
        return model(self.tokens, attention_mask=self.mask)

    def max_logprob_error(self, model: HookedTransformer) -> float:
        ours, theirs = self.logits(model).log_softmax(-1), self.hf_logits.log_softmax(-1)
        return (ours - theirs)[self.real].abs().max().item()


@pytest.fixture(scope="module")
def subject(request) -> Subject:
    name = request.param
    hf, tok = load_hf(name, attn_implementation="sdpa")  # the attention mode from_pretrained uses by default
    model = from_pretrained_no_processing(name, hf_model=hf, tokenizer=tok, device="cpu").eval()
    ids = [tok(p).input_ids for p in PROMPTS]
    width = max(map(len, ids))
    tokens = torch.tensor([x + [0] * (width - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    with torch.no_grad():
        hf_logits = hf(input_ids=tokens, attention_mask=mask).logits
    return Subject(name, hf, model, tokens, mask, hf_logits)


def process(model: HookedTransformer, *applied: str) -> tuple[ProcessingReport, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = process_weights_(model, **{o: o in applied for o in PROCESSING_OPTIONS})
    return report, [str(w.message) for w in caught]


# ---- equivalence with HuggingFace ------------------------------------------------------------------


@pytest.mark.parametrize("subject", MODELS, indirect=True)
def test_unprocessed_logits_match_hf(subject):
    diff = (subject.logits(subject.model) - subject.hf_logits)[subject.real].abs().max().item()
    assert diff <= LOGIT_ATOL


@pytest.mark.parametrize("variant", list(VARIANTS)[1:])
@pytest.mark.parametrize("subject", MODELS, indirect=True)
def test_processing_keeps_log_probs_and_changes_the_weights(subject, variant):
    model = subject.fresh()
    before = {k: v.clone() for k, v in model.state_dict().items() if k in BEFORE_KEYS}  # not all: smollm2 is 0.5 GB
    report, warned = process(model, *VARIANTS[variant])
    assert subject.max_logprob_error(model) <= LOGPROB_ATOL
    for option in VARIANTS[variant]:
        CHECKS[option](model, before, report, warned)


# b_V is "_b_V" (compact, per key/value head) with grouped-query attention, as in TransformerLens.
BEFORE_KEYS = ("blocks.0.attn.W_Q", "blocks.0.attn.b_V", "blocks.0.attn._b_V", "blocks.0.attn.b_O", "unembed.W_U")


def _check_fold_ln(model, before, report, warned):
    cfg = model.cfg
    assert "fold_ln" in report.applied and cfg.folded_ln
    assert cfg.normalization_type in ("LNPre", "RMSPre")
    assert not any(k.endswith(("ln1.w", "ln1.b", "ln2.w", "ln_final.w")) for k in model.state_dict())
    assert not hasattr(model.ln_final, "w")
    assert model.hook_dict["ln_final.hook_scale"] is model.ln_final.hook_scale
    if "ln1_post" in model.blocks[0]._modules:  # norms of the outputs keep their weights (nothing can absorb them)
        assert hasattr(model.blocks[0].ln1_post, "w") and hasattr(model.blocks[-1].ln2_post, "w")
    if cfg.norm_position == "output":  # OLMo 2: no norm before attention, so W_Q has nothing to absorb
        assert torch.equal(model.blocks[0].attn.W_Q, before["blocks.0.attn.W_Q"])
        return
    assert not hasattr(model.blocks[0].ln1, "w")
    # hook_dict points at the hook points that now sit in the new norms
    assert model.hook_dict["blocks.0.ln1.hook_normalized"] is model.blocks[0].ln1.hook_normalized
    assert not torch.equal(model.blocks[0].attn.W_Q, before["blocks.0.attn.W_Q"])


def _check_center_writing_weights(model, before, report, warned):
    if model.cfg.normalization_type.startswith("RMS"):
        reason = report.skipped["center_writing_weights"]
        assert "RMSNorm" in reason and "change" in reason
        assert any("center_writing_weights" in w for w in warned)
        assert not model.cfg.centered_writing_weights
        return
    assert model.cfg.centered_writing_weights
    learned = (model.pos_embed.W_pos,) if hasattr(model, "pos_embed") else ()  # LayerNorm with rotary: Pythia
    for W in (model.embed.W_E, *learned, model.blocks[0].attn.W_O, model.blocks[-1].mlp.W_out):
        assert W.mean(-1).abs().max() < 1e-6
    assert model.blocks[0].mlp.b_out.mean().abs() < 1e-6


def _check_center_unembed(model, before, report, warned):
    if model.cfg.output_logits_soft_cap > 0:  # Gemma 2: the cap's tanh would see the shifted logits
        assert "output_logits_soft_cap" in report.skipped["center_unembed"] and not model.cfg.centered_unembed
        assert any("center_unembed" in w for w in warned)
        return
    assert model.cfg.centered_unembed
    assert model.unembed.W_U.mean(-1).abs().max() < 1e-6 and model.unembed.b_U.mean().abs() < 1e-6
    assert before["unembed.W_U"].mean(-1).abs().max() > 1e-4  # it was not centred to begin with


def _check_fold_value_biases(model, before, report, warned):
    assert model.cfg.folded_value_biases
    assert all(torch.all(block.attn.b_V == 0) for block in model.blocks)
    b_V = before.get("blocks.0.attn.b_V", before.get("blocks.0.attn._b_V"))
    if b_V.abs().max() > 0:  # GPT-2 and Qwen2 have value biases; Llama has none
        assert not torch.equal(model.blocks[0].attn.b_O, before["blocks.0.attn.b_O"])


CHECKS = {
    "fold_ln": _check_fold_ln,
    "center_writing_weights": _check_center_writing_weights,
    "center_unembed": _check_center_unembed,
    "fold_value_biases": _check_fold_value_biases,
}


# ---- safety: twice, skipped options, pure state-dict functions ------------------------------------


@pytest.mark.parametrize("subject", ["tiny-gpt2", "tiny-qwen2"], indirect=True)
def test_processing_twice_does_not_double_apply(subject):
    model = subject.fresh()
    process(model, *PROCESSING_OPTIONS)
    once = subject.logits(model)
    report, warned = process(model, *PROCESSING_OPTIONS)
    assert "already folded" in report.skipped["fold_ln"]
    assert not any("fold_ln" in w for w in warned)  # nothing the user asked for was left undone
    assert torch.allclose(subject.logits(model), once, atol=1e-5)
    assert subject.max_logprob_error(model) <= LOGPROB_ATOL


def test_fold_layer_norm_refuses_a_config_without_norm_weights():
    cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=8, d_head=4, n_heads=2, d_mlp=16, d_vocab=10,
                                  normalization_type="LNPre")
    with pytest.raises(LensError, match="no weights to fold"):
        fold_layer_norm({}, cfg)


@pytest.mark.parametrize("subject", ["tiny-gpt2"], indirect=True)
def test_state_dict_functions_return_new_dicts_and_leave_their_input_alone(subject):
    cfg = subject.model.cfg
    sd = {k: v.clone() for k, v in subject.model.state_dict().items()}
    original = {k: v.clone() for k, v in sd.items()}
    out = fold_value_biases(center_unembed(center_writing_weights(fold_layer_norm(sd, cfg), cfg)), cfg)
    assert all(torch.equal(sd[k], original[k]) for k in sd) and sd.keys() == original.keys()
    assert "ln_final.w" not in out and out is not sd


def test_rms_state_dict_function_refuses_center_writing_weights():
    cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=8, d_head=4, n_heads=2, d_mlp=16, d_vocab=10,
                                  normalization_type="RMS")
    with pytest.raises(ConfigError, match="RMSNorm does not subtract the mean"):
        center_writing_weights({}, cfg)


def _random_model(cfg: HookedTransformerConfig) -> HookedTransformer:
    torch.manual_seed(0)
    model = HookedTransformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if name.endswith(".w") else 0.0, 0.2)
    return model.eval()


def test_layer_norm_gated_mlp_with_ln_bias_skips_fold_ln_out_loud():
    # A LayerNorm model with a SwiGLU MLP: ln2.b would need a bias on W_gate, which the design has not.
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=16, d_head=4, n_heads=4, d_mlp=32, d_vocab=20,
                                  act_fn="silu", normalization_type="LN", mlp_type="gated")
    model = _random_model(cfg)
    tokens = torch.arange(12)[None] % 20
    with torch.no_grad():
        before = model(tokens).log_softmax(-1)
    report, warned = process(model, *PROCESSING_OPTIONS)
    assert "W_gate" in report.skipped["fold_ln"] and any("fold_ln" in w for w in warned)
    assert model.cfg.normalization_type == "LN" and not model.cfg.folded_ln
    assert report.applied == ["center_writing_weights", "center_unembed", "fold_value_biases"]
    with torch.no_grad():
        assert (model(tokens).log_softmax(-1) - before).abs().max() < 1e-5

    with torch.no_grad():  # with ln2.b = 0 there is nothing for W_gate to absorb: folding is exact
        for block in model.blocks:
            block.ln2.b.zero_()
        before = model(tokens).log_softmax(-1)
    report, _ = process(model, "fold_ln")
    assert report.applied == ["fold_ln"] and model.cfg.normalization_type == "LNPre"
    with torch.no_grad():
        assert (model(tokens).log_softmax(-1) - before).abs().max() < 1e-5


@pytest.mark.parametrize("subject", ["tiny-llama"], indirect=True)
def test_hooks_on_norms_survive_fold_ln(subject):
    model = subject.fresh()
    seen = []
    model.add_hook("blocks.1.ln2.hook_normalized", lambda x, hook: seen.append(hook.name), is_permanent=True)
    process(model, "fold_ln")
    _, cache = model.run_with_cache(subject.tokens, attention_mask=subject.mask, names_filter=lambda n: "ln" in n)
    assert seen == ["blocks.1.ln2.hook_normalized"]
    assert "blocks.0.ln1.hook_scale" in cache and "ln_final.hook_normalized" in cache


# ---- state dicts in and out -----------------------------------------------------------------------


@pytest.mark.parametrize("subject", ["tiny-gpt2", "tiny-qwen2"], indirect=True)
def test_processed_state_dict_round_trips_into_a_same_config_model(subject):
    processed = subject.fresh()
    process(processed, *PROCESSING_OPTIONS)
    expected = subject.logits(processed)
    for options in ({o: False for o in PROCESSING_OPTIONS}, {}):  # options off, and the defaults (no-ops)
        target = HookedTransformer(copy.deepcopy(processed.cfg)).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # RMS models: center_writing_weights skipped, as above
            load_and_process_state_dict(target, processed.state_dict(), **options)
        assert torch.allclose(subject.logits(target), expected, atol=1e-5)
        assert dataclasses.asdict(target.cfg) == dataclasses.asdict(processed.cfg)


@pytest.mark.parametrize("subject", ["tiny-gpt2", "tiny-llama"], indirect=True)
def test_folded_state_dict_into_an_unfolded_model_says_how_to_load_it(subject):
    processed = subject.fresh()
    process(processed, "fold_ln")
    with pytest.raises(WeightLoadError, match=r"saved after fold_ln.*Pre"):
        load_and_process_state_dict(subject.fresh(), processed.state_dict(), fold_ln=False)


@pytest.mark.parametrize("source", ["lensutil", "huggingface"])
@pytest.mark.parametrize("subject", ["tiny-gpt2", "tiny-qwen2"], indirect=True)
def test_unprocessed_weights_load_into_a_processed_model_and_are_processed_afresh(subject, source):
    # The fine-tuning story: a processed model, then new raw weights loaded into it.
    model = subject.fresh()
    process(model, *PROCESSING_OPTIONS)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)  # stale weights that must all be replaced
    raw = subject.model.state_dict() if source == "lensutil" else subject.hf.state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_and_process_state_dict(model, raw)
    assert model.cfg.folded_ln and model.cfg.normalization_type.endswith("Pre")
    assert subject.max_logprob_error(model) <= LOGPROB_ATOL


def test_from_pretrained_processes_by_default():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = from_pretrained("tiny-gpt2", device="cpu")
    cfg = model.cfg
    assert cfg.normalization_type == "LNPre"
    assert cfg.folded_ln and cfg.centered_writing_weights and cfg.centered_unembed and cfg.folded_value_biases
