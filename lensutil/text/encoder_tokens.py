"""An encoder's inputs: texts and sentence pairs -> (tokens, token_type_ids, attention_mask).

Unlike the decoder's tokens.py, an encoder uses its tokenizer's own special tokens ([CLS] ...
[SEP] ... [SEP]) and padding (BERT pads on the right): the tokenizer says which tokens belong to
sentence B (token type 1) and which are padding (mask 0), and both must reach the model.
"""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor

from ..errors import AttentionMaskError, InputError
from .tokens import _tokenizer


Triple = tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]


def _texts(text, name: str) -> list[str]:
    texts = [text] if isinstance(text, str) else text
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
        raise InputError(f"{name} must be a string or a non-empty list of strings, got {type(text).__name__}.")
    return list(texts)


def to_tokens(model: "HookedEncoder", text, text_pair=None, *, return_token_type_ids: bool = False,
              move_to_device: bool = True, truncate: bool = True):
    """Tokenise one text, a list of texts, or sentence pairs (text[i], text_pair[i]), padded.

    Returns TransformerLens' triple (tokens, token_type_ids, attention_mask); with
    return_token_type_ids=True, a dict with input_ids, token_type_ids and attention_mask (what the
    widely shared guide's call expects, and what HF models take as **kwargs).
    """
    tok = _tokenizer(model)
    texts = _texts(text, "text")
    pairs = None
    if text_pair is not None:
        pairs = _texts(text_pair, "text_pair")
        if len(pairs) != len(texts):
            raise InputError(f"text has {len(texts)} entries but text_pair has {len(pairs)}; give one second sentence per first.")
    enc = tok(texts, pairs, padding=True, truncation=truncate, max_length=model.cfg.n_ctx if truncate else None,
              return_tensors="pt", return_token_type_ids=True, return_attention_mask=True)
    out = {k: enc[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    if move_to_device:
        out = {k: v.to(model.cfg.device) for k, v in out.items()}
    if return_token_type_ids:
        return out
    return out["input_ids"], out["token_type_ids"], out["attention_mask"]


def tokenize_input(model: "HookedEncoder", input) -> Triple:
    """What forward does with text: a string, a pair (a, b), a list of strings, or a list of pairs."""
    if isinstance(input, str):
        return to_tokens(model, input)
    if isinstance(input, tuple) and len(input) == 2 and all(isinstance(t, str) for t in input):
        return to_tokens(model, input[0], input[1])
    if isinstance(input, list) and input and all(isinstance(p, tuple) and len(p) == 2 for p in input):
        return to_tokens(model, [a for a, _ in input], [b for _, b in input])
    if isinstance(input, list):
        return to_tokens(model, input)
    raise InputError(
        f"Cannot read input of type {type(input).__name__}. Give a string, a pair (text_a, text_b), a list of "
        "either, or token ids (with token_type_ids= and one_zero_attention_mask=)."
    )


def refuse_unmasked_padding(model: "HookedEncoder", tokens: Int[Tensor, "batch pos"]) -> None:
    """Padding tokens without a mask are attended to by every token (an encoder looks both ways)."""
    tok = model.tokenizer
    pad = getattr(tok, "pad_token_id", None) if tok is not None else None
    if pad is None:
        return
    rows = (tokens == pad).any(-1).nonzero().flatten().tolist()
    if rows:
        raise AttentionMaskError(
            f"Rows {rows[:8]} hold the padding token {tok.pad_token!r} (id {pad}) but no attention mask was given, so "
            "every token would attend to the padding and every output would change. Pass the mask the tokenizer made: "
            "tokens, token_type_ids, mask = model.to_tokens(texts); model(tokens, token_type_ids=token_type_ids, "
            "one_zero_attention_mask=mask), or give the texts themselves, model(texts). To run deliberately "
            "without one, pass one_zero_attention_mask=torch.ones_like(tokens)."
        )


def check_token_types(model: "HookedEncoder", token_type_ids, tokens: Tensor) -> Int[Tensor, "batch pos"]:
    if token_type_ids is None:  # HF and TransformerLens: all sentence A
        return torch.zeros_like(tokens)
    token_type_ids = torch.as_tensor(token_type_ids, device=tokens.device)
    token_type_ids = token_type_ids[None] if token_type_ids.ndim == 1 else token_type_ids
    if token_type_ids.shape != tokens.shape:
        raise InputError(
            f"token_type_ids has shape {list(token_type_ids.shape)} but the tokens have {list(tokens.shape)}. "
            "Take both from the same call: tokens, token_type_ids, mask = model.to_tokens(text_a, text_pair=text_b)."
        )
    if token_type_ids.is_floating_point() or token_type_ids.numel() and not (
        0 <= token_type_ids.min() and token_type_ids.max() < model.cfg.n_token_types
    ):
        raise InputError(f"token_type_ids must be integers from 0 to {model.cfg.n_token_types - 1} (0: sentence A, 1: sentence B).")
    return token_type_ids.long()


def to_str_tokens(model: "HookedEncoder", input) -> list:
    """Each token as a string, special tokens included: a text or pair gives a list, a list gives one per text."""
    tok = _tokenizer(model)
    if isinstance(input, (str, tuple)) or (isinstance(input, list) and input and isinstance(input[0], (str, tuple))):
        ids = tokenize_input(model, input)
        rows = [r[m.bool()].tolist() for r, m in zip(ids[0], ids[2])]
        strs = [tok.convert_ids_to_tokens(r) for r in rows]
        return strs if isinstance(input, list) else strs[0]
    ids = torch.as_tensor(input)
    if ids.ndim == 2:
        return [tok.convert_ids_to_tokens(r.tolist()) for r in ids]
    return tok.convert_ids_to_tokens(ids.reshape(-1).tolist())


@torch.no_grad()
def predict_masked(model: "HookedEncoder", text, top_k: int = 5):
    """The top_k fillers of each [MASK] in text (or a pair (a, b)) with their probabilities.

    One [MASK] gives a list of (token, probability); several give one such list per [MASK].
    """
    if not model.cfg.mlm_head:
        raise InputError(
            f"{model.cfg.model_name} has no masked-LM head ({model.cfg.original_architecture}): it cannot fill [MASK]. "
            "Load a BertForMaskedLM checkpoint (e.g. 'tiny-bert', or 'bert-base-uncased' online), or use "
            "return_type='embeddings' for hidden states."
        )
    tok = _tokenizer(model)
    tokens, types, mask = tokenize_input(model, text)
    if tokens.shape[0] != 1:
        raise InputError("predict_masked takes one text (or one pair); call it once per text.")
    where = (tokens[0] == tok.mask_token_id).nonzero().flatten()
    if not len(where):
        raise InputError(f"No {tok.mask_token} in {text!r}: write {tok.mask_token} where the word to predict goes.")
    probs = model(tokens, token_type_ids=types, one_zero_attention_mask=mask)[0, where].softmax(-1)
    top = probs.topk(top_k, dim=-1)
    out = [[(tok.convert_ids_to_tokens(int(i)), float(p)) for p, i in zip(ps, ids)] for ps, ids in zip(top.values, top.indices)]
    return out[0] if len(out) == 1 else out
