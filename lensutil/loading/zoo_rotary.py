"""The zoo's tiny models of the rotary families issue 26 added: Llama 3's RoPE scaling, Pythia (GPT-NeoX), Phi-3.

Entries in the form of zoo.py's `_TINY` (transformers config class, settings), built by its
`_build_tiny` (seeded random weights, SmolLM2's tokenizer, 2 layers, d_model 64, 4 heads). Each is
sized so what it brings matters at test lengths (prompts of ~10 tokens, 30 generated):
- tiny-llama3: "llama3" scaling with original_max_position_embeddings 64, so of its 8 frequencies
  one is kept, two are smoothed and five divided by the factor (d_head 16, base 1e4).
- tiny-pythia: rotary on a quarter of each head (Pythia's rotary_pct), parallel attention and MLP,
  biases everywhere, untied embed_out.
- tiny-phi3: fused projections, grouped-query attention, rotary on half of each head (Phi-4-mini
  rotates 3/4). Phi-3 128k's "longrope" is tested as a variant (tests/test_rope_scaling.py): it
  switches factors on the longest row of a batch, so a padded row is not the prompt alone, in HF too.
"""

from __future__ import annotations

_LLAMALIKE = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512)

TINY = {
    "tiny-llama3": ("LlamaConfig", dict(_LLAMALIKE, tie_word_embeddings=False, rope_parameters=dict(
        rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=64))),
    "tiny-pythia": ("GPTNeoXConfig", dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                          max_position_embeddings=512, rotary_pct=0.25, use_parallel_residual=True,
                                          tie_word_embeddings=False)),
    "tiny-phi3": ("Phi3Config", dict(_LLAMALIKE, tie_word_embeddings=False,
                                     rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5))),
}
