"""TransformerLens 2.x's `transformer_lens.HookedTransformer` module."""

from ..model.transformer import HookedTransformer as HookedTransformer
