"""Initial weights of a model built from a config, as TransformerLens 2.x's HookedTransformer.init_weights.

`HookedTransformer(cfg)` and `HookedEncoder(cfg)` allocate their parameters with torch.empty (whatever
the memory held) and then, unless cfg.init_weights is False, fill them here: every matrix (a name
starting with W: W_E, W_pos, W_Q, ..., W_U, the router's W_gate, the MLM head's and pooler's W) from
cfg.init_mode, norm weights (w) 1, biases (b...) 0. init_mode "gpt2" (the default) draws from
N(0, cfg.initializer_range), 0.8 / sqrt(d_model) unless set; the xavier and kaiming modes scale by
fans computed from TransformerLens' shapes (its utils.calc_fan_in_and_fan_out). TransformerLens'
HookedEncoder leaves its weights empty; lensutil initialises both alike.

Reproducible with torch.manual_seed before the model is built; cfg.seed, where set, draws from a
torch.Generator of the model's own and leaves the global generator as it was (TransformerLens seeds
torch, random and numpy for the whole process; a library should not change that behind a user's back).

Loading pays for no initialisation it would overwrite: the loaders build the model inside
`loading_weights()`, which skips it, and then fill every parameter from the checkpoint (strictly).
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .init_functions import calc_fan_in_and_fan_out

_LOADING = contextvars.ContextVar("lensutil_loading_weights", default=False)


@contextmanager
def loading_weights() -> Iterator[None]:
    """Models built inside are not initialised: every weight is about to be loaded."""
    token = _LOADING.set(True)
    try:
        yield
    finally:
        _LOADING.reset(token)


def init_after_construction(model: nn.Module) -> None:
    """What a model's __init__ calls once its parameters exist: initialise, unless loading or cfg says not to."""
    if model.cfg.init_weights and not _LOADING.get():
        init_weights(model)


def init_weights(model: nn.Module) -> None:
    """Fill every parameter of `model` as cfg.init_mode says (module docstring); meta parameters are left alone."""
    cfg = model.cfg
    generators = _Generators(cfg.seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.is_meta:
                continue
            leaf = name.rsplit(".", 1)[-1].lstrip("_")  # GQA's _W_K, _b_K as W_K, b_K
            if leaf.startswith("W"):
                _init_matrix(p, cfg.init_mode, cfg.initializer_range, generators.on(p))
            elif leaf == "w":  # a norm's scale 1: w = 1, or 0 where the norm multiplies by (offset + w) (Gemma's 1 + w)
                p.fill_(1.0 - cfg.norm_weight_offset)
            elif leaf.startswith("b"):
                p.zero_()
            elif leaf in ("alpha_p", "alpha_n"):  # xIELU's: they keep their constructor's values (TransformerLens')
                continue
            else:  # a new kind of parameter must say how it starts, not keep torch.empty's garbage
                raise NotImplementedError(f"lensutil.model.initialization does not know how to initialise {name!r}.")


def _init_matrix(p: Tensor, mode: str, gain: float, generator: torch.Generator | None) -> None:
    if mode == "gpt2":
        p.normal_(0.0, gain, generator=generator)
        return
    fan_in, fan_out = calc_fan_in_and_fan_out(p)  # TransformerLens' convention for its own shapes
    if mode.startswith("xavier"):
        scale = gain * math.sqrt(2.0 / (fan_in + fan_out))  # the normal's std; the uniform's bound is sqrt(3) times it
    else:  # kaiming, as TransformerLens calls it: nonlinearity "relu", mode "fan_in"
        scale = gain * nn.init.calculate_gain("relu") * math.sqrt(1.0 / fan_in)
    if mode.endswith("uniform"):
        bound = math.sqrt(3.0) * scale
        p.uniform_(-bound, bound, generator=generator)
    else:
        p.normal_(0.0, scale, generator=generator)


class _Generators(dict):
    """cfg.seed's generator per device: a parameter drawn on another device (built inside a user's
    torch.device context) needs a generator there. None: torch's global generators."""

    def __init__(self, seed: int | None):
        super().__init__()
        self.seed = seed

    def on(self, p: Tensor) -> torch.Generator | None:
        if self.seed is None:
            return None
        if p.device not in self:
            self[p.device] = torch.Generator(device=p.device).manual_seed(self.seed)
        return self[p.device]
