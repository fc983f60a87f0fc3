"""A GGUF checkpoint saved as a plain HuggingFace directory: what the zoo's real models are (SmolLM2, Gemma 3 270M).

transformers de-quantises a GGUF file to float32 when it loads it; only the "quantised with gguf"
bookkeeping then blocks save_pretrained. The model is rebuilt from its config, the weights copied in
strictly, saved, and checked: the saved directory must give the GGUF model's logits bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ZooError


def save_plain(gguf_model, tokenizer, out: Path, architecture: str, name: str, checked_with: str) -> None:
    """Save `gguf_model` (loaded with gguf_file=) and its tokenizer into `out` as safetensors, then check them.

    architecture: config.architectures[0] to write (GGUF metadata carries none; adapters key on it).
    name, checked_with: the zoo entry and the transformers version it was checked with, for the error.
    """
    from transformers import AutoModelForCausalLM

    config = gguf_model.config
    del config.quantization_config
    config.architectures = [architecture]
    plain = type(gguf_model)(config).eval()
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # Cheap proof that what we saved is the model we loaded: identical logits.
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        want = gguf_model(ids).logits
        got = AutoModelForCausalLM.from_pretrained(out).eval()(ids).logits
    if not torch.equal(want, got):
        raise ZooError(
            f"the saved {name} differs from the GGUF model (max |diff| {(want - got).abs().max():.3g}); "
            f"this transformers version may convert GGUF differently (the zoo was checked with {checked_with}); "
            "try that version, or report it."
        )
