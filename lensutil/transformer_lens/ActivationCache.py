"""TransformerLens 2.x's `transformer_lens.ActivationCache` module."""

from ..hooks.activation_cache import ActivationCache as ActivationCache
