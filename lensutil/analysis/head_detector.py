"""Which attention heads behave like a named kind of head: TransformerLens 2.x's head detector.

A kind of head is a detection pattern: a [pos, pos] lower-triangular matrix saying where each query
is expected to attend (previous token: the subdiagonal; duplicate token: earlier copies of the same
token; induction: the token after each earlier copy). Each head's attention pattern on the sequence
is scored against it, with one of two measures:

- "mul" (the default): the share of the head's attention that falls where the pattern has ones
  (sum(pattern * detection) / sum(pattern)), in [0, 1].
- "abs": 1 - (mean absolute difference * pos), i.e. 1 minus the summed absolute difference per
  query row, rounded to 3 decimals as TransformerLens rounds it; 1 is a perfect match.

exclude_bos zeroes the column of the first key, exclude_current_token the diagonal, before scoring.
Heads not asked for score -1. A list of sequences scores each alone (they may differ in length) and
averages the scores. Unlike TransformerLens 2.18, the attention patterns of a cache passed in are
never written to (TL's "mul" with exclude_bos zeroed the cached pattern's first column in place).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal, get_args

import torch
from torch import Tensor

from ..errors import HeadDetectionError
from ..tensor_helpers import is_lower_triangular

HeadName = Literal["previous_token_head", "duplicate_token_head", "induction_head"]
HEAD_NAMES: list[str] = list(get_args(HeadName))
ErrorMeasure = Literal["abs", "mul"]
LayerHeadTuple = tuple[int, int]
LayerToHead = dict[int, list[int]]

# TransformerLens' messages, word for word: code written for it compares them.
SEQ_LEN_ERR = "The sequence must be non-empty and must fit within the model's context window."
DET_PAT_NOT_SQUARE_ERR = (
    "The detection pattern must be a lower triangular matrix of shape (sequence_length, sequence_length); "
    "sequence_length=%d; got detection patern of shape %s"
)
INVALID_HEAD_NAME_ERR = f"detection_pattern must be a Tensor or one of head names: {HEAD_NAMES}; got %s"


def get_previous_token_head_detection_pattern(tokens: Tensor) -> Tensor:
    """[pos, pos]: each query (after the first) attends to the key just before it."""
    n = tokens.shape[-1]
    return torch.diag(torch.ones(n - 1), diagonal=-1) if n > 1 else torch.zeros(n, n)


def get_duplicate_token_head_detection_pattern(tokens: Tensor) -> Tensor:
    """[pos, pos]: each query attends to the earlier positions holding the same token (not itself)."""
    row = tokens.reshape(-1, tokens.shape[-1])[0].cpu()
    same = (row[:, None] == row[None, :]).float()
    return torch.tril(same, diagonal=-1)


def get_induction_head_detection_pattern(tokens: Tensor) -> Tensor:
    """[pos, pos]: each query attends to the position after each earlier copy of its token."""
    duplicate = get_duplicate_token_head_detection_pattern(tokens)
    shifted = torch.zeros_like(duplicate)
    shifted[:, 1:] = duplicate[:, :-1]  # key j+1 for every duplicate at key j; nothing lands on key 0
    return torch.tril(shifted)


_PATTERNS = {
    "previous_token_head": get_previous_token_head_detection_pattern,
    "duplicate_token_head": get_duplicate_token_head_detection_pattern,
    "induction_head": get_induction_head_detection_pattern,
}


def get_supported_heads() -> None:
    """Print the names detect_head knows (TransformerLens prints them too)."""
    print(f"Supported heads: {HEAD_NAMES}")


def compute_head_attention_similarity_score(
    attention_pattern: Tensor,
    detection_pattern: Tensor,
    *,
    exclude_bos: bool,
    exclude_current_token: bool,
    error_measure: ErrorMeasure,
) -> float:
    """One head's score: attention_pattern [q_pos, k_pos] against detection_pattern [pos, pos] (input not changed)."""
    if attention_pattern.ndim != 2 or attention_pattern.shape[0] != attention_pattern.shape[1]:
        raise HeadDetectionError(f"Attention pattern is not square; got shape {tuple(attention_pattern.shape)}")
    detection_pattern = detection_pattern.to(attention_pattern.device, attention_pattern.dtype)
    keep = torch.ones_like(attention_pattern)
    if exclude_bos:
        keep[:, 0] = 0
    if exclude_current_token:
        keep.fill_diagonal_(0)
    if error_measure == "mul":
        pattern = attention_pattern * keep
        return ((pattern * detection_pattern).sum() / pattern.sum()).item()
    diff = (attention_pattern - detection_pattern).abs() * keep
    return 1 - round((diff.mean() * diff.shape[0]).item(), 3)


def _layer_to_heads(heads, n_layers: int, n_heads: int) -> dict[int, list[int]]:
    if heads is None:
        return {layer: list(range(n_heads)) for layer in range(n_layers)}
    if isinstance(heads, dict):
        return {int(k): list(v) for k, v in heads.items()}
    found: dict[int, list[int]] = defaultdict(list)
    for layer, head in heads:
        found[layer].append(head)
    return found


def detect_head(
    model,
    seq: str | list[str],
    detection_pattern: Tensor | HeadName,
    heads: list[LayerHeadTuple] | LayerToHead | None = None,
    cache=None,
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    error_measure: ErrorMeasure = "mul",
) -> Tensor:
    """Score every head (or those in `heads`; the rest -1) of `model` on `seq` against a detection pattern.

    Returns [n_layers, n_heads] in the model's dtype. detection_pattern is a [pos, pos] lower-triangular
    tensor (pos: seq's length in tokens, BOS included where the model prepends it) or one of HEAD_NAMES.
    cache: an ActivationCache of `seq` with the batch dimension removed (run_with_cache(...,
    remove_batch_dim=True)), to skip the forward pass.
    """
    if error_measure not in get_args(ErrorMeasure):
        raise HeadDetectionError(f"Invalid error_measure={error_measure!r}; valid values are {get_args(ErrorMeasure)}")
    if isinstance(detection_pattern, str) and detection_pattern not in _PATTERNS:
        raise HeadDetectionError(INVALID_HEAD_NAME_ERR % detection_pattern)
    if not isinstance(seq, str):
        scores = [detect_head(model, s, detection_pattern, heads, None, exclude_bos=exclude_bos,
                              exclude_current_token=exclude_current_token, error_measure=error_measure) for s in seq]
        return torch.stack(scores).mean(0)
    cfg = model.cfg
    tokens = model.to_tokens(seq)
    seq_len = tokens.shape[-1]
    if not 1 < seq_len < cfg.n_ctx:
        raise HeadDetectionError(SEQ_LEN_ERR)
    if isinstance(detection_pattern, str):
        detection_pattern = _PATTERNS[detection_pattern](tokens.cpu())
    if (detection_pattern.ndim != 2 or detection_pattern.shape[0] != seq_len
            or not is_lower_triangular(detection_pattern)):
        raise HeadDetectionError(DET_PAT_NOT_SQUARE_ERR % (seq_len, tuple(detection_pattern.shape)))
    if error_measure == "mul" and not set(detection_pattern.unique().tolist()) <= {0, 1}:
        import logging

        logging.warning("Using detection pattern with values other than 0 or 1 with error_measure 'mul'")
    if cache is None:
        _, cache = model.run_with_cache(tokens, remove_batch_dim=True, names_filter=lambda n: n.endswith("hook_pattern"))
    scores = -torch.ones(cfg.n_layers, cfg.n_heads, dtype=cfg.dtype)
    for layer, layer_heads in _layer_to_heads(heads, cfg.n_layers, cfg.n_heads).items():
        patterns = cache["pattern", layer, "attn"]  # [head, q_pos, k_pos]
        for head in layer_heads:
            scores[layer, head] = compute_head_attention_similarity_score(
                patterns[head], detection_pattern, exclude_bos=exclude_bos,
                exclude_current_token=exclude_current_token, error_measure=error_measure)
    return scores
