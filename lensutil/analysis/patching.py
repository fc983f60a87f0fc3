"""Resume a run from an edited ActivationCache.

Editing a cache (`cache[name] = ...`, lensutil's own, or in place: `cache[name].zero_()`,
`cache[name][:, 3] = 0`) changes stored tensors, not the model: nothing is recomputed. Here the
edits take effect (ActivationCache.edited finds both kinds). The run restarts at the earliest
point any edit (or `start_at_layer`) touches, from the cached residual stream there, and every
edited activation is patched in by a hook as the run passes it. So an edit before layer k shows up in the residual stream entering layer k, and an
edit after it is patched in, exactly as if the edits had been hooks on a full forward pass.

An edit that a later edit of the residual stream would overwrite (say, `blocks.1.hook_mlp_out` and
`blocks.3.hook_resid_pre` together) cannot take effect; that raises instead of being dropped.
Two names for one tensor (a block's hook_resid_post is the next block's hook_resid_pre), edited in
place together, are one edit and no conflict.
"""

from __future__ import annotations

import re

from ..errors import LensError
from ..model import doors


_RESIDUAL_STAGE = {"hook_resid_pre": 0.0, "hook_resid_mid": 1.0, "hook_resid_post": 2.0}


def _position(name: str, n_layers: int) -> tuple[int, float]:
    """Where a hook sits in the forward pass: (layer, stage). Embeddings are layer -1."""
    if name in ("hook_embed", "hook_pos_embed"):
        return (-1, 0.0)
    if name.startswith("ln_final."):
        return (n_layers, 0.0)
    m = re.match(r"blocks\.(\d+)\.(.+)$", name)
    if not m:
        raise LensError(f"Cannot place edited cache entry {name!r} in the forward pass.")
    layer, rest = int(m.group(1)), m.group(2)
    if rest in _RESIDUAL_STAGE:
        return (layer, _RESIDUAL_STAGE[rest])
    # Attention and its inputs run between resid_pre and resid_mid; the MLP between resid_mid and resid_post.
    mlp_side = rest.startswith(("mlp.", "ln2.")) or rest in ("hook_mlp_in", "hook_mlp_out")
    return (layer, 1.5 if mlp_side else 0.5)


def run_with_cache_from_cache(
    model: "HookedTransformer", cache: "ActivationCache", start_at_layer: int, *, names_filter=None, **forward_kwargs
):
    """Re-run from `start_at_layer` (or earlier, if an edit sits earlier) with every edit applied.

    The edits are `cache.edited`: entries assigned (`cache[name] = ...`) or changed in place.
    Returns (logits, new_cache) like run_with_cache. Pass attention_mask=... again if the cached
    run was padded. Raises LensError if an edit could not take effect.
    """
    n = model.cfg.n_layers
    if not 0 <= start_at_layer <= n:
        raise LensError(f"start_at_layer must be in 0..{n}, got {start_at_layer}.")
    edited = sorted(getattr(cache, "edited", set()), key=lambda name: _position(name, n))
    unknown = [e for e in edited if e not in model.hook_dict]
    if unknown:
        raise LensError(f"Edited cache entries {unknown} are not hooks of this model, so they cannot be patched in.")
    _refuse_overwritten_edits(edited, n, cache)

    start = min([start_at_layer] + [_position(e, n)[0] for e in edited])
    if start == -1:  # an embedding was edited: rebuild the residual stream entering block 0
        residual = cache["hook_embed"] + (cache["hook_pos_embed"] if "hook_pos_embed" in model.hook_dict else 0)
        start = 0
    else:
        residual = _cached(cache, f"blocks.{start}.hook_resid_pre")
    start_name = f"blocks.{start}.hook_resid_pre"
    patches = [(name, _replace_with(cache[name])) for name in edited if name not in ("hook_embed", "hook_pos_embed", start_name)]
    with model.hooks(fwd_hooks=patches):
        return model.run_with_cache(residual, start_at_layer=start, names_filter=names_filter, **forward_kwargs)


def _cached(cache, name: str):
    try:
        return cache[name]
    except KeyError as err:
        raise LensError(
            f"Resuming needs {name!r} in the cache, and it is not there (was it left out by names_filter?). "
            f"Cache it too, e.g. names_filter=lambda n: n.endswith('hook_resid_pre') or ..."
        ) from err


def _replace_with(value):
    def patch(activation, hook):
        return value.to(activation.device, activation.dtype)

    return patch


def _same_tensor(a, b) -> bool:
    """Whether two cached entries are views of the same memory (so an in-place edit changed both)."""
    return a is b or (
        a.device == b.device and a.shape == b.shape and a.stride() == b.stride() and a.data_ptr() == b.data_ptr()
    )


def _refuse_overwritten_edits(edited: list[str], n_layers: int, cache) -> None:
    residual_edits = [e for e in edited if e.rsplit(".", 1)[-1] in _RESIDUAL_STAGE]
    for r in residual_edits:
        earlier = [e for e in edited if e != r and _position(e, n_layers) < _position(r, n_layers)
                   and not _same_tensor(cache[e], cache[r])]
        if earlier:
            raise LensError(
                f"The edit of {r!r} replaces the whole residual stream at that point, so the earlier edits "
                f"{earlier} could not take effect. Edit only one of them, or apply them one at a time."
            )


# The model's TransformerLens doors (lensutil/model/doors.py says why they are filled from here).
doors.provide("HookedTransformer.run_with_cache_from_cache", run_with_cache_from_cache)
