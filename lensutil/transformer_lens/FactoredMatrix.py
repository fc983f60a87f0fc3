"""TransformerLens 2.x's `transformer_lens.FactoredMatrix` module."""

from ..factored_matrix import FactoredMatrix as FactoredMatrix
