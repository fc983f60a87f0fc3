"""TransformerLens 2.x's `transformer_lens.components`: the model's parts, built from a config."""
