"""collect_activations: a few hooks' activations over a dataset of any length, in bounded memory.

lensutil's own (TransformerLens has none; there one loops over batches with
`model.run_with_cache(batch, names_filter=...)` and keeps what is needed). For each batch it
- runs under torch.inference_mode() (no autograd graph, no version counters),
- stops the forward after the last block a requested hook is in (stop_at_layer),
- keeps only the requested hooks and, of each, only the requested positions, with padding dropped,
- moves the kept rows to the CPU (in `dtype` if given) and lets the batch's other activations go,
- with `out=`, writes them to disk (lensutil/collect_store.py) so memory is bounded by one batch.
Hooks are attached with model.hooks(), which removes them however the run ends.

Rows: one per kept (sequence, position), in order; `result["_seq"]` and `result["_pos"]` say which
sequence (counted over the whole input) and which position (counted in real tokens, 0 = the first
real token, BOS included) each row is. Each hook's rows are [n_rows, *its shape after batch and pos]
(e.g. [n_rows, d_model] for hook_resid_post, [n_rows, n_heads, d_head] for hook_z).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from . import tokens as tok
from .collect_store import DiskStore, MemoryStore, load_collected as load_collected
from .errors import InputError, LensError

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
):
    """Collect `hook_names`' activations over `inputs`; returns {name: rows, "_seq": ..., "_pos": ...},
    or with `out=` the path of the finished directory (open it with lensutil.collect.load_collected).

    inputs: a string, a list of strings, token ids [n, pos] (with attention_mask= if padded), or an
    iterable of batches (each a list of strings, a token tensor, or a dict with "input_ids" and
    optionally "attention_mask", as a tokenizer returns), or an iterable of strings (a
    `datasets.Dataset` column, a generator), which is batched by batch_size.
    positions: None = every real token; "last" = each sequence's last real token; an int = that
    real-token position (negative counts from the end); a bool mask [n, pos] like the token ids
    (token-tensor input only), or a function (tokens, attention_mask) -> bool mask [batch, pos] of
    a batch. Padding positions are never kept.
    format: "safetensors" (one shard per batch) or "memmap" (one raw file per hook) when out= is given.
    """
    names = _checked_names(model, hook_names)
    stop = _stop_layer(model, names)
    store = DiskStore(out, format) if out is not None else MemoryStore()
    batches = _batches(model, inputs, batch_size, attention_mask, prepend_bos)
    bar = _progress(batches, progress, _n_batches(inputs, batch_size))
    seen = 0
    try:
        for tokens, mask in bar:
            rows, seen = _run_batch(model, names, stop, tokens, mask, _batch_positions(positions, tokens, mask, seen), dtype, seen)
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


def _stop_layer(model, names: list[str]) -> int | None:
    """stop_at_layer for the forward: one past the last block a hook is in; None if any is after the blocks."""
    last = -1
    for name in names:
        if name.startswith("blocks."):
            last = max(last, int(name.split(".")[1]))
        elif name not in ("hook_embed", "hook_pos_embed"):
            return None  # ln_final, unembed: the whole forward runs
    return last + 1


def _n_batches(inputs, batch_size: int) -> int | None:
    if isinstance(inputs, str):
        return 1
    if isinstance(inputs, Tensor):
        return -(-(inputs.shape[0] if inputs.ndim > 1 else 1) // batch_size)
    try:
        n = len(inputs)
    except TypeError:
        return None
    first = inputs[0] if n and hasattr(inputs, "__getitem__") else None
    return -(-n // batch_size) if isinstance(first, str) else n


def _progress(batches: Iterator, progress: bool, total: int | None):
    if not progress:
        return batches
    from tqdm.auto import tqdm  # notebook-aware: a widget in Jupyter, a text bar in a terminal

    return tqdm(batches, total=total, desc="collect_activations", unit="batch")


def _batches(model, inputs, batch_size: int, attention_mask, prepend_bos) -> Iterator[tuple[Tensor, Tensor]]:
    """(token ids [batch, pos], bool mask [batch, pos]) per batch."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}.")
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, Tensor):
        tokens = inputs[None] if inputs.ndim == 1 else inputs
        mask = torch.ones_like(tokens, dtype=torch.bool) if attention_mask is None else torch.as_tensor(attention_mask).bool()
        if mask.shape != tokens.shape:
            raise InputError(f"attention_mask has shape {list(mask.shape)}, the token ids {list(tokens.shape)}; they must match.")
        for i in range(0, tokens.shape[0], batch_size):
            yield tokens[i:i + batch_size], mask[i:i + batch_size]
        return
    if attention_mask is not None:
        raise InputError("attention_mask= goes with token-id input; batches carry their own (a dict's 'attention_mask').")
    texts: list[str] = []
    for item in inputs:
        if isinstance(item, str):  # a stream of strings: batch it here
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


def _text_batch(model, texts: list[str], prepend_bos) -> tuple[Tensor, Tensor]:
    tokens, mask = tok.tokenize(model, texts, prepend_bos)
    return tokens, mask.bool()


def _one_batch(model, item: Any, prepend_bos) -> tuple[Tensor, Tensor]:
    if isinstance(item, (list, tuple)) and item and all(isinstance(t, str) for t in item):
        return _text_batch(model, list(item), prepend_bos)
    if isinstance(item, dict) or hasattr(item, "keys"):
        if "input_ids" not in item:
            raise InputError(f"A dict batch needs 'input_ids' (and optionally 'attention_mask'); got keys {list(item.keys())}.")
        tokens = torch.as_tensor(item["input_ids"])
        tokens = tokens[None] if tokens.ndim == 1 else tokens
        mask = item.get("attention_mask")
        return tokens, (torch.ones_like(tokens, dtype=torch.bool) if mask is None else torch.as_tensor(mask).reshape(tokens.shape).bool())
    if isinstance(item, Tensor):
        tokens = item[None] if item.ndim == 1 else item
        return tokens, torch.ones_like(tokens, dtype=torch.bool)
    raise InputError(
        f"Cannot read a batch of type {type(item).__name__}; each batch must be a list of strings, a token-id "
        "tensor, or a dict with 'input_ids' (and 'attention_mask')."
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


def _run_batch(model, names: list[str], stop: int | None, tokens: Int[Tensor, "batch pos"], mask, keep, dtype, seen: int):
    device = model.cfg.device
    tokens, mask, keep = tokens.to(device), mask.to(device), keep.to(device)
    rows: dict[str, Tensor] = {}

    def save(act: Tensor, hook) -> None:
        axis = hook.shape_comment.split().index("pos")
        kept = act.movedim(axis, 1)[keep]  # [n_kept, ...]: a copy of just these rows
        rows[hook.name] = kept.to("cpu", dtype or kept.dtype)

    kwargs = {"stop_at_layer": stop} if stop is not None else {"return_type": None}
    with torch.inference_mode(), model.hooks(fwd_hooks=[(n, save) for n in names]):
        model(tokens, attention_mask=mask if not mask.all() else None, **kwargs)
    seq, pos = keep.nonzero(as_tuple=True)
    rows["_seq"] = (seq + seen).cpu()
    rows["_pos"] = (mask.long().cumsum(-1) - 1)[seq, pos].cpu()
    return rows, seen + tokens.shape[0]
