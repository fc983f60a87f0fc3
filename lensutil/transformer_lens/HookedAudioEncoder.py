"""TransformerLens 2.x's `transformer_lens.HookedAudioEncoder` module (HuBERT)."""

from ..model.audio_encoder import HookedAudioEncoder as HookedAudioEncoder
