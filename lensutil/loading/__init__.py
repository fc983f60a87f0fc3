"""The road from a name to a model: source (zoo, directory, hub) -> HF config -> adapter -> state dict -> (quantise, place) -> model."""
