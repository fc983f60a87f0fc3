"""TransformerLens 2.x's `transformer_lens.HookedEncoder` module."""

from ..model.encoder import HookedEncoder as HookedEncoder
