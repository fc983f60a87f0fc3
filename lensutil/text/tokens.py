"""Text <-> tokens, attention masks and position ids.

lensutil tokenises each string without the tokenizer's own special tokens, prepends BOS itself when
asked, and pads by hand, so the attention mask is known exactly (it never has to be guessed back
from the pad token, which is often the same id as EOS).
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from ..errors import AttentionMaskError, InputError, MissingVocabSizeError


PaddingSide = Literal["left", "right"]


def _tokenizer(model: "HookedTransformer"):
    if model.tokenizer is None:
        raise InputError(
            "This model has no tokenizer, so it cannot take text. Pass token ids as a tensor, or load "
            "with HookedTransformer.from_pretrained(..., tokenizer=AutoTokenizer.from_pretrained(...))."
        )
    return model.tokenizer


def take_vocab_size(cfg, tokenizer) -> None:
    """d_vocab (and d_vocab_out) from `tokenizer` where the config leaves them unset (-1), as TransformerLens."""
    if tokenizer is None and cfg.d_vocab == -1:
        raise MissingVocabSizeError(
            "d_vocab=-1 and no tokenizer: Must provide a tokenizer if d_vocab is not provided (TransformerLens' "
            "words). Pass d_vocab=... to the config, or a tokenizer (tokenizer=, or tokenizer_name= in the config)."
        )
    if tokenizer is not None and cfg.d_vocab == -1:
        cfg.d_vocab = max(tokenizer.get_vocab().values()) + 1
        cfg.d_vocab_out = cfg.d_vocab if cfg.d_vocab_out == -1 else cfg.d_vocab_out


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
        bos = _bos_id(model)
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
    """Each token as a string. As TransformerLens: a string or one sequence of ids ([pos] or
    [1, pos]) gives a list of strings; any list gives one such list per element."""
    tok = _tokenizer(model)
    if isinstance(input, list):
        if any(isinstance(t, int) for t in input):
            raise InputError(
                "to_str_tokens takes a list of strings or of token-id tensors, one per sequence; got a list "
                "of ints. For one sequence of token ids pass torch.tensor(ids)."
            )
        return [to_str_tokens(model, t, prepend_bos) for t in input]
    if isinstance(input, str):
        ids = tokenize(model, input, prepend_bos)[0][0].tolist()
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
    model: "HookedTransformer",
    tokens: Int[Tensor, "batch pos"],
    padding_side: PaddingSide | None = None,
    prepend_bos: bool | None = None,
) -> Int[Tensor, "batch pos"]:
    """A 0/1 mask for padded token ids, read back from the pad id.

    The padding side is read from the tokens (runs of the pad id at the start or at the end of
    rows) unless given; when the tokens cannot tell, an AttentionMaskError says what to pass. Only
    the run of pad ids at the padded end counts as padding, so a pad id that doubles as EOS inside a
    row stays attended. Where the pad id is also the BOS id and the tokens start with BOS
    (prepend_bos, cfg.default_prepend_bos unless given), that BOS stays attended, as in
    TransformerLens' utils.get_attention_mask. Prefer the mask `tokenize` returns when you still
    have the text: it is known exactly, never guessed.
    """
    tokens = torch.as_tensor(tokens)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if padding_side not in (None, "left", "right"):
        raise InputError(f"padding_side must be 'left', 'right' or None (read from the tokens), got {padding_side!r}.")
    pad, bos = pad_id(model), _bos_id(model)
    prepend_bos = model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
    real = tokens != pad
    leading = real.long().cumsum(-1) == 0  # the run of pad ids that starts each row
    trailing = real.flip(-1).long().cumsum(-1).flip(-1) == 0  # the run that ends it
    side = padding_side or _padding_side_from_tokens(leading, trailing, pad, bos)
    is_pad = leading if side == "left" else trailing
    if prepend_bos and bos == pad:
        # BOS looks like padding: it is the last id of a left run, and the first id of every row.
        bos_at = (leading.sum(-1) - 1).clamp(min=0) if side == "left" else torch.zeros_like(tokens[:, 0])
        is_pad = is_pad.clone()
        is_pad[torch.arange(tokens.shape[0], device=tokens.device), bos_at] = False
    return (~is_pad).long()


def _bos_id(model: "HookedTransformer") -> int | None:
    tok = _tokenizer(model)
    return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id


def _padding_side_from_tokens(leading, trailing, pad: int, bos: int | None) -> PaddingSide:
    """'left' if only row starts hold pad ids, 'right' if only row ends do; else refuse to guess."""
    only_pads = leading[:, -1]  # rows of nothing but pad ids say nothing about the side
    starts = (leading[:, 0] & ~only_pads).nonzero().flatten().tolist()
    ends = (trailing[:, -1] & ~only_pads).nonzero().flatten().tolist()
    advice = (
        "Pass padding_side='left' or 'right' to generate_attention_mask (the side the tokens were padded "
        "on), or better, keep the mask from tokens, mask = lensutil.text.tokens.tokenize(model, texts, padding_side=...)."
    )
    if starts and bos == pad:
        raise AttentionMaskError(
            f"The pad id {pad} is also the BOS id, so rows {starts} that start with it may begin with BOS "
            f"or with left padding: the tokens alone cannot tell. {advice} Pass prepend_bos= too if the "
            "tokens were made with another prepend_bos than model.cfg.default_prepend_bos."
        )
    if starts and ends:
        raise AttentionMaskError(
            f"Rows {starts} start with the pad id {pad} and rows {ends} end with it, so the padding side "
            f"cannot be read from the tokens (a real token may share the pad id, often EOS). {advice}"
        )
    return "left" if starts else "right"  # no padding at all: either side gives all ones


def check_token_ids(tokens: Int[Tensor, "batch pos"], d_vocab: int) -> None:
    """Refuse ids outside [0, d_vocab), naming the first bad one (one min/max per call)."""
    if tokens.numel() == 0:
        return
    lo, hi = torch.stack(torch.aminmax(tokens)).tolist()  # one device sync for both
    if lo >= 0 and hi < d_vocab:
        return
    row, position = ((tokens < 0) | (tokens >= d_vocab)).nonzero()[0].tolist()
    raise InputError(
        f"Token id {tokens[row, position].item()} at (batch row {row}, position {position}) is outside the "
        f"vocabulary: model.cfg.d_vocab={d_vocab}, so ids run from 0 to {d_vocab - 1}. Ids from another "
        "model's tokenizer, or a label placeholder such as -100, do this; make tokens with model.to_tokens(text)."
    )


def check_attention_mask(mask, batch: int, pos: int, past_len: int = 0) -> Bool[Tensor, "batch key_pos"] | None:
    """Validate a [batch, pos] 1/0 mask and return it as bool, or None when nothing is masked."""
    mask = torch.as_tensor(mask)
    shapes = {(batch, pos)} | ({(batch, past_len + pos)} if past_len else set())
    if tuple(mask.shape) not in shapes:
        expected = " or ".join(f"[batch, pos] = {list(s)}" for s in sorted(shapes))
        raise AttentionMaskError(
            f"attention_mask has shape {list(mask.shape)}, expected {expected} to match the tokens. "
            "Build it from the same tokens: tokens, mask = lensutil.text.tokens.tokenize(model, texts), or "
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
