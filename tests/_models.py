"""Models shared by the test modules, loaded once per test session."""

from __future__ import annotations

import functools

import torch

from lensutil.loading.pretrained import from_pretrained_no_processing
from lensutil.loading.hf_source import load_hf
from lensutil.loading.zoo_bert import ENCODER_NAMES
from lensutil.loading.zoo import TRAINED_NAMES, ZOO_NAMES

# Random decoders (encoders: encoder()). Trained entries (tiny-moe-trained, with its own 60-word tokenizer) are
# story models with their own tests (test_zoo_trained.py), not part of the random-architecture sweep.
TINY = [n for n in ZOO_NAMES if n.startswith("tiny-") and n not in ENCODER_NAMES + TRAINED_NAMES]
ALL = [*TINY, "smollm2-135m"]


@functools.lru_cache(maxsize=None)
def lens(name: str, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"):
    return from_pretrained_no_processing(name, dtype=dtype, attn_implementation=attn_implementation)


@functools.lru_cache(maxsize=None)
def hf(name: str, attn_implementation: str = "sdpa"):
    """HuggingFace's model in the same attention mode as lens(name)'s default (its default too)."""
    return load_hf(name, attn_implementation=attn_implementation)[0]


@functools.lru_cache(maxsize=None)
def encoder(name: str):
    from lensutil import HookedEncoder

    return HookedEncoder.from_pretrained(name)


@functools.lru_cache(maxsize=None)
def hf_encoder(name: str):
    from lensutil.loading.encoder import load_hf_encoder

    return load_hf_encoder(name)[0]


def hf_positions(mask: torch.Tensor) -> torch.Tensor:
    """The position ids HuggingFace's generate builds from a mask (forward alone does not)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)
