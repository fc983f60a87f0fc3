"""Saving a lensutil model and loading it back (strict.py says why a state dict does not fit).

`save_pretrained(model, directory)` writes three things (lensutil's own format; TransformerLens has
no save_pretrained, its users torch.save(model.state_dict()) and rebuild the model from its cfg):

- lensutil_config.json: the HookedTransformerConfig, including how the weights were processed
  (folded_ln, centered_writing_weights, centered_unembed, folded_value_biases);
- lensutil_weights.safetensors: the state dict, every tensor contiguous and owning its storage
  (safetensors refuses tensors that share memory, e.g. a tied unembedding);
- the tokenizer's files, so the directory is complete.

It writes into a temporary directory beside the target and renames it into place, so a failure
leaves no half-written directory. `from_pretrained(directory)` recognises the format and loads the
weights exactly as saved: processed weights are not processed again, and the logits are identical.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from ..config import HookedTransformerConfig
from ..errors import LensError, QuantizationError, WeightLoadError
from ..model import doors
from ..model.initialization import loading_weights
from ..model.linear import mode_of
from ..model.transformer import HookedTransformer
from .convert import place
from .quantization import quantize_
from .strict import _load_strict, _shape


CONFIG_FILE = "lensutil_config.json"
WEIGHTS_FILE = "lensutil_weights.safetensors"
FORMAT_VERSION = 1
_PROCESSING_FLAGS = ("folded_ln", "centered_writing_weights", "centered_unembed", "folded_value_biases")


def is_lensutil_dir(path) -> bool:
    return os.path.isfile(os.path.join(os.path.expanduser(str(path)), CONFIG_FILE))


def _owning_contiguous(state_dict: dict) -> dict:
    """Each tensor contiguous, on the CPU, and alone in its storage (shared ones are copied)."""
    seen, out = set(), {}
    for name, tensor in state_dict.items():
        t = tensor.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()  # sharing another's storage, or a view into a larger tensor: safetensors wants one storage per tensor
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def save_pretrained(model, directory) -> Path:
    """Write `model` (weights, config, tokenizer) to `directory`, atomically. Returns the directory.

    `directory` must not exist, be empty, or hold an earlier save_pretrained (which is replaced).
    """
    from safetensors.torch import save_file

    _refuse_quantised(model)
    target = Path(os.path.expanduser(str(directory))).absolute()
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not is_lensutil_dir(target))):
        raise LensError(
            f"{str(directory)!r} exists and is not an earlier save_pretrained() directory; lensutil will not write over it. "
            "Pick a new directory (or an empty one)."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        cfg = model.cfg.to_dict()
        cfg["device"] = "cpu"  # where it loads by default is from_pretrained's choice, not the saver's
        info = {"lensutil_format": FORMAT_VERSION, "cfg": cfg,
                "processing": {flag: bool(getattr(model.cfg, flag)) for flag in _PROCESSING_FLAGS}}
        (staging / CONFIG_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
        save_file(_owning_contiguous(model.state_dict()), str(staging / WEIGHTS_FILE),
                  metadata={"format": "pt", "lensutil_format": str(FORMAT_VERSION)})
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(str(staging))
        if target.exists():  # an earlier save: swap it out, then remove it
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "saved")
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _refuse_quantised(model) -> None:
    # A quantised weight is bitsandbytes' packed codes and statistics (on the CPU, repacked for its 4-bit
    # kernel at the first forward), not a tensor lensutil's format holds: refuse before writing anything,
    # rather than write a directory that cannot be loaded back.
    config = getattr(model, "quantization_config", None)
    if config is None:
        return
    arg = "load_in_8bit=True" if config.load_in_8bit else f"load_in_4bit=True, bnb_4bit_quant_type={config.bnb_4bit_quant_type!r}"
    raise QuantizationError(
        f"save_pretrained() cannot save a quantised model ({mode_of(config)}): lensutil's format holds full-precision "
        "weights only, and dequantised weights are not the originals. Nothing was written. Instead, save the full-precision "
        f"model (from_pretrained without the quantisation arguments, then save_pretrained) and quantise it on loading: "
        f"from_pretrained(directory, {arg}) (or quantization_config=...) gives this same quantised model."
    )


def load_saved(directory, *, tokenizer=None, dtype: torch.dtype | None = None, device: str | None = None, bnb_config=None):
    """A HookedTransformer from a save_pretrained() directory: weights exactly as saved, no processing,
    in the dtype it was saved in unless `dtype` says otherwise (an MoE router's weight stays float32),
    then quantised if `bnb_config` (a BitsAndBytesConfig) asks for it."""
    from safetensors.torch import load_file

    path = Path(os.path.expanduser(str(directory)))
    info = json.loads((path / CONFIG_FILE).read_text())
    if info.get("lensutil_format") != FORMAT_VERSION:
        raise WeightLoadError(
            f"{str(directory)!r} was saved in lensutil format {info.get('lensutil_format')!r}; this lensutil reads "
            f"format {FORMAT_VERSION}. Load it with the lensutil version that saved it and save it again."
        )
    cfg = HookedTransformerConfig.from_dict(info["cfg"])
    if tokenizer is None and (path / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path))
    saved_dtype = cfg.dtype
    with loading_weights():  # no initial values: every weight is loaded next
        model = HookedTransformer(cfg, tokenizer)
    _load_strict(model, load_file(str(path / WEIGHTS_FILE)))
    model = place(model, device, dtype or saved_dtype)
    if bnb_config is None:
        return model
    return quantize_(model, bnb_config)  # as from_pretrained by name: processed (as saved) first, quantised last


_TL_BUFFER = re.compile(r"^(blocks\.\d+\.attn\.)(mask|IGNORE|rotary_sin|rotary_cos)$")


def drop_transformerlens_buffers(state_dict: dict, cfg) -> dict:
    """`state_dict` without the constant buffers TransformerLens 2.x saves in every attention layer, after
    checking each is what TransformerLens writes (components/abstract_attention.py, v2.18):

    - `attn.mask`: the causal mask, bool [n_ctx, n_ctx], True where key <= query (banded to the last
      window_size keys with sliding-window attention);
    - `attn.IGNORE`: the score masked positions get, a scalar -inf;
    - `attn.rotary_sin`, `attn.rotary_cos` (rotary models): [n_ctx, rotary_dim] tables of position angles,
      position 0 at angle 0.

    lensutil builds all of them from its config at each forward, so they carry no weights; one that is
    not what TransformerLens writes (another mask, a finite IGNORE) is refused, naming it.
    """
    found = {k: v for k, v in state_dict.items() if _TL_BUFFER.match(k)}
    if not found:
        return state_dict
    for key, t in found.items():
        kind = _TL_BUFFER.match(key).group(2)
        t = torch.as_tensor(t)
        if kind == "mask":
            n = t.shape[0] if t.ndim == 2 else 0
            expected = torch.tril(torch.ones((n, n), dtype=torch.bool))
            window = cfg.window_size if cfg.attn_type(int(key.split(".")[1])) == "local" else None
            if window is not None:
                expected = torch.triu(expected, 1 - window)
            ok = t.dtype == torch.bool and t.shape == (n, n) and n > 0 and torch.equal(t.cpu(), expected)
            what = "a bool causal mask [n_ctx, n_ctx], True where key <= query" + (
                f" and query - key < {window}" if window is not None else "")
        elif kind == "IGNORE":
            ok = t.ndim == 0 and t.is_floating_point() and t.item() == float("-inf")
            what = "a scalar -inf"
        else:
            ok = (t.ndim == 2 and t.shape[1] == cfg.rotary_dim and t.is_floating_point()
                  and float(t[0].abs().max() if kind == "rotary_sin" else (t[0] - 1).abs().max()) == 0)
            what = f"[n_ctx, {cfg.rotary_dim}] (rotary_dim) with position 0 at angle 0"
        if not ok:
            raise WeightLoadError(
                f"{key!r} ({_shape(t)}, {t.dtype}) is not the {kind} buffer TransformerLens 2.x writes ({what}); "
                "lensutil builds it from the config, so another one would change the model. Check that the state "
                f"dict comes from a causal model with this config; if the buffer is stale, drop {key!r} from it."
            )
    return {k: v for k, v in state_dict.items() if k not in found}


# The model's TransformerLens doors (lensutil/model/doors.py says why they are filled from here).
doors.provide("HookedTransformer.save_pretrained", save_pretrained)
