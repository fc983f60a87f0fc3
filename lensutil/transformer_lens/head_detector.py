"""TransformerLens 2.x's `transformer_lens.head_detector`: lensutil's (lensutil/analysis/head_detector.py)."""

from ..analysis.head_detector import (  # noqa: F401
    DET_PAT_NOT_SQUARE_ERR,
    HEAD_NAMES,
    INVALID_HEAD_NAME_ERR,
    SEQ_LEN_ERR,
    ErrorMeasure,
    HeadName,
    LayerHeadTuple,
    LayerToHead,
    compute_head_attention_similarity_score,
    detect_head,
    get_duplicate_token_head_detection_pattern,
    get_induction_head_detection_pattern,
    get_previous_token_head_detection_pattern,
    get_supported_heads,
)
