"""Text generation with a key/value cache, for one prompt or a batch of prompts of any lengths.

A batch is left-padded and masked, so each row's positions and attention are those it would have
alone: batched greedy output equals solo greedy output. Sampling follows HuggingFace's order
(temperature, then top-k, then top-p) and is reproducible under `seed`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from . import tokens as tok
from .components import compute_dtype
from .errors import InputError

if TYPE_CHECKING:
    from .model import HookedTransformer


class KVCacheEntry:
    """One layer's keys (after rotary) and values so far: [batch, key_pos, kv_head_index, d_head]."""

    def __init__(self):
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=1)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=1)
        return self.k, self.v


class KVCache:
    """Every layer's cache entry, plus which cached keys are padding (None: none are)."""

    def __init__(self, n_layers: int):
        self.entries = [KVCacheEntry() for _ in range(n_layers)]
        self.mask: Bool[Tensor, "batch key_pos"] | None = None
        self.past_len = 0

    def __getitem__(self, layer: int) -> KVCacheEntry:
        return self.entries[layer]

    def extend_mask(self, full_mask: Bool[Tensor, "batch key_pos"] | None, new: int) -> None:
        # Called by forward once all layers have appended; full_mask covers past and new keys.
        self.mask = full_mask
        self.past_len += new


def filter_logits(
    logits: Float[Tensor, "batch d_vocab"], temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> Float[Tensor, "batch d_vocab"]:
    """Scale by temperature, keep the top_k, then the smallest set with probability >= top_p."""
    logits = logits / temperature
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


def _check_options(max_new_tokens, temperature, top_k, top_p) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}.")
    if temperature < 0:
        raise InputError(f"temperature must be >= 0 (0 means greedy), got {temperature}.")
    if top_p is not None and not 0 < top_p <= 1:
        raise InputError(f"top_p must be in (0, 1], got {top_p}.")
    if top_k is not None and top_k < 0:
        raise InputError(f"top_k must be >= 0, got {top_k}.")


@torch.no_grad()
def generate(
    model: "HookedTransformer",
    input: str | list[str] | Int[Tensor, "batch pos"],
    max_new_tokens: int = 10,
    *,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_at_eos: bool = True,
    eos_token_id: int | None = None,
    use_past_kv_cache: bool = True,
    prepend_bos: bool | None = None,
    attention_mask: Tensor | None = None,
    seed: int | None = None,
):
    """Continue each prompt. Text in gives text out (prompt + continuation, each row cut at its EOS);
    token ids in give token ids out ([batch, pos + new], rows that stopped padded with EOS).

    Token ids come back left-aligned: where attention_mask shows right padding (or any pad before a
    real token), each row's real tokens are moved to its end first, so that the continuation follows
    the prompt's last real token, not a pad. The new tokens are out[:, pos:] either way; the prompt
    part's mask is then attention_mask.sort(-1).values (zeros first)."""
    _check_options(max_new_tokens, temperature, top_k, top_p)
    text_in = isinstance(input, (str, list))
    if text_in:
        tokens, mask = tok.tokenize(model, input, prepend_bos, padding_side="left")
    else:
        tokens = torch.as_tensor(input, device=model.cfg.device)
        tokens = tokens[None] if tokens.ndim == 1 else tokens
        if attention_mask is not None:
            tokens, attention_mask = _left_align(tokens, attention_mask)
        mask = attention_mask if attention_mask is not None else torch.ones_like(tokens)
    mask = torch.as_tensor(mask, device=tokens.device).long()
    greedy = not do_sample or temperature == 0
    if eos_token_id is None and model.tokenizer is not None:
        eos_token_id = model.tokenizer.eos_token_id
    generator = torch.Generator(device=tokens.device).manual_seed(seed) if seed is not None else None
    finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    cache = KVCache(model.cfg.n_layers) if use_past_kv_cache else None
    prompt_len, step_input = tokens.shape[1], tokens
    # Per-token work kept small: with no padding the forward gets no mask at all (nothing to check or
    # build), and with padding a bool mask (checked once per step without a sort over its values).
    padded = not bool(mask.all())
    for _ in range(max_new_tokens):
        # Run the blocks, then the final norm and unembedding for the last position only (as
        # HuggingFace's generate does): the other positions' logits would be thrown away.
        step_mask = mask.bool() if padded else None
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
            probs = filter_logits(next_logits, temperature, top_k, top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        if stop_at_eos and eos_token_id is not None:
            nxt = torch.where(finished, eos_token_id, nxt)  # rows that stopped keep emitting EOS
            finished |= nxt == eos_token_id
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        if padded:  # without padding the mask is all ones: it is made once, at the end
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        step_input = nxt[:, None]
        if stop_at_eos and finished.all():
            break
    if not padded:
        mask = torch.ones_like(tokens)
    if not text_in:
        return tokens
    texts = [_decode_row(model, row, m, prompt_len, eos_token_id, stop_at_eos, prepend_bos) for row, m in zip(tokens, mask)]
    return texts[0] if isinstance(input, str) else texts


def _left_align(tokens: Int[Tensor, "batch pos"], mask) -> tuple[Int[Tensor, "batch pos"], Tensor]:
    """Move each row's real tokens to its end (pads first), keeping their order."""
    real = tok.check_attention_mask(torch.as_tensor(mask, device=tokens.device), *tokens.shape)
    if real is None or (real[:, 1:] >= real[:, :-1]).all():  # nothing masked, or already left-padded
        return tokens, mask
    # Position ids count real tokens only and pads are never attended, so moving the pads changes
    # no real token's computation; it only puts each row's last real token in the last column.
    order = torch.argsort(real.long(), dim=-1, stable=True)
    return tokens.gather(1, order), real.gather(1, order).long()


def _decode_row(model, row, mask, prompt_len, eos_token_id, stop_at_eos, prepend_bos) -> str:
    prompt = row[:prompt_len][mask[:prompt_len].bool()].tolist()
    if prepend_bos if prepend_bos is not None else model.cfg.default_prepend_bos:
        prompt = prompt[1:]
    new = row[prompt_len:].tolist()
    if stop_at_eos and eos_token_id in new:
        new = new[: new.index(eos_token_id)]
    return model.to_string(torch.tensor(prompt + new, dtype=torch.long))
