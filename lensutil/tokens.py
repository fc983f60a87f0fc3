"""Text <-> tokens, attention masks and position ids.

lensutil tokenises each string without the tokenizer's own special tokens, prepends BOS itself when
asked, and pads by hand, so the attention mask is known exactly (it never has to be guessed back
from the pad token, which is often the same id as EOS).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from .errors import AttentionMaskError, InputError

if TYPE_CHECKING:
    from .model import HookedTransformer

PaddingSide = Literal["left", "right"]


def _tokenizer(model: "HookedTransformer"):
    if model.tokenizer is None:
        raise InputError(
            "This model has no tokenizer, so it cannot take text. Pass token ids as a tensor, or load "
            "with HookedTransformer.from_pretrained(..., tokenizer=AutoTokenizer.from_pretrained(...))."
        )
    return model.tokenizer


def pad_id(model: "HookedTransformer") -> int:
    tok = _tokenizer(model)
    for candidate in (tok.pad_token_id, tok.eos_token_id, 0):
        if candidate is not None:
            return candidate
    return 0  # unreachable; keeps type checkers calm


def tokenize(
    model: "HookedTransformer",
    text: str | list[str],
    prepend_bos: bool | None = None,
    padding_side: PaddingSide | None = None,
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Token ids and the 0/1 attention mask for a string or a list of strings."""
    tok = _tokenizer(model)
    if isinstance(text, str):
        text = [text]
    if not text or not all(isinstance(t, str) for t in text):
        raise InputError(f"Expected a string or a non-empty list of strings, got {type(text).__name__}.")
    prepend_bos = model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
    padding_side = padding_side or model.cfg.default_padding_side
    if padding_side not in ("left", "right"):
        raise InputError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in text]
    if prepend_bos:
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        rows = [[bos, *r] for r in rows]
    if any(len(r) == 0 for r in rows):
        raise InputError("An empty string gives no tokens; use prepend_bos=True or give some text.")
    width, pad = max(len(r) for r in rows), pad_id(model)
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if padding_side == "left" else slice(0, len(r))
        tokens[i, span] = torch.tensor(r)
        mask[i, span] = 1
    return tokens.to(model.cfg.device), mask.to(model.cfg.device)


def to_str_tokens(model: "HookedTransformer", input, prepend_bos: bool | None = None) -> list:
    tok = _tokenizer(model)
    if isinstance(input, list) and input and isinstance(input[0], str) and len(input) > 1:
        return [to_str_tokens(model, t, prepend_bos) for t in input]
    if isinstance(input, (str, list)):
        tokens, mask = tokenize(model, input, prepend_bos)
        ids = tokens[0][mask[0].bool()].tolist()
    else:
        ids = torch.as_tensor(input).squeeze()
        if ids.ndim > 1:
            raise InputError(f"to_str_tokens takes one sequence; got tokens of shape {tuple(ids.shape)}.")
        ids = ids.reshape(-1).tolist()
    return [tok.decode([i], clean_up_tokenization_spaces=False) for i in ids]


def to_string(model: "HookedTransformer", tokens) -> str | list[str]:
    tok = _tokenizer(model)
    tokens = torch.as_tensor(tokens)
    if tokens.ndim <= 1:
        return tok.decode(tokens.reshape(-1).tolist(), clean_up_tokenization_spaces=False)
    return [tok.decode(row.tolist(), clean_up_tokenization_spaces=False) for row in tokens]


def to_single_token(model: "HookedTransformer", string: str) -> int:
    ids = _tokenizer(model)(string, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise InputError(f"{string!r} is {len(ids)} tokens ({ids}), not one; try it with or without a leading space.")
    return ids[0]


def generate_attention_mask(
    model: "HookedTransformer", tokens: Int[Tensor, "batch pos"], padding_side: PaddingSide | None = None
) -> Int[Tensor, "batch pos"]:
    """A 0/1 mask for padded token ids, read from the pad token and the padding side.

    Only the run of pad tokens at the padded end counts as padding, so a pad id that doubles as EOS
    inside a row stays attended. Prefer the mask `tokenize` returns when you still have the text.
    """
    tokens = torch.as_tensor(tokens)
    if tokens.ndim == 1:
        tokens = tokens[None]
    padding_side = padding_side or model.cfg.default_padding_side
    real = tokens != pad_id(model)
    if padding_side == "left":
        return (real.long().cumsum(-1) > 0).long()  # attended from the first real token on
    return (real.flip(-1).long().cumsum(-1) > 0).flip(-1).long()  # up to the last real token


def check_attention_mask(mask, batch: int, pos: int, past_len: int = 0) -> Bool[Tensor, "batch key_pos"] | None:
    """Validate a [batch, pos] 1/0 mask and return it as bool, or None when nothing is masked."""
    mask = torch.as_tensor(mask)
    shapes = {(batch, pos)} | ({(batch, past_len + pos)} if past_len else set())
    if tuple(mask.shape) not in shapes:
        expected = " or ".join(f"[batch, pos] = {list(s)}" for s in sorted(shapes))
        raise AttentionMaskError(
            f"attention_mask has shape {list(mask.shape)}, expected {expected} to match the tokens. "
            "Build it from the same tokens: tokens, mask = lensutil.tokens.tokenize(model, texts), or "
            "model.generate_attention_mask(tokens)."
        )
    if mask.dtype != torch.bool:
        values = torch.unique(mask.float())
        if torch.isinf(values).any() or (values < 0).any():
            raise AttentionMaskError(
                "attention_mask looks additive (0 = attend, -inf or a large negative = masked). lensutil "
                "wants 1 = attend, 0 = masked: pass (mask == 0) instead."
            )
        if not set(values.tolist()) <= {0.0, 1.0}:
            raise AttentionMaskError(f"attention_mask must hold only 0 and 1 (or bools); found values {values.tolist()}.")
        mask = mask != 0
    empty = (~mask.any(-1)).nonzero().flatten().tolist()
    if empty:
        raise AttentionMaskError(f"attention_mask rows {empty} attend to no token; every row needs at least one 1.")
    return None if mask.all() else mask


def positions_from_mask(mask: Bool[Tensor, "batch key_pos"], past_len: int) -> Int[Tensor, "batch pos"]:
    # Position ids count real tokens only, as HuggingFace's generate does, so a left-padded row gets
    # the same positions as the row run alone. Pad positions are clamped to 0 (their value is unused).
    return (mask.long().cumsum(-1) - 1).clamp(min=0)[:, past_len:]
