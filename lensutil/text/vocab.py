"""A config's vocabulary size from its tokenizer, where the config leaves it unset (d_vocab=-1), as TransformerLens does."""

from __future__ import annotations

from ..errors import ConfigError


def fill_vocab_size(cfg, tokenizer):
    """Set cfg.d_vocab (and d_vocab_out, when also unset) from `tokenizer`; returns the tokenizer the model keeps.

    Only for d_vocab=-1: then a tokenizer is needed anyway, so with none given one is loaded from
    cfg.tokenizer_name (TransformerLens 2.x does the same). The size is the largest token id + 1, so
    added tokens count.
    """
    if cfg.d_vocab != -1:
        return tokenizer
    if tokenizer is None and cfg.tokenizer_name is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer_name)
    if tokenizer is None:
        raise ConfigError(
            "d_vocab=-1: the vocabulary size is not set. Pass d_vocab=... to the config, or a tokenizer "
            "(HookedTransformer(cfg, tokenizer) or cfg.tokenizer_name) to take it from."
        )
    cfg.d_vocab = max(tokenizer.get_vocab().values()) + 1
    if cfg.d_vocab_out == -1:
        cfg.d_vocab_out = cfg.d_vocab
    return tokenizer
