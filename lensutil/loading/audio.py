"""From a name to a HookedAudioEncoder (HuBERT): hub names and local directories, strict loading, the hub's errors.

The blocks' weights are converted (lensutil/architectures/hubert.py); the front end is HuggingFace's
modules, taken from the loaded HubertModel (lensutil/model/audio_encoder.py says why).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..architectures import hubert
from ..errors import WeightLoadError
from ..model import doors
from ..model.audio_encoder import HookedAudioEncoder
from ..model.initialization import loading_weights
from .hf_source import _explain_hub_error, resolve_source
from .hub import hub_kwargs
from .progress_bars import quiet_local_loading


class HubertFrontEnd(nn.Module):
    """HuggingFace's HuBERT front end: convolutions, projection, convolutional positions, the LayerNorm after them."""

    def __init__(self, hf_model):
        super().__init__()
        self.feature_extractor, self.feature_projection = hf_model.feature_extractor, hf_model.feature_projection
        self.pos_conv_embed, self.layer_norm = hf_model.encoder.pos_conv_embed, hf_model.encoder.layer_norm
        self.kernels_strides = list(zip(hf_model.config.conv_kernel, hf_model.config.conv_stride))

    def frame_mask(self, n_frames: int, sample_mask: torch.Tensor) -> torch.Tensor:
        """The frames each row's real samples reach (HF's _get_feature_vector_attention_mask): True = real."""
        lengths = sample_mask.sum(-1)
        for kernel, stride in self.kernels_strides:  # each Conv1d: floor((L - k) / s) + 1
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return torch.arange(n_frames, device=sample_mask.device)[None, :] < lengths[:, None]


def from_pretrained(model_name: str, *, device: str | None = None, revision: str | None = None, token=None,
                    dtype: torch.dtype = torch.float32, move_to_device: bool = True) -> HookedAudioEncoder:
    import transformers

    source = resolve_source(model_name)
    local = os.path.isdir(source)
    hub = hub_kwargs(str(model_name), source, revision, token) if not local else {}
    try:
        with quiet_local_loading(local):
            processor = transformers.AutoFeatureExtractor.from_pretrained(source, **hub)
            hf_model, info = transformers.HubertModel.from_pretrained(
                source, dtype=dtype, attn_implementation="eager", output_loading_info=True, **hub)
    except (OSError, ValueError) as err:
        if local and not isinstance(err, OSError):
            raise
        raise _explain_hub_error(model_name, err, repo=source, revision=revision, token=token, local=local) from None
    missing = [k for k in info.get("missing_keys", []) if k != "masked_spec_embed"]  # training only
    if missing:
        raise WeightLoadError(f"The checkpoint {model_name!r} lacks weights {sorted(missing)[:4]}, which HuggingFace "
                              "would fill with random values; is it a HuBERT checkpoint?")
    hf_model.eval()
    cfg = hubert.config_from_hf(hf_model.config, dtype=dtype, attn_implementation="eager", model_name=str(model_name),
                                device=str(device or ("cuda" if torch.cuda.is_available() else "cpu")))  # eager: HF's, loaded above
    with loading_weights():  # no initial values: every weight is loaded next
        model = HookedAudioEncoder(cfg, HubertFrontEnd(hf_model), processor, move_to_device=False)
    blocks = {k: v.detach().to(dtype) for k, v in hubert.convert(hf_model.state_dict(), cfg).items()}
    front = {k: v for k, v in model.state_dict().items() if k.startswith("front_end.")}
    model.load_state_dict({**front, **blocks}, strict=True)
    return (model.to(cfg.device) if move_to_device else model).eval()


doors.provide("HookedAudioEncoder.from_pretrained", from_pretrained)
