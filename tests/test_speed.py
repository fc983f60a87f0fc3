"""Speed fixes that keep the maths (issue 14): zero biases skipped, HF's own kernel calls."""

import torch
import torch.nn.functional as F

from lensutil import HookedTransformer

from _models import hf, lens


def _bias_seen(monkeypatch, model, tokens, grad=False):
    seen = []
    real = F.linear

    def spy(x, w, b=None):
        seen.append(b is not None)
        return real(x, w, b)

    monkeypatch.setattr(F, "linear", spy)
    with torch.set_grad_enabled(grad):
        model(tokens)
    monkeypatch.setattr(F, "linear", real)
    return seen


def test_zero_biases_are_skipped_so_linear_runs_a_plain_product(monkeypatch):
    model = HookedTransformer.from_pretrained_no_processing("tiny-llama")
    tokens = model.to_tokens("The Eiffel Tower is in")
    assert not any(_bias_seen(monkeypatch, model, tokens))  # Llama has no biases: every call is an mm, as in HF
    with torch.no_grad():
        model.blocks[0].mlp.b_out[0] = 1.0  # an in-place edit makes that bias count again
    assert sum(_bias_seen(monkeypatch, model, tokens)) == 1
    training = _bias_seen(monkeypatch, model, tokens, grad=True)  # every bias can get its gradient
    assert sum(training) == len(training) - model.cfg.n_layers  # all but W_gate's, which has none (as in TransformerLens)


def test_real_biases_are_kept():
    model = lens("tiny-qwen2")  # q/k/v biases
    tokens = model.to_tokens("The Eiffel Tower is in")
    with torch.no_grad():
        assert torch.equal(model(tokens), hf("tiny-qwen2")(tokens).logits)
