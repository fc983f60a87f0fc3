"""collect_activations: a few hooks' activations over a dataset of any length, in bounded memory.

lensutil's own (TransformerLens has none; there one loops over batches with
`model.run_with_cache(batch, names_filter=...)` and keeps what is needed). For each batch it
- runs under torch.inference_mode() (no autograd graph, no version counters),
- stops the forward after the last block a requested hook is in (stop_at_layer),
- keeps only the requested hooks and, of each, only the requested positions, with padding dropped,
- moves the kept rows to the CPU (in `dtype` if given) and lets the batch's other activations go,
- with `out=`, writes them to disk (lensutil/analysis/collect_store.py) so memory is bounded by one batch.
Hooks are attached with model.hooks(), which removes them however the run ends.

A HookedEncoder's rows are those of `model.run_with_cache(batch)`: its texts (or sentence pairs
(a, b)) are tokenised as its forward tokenises them, [CLS]/[SEP] and token types included, and a
tokenizer's output (`tokenizer(texts, return_tensors="pt")`) is read as the token ids, token types
and mask it holds.

Rows: one per kept (sequence, position), in order; `result["_seq"]` and `result["_pos"]` say which
sequence (counted over the whole input) and which position (counted in real tokens, 0 = the first
real token, BOS included) each row is. Each hook's rows are [n_rows, *its shape after batch and pos]
(e.g. [n_rows, d_model] for hook_resid_post, [n_rows, n_heads, d_head] for hook_z).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from ..errors import InputError, LensError
from ..text import encoder_tokens as etok, tokens as tok
from .collect_store import DiskStore, MemoryStore, load_collected as load_collected

Positions = None | str | int | Tensor | Callable[[Tensor, Tensor], Tensor]


def collect_activations(
    model,
    inputs,
    hook_names,
    *,
    batch_size: int = 8,
    positions: Positions = None,
    dtype: torch.dtype | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    format: str = "safetensors",
    attention_mask: Tensor | None = None,
    prepend_bos: bool | None = None,
    token_type_ids: Tensor | None = None,
):
    """Collect `hook_names`' activations over `inputs`; returns {name: rows, "_seq": ..., "_pos": ...},
    or with `out=` the path of the finished directory (open it with lensutil.analysis.collect_store.load_collected).

    inputs: a string, a list of strings, token ids [n, pos] (with attention_mask= if padded), a
    tokenizer's output for all of them (a dict with "input_ids" [n, pos] and optionally
    "attention_mask" and, for an encoder, "token_type_ids"), or an iterable of batches (each a list
    of strings, a token tensor, or such a dict), or an iterable of strings (a `datasets.Dataset`
    column, a generator), which is batched by batch_size. For a HookedEncoder a sentence pair is a
    tuple (text_a, text_b), as in model(...); token ids may come with token_type_ids=.
    positions: None = every real token; "last" = each sequence's last real token; an int = that
    real-token position (negative counts from the end); a bool mask [n, pos] like the token ids
    (token-tensor input only), or a function (tokens, attention_mask) -> bool mask [batch, pos] of
    a batch. Padding positions are never kept.
    format: "safetensors" (one shard per batch) or "memmap" (one raw file per hook) when out= is given.
    """
    names = _checked_names(model, hook_names)
    stop = _stop_layer(model, names)
    store = DiskStore(out, format) if out is not None else MemoryStore()
    batches = _batches(model, inputs, batch_size, attention_mask, token_type_ids, prepend_bos)
    bar = _progress(batches, progress, _n_batches(model, inputs, batch_size))
    seen = 0
    try:
        for tokens, mask, types in bar:
            keep = _batch_positions(positions, tokens, mask, seen)
            rows, seen = _run_batch(model, names, stop, tokens, mask, types, keep, dtype, seen)
            store.write(rows)
        if seen == 0:
            raise InputError("collect_activations got no input: the iterable of batches was empty.")
        return store.finish()
    except BaseException:
        store.abort()  # Ctrl-C included: no partial directory left behind
        raise
    finally:
        if hasattr(bar, "close"):
            bar.close()


def _checked_names(model, hook_names) -> list[str]:
    names = model.hook_names_matching(hook_names)  # unknown names and off flags raise here, before anything runs
    if not names:
        raise InputError(f"hook_names={hook_names!r} selects no hook; see model.find_hooks() for the names.")
    for name in names:
        axes = (model.hook_dict[name].shape_comment or "").split()
        if "pos" not in axes or "key_pos" in axes:
            raise LensError(
                f"collect_activations keeps one row per token, but {name!r} has shape [{' '.join(axes)}]"
                + (": its key_pos axis changes length from batch to batch." if "key_pos" in axes else ": it has no pos axis.")
                + " Collect the hooks it is computed from (e.g. hook_q and hook_k instead of hook_pattern), "
                "or loop over batches with model.run_with_cache(batch, names_filter=...)."
            )
    return names


def _is_encoder(model) -> bool:
    return getattr(model, "is_encoder", False)


def _is_pair(item) -> bool:
    """A sentence pair (text_a, text_b), as a HookedEncoder's forward takes it."""
    return isinstance(item, tuple) and len(item) == 2 and all(isinstance(t, str) for t in item)


def _is_text(model, item) -> bool:
    """One sequence given as text: a string, or for an encoder a sentence pair too."""
    return isinstance(item, str) or (_is_encoder(model) and _is_pair(item))


# Hooks before the first block: the decoder's, then the encoder's (embed.*, hook_full_embed).
_BEFORE_BLOCKS = ("hook_embed", "hook_pos_embed", "embed.", "hook_full_embed")


def _stop_layer(model, names: list[str]) -> int | None:
    """stop_at_layer for the forward: one past the last block a hook is in; None if any is after the blocks."""
    last = -1
    for name in names:
        if name.startswith("blocks."):
            last = max(last, int(name.split(".")[1]))
        elif not name.startswith(_BEFORE_BLOCKS):
            return None  # ln_final, unembed, an encoder's mlm_head: the whole forward runs
    return last + 1


def _n_batches(model, inputs, batch_size: int) -> int | None:
    if _is_text(model, inputs):
        return 1
    if isinstance(inputs, Mapping) and "input_ids" in inputs:
        inputs = torch.as_tensor(inputs["input_ids"])
    if isinstance(inputs, Tensor):
        return -(-(inputs.shape[0] if inputs.ndim > 1 else 1) // batch_size)
    if isinstance(inputs, Mapping):
        return None
    try:
        n = len(inputs)
    except TypeError:
        return None
    first = inputs[0] if n and hasattr(inputs, "__getitem__") else None
    return -(-n // batch_size) if _is_text(model, first) else n


def _progress(batches: Iterator, progress: bool, total: int | None):
    if not progress:
        return batches
    from tqdm.auto import tqdm  # notebook-aware: a widget in Jupyter, a text bar in a terminal

    return tqdm(batches, total=total, desc="collect_activations", unit="batch")


Batch = tuple[Int[Tensor, "batch pos"], Bool[Tensor, "batch pos"], Int[Tensor, "batch pos"] | None]


def _batches(model, inputs, batch_size: int, attention_mask, token_type_ids, prepend_bos) -> Iterator[Batch]:
    """(token ids, bool mask, token types or None) per batch."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}.")
    if prepend_bos is not None and _is_encoder(model):
        raise InputError("prepend_bos does not apply to an encoder: its tokenizer adds [CLS] and [SEP] itself; leave it out.")
    if _is_text(model, inputs):
        inputs = [inputs]
    if isinstance(inputs, Mapping):  # a tokenizer's output for every sequence (a dict of [n, pos]): never its key names
        inputs = _dict_batch(model, inputs)
    elif isinstance(inputs, Tensor):
        tokens = inputs[None] if inputs.ndim == 1 else inputs
        inputs = (tokens, _checked_like(tokens, attention_mask, "attention_mask"), _checked_like(tokens, token_type_ids, "token_type_ids"))
    elif attention_mask is not None or token_type_ids is not None:
        raise InputError("attention_mask= and token_type_ids= go with token-id input; batches carry their own (a dict's "
                         "'attention_mask' and 'token_type_ids').")
    if isinstance(inputs, tuple) and isinstance(inputs[0], Tensor):
        tokens, mask, types = inputs
        mask = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask.bool()
        for i in range(0, tokens.shape[0], batch_size):
            yield tokens[i:i + batch_size], mask[i:i + batch_size], None if types is None else types[i:i + batch_size]
        return
    texts: list = []
    for item in inputs:
        if _is_text(model, item):  # a stream of strings (or an encoder's pairs): batch it here
            texts.append(item)
            if len(texts) == batch_size:
                yield _text_batch(model, texts, prepend_bos)
                texts = []
            continue
        if texts:
            raise InputError("inputs mixes strings with batches; give either strings or batches.")
        yield _one_batch(model, item, prepend_bos)
    if texts:
        yield _text_batch(model, texts, prepend_bos)


def _text_batch(model, texts: list, prepend_bos) -> Batch:
    if not _is_encoder(model):
        tokens, mask = tok.tokenize(model, texts, prepend_bos)
        return tokens, mask.bool(), None
    if len({_is_pair(t) for t in texts}) > 1:  # one tokenizer call takes either single texts or pairs
        raise InputError("A batch mixes single texts with sentence pairs (text_a, text_b); give batches of one kind.")
    # as the encoder's forward tokenises text: [CLS] a [SEP] (b [SEP]), token types, right padding
    tokens, types, mask = etok.tokenize_input(model, texts)
    return tokens, mask.bool(), types


def _checked_like(tokens: Tensor, t, name: str) -> Tensor | None:
    if t is None:
        return None
    t = torch.as_tensor(t)
    t = t.reshape(tokens.shape) if t.numel() == tokens.numel() and t.ndim < tokens.ndim else t
    if t.shape != tokens.shape:
        raise InputError(f"{name} has shape {list(t.shape)}, the token ids {list(tokens.shape)}; they must match.")
    return t


def _dict_batch(model, item: Mapping) -> Batch:
    if "input_ids" not in item:
        raise InputError(f"A dict of inputs (a tokenizer's output) needs 'input_ids' (and optionally 'attention_mask'"
                         f"{', token_type_ids' if _is_encoder(model) else ''}); got keys {list(item.keys())}.")
    try:
        tokens = torch.as_tensor(item["input_ids"])
    except ValueError as e:  # a ragged list of lists
        raise InputError("The 'input_ids' rows are not all the same length; tokenize with padding=True and "
                         "return_tensors='pt' so the padding comes with its attention_mask.") from e
    tokens = tokens[None] if tokens.ndim == 1 else tokens
    types = _checked_like(tokens, item.get("token_type_ids"), "token_type_ids")
    if types is not None and not _is_encoder(model):
        if types.any():
            raise InputError("The inputs carry non-zero token_type_ids, but a decoder has no token types; drop "
                             "'token_type_ids' (or load the model as a HookedEncoder if it is one).")
        types = None
    return tokens, _checked_like(tokens, item.get("attention_mask"), "attention_mask"), types


def _one_batch(model, item: Any, prepend_bos) -> Batch:
    if isinstance(item, (list, tuple)) and item and all(_is_text(model, t) for t in item):
        return _text_batch(model, list(item), prepend_bos)
    if isinstance(item, Mapping) or hasattr(item, "keys"):
        tokens, mask, types = _dict_batch(model, item)
        return tokens, torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask.bool(), types
    if isinstance(item, Tensor):
        tokens = item[None] if item.ndim == 1 else item
        return tokens, torch.ones_like(tokens, dtype=torch.bool), None
    raise InputError(
        f"Cannot read a batch of type {type(item).__name__}; each batch must be a list of strings"
        f"{' (or of pairs (text_a, text_b))' if _is_encoder(model) else ''}, a token-id tensor, or a dict with "
        "'input_ids' (and 'attention_mask')."
    )


def _batch_positions(positions: Positions, tokens: Tensor, mask: Bool[Tensor, "batch pos"], seen: int) -> Bool[Tensor, "batch pos"]:
    """Which (row, position) of this batch to keep: never a padding position."""
    if positions is None:
        return mask
    real_index = mask.long().cumsum(-1) - 1  # each token's position among its row's real tokens
    n_real = mask.sum(-1, keepdim=True)
    if isinstance(positions, str):
        if positions != "last":
            raise InputError(f"positions must be None, 'last', an int, a bool mask or a function; got {positions!r}.")
        return mask & (real_index == n_real - 1)
    if isinstance(positions, int) and not isinstance(positions, bool):
        target = positions if positions >= 0 else n_real + positions
        keep = mask & (real_index == target)
        if not keep.any(-1).all():
            short = int(n_real.min())
            raise InputError(f"positions={positions} is outside a sequence with {short} real tokens; every sequence needs that position.")
        return keep
    if callable(positions):
        chosen = torch.as_tensor(positions(tokens, mask)).bool()
    elif isinstance(positions, Tensor):
        chosen = positions.bool()[seen:seen + tokens.shape[0]]
    else:
        raise InputError(f"positions must be None, 'last', an int, a bool mask or a function; got {type(positions).__name__}.")
    if chosen.shape != mask.shape:
        raise InputError(f"The positions mask for this batch has shape {list(chosen.shape)}, the tokens {list(mask.shape)}; they must match.")
    return chosen.to(mask.device) & mask


class _Stop(Exception):
    """Raised by a hook at the first block no requested hook is in: the rest of the forward is not needed."""


def _stop(act: Tensor, hook) -> None:
    raise _Stop


def _run_batch(model, names: list[str], stop: int | None, tokens: Int[Tensor, "batch pos"], mask, types, keep, dtype, seen: int):
    device = model.cfg.device
    tokens, mask, keep = tokens.to(device), mask.to(device), keep.to(device)
    rows: dict[str, Tensor] = {}

    def save(act: Tensor, hook) -> None:
        axis = hook.shape_comment.split().index("pos")
        kept = act.movedim(axis, 1)[keep]  # [n_kept, ...]: a copy of just these rows
        rows[hook.name] = kept.to("cpu", dtype or kept.dtype)

    hooks = [(n, save) for n in names]
    if not _is_encoder(model):
        kwargs = {"stop_at_layer": stop} if stop is not None else {"return_type": None}
        mask_arg = mask if not mask.all() else None
    else:
        # HookedEncoder (as TransformerLens') has no stop_at_layer: a hook at the first unneeded block ends
        # the forward. Its mask always goes in, as its forward passes the one it makes from text.
        if stop is not None and stop < model.cfg.n_layers:
            hooks.append((f"blocks.{stop}.hook_resid_pre", _stop))
        head = stop is None and model.cfg.mlm_head  # an mlm_head hook is requested: the head must run
        kwargs = {"token_type_ids": None if types is None else types.to(device), "return_type": "logits" if head else "embeddings"}
        mask_arg = mask.long()
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        try:
            model(tokens, attention_mask=mask_arg, **kwargs)
        except _Stop:
            pass
    seq, pos = keep.nonzero(as_tuple=True)
    rows["_seq"] = (seq + seen).cpu()
    rows["_pos"] = (mask.long().cumsum(-1) - 1)[seq, pos].cpu()
    return rows, seen + tokens.shape[0]
