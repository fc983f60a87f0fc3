"""HookedAudioEncoder: HuBERT with HookedTransformer's hook plumbing (TransformerLens 2.18's class of that name).

The waveform goes through HuggingFace's own front end (a stack of 1-D convolutions, a projection to
d_model, a convolutional position embedding and a LayerNorm), kept as HF's modules in `front_end`;
TransformerLens keeps the HF model for this too and hooks nothing there. What follows is lensutil's
TransformerBlocks under BERT's encoder fields (post-LN, bidirectional), so every block hook, the
ActivationCache and the weight properties (W_Q, OV, ...) are the encoder's. Weights: lensutil/
architectures/hubert.py; loading: lensutil/loading/audio.py.

As HuggingFace (HubertEncoder), padded frames are set to zero before the position convolution; padded
keys are masked in every layer; padded frames' outputs are computed, not zeroed.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from ..config import HookedTransformerConfig
from ..errors import ConfigError, InputError
from ..hooks.hook_points import HookPoint
from ..hooks.root_module import HookedRootModule
from ..text import tokens as tok
from . import doors, initialization
from .block import TransformerBlock
from .circuit_weights import CircuitWeights
from .context import AttentionContext
from .transformer import HookedTransformer


class HookedAudioEncoder(HookedRootModule):
    is_encoder = True

    def __init__(self, cfg: HookedTransformerConfig, front_end: nn.Module | None = None, processor=None,
                 move_to_device: bool = True):
        super().__init__()
        if isinstance(cfg, dict):
            cfg = HookedTransformerConfig(**cfg)
        if cfg.attention_dir != "bidirectional" or cfg.norm_position != "post":
            raise ConfigError("HookedAudioEncoder's blocks are HuBERT's: post-LN and bidirectional; set "
                              "attention_dir='bidirectional', norm_position='post' (or load with from_pretrained).")
        self.cfg, self.front_end, self.processor = cfg, None, processor
        self.hook_full_embed = HookPoint("batch pos d_model")  # the frames after the position convolution and LayerNorm
        self.blocks = nn.ModuleList(TransformerBlock(cfg, i) for i in range(cfg.n_layers))
        initialization.init_after_construction(self)  # the blocks only: HF's front end keeps its weights
        self.front_end = front_end
        self.setup()
        if move_to_device:
            self.to(cfg.device)

    def init_weights(self) -> None:
        """Fill the blocks' weights afresh (cfg.init_mode); the HuggingFace front end keeps its own."""
        front, self.front_end = self.front_end, None
        try:
            initialization.init_weights(self)
        finally:
            self.front_end = front

    hook_flag = HookedTransformer.hook_flag
    _set_flag = HookedTransformer._set_flag
    set_use_attn_result = HookedTransformer.set_use_attn_result
    set_use_split_qkv_input = HookedTransformer.set_use_split_qkv_input
    set_use_attn_in = HookedTransformer.set_use_attn_in
    set_use_hook_mlp_in = HookedTransformer.set_use_hook_mlp_in
    # TransformerLens' HookedAudioEncoder's weight views: the blocks' weights stacked over layers, QK / OV circuits
    _stacked, all_head_labels = CircuitWeights._stacked, CircuitWeights.all_head_labels
    W_Q, W_K, W_V, W_O = CircuitWeights.W_Q, CircuitWeights.W_K, CircuitWeights.W_V, CircuitWeights.W_O
    b_Q, b_K, b_V, b_O = CircuitWeights.b_Q, CircuitWeights.b_K, CircuitWeights.b_V, CircuitWeights.b_O
    W_in, W_out, b_in, b_out = CircuitWeights.W_in, CircuitWeights.W_out, CircuitWeights.b_in, CircuitWeights.b_out
    QK, OV = CircuitWeights.QK, CircuitWeights.OV

    def _need_front_end(self) -> nn.Module:
        if self.front_end is None:
            raise ConfigError("This HookedAudioEncoder has no front end (it was built from a config): it runs on frames "
                              "[batch, frames, d_model] only. Load one with HookedAudioEncoder.from_pretrained(name) for waveforms.")
        return self.front_end

    def to_frames(self, raw_inputs, sampling_rate: int = 16000, move_to_device: bool = True
                  ) -> tuple[Float[Tensor, "batch frames d_model"], Int[Tensor, "batch frames"] | None]:
        """Waveform(s) -> (projected frames, 0/1 frame mask), through the checkpoint's feature extractor and front end."""
        front = self._need_front_end()
        if self.processor is None:
            raise ConfigError("This HookedAudioEncoder has no feature extractor (processor=) to turn waveforms into input values.")
        if isinstance(raw_inputs, (Tensor, np.ndarray)) and np.ndim(raw_inputs) == 2:
            waves = list(raw_inputs)  # [batch, samples]: one waveform per row
        elif isinstance(raw_inputs, (Tensor, np.ndarray)) and np.ndim(raw_inputs) == 1:
            waves = [raw_inputs]
        elif isinstance(raw_inputs, (list, tuple)):
            waves = list(raw_inputs)
        else:
            raise InputError("Waveforms are a 1-D tensor or array, a [batch, samples] one, or a list of 1-D ones; got "
                             f"{type(raw_inputs).__name__} of shape {list(np.shape(raw_inputs))}.")
        waves = [np.asarray(w.detach().cpu() if isinstance(w, Tensor) else w, dtype=np.float32) for w in waves]
        if any(w.ndim != 1 for w in waves):
            raise InputError(f"Each waveform must be 1-D (mono samples); got shapes {[list(w.shape) for w in waves]}.")
        out = self.processor(waves, sampling_rate=sampling_rate, return_tensors="pt", padding=True,
                             return_attention_mask=True)
        values, sample_mask = out["input_values"].to(self.cfg.device), out.get("attention_mask")
        conv = front.feature_extractor(values).transpose(1, 2)
        frame_mask = None if sample_mask is None else front.frame_mask(conv.shape[1], sample_mask.to(self.cfg.device)).long()
        return front.feature_projection(conv), frame_mask

    def encoder_output(self, frames: Float[Tensor, "batch frames d_model"],
                       one_zero_attention_mask: Int[Tensor, "batch frames"] | None = None) -> Float[Tensor, "batch frames d_model"]:
        """The blocks' output for projected frames (HF's last_hidden_state)."""
        front = self._need_front_end()
        frames = torch.as_tensor(frames, device=self.cfg.device)
        if frames.ndim != 3 or frames.shape[-1] != self.cfg.d_model:
            raise InputError(f"frames must be [batch, frames, {self.cfg.d_model}]; got {list(frames.shape)}.")
        batch, pos = frames.shape[:2]
        key_mask = None
        if one_zero_attention_mask is not None:
            key_mask = tok.check_attention_mask(torch.as_tensor(one_zero_attention_mask, device=frames.device), batch, pos)
            if key_mask is not None:
                frames = frames.masked_fill(~key_mask[..., None], 0.0)  # as HubertEncoder: padded frames are zero
        resid = self.hook_full_embed(front.layer_norm(frames + front.pos_conv_embed(frames)))
        ctx = AttentionContext.build(self.cfg, torch.arange(pos, device=frames.device).expand(batch, pos), key_mask, None, 0)
        for block in self.blocks:
            resid = block(resid, ctx)
        return resid

    def forward(self, inputs, one_zero_attention_mask: Int[Tensor, "batch frames"] | None = None,
                sampling_rate: int = 16000, move_to_device: bool = True) -> Float[Tensor, "batch frames d_model"]:
        """A waveform, a list of waveforms, frames [batch, frames, d_model], or (frames, frame_mask) -> final hidden states."""
        if isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[0], Tensor):
            frames, mask = inputs
        elif isinstance(inputs, Tensor) and inputs.ndim == 3:
            frames, mask = inputs, None
        else:
            frames, mask = self.to_frames(inputs, sampling_rate, move_to_device)
        return self.encoder_output(frames, mask if one_zero_attention_mask is None else one_zero_attention_mask)

    @classmethod
    def from_pretrained(cls, model_name: str, **kwargs) -> "HookedAudioEncoder":
        """A HuBERT checkpoint (hub name or local directory), e.g. facebook/hubert-base-ls960."""
        return doors.call("HookedAudioEncoder.from_pretrained", model_name, **kwargs)
