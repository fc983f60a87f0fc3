"""The zoo's tiny random decoders of the families issue 26 added (Qwen3, Gemma 1-3, OLMo 2), as data.

Each entry is (transformers config class, settings), built exactly as zoo.py builds its other tiny
models (`_build_tiny`: seeded weights, seeded noise on every norm weight and bias, SmolLM2's
tokenizer); zoo.py merges this table into its own. Each setting is there because a converter or a
component could get it wrong: a head size that is not d_model / n_heads, grouped-query attention, an
attention scale that is not 1/sqrt(d_head), soft caps small enough to bite, and with sliding windows
of 4 keys, layers of both kinds so that the equivalence tests' prompts (longer than 4 tokens) tell them apart.
"""

from __future__ import annotations

_SMALL = dict(
    hidden_size=64, intermediate_size=192, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
)  # fmt: skip

TINY: dict[str, tuple[str, dict]] = {
    # per-head q/k RMSNorm; head_dim 32 (4 heads x 32 = 128 != d_model 64); tied unembedding, Qwen's rope base
    "tiny-qwen3": ("Qwen3Config", dict(_SMALL, num_hidden_layers=2, head_dim=32, rope_theta=1e6, tie_word_embeddings=True)),
}
