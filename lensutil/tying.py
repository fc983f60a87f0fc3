"""Tied embeddings held once: W_U as a view of W_E's storage while the two are still equal.

A model with tied word embeddings (GPT-2, SmolLM2, ...) unembeds with the transpose of its
embedding matrix. HuggingFace keeps one tensor for both; lensutil's Unembed stores W_U [d_model,
d_vocab] in memory as [d_vocab, d_model] (the layout F.linear reads), which is exactly W_E's layout,
so W_U can be W_E.T, a view of the same storage (SmolLM2-135M in float32: 108 MiB saved).

They stay one tensor only while they are equal: fold_ln (the final norm's scale goes into W_U) and
center_unembed change W_U and not W_E, so processing unties them (W_U gets its own copy, and the
ProcessingReport says so). A load_state_dict whose W_U is not W_E.T unties them first, so loading
never writes one matrix over the other. Moving or casting the model (.to, .half, ...) keeps them tied.
A model placed with a device_map (lensutil/placement.py) is tied when W_E and W_U land on one device;
on two devices, or offloaded to disk, they cannot share memory and W_U keeps its own copy.
Both keys stay in state_dict(), as TransformerLens saves them; their tensors share memory (torch.save
keeps that; safetensors' save_file refuses shared tensors: use save_model, or clone one).
"""

from __future__ import annotations

import torch
from torch import nn


def is_tied(model: nn.Module) -> bool:
    """Whether model.unembed.W_U is a view of model.embed.W_E's storage (W_U == W_E.T, held once)."""
    W_E, W_U = _embedding(model), _weight(model, "unembed", "W_U")
    if W_E is None or W_U is None or W_U.shape != W_E.T.shape or W_E.is_meta or W_U.is_meta:
        return False  # meta tensors (no data: an empty or offloaded model) all report data_ptr() 0
    return W_U.data_ptr() == W_E.data_ptr() and W_U.stride() == W_E.T.stride()


def tie_unembed_(model: nn.Module) -> bool:
    """Make W_U a view of W_E where the config ties them and they are equal; True if it did.

    The Parameter objects stay the same (only their data is shared), so optimisers holding them stay valid.
    """
    W_E, unembed = _embedding(model), getattr(model, "unembed", None)
    if W_E is None or unembed is None or not getattr(model.cfg, "tie_word_embeddings", False):
        return False
    W_U = _weight(model, "unembed", "W_U")
    if is_tied(model):
        return True
    if (W_U.shape != W_E.T.shape or W_U.dtype != W_E.dtype or W_U.device != W_E.device or W_E.is_meta
            or not torch.equal(W_U.detach(), W_E.detach().T)):
        return False
    W_U.data = W_E.data.T
    if not getattr(model, "_untie_hook_registered", False):
        model.register_load_state_dict_pre_hook(_untie_before_loading_other_values)
        model._untie_hook_registered = True
    return True


def untie_unembed_(model: nn.Module) -> None:
    """Give W_U its own storage (same values, same [d_vocab, d_model] memory layout)."""
    if is_tied(model):
        W_U = model.unembed.W_U
        W_U.data = W_U.data.T.clone().T


def _embedding(model: nn.Module):
    return _weight(model, "embed", "W_E")


def _weight(model: nn.Module, module: str, name: str):
    # Straight from _parameters: on a placed model an offloaded module refuses attribute reads of its
    # (meta) weights (lensutil/offloaded_weights.py), and here "not in memory" just means "not tied".
    part = getattr(model, module, None)
    if part is None:
        return None
    return part._parameters[name] if name in part._parameters else getattr(part, name, None)


def _untie_before_loading_other_values(module, state_dict, prefix, *args) -> None:
    # Copying a W_U that differs from the incoming W_E.T into shared storage would overwrite W_E.
    if not is_tied(module):
        return
    W_E, W_U = state_dict.get(prefix + "embed.W_E"), state_dict.get(prefix + "unembed.W_U")
    if W_U is None:
        return
    W_E = module.embed.W_E if W_E is None else W_E
    W_E, W_U = torch.as_tensor(W_E), torch.as_tensor(W_U)
    if W_U.shape != W_E.T.shape or not torch.equal(W_U.to(W_E.device, W_E.dtype), W_E.T):
        untie_unembed_(module)
