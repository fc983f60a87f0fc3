"""TransformerLens 2.x's `transformer_lens.utilities`."""
