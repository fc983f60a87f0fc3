"""TransformerLens 2.x's `transformer_lens.factories`: which component a config asks for."""
