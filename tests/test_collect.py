"""lensutil.collect_activations (issue 14): a few hooks over many sequences, in bounded memory."""

import pytest
import torch

from lensutil import collect_activations
from lensutil.analysis.collect_store import load_collected
from lensutil.errors import HookNameError, InputError, LensError
from lensutil.text.tokens import tokenize

from _models import lens

TEXTS = ["The Eiffel Tower is in the city of", "def fibonacci(n):\n    return", "Hi", "1, 2, 3, 5, 8, 13,", "Water boils at"]
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z", "blocks.0.mlp.hook_post"]


def _reference(model, texts, names, batch_size, padding_side=None):
    """run_with_cache on the same batches; every real position, in order."""
    out = {n: [] for n in names}
    for i in range(0, len(texts), batch_size):
        tokens, mask = tokenize(model, texts[i:i + batch_size], padding_side=padding_side)
        _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=names)
        for n in names:
            out[n].append(cache[n][mask.bool()])
    return {n: torch.cat(v) for n, v in out.items()}


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_values_equal_run_with_cache_and_padding_is_dropped(name):
    model = lens(name)
    got = collect_activations(model, TEXTS, HOOKS, batch_size=2, progress=False)
    ref = _reference(model, TEXTS, HOOKS, batch_size=2)
    n_real = sum(len(model.to_str_tokens(t)) for t in TEXTS)
    for n in HOOKS:
        assert got[n].shape[0] == n_real
        assert torch.equal(got[n], ref[n]), n
    assert not got[HOOKS[0]].is_inference()  # usable for training a probe


def test_rows_say_which_sequence_and_position_they_are():
    model = lens("tiny-llama")
    got = collect_activations(model, TEXTS, HOOKS[:1], batch_size=2, progress=False)
    lengths = [len(model.to_str_tokens(t)) for t in TEXTS]
    assert got["_seq"].tolist() == [s for s, n in enumerate(lengths) for _ in range(n)]
    assert got["_pos"].tolist() == [p for n in lengths for p in range(n)]


def test_left_padding_gives_the_same_rows():
    model = lens("tiny-llama")
    tokens, mask = tokenize(model, TEXTS, padding_side="left")
    got = collect_activations(model, tokens, HOOKS[:1], attention_mask=mask, batch_size=5, progress=False)
    ref = _reference(model, TEXTS, HOOKS[:1], batch_size=5, padding_side="left")
    assert torch.equal(got[HOOKS[0]], ref[HOOKS[0]])


def test_last_and_index_positions():
    model = lens("tiny-llama")
    tokens, mask = tokenize(model, TEXTS)
    _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=HOOKS[:1])
    full = cache[HOOKS[0]]
    last = mask.sum(-1) - 1
    got = collect_activations(model, TEXTS, HOOKS[:1], batch_size=5, positions="last", progress=False)
    assert torch.equal(got[HOOKS[0]], full[torch.arange(5), last]) and got["_pos"].tolist() == last.tolist()
    got = collect_activations(model, TEXTS, HOOKS[:1], batch_size=5, positions=1, progress=False)
    assert torch.equal(got[HOOKS[0]], full[:, 1])
    got = collect_activations(model, TEXTS, HOOKS[:1], batch_size=5, positions=-2, progress=False)
    assert torch.equal(got[HOOKS[0]], full[torch.arange(5), last - 1])
    chosen = torch.zeros_like(mask, dtype=torch.bool)
    chosen[:, 0] = True
    chosen[0, 3] = True
    got = collect_activations(model, tokens, HOOKS[:1], attention_mask=mask, batch_size=2, positions=chosen, progress=False)
    assert torch.equal(got[HOOKS[0]], full[chosen & mask.bool()])
    got = collect_activations(model, TEXTS, HOOKS[:1], batch_size=2, positions=lambda t, m: m & (t == t[:, :1]), progress=False)
    assert got["_pos"].tolist().count(0) == 5


def test_the_forward_stops_after_the_last_block_needed():
    model = lens("tiny-llama")
    calls = []
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", lambda t, hook: calls.append("block 1")),
                                ("ln_final.hook_normalized", lambda t, hook: calls.append("ln_final"))]):
        collect_activations(model, TEXTS, ["blocks.0.hook_resid_post"], batch_size=2, progress=False)
        assert calls == []
        collect_activations(model, TEXTS, ["blocks.1.hook_resid_pre"], batch_size=5, progress=False)
        assert calls == ["block 1"]


def test_iterables_of_strings_and_of_batches_give_the_same_rows():
    model = lens("tiny-llama")
    ref = collect_activations(model, TEXTS, HOOKS[:1], batch_size=2, progress=False)
    streamed = collect_activations(model, (t for t in TEXTS), HOOKS[:1], batch_size=2, progress=False)
    batches = []
    for i in range(0, 5, 2):
        tokens, mask = tokenize(model, TEXTS[i:i + 2])
        batches.append({"input_ids": tokens, "attention_mask": mask})
    from_dicts = collect_activations(model, batches, HOOKS[:1], progress=False)
    lists = collect_activations(model, [TEXTS[0:2], TEXTS[2:4], TEXTS[4:]], HOOKS[:1], progress=False)
    for got in (streamed, from_dicts, lists):
        assert torch.equal(got[HOOKS[0]], ref[HOOKS[0]]) and torch.equal(got["_seq"], ref["_seq"])


@pytest.mark.parametrize("fmt", ["safetensors", "memmap"])
def test_out_streams_to_disk_and_loads_back_equal(tmp_path, fmt):
    model = lens("tiny-llama")
    ref = collect_activations(model, TEXTS, HOOKS, batch_size=2, progress=False, dtype=torch.float16)
    path = collect_activations(model, TEXTS, HOOKS, batch_size=2, progress=False, dtype=torch.float16,
                               out=tmp_path / "acts", format=fmt)
    assert path == tmp_path / "acts" and not (tmp_path / "acts.partial").exists()
    loaded = load_collected(path)
    assert set(loaded) == set(ref)
    for n, t in ref.items():
        assert loaded[n].dtype == t.dtype and torch.equal(loaded[n], t), n
    with pytest.raises(InputError, match="already exists"):
        collect_activations(model, TEXTS, HOOKS, progress=False, out=tmp_path / "acts", format=fmt)


@pytest.mark.parametrize("fmt", ["safetensors", "memmap"])
def test_an_interrupted_run_leaves_no_file_and_no_hook(tmp_path, fmt):
    model = lens("tiny-llama")

    def texts():
        yield from TEXTS[:4]
        raise KeyboardInterrupt  # as Ctrl-C in the middle of a run

    with pytest.raises(KeyboardInterrupt):
        collect_activations(model, texts(), HOOKS, batch_size=2, progress=False, out=tmp_path / "acts", format=fmt)
    assert list(tmp_path.iterdir()) == []
    assert model.list_hooks() == {}
    with pytest.raises(InputError, match="not a finished"):
        load_collected(tmp_path / "acts.partial")


def test_hooks_removed_after_an_exception_in_memory():
    model = lens("tiny-llama")

    def bad_positions(tokens, mask):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        collect_activations(model, TEXTS, HOOKS, positions=bad_positions, progress=False)
    assert model.list_hooks() == {}
    assert not any(hp.has_hooks for hp in model.hook_dict.values())


def test_bad_input_is_explained(tmp_path):
    model = lens("tiny-llama")
    with pytest.raises(HookNameError):
        collect_activations(model, TEXTS, ["blocks.0.hook_resid_pots"], progress=False)
    with pytest.raises(LensError, match="key_pos"):
        collect_activations(model, TEXTS, ["blocks.0.attn.hook_pattern"], progress=False)
    with pytest.raises(InputError, match="outside a sequence"):
        collect_activations(model, TEXTS, HOOKS[:1], positions=5, progress=False)
    with pytest.raises(InputError, match="empty"):
        collect_activations(model, iter([]), HOOKS[:1], progress=False)
    with pytest.raises(InputError, match="bfloat16"):
        collect_activations(model, TEXTS, HOOKS[:1], progress=False, dtype=torch.bfloat16, out=tmp_path / "acts", format="memmap")
    assert list(tmp_path.iterdir()) == []


def test_collects_less_memory_than_run_with_cache_of_everything():
    model = lens("tiny-llama")
    got = collect_activations(model, TEXTS, ["blocks.0.hook_resid_post"], batch_size=5, progress=False)
    tokens, mask = tokenize(model, TEXTS)
    _, cache = model.run_with_cache(tokens, attention_mask=mask)
    everything = sum(t.numel() * t.element_size() for t in cache.values())
    kept = got["blocks.0.hook_resid_post"]
    assert everything >= 20 * kept.numel() * kept.element_size()


# ---- encoders and a tokenizer's own output (issue 24, item 1.5) ---------------------------------
PAIRS = [("The cat sat on the mat.", "It was tired."), ("Paris is the capital of [MASK].", "France"),
         ("Hi", "there, how are you today?"), ("Water boils at", "100 degrees"), ("One", "Two")]
ENC_HOOKS = ["embed.hook_token_type_embed", "hook_full_embed", "blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]


def _encoder_reference(model, batches, names):
    """run_with_cache of each batch as the model takes it (texts or pairs); every real position, in order."""
    out = {n: [] for n in names}
    for batch in batches:
        _, cache = model.run_with_cache(batch, names_filter=names, return_type="logits" if model.cfg.mlm_head else "embeddings")
        mask = model.to_tokens(*([list(a for a, _ in batch), list(b for _, b in batch)] if isinstance(batch[0], tuple) else [batch]))[2]
        for n in names:
            out[n].append(cache[n][mask.bool()])
    return {n: torch.cat(v) for n, v in out.items()}


@pytest.mark.parametrize("name", ["tiny-bert", "minilm-l6"])
def test_encoder_rows_equal_run_with_cache_with_special_tokens_and_token_types(name):
    from _models import encoder

    model = encoder(name)
    after = ["mlm_head.ln.hook_normalized"] if model.cfg.mlm_head else []
    names = [*ENC_HOOKS, *after, f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    for inputs, batches in ((PAIRS, [PAIRS[0:2], PAIRS[2:4], PAIRS[4:]]),
                            ([a for a, _ in PAIRS], [[a for a, _ in PAIRS[i:i + 2]] for i in range(0, 5, 2)])):
        got = collect_activations(model, inputs, names, batch_size=2, progress=False)
        ref = _encoder_reference(model, batches, names)
        n_real = sum(len(model.to_str_tokens(x)) for x in inputs)  # [CLS] and [SEP]s included
        for n in names:
            assert got[n].shape[0] == n_real and torch.equal(got[n], ref[n]), n
        assert got["_pos"][0] == 0 and model.to_str_tokens(inputs[0])[0] == "[CLS]"
        types = ref["embed.hook_token_type_embed"]  # sentence B's rows differ from A's only if types reach the model
        assert (types != types[0]).any(-1).any() == (inputs is PAIRS)


def test_encoder_forward_stops_after_the_last_block_needed():
    from _models import encoder

    model = encoder("tiny-bert")
    calls = []
    with model.hooks(fwd_hooks=[("blocks.1.attn.hook_q", lambda t, hook: calls.append("block 1")),
                                ("mlm_head.ln.hook_normalized", lambda t, hook: calls.append("mlm_head"))]):
        collect_activations(model, PAIRS, ["blocks.0.hook_resid_post"], progress=False)
        assert calls == []
        collect_activations(model, PAIRS, ["hook_full_embed"], progress=False)
        assert calls == []
        collect_activations(model, PAIRS, ["blocks.1.attn.hook_z"], batch_size=5, progress=False)
        assert calls == ["block 1"]
        collect_activations(model, PAIRS, ["mlm_head.ln.hook_normalized"], batch_size=5, progress=False)
        assert calls == ["block 1", "block 1", "mlm_head"]
    assert model.list_hooks() == {}


def test_a_tokenizers_output_is_collected_as_its_token_ids_not_its_key_names():
    from _models import encoder

    model = encoder("tiny-bert")
    enc = model.tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt")
    got = collect_activations(model, enc, ENC_HOOKS, batch_size=5, progress=True)
    _, cache = model.run_with_cache(enc["input_ids"], token_type_ids=enc["token_type_ids"],
                                    attention_mask=enc["attention_mask"], names_filter=ENC_HOOKS)
    mask = enc["attention_mask"].bool()
    assert got["_seq"].max() == 4 and got["_seq"].shape[0] == int(mask.sum())
    for n in ENC_HOOKS:
        assert torch.equal(got[n], cache[n][mask]), n
    decoder = lens("tiny-llama")
    enc = decoder.tokenizer(TEXTS, padding=True, return_tensors="pt")
    got = collect_activations(decoder, enc, HOOKS, batch_size=2, progress=False)
    ref = {n: [] for n in HOOKS}
    for i in range(0, 5, 2):
        ids, m = enc["input_ids"][i:i + 2], enc["attention_mask"][i:i + 2]
        _, cache = decoder.run_with_cache(ids, attention_mask=m if not m.all() else None, names_filter=HOOKS)
        for n in HOOKS:
            ref[n].append(cache[n][m.bool()])
    for n in HOOKS:
        assert torch.equal(got[n], torch.cat(ref[n])), n


def test_encoder_and_tokenizer_input_mistakes_are_explained():
    from _models import encoder

    model = encoder("tiny-bert")
    with pytest.raises(InputError, match="input_ids"):
        collect_activations(model, {"text": PAIRS}, ENC_HOOKS, progress=False)
    with pytest.raises(InputError, match="prepend_bos"):
        collect_activations(model, PAIRS, ENC_HOOKS, prepend_bos=True, progress=False)
    with pytest.raises(InputError, match="pairs"):
        collect_activations(model, ["One text", ("a", "pair")], ENC_HOOKS, progress=False)
    decoder = lens("tiny-llama")
    ids, mask = tokenize(decoder, TEXTS)
    with pytest.raises(InputError, match="token_type_ids"):
        collect_activations(decoder, {"input_ids": ids, "attention_mask": mask, "token_type_ids": mask}, HOOKS, progress=False)
    with pytest.raises(InputError, match="same length"):
        collect_activations(decoder, [{"input_ids": [[1, 2, 3], [4]]}], HOOKS, progress=False)
