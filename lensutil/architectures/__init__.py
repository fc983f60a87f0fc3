"""One adapter per HuggingFace architecture family, chosen by `config.architectures[0]`.

An adapter is a pure pair of functions, `config_from_hf(hf_config) -> HookedTransformerConfig` and
`convert(hf_state_dict, cfg) -> state_dict`, plus where the family keeps its layers in a HF model
(for lensutil.checks.locate_divergence). Adding a family is adding a file and a registry line.
"""
