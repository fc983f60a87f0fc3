"""TransformerLens 2.x's `transformer_lens.SVDInterpreter`: lensutil's (lensutil/analysis/svd_interpreter.py)."""

from ..analysis.svd_interpreter import OUTPUT_EMBEDDING, VECTOR_TYPES, SVDInterpreter  # noqa: F401
