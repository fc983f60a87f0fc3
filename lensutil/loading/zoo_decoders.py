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
    # (1 + w) norms, sqrt(d_model) embedding scale, GeGLU, multi-query attention, head_dim 32, tied unembedding
    "tiny-gemma": ("GemmaConfig", dict(_SMALL, num_hidden_layers=2, num_key_value_heads=1, head_dim=32)),
    # + norms after attention and MLP, soft caps small enough to bite (scores ~1, logits ~1), a scale of
    # 24 ** -0.5 (not d_head's), sliding windows of 4 on layers 0 and 2
    "tiny-gemma2": ("Gemma2Config", dict(_SMALL, num_hidden_layers=4, head_dim=16, query_pre_attn_scalar=24,
                                         sliding_window=4, attn_logit_softcapping=2.0, final_logit_softcapping=4.0)),
    # + q/k norms, windows of 4 on all layers but layer 2, the local layers' rotary base apart from the global one's
    "tiny-gemma3": ("Gemma3TextConfig", dict(
        _SMALL, num_hidden_layers=4, head_dim=32, query_pre_attn_scalar=24, sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                         "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0}})),
}
