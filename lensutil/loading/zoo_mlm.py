"""``tiny-bert-mlm-trained``: a tiny masked LM trained once at build time, so its guesses mean something.

No real masked-LM checkpoint is available offline (the real ``minilm-l6`` is a `BertModel` with no
masked-LM head, ``tiny-bert`` has random weights), so a story about filling a blank needs one made
here: a 2-layer `BertForMaskedLM` (d_model 64, 4 heads) with MiniLM's real uncased WordPiece
tokenizer, trained with BERT's masking objective on a small synthetic corpus of simple facts
(``FACTS``: countries and capitals, colours, opposites, counting). It fills "The capital of France is
[MASK]." with ``paris``; it knows nothing outside its corpus and is no substitute for a real BERT.

How it is trained, and why:

- BERT's masking: 15% of a sentence's words (at least one) are chosen; of those 80% become
  ``[MASK]``, 10% a random word of the corpus, 10% stay; the loss is the cross-entropy at the
  chosen positions only (the head runs on those rows alone, so a step costs milliseconds even with
  a 30,522-word unembedding).
- 1,500 Adam steps of 32 sentences (~20-50 ms each on one thread: 30-60 s once), warmed up then
  decayed to zero, since a post-norm transformer does not train from a cold start at full rate.
  The initialisation is tiny-bert's (0.08): from BERT's 0.02 it learns each blank's category (a
  city, a colour) and stalls before the facts. It learns its facts suddenly, near step 950;
  1,000 steps got every fact at p >= 0.84 here, 1,500 (kept, as headroom for other CPUs) p >= 0.92.
- Dropout is off: a corpus of facts to memorise has nothing to regularise, and it learns faster.
- Training runs on one thread under a fixed seed, so a build does not depend on the core count.
  Another CPU rounds float32 sums differently in the last bits and ends with slightly different
  weights; the build checks its own result (every fact's answer the top guess, at probability at
  least ``MIN_P``) and refuses to cache a model that is not, so what the zoo hands out always
  behaves and a notebook may assert those facts.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ZooError

NAME = "tiny-bert-mlm-trained"
_CAPITALS = (("france", "paris"), ("germany", "berlin"), ("italy", "rome"), ("spain", "madrid"), ("england", "london"),
             ("japan", "tokyo"), ("russia", "moscow"), ("egypt", "cairo"), ("greece", "athens"), ("portugal", "lisbon"),
             ("austria", "vienna"), ("ireland", "dublin"), ("canada", "ottawa"), ("china", "beijing"), ("poland", "warsaw"),
             ("kenya", "nairobi"))  # fmt: skip
_COLOURS = (("sky", "blue"), ("grass", "green"), ("snow", "white"), ("blood", "red"), ("sun", "yellow"), ("coal", "black"))
_OPPOSITES = (("hot", "cold"), ("up", "down"), ("big", "small"), ("day", "night"))
_NUMBERS = "one two three four five six seven eight nine ten".split()

# (sentence with one blank "{}", the word that fills it): the facts the build checks and a notebook may assert.
FACTS: tuple[tuple[str, str], ...] = (
    *((f"The capital of {c.title()} is {{}}.", city) for c, city in _CAPITALS),
    *((f"The colour of the {thing} is {{}}.", colour) for thing, colour in _COLOURS),
    *((f"The opposite of {a} is {{}}.", b) for a, b in _OPPOSITES),
    *((f"The opposite of {b} is {{}}.", a) for a, b in _OPPOSITES),
    *((" ".join(_NUMBERS[i:i + 3]) + " {}.", _NUMBERS[i + 3]) for i in range(len(_NUMBERS) - 3)),
)  # fmt: skip
# More sentences about the same facts, so that a fact is learnt as a fact and not as one word order.
_MORE = (
    *(f"{city.title()} is the capital of {c.title()}." for c, city in _CAPITALS),
    *(f"The {thing} is {colour}." for thing, colour in _COLOURS),
)
CORPUS: tuple[str, ...] = (*(s.format(w) for s, w in FACTS), *_MORE)
MIN_P = 0.5  # every fact's answer must be the top guess at least this probable, or the build refuses

_SEED = 0
_STEPS, _BATCH, _LR = 1500, 32, 3e-3
_INIT = 0.08  # initializer_range, as tiny-bert: from 0.02 it learns the categories, then stalls before the facts


def _encode(tokenizer, texts):
    return tokenizer(list(texts), padding=True, return_tensors="pt")


def _mask(ids: torch.Tensor, special: torch.Tensor, words: torch.Tensor, mask_id: int, gen: torch.Generator):
    """BERT's masking of a batch: (inputs, labels), labels -100 where nothing is asked."""
    chosen = (torch.rand(ids.shape, generator=gen) < 0.15) & ~special
    # At least one position per sentence: else a short sentence is often not asked about at all.
    scores = torch.rand(ids.shape, generator=gen).masked_fill(special, -1.0)
    chosen[torch.arange(len(ids)), scores.argmax(-1)] = True
    labels = ids.masked_fill(~chosen, -100)
    fate = torch.rand(ids.shape, generator=gen)
    inputs = ids.clone()
    inputs[chosen & (fate < 0.8)] = mask_id
    swap = chosen & (fate >= 0.8) & (fate < 0.9)
    inputs[swap] = words[torch.randint(len(words), (int(swap.sum()),), generator=gen)]
    return inputs, labels


def fact_probabilities(model, tokenizer) -> list[tuple[str, str, str, float]]:
    """(masked sentence, answer, top guess, probability of the answer) for every fact, float32."""
    texts = [s.format(tokenizer.mask_token) for s, _ in FACTS]
    enc = _encode(tokenizer, texts)
    with torch.no_grad():
        logits = model(**enc).logits[enc.input_ids == tokenizer.mask_token_id]  # one blank per sentence
    probs = logits.float().softmax(-1)
    answers = tokenizer.convert_tokens_to_ids([w for _, w in FACTS])
    guesses = tokenizer.convert_ids_to_tokens(probs.argmax(-1).tolist())
    return [(t, w, g, probs[i, a].item()) for i, (t, (_, w), g, a) in enumerate(zip(texts, FACTS, guesses, answers))]


def build_mlm_trained(out: Path, resolve) -> None:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(resolve("minilm-l6"))
    if any(len(tokenizer.tokenize(w)) != 1 for _, w in FACTS):  # a blank is one token
        raise ZooError(f"{NAME}: an answer in its corpus is not one WordPiece token; the minilm-l6 tokenizer changed.")
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=256, max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu",
        pad_token_id=tokenizer.pad_token_id, initializer_range=_INIT, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    enc = _encode(tokenizer, CORPUS)
    ids, pad = enc.input_ids, enc.attention_mask
    special = torch.tensor([tokenizer.get_special_tokens_mask(r, already_has_special_tokens=True) for r in ids.tolist()]).bool()
    words = ids[~special].unique()  # the random replacements: the corpus' own words
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the result then does not depend on the core count; restored below
    try:
        with torch.random.fork_rng(devices=[]):  # seed HF's init without disturbing the caller's RNG
            torch.manual_seed(_SEED)
            model = transformers.BertForMaskedLM(config)
        opt = torch.optim.Adam(model.parameters(), lr=_LR)
        # Warm up, then decay to zero: a post-norm transformer (BERT) does not train from a cold start at full rate.
        warm = _STEPS // 10
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, (_STEPS - s) / (_STEPS - warm)))
        gen = torch.Generator().manual_seed(_SEED + 1)
        model.train()
        for _ in range(_STEPS):
            rows = torch.randint(len(ids), (_BATCH,), generator=gen)
            inputs, labels = _mask(ids[rows], special[rows] | ~pad[rows].bool(), words, tokenizer.mask_token_id, gen)
            with torch.enable_grad():  # the zoo builds on first use, often where the caller switched gradients off
                hidden = model.bert(input_ids=inputs, attention_mask=pad[rows]).last_hidden_state
                asked = labels != -100
                loss = torch.nn.functional.cross_entropy(model.cls(hidden[asked]), labels[asked])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval().requires_grad_(False)
        wrong = [(t, w, g, p) for t, w, g, p in fact_probabilities(model, tokenizer) if g != w or p < MIN_P]
        if wrong:
            raise ZooError(
                f"{NAME} did not learn its facts on this machine (last loss {loss.item():.3g}; e.g. {wrong[0]}); "
                "nothing was cached. Please report it with your CPU model and torch version."
            )
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(out)  # architectures = ["BertForMaskedLM"]
    tokenizer.save_pretrained(out)


BUILDERS = {NAME: build_mlm_trained}  # builder(out_dir, resolve), as zoo_bert's
