"""TransformerLens 2.18's refusal of a config with no vocabulary size and no tokenizer, for both model
classes: a ConfigError that is also the AssertionError TL raised, with TL's words (issue 27)."""

import pytest

import lensutil
from lensutil.errors import ConfigError


def _cfg(**kw):
    return lensutil.HookedTransformerConfig(n_layers=1, d_model=10, d_head=5, n_heads=2, d_mlp=10, n_ctx=20,
                                            act_fn="relu", **kw)


@pytest.mark.parametrize("cls", [lensutil.HookedTransformer, lensutil.HookedEncoder])
def test_no_d_vocab_and_no_tokenizer_is_refused_as_tl_does(cls):
    with pytest.raises(ConfigError, match="d_vocab=-1") as caught:
        cls(_cfg())
    assert isinstance(caught.value, AssertionError)  # what code written for TL 2.x catches
    assert "Must provide a tokenizer if d_vocab is not provided" in str(caught.value)


@pytest.mark.parametrize("cls", [lensutil.HookedTransformer, lensutil.HookedEncoder])
def test_an_explicit_d_vocab_needs_no_tokenizer(cls):
    assert cls(_cfg(d_vocab=30)).cfg.d_vocab == 30
