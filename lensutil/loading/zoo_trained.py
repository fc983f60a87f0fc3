"""Zoo entries trained for seconds at build time, for stories where the output must mean something.

- ``tiny-moe-trained``: a 2-layer Mixtral (d_model 64, 4 experts, top-1 routing) that continues
  four lists: months, weekdays, the number words one..twelve and the letters A..Z
  ("July August" -> " September October ..."), wrapping around. Its float32 greedy output is right;
  its router is built so that bfloat16 rounding flips expert choices (see ``_ROUTER_SHARED``) and
  each flip sends a token to an expert that never learned it, so a half-precision router visibly
  breaks the output. Notebook 07 tells that story.

How it is trained, and why:

- Its own word-level tokenizer (60 ids: ``<unk>``, ``<s>`` = BOS, ``</s>`` = EOS and pad, one id
  per word), so the unembedding is 60 wide and training takes ~150 Adam steps of a few ms each.
- Only the experts learn. Embeddings, attention, norms, the unembedding and the router keep their
  seeded random values, so the answer has to come from the expert a token is routed to; with top-1
  routing a flip replaces the token's whole MLP output. The unembedding is scaled by 10 so the
  (frozen) final RMSNorm does not cap the logits below what a confident answer needs.
- The router is random plus a component shared by every expert (``_ROUTER_SHARED`` x the init
  scale): every token's router logits are then large (about 100) and apart by 0.1-1. The shared part
  cancels in the choice, so float32 (rounding ~1e-5 there) routes as trained; bfloat16 (8
  significant bits, a step of 0.5 at 100) flips a quarter or more of the choices.
- Training runs on one thread under a fixed seed, so a build does not depend on the core count.
  Another CPU rounds float32 sums differently in the last bits and ends with slightly different
  weights; the build checks its own result (every next word of every list right) and refuses to
  cache a model that is not, so what the zoo hands out always behaves.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ZooError

LISTS: tuple[tuple[str, ...], ...] = (
    tuple("January February March April May June July August September October November December".split()),
    tuple("Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()),
    tuple("one two three four five six seven eight nine ten eleven twelve".split()),
    tuple("A B C D E F G H I J K L M N O P Q R S T U V W X Y Z".split()),
)
_SPECIALS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2: BOS 1, EOS = pad 2, as the other zoo entries
_SEED = 0
_INIT = 0.08  # initializer_range, as the random zoo entries
_ROUTER_SHARED = 200  # the shared router component, in units of the init scale (see the docstring)
_UNEMBED_SCALE = 10.0
_STEPS, _BATCH, _LENGTH, _LR = 150, 32, 24, 3e-3


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(dict.fromkeys(_SPECIALS + sum(LISTS, ())))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # decode joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="</s>", unk_token="<unk>")


def _batch(tokenizer, gen: torch.Generator) -> torch.Tensor:
    """BOS then _LENGTH words of a random list from a random start, wrapping around."""
    rows = []
    for _ in range(_BATCH):
        words = LISTS[int(torch.randint(len(LISTS), (1,), generator=gen))]
        start = int(torch.randint(len(words), (1,), generator=gen))
        text = " ".join(words[(start + i) % len(words)] for i in range(_LENGTH))
        rows.append([tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False).input_ids])
    return torch.tensor(rows)


def _all_next_words_right(model, tokenizer) -> bool:
    """Teacher-forced: from every start of every list, each next word is the argmax (float32)."""
    gen = torch.Generator().manual_seed(_SEED + 9)
    with torch.no_grad():
        for _ in range(4):
            x = _batch(tokenizer, gen)
            if not torch.equal(model(x[:, :-1]).logits[:, 1:].argmax(-1), x[:, 2:]):
                return False
    return True


def build_moe_trained(out: Path) -> None:
    import transformers

    tokenizer = _tokenizer()
    config = transformers.MixtralConfig(
        vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=2, initializer_range=_INIT,
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, num_local_experts=4, num_experts_per_tok=1, sliding_window=None,
        tie_word_embeddings=False,
    )  # fmt: skip
    threads = torch.get_num_threads()
    # One thread while training: the result then does not depend on the machine's core count; the
    # caller's setting is restored below (a library never leaves process-wide state changed).
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):  # seed HF's init without disturbing the caller's RNG
            torch.manual_seed(_SEED)
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        noise = torch.Generator().manual_seed(_SEED + 2)
        with torch.no_grad():
            model.lm_head.weight.mul_(_UNEMBED_SCALE)
            for name, p in model.named_parameters():
                if name.endswith("mlp.gate.weight"):  # [num_experts, d_model]: one shared row added to all
                    p.add_(_ROUTER_SHARED * _INIT * torch.randn(p.shape[1], generator=noise))
        for name, p in model.named_parameters():
            p.requires_grad_(".experts." in name)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=_LR)
        gen = torch.Generator().manual_seed(_SEED + 3)
        model.train()
        with torch.enable_grad():  # the zoo builds on first use, often where the caller switched gradients off
            for _ in range(_STEPS):
                x = _batch(tokenizer, gen)
                logits = model(x[:, :-1]).logits[:, 1:]  # the word after BOS is the prompt: no target for BOS
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 2:].reshape(-1))
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval().requires_grad_(False)
        if not _all_next_words_right(model, tokenizer):
            raise ZooError(
                f"tiny-moe-trained did not learn its lists on this machine (last loss {loss.item():.3g}); "
                "nothing was cached. Please report it with your CPU model and torch version."
            )
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


BUILDERS = {"tiny-moe-trained": build_moe_trained}
TRAINED_NAMES: tuple[str, ...] = tuple(BUILDERS)
