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


def test_in_place_attention_and_mlp_steps_keep_gradients_exact():
    # The written-out attention scales and masks its scores in place, and the gated MLP multiplies
    # in place when no gradient is recorded: with autograd on, gradients must still be HF's, bit for bit.
    model, ref = lens("tiny-llama", attn_implementation="eager"), hf("tiny-llama", attn_implementation="eager")
    tokens = model.to_tokens("The Eiffel Tower is in Paris, France")
    model.zero_grad(), ref.zero_grad()
    model(tokens, return_type="loss").backward()
    ref(tokens, labels=tokens).loss.backward()
    try:
        assert model.embed.W_E.grad.abs().sum() > 0
        assert torch.equal(model.embed.W_E.grad, ref.get_input_embeddings().weight.grad)
    finally:
        model.zero_grad(set_to_none=True), ref.zero_grad(set_to_none=True)


def test_weights_edited_or_replaced_after_a_forward_are_used_by_the_next():
    # _linear remembers each weight's [out, in] view (quantized_linear.QuantizableLinears._out_in): an
    # in-place edit must show through it, and `param.data = ...` (new storage) must replace it.
    edited, fresh = HookedTransformer.from_pretrained_no_processing("tiny-llama"), HookedTransformer.from_pretrained_no_processing("tiny-llama")
    tokens = edited.to_tokens("The Eiffel Tower is in")
    with torch.no_grad():
        before = edited(tokens)  # the views are made here
        edited.blocks[0].mlp.W_in.mul_(2)
        edited.blocks[1].attn.W_Q.data = edited.blocks[1].attn.W_Q.data * 3
        edited.blocks[1].attn._W_K.data = edited.blocks[1].attn._W_K.data.clone().neg_()
        fresh.blocks[0].mlp.W_in.mul_(2)
        fresh.blocks[1].attn.W_Q.mul_(3)
        fresh.blocks[1].attn._W_K.neg_()
        after = edited(tokens)
        assert not torch.equal(after, before)
        assert torch.equal(after, fresh(tokens))


def test_hooks_fire_at_every_generation_step_and_their_edits_change_the_output():
    model = lens("tiny-llama")
    prompt = model.to_tokens("The Eiffel Tower is in")
    plain = model.generate(prompt, max_new_tokens=5, do_sample=False, stop_at_eos=False)
    seen = []

    def record(x, hook):
        seen.append((hook.name, x.shape[1]))

    def ablate(x, hook):
        return torch.zeros_like(x)

    names = ["blocks.0.attn.hook_rot_k", "blocks.1.hook_resid_post", "blocks.0.ln1.hook_normalized", "blocks.1.mlp.hook_post"]
    with model.hooks(fwd_hooks=[(n, record) for n in names]):
        hooked = model.generate(prompt, max_new_tokens=5, do_sample=False, stop_at_eos=False)
    assert torch.equal(hooked, plain)  # reading hooks change nothing
    # the prompt once, then one position per new token (the last token's logits need no further step)
    assert [p for name, p in seen if name == names[1]] == [prompt.shape[1], 1, 1, 1, 1]
    assert {name for name, _ in seen} == set(names)
    with model.hooks(fwd_hooks=[(f"blocks.{model.cfg.n_layers - 1}.hook_attn_out", ablate)]):
        ablated = model.generate(prompt, max_new_tokens=5, do_sample=False, stop_at_eos=False)
    assert not torch.equal(ablated, plain)


# ---- the zero-bias shortcut never changes what a forward computes (issue 24) ----------------------


def test_a_bias_edited_through_data_after_a_forward_is_used():
    # `.data` edits do not bump a parameter's version counter: a shortcut remembering "all zeros"
    # by that counter kept skipping the +10 logit bias below (the logit moved by -0.82, not +10).
    model = HookedTransformer.from_pretrained_no_processing("tiny-llama")
    reference = HookedTransformer.from_pretrained_no_processing("tiny-llama")
    tokens = model.to_tokens("The Eiffel Tower is in")
    with torch.no_grad():
        before = model(tokens)
        model.unembed.b_U.data[7] = 10.0
        after = model(tokens)
        reference.unembed.b_U[7] = 10.0  # the same edit, made the ordinary way on a model never run
        assert torch.equal(after, reference(tokens))
        assert torch.allclose(after[..., 7] - before[..., 7], torch.tensor(10.0), atol=1e-4)
        model.unembed.b_U.data.zero_()  # and back: all zeros again, the plain product again
        assert torch.equal(model(tokens), before)
        model.blocks[0].mlp.b_out.data[3] = 1.0  # inside a block, under inference mode too
        with torch.inference_mode():
            model(tokens)
            model.blocks[0].mlp.b_out.data[3] = 0.0
            assert torch.equal(model(tokens), before)


def test_bias_edits_around_casts_and_reloads_are_used():
    model = HookedTransformer.from_pretrained_no_processing("tiny-llama")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = model.to_tokens("The Eiffel Tower is in")
    with torch.no_grad():
        before = model(tokens)
        model.double()
        model(tokens)
        model.blocks[1].attn.b_O.data += 0.5  # edited in float64, after a float64 forward
        model.float()
        edited = model(tokens)
        assert not torch.equal(edited, before)
        model.load_state_dict(state)  # reloaded: zeros again
        assert torch.equal(model(tokens), before)
        model.blocks[1].attn.b_O.data += 0.5
        assert torch.equal(model(tokens), edited)


def test_where_huggingface_has_a_bias_lensutil_always_passes_its_own(monkeypatch):
    # GPT-2's c_attn, c_proj, c_fc and mlp.c_proj have biases: HuggingFace runs addmm there, and so must
    # lensutil even where a bias is zero (mm and addmm may round differently on another CPU). Its lm_head
    # has none: a zero b_U is skipped (mm, as HF).
    model = HookedTransformer.from_pretrained_no_processing("tiny-gpt2")
    tokens = model.to_tokens("The Eiffel Tower is in")
    with torch.no_grad():
        model.blocks[0].mlp.b_in.zero_()
        model.blocks[0].attn.b_O.zero_()
    seen = _bias_seen(monkeypatch, model, tokens)
    assert seen == [True] * 4 * model.cfg.n_layers + [False]
    model = HookedTransformer.from_pretrained_no_processing("tiny-qwen2")  # q/k/v biases in HF; o_proj, MLP none
    with torch.no_grad():
        model.blocks[0].attn.b_Q.zero_()
    seen = _bias_seen(monkeypatch, model, tokens)
    per_layer = [True, True, True, False, False, False, False]  # q, k, v, o, gate, up, down
    assert seen == per_layer * model.cfg.n_layers + [False]
