"""Text generation with a key/value cache, for one prompt or a batch of prompts of any lengths.

A batch is left-padded and masked, so each row's positions and attention are those it would have
alone: batched greedy output equals solo greedy output. Sampling follows HuggingFace's order
(temperature, then top-k, then top-p) and is reproducible under `seed`.
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..config import compute_dtype
from ..errors import InputError
from . import tokens as tok


class KVCacheEntry:
    """One layer's keys (after rotary) and values so far: [batch, key_pos, kv_head_index, d_head].

    A frozen entry hands back the cached keys and values with the new ones appended, but keeps only
    the cached ones: many continuations can then be run from one shared prefix (KVCache.freeze).
    """

    def __init__(self):
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.frozen = False  # TransformerLens': a frozen entry is read but keeps nothing new

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        full_k = k if self.k is None else torch.cat([self.k, k], dim=1)
        full_v = v if self.v is None else torch.cat([self.v, v], dim=1)
        if not self.frozen:
            self.k, self.v = full_k, full_v
        return full_k, full_v


class KVCache:
    """Every layer's cache entry, plus which cached keys are padding (None: none are).

    freeze() keeps the cache as it is now: later forwards read it but add nothing (each continuation
    of a shared prefix sees only the prefix); unfreeze() lets forwards append again.
    """

    def __init__(self, n_layers: int):
        self.entries = [KVCacheEntry() for _ in range(n_layers)]
        self.mask: Bool[Tensor, "batch key_pos"] | None = None
        self.past_len = 0
        self.frozen = False

    def __getitem__(self, layer: int) -> KVCacheEntry:
        return self.entries[layer]

    def freeze(self) -> None:
        """Forwards read the cache but add nothing to it (TransformerLens': run several continuations of one prefix)."""
        self.frozen = True
        for entry in self.entries:
            entry.frozen = True

    def unfreeze(self) -> None:
        self.frozen = False
        for entry in self.entries:
            entry.frozen = False

    def extend_mask(self, full_mask: Bool[Tensor, "batch key_pos"] | None, new: int) -> None:
        # Called by forward once all layers have appended; full_mask covers past and new keys.
        if self.frozen:
            return
        self.mask = full_mask
        self.past_len += new

    @classmethod
    def init_cache(cls, cfg, device=None, batch_size: int = 1) -> "KVCache":
        """An empty cache for a model of `cfg` (TransformerLens' constructor; device and batch size are taken
        from the first forward)."""
        return cls(cfg.n_layers)


def filter_logits(
    logits: Float[Tensor, "batch d_vocab"], temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
    freq_penalty: float = 0.0, counts: Float[Tensor, "batch d_vocab"] | None = None,
) -> Float[Tensor, "batch d_vocab"]:
    """Scale by temperature, subtract freq_penalty times each token's count so far (TransformerLens'
    sample_logits, in its order), keep the top_k, then the smallest set with probability >= top_p."""
    logits = logits / temperature
    if counts is not None and freq_penalty > 0:
        logits = logits - freq_penalty * counts
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # As HuggingFace: drop the low-probability tail whose total is <= 1 - top_p, keep >= 1 token.
        sorted_logits, order = torch.sort(logits, descending=False)
        tail = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
        tail[..., -1] = False
        logits = logits.masked_fill(tail.scatter(-1, order, tail), float("-inf"))
    return logits


def _check_options(max_new_tokens, temperature, top_k, top_p, freq_penalty, padding_side, return_type) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}.")
    if temperature < 0:
        raise InputError(f"temperature must be >= 0 (0 means greedy), got {temperature}.")
    if top_p is not None and not 0 < top_p <= 1:
        raise InputError(f"top_p must be in (0, 1], got {top_p}.")
    if top_k is not None and top_k < 0:
        raise InputError(f"top_k must be >= 0, got {top_k}.")
    if freq_penalty < 0:
        raise InputError(f"freq_penalty must be >= 0 (0 = none; TransformerLens ignores a negative one), got {freq_penalty}.")
    if padding_side not in (None, "left", "right"):
        raise InputError(f"padding_side must be 'left', 'right' or None (cfg.default_padding_side), got {padding_side!r}.")
    if return_type not in ("input", "str", "tokens", "embeds"):
        raise InputError(f"return_type must be 'input' (as the input), 'str', 'tokens' or 'embeds', got {return_type!r}.")


def _stop_tokens(model, eos_token_id, stop_at_eos: bool) -> tuple[list[int], int | None]:
    """(ids that stop a row, id that pads a stopped row), as TransformerLens: a list stops at any of its
    ids and pads with the tokenizer's EOS (its first id when the tokenizer has none)."""
    tokenizer_eos = getattr(model.tokenizer, "eos_token_id", None)
    if eos_token_id is None:
        eos_token_id = tokenizer_eos
    if not stop_at_eos or eos_token_id is None:
        return [], None
    stops = torch.as_tensor(eos_token_id).reshape(-1).tolist()
    if not stops:
        return [], None
    single = isinstance(eos_token_id, int) or torch.as_tensor(eos_token_id).ndim == 0
    return stops, stops[0] if single or tokenizer_eos is None else tokenizer_eos


@torch.no_grad()
def generate(
    model: "HookedTransformer",
    input: str | list[str] | Int[Tensor, "batch pos"],
    max_new_tokens: int = 10,
    *,
    stop_at_eos: bool = True,
    eos_token_id: int | list[int] | None = None,
    do_sample: bool = True,
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
    freq_penalty: float = 0.0,
    use_past_kv_cache: bool = True,
    prepend_bos: bool | None = None,
    padding_side: Literal["left", "right"] | None = None,
    return_type: Literal["input", "str", "tokens", "embeds"] = "input",
    verbose: bool = False,
    attention_mask: Tensor | None = None,
    seed: int | None = None,
):
    """Continue each prompt; TransformerLens 2.18's options, plus attention_mask and seed (lensutil's own).

    return_type "input" (default) mirrors the input: text in gives text out (prompt + continuation,
    each row cut at its first stop token), token ids in give token ids out ([batch, pos + new], rows
    that stopped padded with EOS); "str" and "tokens" convert; "embeds" is model.embed of the tokens.
    eos_token_id may be a list: a row stops at any of them. freq_penalty (sampling only) subtracts
    freq_penalty * (times a token occurs in the row so far) from the logits after the temperature.
    verbose=True shows a progress bar (TransformerLens' default; lensutil's is False: no bar debris).

    Text is tokenised as model.to_tokens(input, prepend_bos, padding_side) and returned tokens start
    with exactly that; each row continues from its last real token whatever the side. Token ids come
    back left-aligned: where attention_mask (or, without one, the pads padding_side names) shows
    right padding, each row's real tokens are moved to its end first. The new tokens are out[:, pos:]
    either way; the prompt part's mask is then attention_mask.sort(-1).values (zeros first)."""
    _check_options(max_new_tokens, temperature, top_k, top_p, freq_penalty, padding_side, return_type)
    text_in = isinstance(input, (str, list))
    if text_in:
        prompt, prompt_mask = tok.tokenize(model, input, prepend_bos, padding_side)
        tokens, mask = _left_align(prompt, prompt_mask)  # the computation runs left-padded
    else:
        tokens = torch.as_tensor(input, device=model.cfg.device)
        tokens = tokens[None] if tokens.ndim == 1 else tokens
        if attention_mask is None and padding_side is not None:  # as TransformerLens' forward reads pads from tokens
            attention_mask = tok.generate_attention_mask(model, tokens, padding_side, prepend_bos)
        if attention_mask is not None:
            tokens, attention_mask = _left_align(tokens, attention_mask)
        mask = attention_mask if attention_mask is not None else torch.ones_like(tokens)
        prompt, prompt_mask = tokens, mask
    mask = torch.as_tensor(mask, device=tokens.device).long()
    greedy = not do_sample or temperature == 0
    stops, pad_eos = _stop_tokens(model, eos_token_id, stop_at_eos)
    stop_ids = torch.tensor(stops, dtype=torch.long, device=tokens.device)
    generator = torch.Generator(device=tokens.device).manual_seed(seed) if seed is not None else None
    finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    cache = KVCache(model.cfg.n_layers) if use_past_kv_cache else None
    counts = None  # [batch, d_vocab]: each row's real tokens so far, for freq_penalty
    prompt_len, step_input = tokens.shape[1], tokens
    # Per-token work kept small: with no padding the forward gets no mask at all (nothing to check or
    # build), and with padding a bool mask (checked once per step without a sort over its values).
    padded = not bool(mask.all())
    bar = _progress_bar(max_new_tokens) if verbose else None
    for _ in range(max_new_tokens):
        # Run the blocks, then the final norm and unembedding for the last position only (as
        # HuggingFace's generate does): the other positions' logits would be thrown away.
        step_mask = mask.bool() if padded else None
        if cache is not None and cache.past_len and _cache_needs_recompute(model.cfg, cache.past_len, tokens.shape[1]):
            cache, step_input = KVCache(model.cfg.n_layers), tokens  # longrope's switch to its long factors
        if cache is not None:
            residual = model(step_input, attention_mask=step_mask, past_kv_cache=cache, stop_at_layer=model.cfg.n_layers)
        else:
            residual = model(tokens, attention_mask=step_mask, stop_at_layer=model.cfg.n_layers)
        next_logits = model.unembed(model.ln_final(residual[:, -1:]))[:, -1]
        # float32 (float64 for float64), on the tokens' device: a model placed over devices (placement.py)
        # leaves the logits on its unembedding's device.
        next_logits = next_logits.to(tokens.device, compute_dtype(next_logits.dtype))
        if greedy:
            nxt = next_logits.argmax(-1)
        else:
            if freq_penalty > 0 and counts is None:
                counts = torch.zeros_like(next_logits).scatter_add_(1, tokens, mask.to(next_logits.dtype))
            probs = filter_logits(next_logits, temperature, top_k, top_p, freq_penalty, counts).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        if stops:
            nxt = torch.where(finished, pad_eos, nxt)  # rows that stopped keep emitting EOS
            finished |= torch.isin(nxt, stop_ids)
        if counts is not None:
            counts.scatter_add_(1, nxt[:, None], torch.ones_like(counts[:, :1]))
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        if padded:  # without padding the mask is all ones: it is made once, at the end
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        step_input = nxt[:, None]
        if bar is not None:
            bar.update(1)
        if stops and finished.all():
            break
    if bar is not None:
        bar.close()
    out = torch.cat([prompt, tokens[:, prompt_len:]], dim=1)
    if return_type == "input":
        return_type = "str" if text_in else "tokens"
    if return_type == "tokens":
        return out
    if return_type == "embeds":
        return model.embed(out)
    bos = tok._bos_id(model)
    texts = []
    for row, m, new in zip(prompt, prompt_mask, tokens[:, prompt_len:].tolist()):
        real = row[torch.as_tensor(m, device=row.device).bool()].tolist()
        # Text in: the BOS that prepend_bos added is dropped; token ids in: a leading BOS is.
        drop_bos = (prepend_bos if prepend_bos is not None else model.cfg.default_prepend_bos) if text_in else real[:1] == [bos]
        cut = min((new.index(t) for t in stops if t in new), default=len(new))
        texts.append(model.to_string(torch.tensor(real[int(bool(drop_bos)):] + new[:cut], dtype=torch.long)))
    return texts[0] if isinstance(input, str) or (not text_in and len(texts) == 1) else texts


def _cache_needs_recompute(cfg, past_len: int, total_len: int) -> bool:
    """Whether generation must drop its KV cache and run the whole sequence again, as HF's does.

    longrope: the keys cached so far were rotated with the short factors; when the sequence first
    passes original_max_position_embeddings, HF's Phi-3 generate (prepare_inputs_for_generation)
    drops its cache and recomputes every key with the long factors.
    """
    if (cfg.rope_scaling or {}).get("rope_type") != "longrope":
        return False
    original = cfg.rope_scaling["original_max_position_embeddings"]
    return total_len >= original + 1 and past_len <= original


def _progress_bar(total: int):
    from tqdm.auto import tqdm  # notebook-aware: a widget in Jupyter, a text bar in a terminal

    return tqdm(total=total, desc="generate", unit="token")


def _left_align(tokens: Int[Tensor, "batch pos"], mask) -> tuple[Int[Tensor, "batch pos"], Tensor]:
    """Move each row's real tokens to its end (pads first), keeping their order."""
    real = tok.check_attention_mask(torch.as_tensor(mask, device=tokens.device), *tokens.shape)
    if real is None or (real[:, 1:] >= real[:, :-1]).all():  # nothing masked, or already left-padded
        return tokens, mask
    # Position ids count real tokens only and pads are never attended, so moving the pads changes
    # no real token's computation; it only puts each row's last real token in the last column.
    order = torch.argsort(real.long(), dim=-1, stable=True)
    return tokens.gather(1, order), real.gather(1, order).long()
