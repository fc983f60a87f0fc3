"""TransformerLens 2.x's `transformer_lens.patching` module path (lensutil's patching tools)."""

from ..analysis.patching import run_with_cache_from_cache as run_with_cache_from_cache
