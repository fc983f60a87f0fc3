"""`quantization_support()`: which architecture runs in which bitsandbytes mode here, measured, not written down.

Each zoo architecture is loaded in float32 (the reference) and in each mode (8-bit, 4-bit nf4,
4-bit fp4) on the current device, lensutil's and HuggingFace's own quantised model side by side,
and run on a fixed set of real prompts. A row says whether the mode works (or the error), the
weight memory against float32, and the max |Δ logit| and top-1 agreement against float32, for
lensutil and for HuggingFace, plus how far lensutil's quantised logits are from HuggingFace's.
Both sides use eager attention, so the only difference left is what quantisation does.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from ..architectures.registry import get_adapter
from ..errors import LensError
from ..loading import hf_source
from ..loading.encoder import from_pretrained, load_hf_encoder
from ..loading.hf_source import resolve_source
from ..loading.pretrained import from_pretrained_no_processing
from ..loading.progress_bars import quiet_local_loading
from ..loading.quantization import MODES, config_for_mode, quantize_, weight_memory
from ..loading.zoo_bert import ENCODER_NAMES
from ..model.linear import mode_of

PROMPTS = (
    "The Eiffel Tower is in the city of",
    "def fibonacci(n):\n    return",
    "1, 2, 3, 5, 8, 13,",
    "The capital of Japan is Tokyo, and the capital of France is",
    "She opened the door, looked outside, and saw that it was",
)
ARCHITECTURES = {"tiny-gpt2": "GPT-2", "tiny-llama": "Llama", "tiny-mistral": "Mistral", "tiny-qwen2": "Qwen2",
                 "tiny-mixtral": "Mixtral (MoE)", "tiny-bert": "BERT (encoder)", "smollm2-135m": "SmolLM2-135M (Llama, real)"}
TINY = tuple(n for n in ARCHITECTURES if n.startswith("tiny-"))
# transformers 5 keeps a Mixtral's experts as fused 3-D parameters, which its bitsandbytes
# integration leaves in full precision; for the lensutil-vs-HF column lensutil skips them too.
_HF_SKIPS = {"tiny-mixtral": ["lm_head", "experts"]}


@dataclasses.dataclass
class SupportRow:
    model: str
    architecture: str
    mode: str
    works: bool
    error: str | None = None
    memory: float | None = None  # lensutil's weight bytes / its float32 weight bytes
    linear_memory: float | None = None  # quantised linears' bytes / the same matrices in float32
    max_dlogit: float | None = None  # max |Δ logit| against float32
    top1: float | None = None  # share of positions whose argmax equals float32's
    hf_memory: float | None = None
    hf_max_dlogit: float | None = None
    hf_top1: float | None = None
    vs_hf: float | None = None  # max |Δ logit| between lensutil and HuggingFace in this mode (0: bit for bit)


_COLUMNS = [("architecture", "architecture"), ("mode", "mode"), ("works", "works"), ("memory", "memory"),
            ("linear_memory", "linear mem"), ("max_dlogit", "max|Δ|"), ("top1", "top-1"), ("hf_memory", "HF memory"),
            ("hf_max_dlogit", "HF max|Δ|"), ("hf_top1", "HF top-1"), ("vs_hf", "Δ vs HF")]


def _fmt(key: str, value) -> str:
    if value is None:
        return "-"
    if key == "works":
        return "yes" if value else "no"
    if key in ("memory", "linear_memory", "hf_memory"):
        return f"{value:.2f}x"
    if key in ("max_dlogit", "hf_max_dlogit", "vs_hf"):
        return "0" if value == 0 else f"{value:.2g}"
    if key in ("top1", "hf_top1"):
        return f"{value:.2f}"
    return str(value)


@dataclasses.dataclass
class SupportTable:
    rows: list[SupportRow]
    device: str
    notes: list[str] = dataclasses.field(default_factory=list)

    def _cells(self) -> list[list[str]]:
        return [[_fmt(k, getattr(r, k)) for k, _ in _COLUMNS] for r in self.rows]

    def __str__(self) -> str:
        head = [h for _, h in _COLUMNS]
        cells = self._cells()
        widths = [max(len(x) for x in col) for col in zip(head, *cells)]
        line = lambda xs: "  ".join(x.ljust(w) for x, w in zip(xs, widths))  # noqa: E731
        errors = [f"  {r.architecture} {r.mode}: {r.error}" for r in self.rows if r.error]
        return "\n".join([f"bitsandbytes support on {self.device}", line(head), *map(line, cells),
                          *(["errors:", *errors] if errors else []), *self.notes])

    __repr__ = __str__

    def to_markdown(self) -> str:
        # Every cell escapes "|", the header's too ("max|Δ|"): an unescaped one splits a column in two.
        row = lambda cells: "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"  # noqa: E731
        head = [h for _, h in _COLUMNS]
        rows = [row(head), "|" + "---|" * len(head), *map(row, self._cells())]
        errors = [f"- {r.architecture} {r.mode}: {r.error}" for r in self.rows if r.error]
        return "\n".join(rows + ([""] + errors if errors else []) + ([""] + [f"- {n}" for n in self.notes] if self.notes else []))

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def to_dataframe(self):
        """A pandas DataFrame (pandas is optional: `pip install pandas`)."""
        try:
            import pandas as pd
        except ImportError as err:
            raise LensError("to_dataframe() needs pandas: pip install pandas. print(table) and table.to_markdown() need nothing.") from err
        return pd.DataFrame([dataclasses.asdict(r) for r in self.rows])


def _load(name: str, device: str, quantization_config=None):
    """lensutil (no processing, eager attention) and HuggingFace models of `name`, optionally quantised by HF."""
    if name in ENCODER_NAMES:
        lens = None if quantization_config else from_pretrained(name, device=device)
        if quantization_config is None:
            return lens, load_hf_encoder(name)[0]
        import transformers

        source = resolve_source(name)
        with quiet_local_loading():
            auto = getattr(transformers, get_adapter(transformers.AutoConfig.from_pretrained(source)).auto_class)
            hf = auto.from_pretrained(source, dtype=torch.float32, attn_implementation="eager",
                                      quantization_config=quantization_config, device_map=device)
        return None, hf.eval()
    if quantization_config is None:
        return from_pretrained_no_processing(name, device=device, attn_implementation="eager"), hf_source.load_hf(name)[0]
    return None, hf_source.load_hf(name, quantization_config=quantization_config, device_map=device)[0]


def _logits(model, tokens_list, hf: bool) -> torch.Tensor:
    with torch.no_grad():
        outs = []
        for t in tokens_list:
            t = t.to(next(model.parameters()).device)
            out = model(input_ids=t).logits if hf else model(t)
            outs.append(out[0].float().cpu())
        return torch.cat(outs)  # [all positions, d_vocab]


def _compare(logits: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    return (logits - ref).abs().max().item(), (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()


def quantization_support(models=TINY, modes=("none", *MODES), device: str | None = None, prompts=PROMPTS,
                         include_hf: bool = True) -> SupportTable:
    """Measure which zoo architecture runs in which mode here; returns a printable SupportTable.

    models: zoo names (default: the tiny zoo, one per architecture, seconds each; add
    "smollm2-135m" for the real model, about a minute on a laptop CPU). include_hf=False skips
    HuggingFace's own quantised models (their columns stay "-").
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows, apart = [], {}
    for name in models:
        arch = ARCHITECTURES.get(name, name)
        lens32, hf32 = _load(name, device)
        tokens = [lens32.to_tokens(p) for p in prompts]
        tokens = [t[0] if isinstance(t, tuple) else t for t in tokens]  # encoders: (ids, token types, mask)
        ref, hf_ref = _logits(lens32, tokens, hf=False), _logits(hf32, tokens, hf=True)
        mem32, hf_mem32 = weight_memory(lens32)["total"], weight_memory(hf32)["total"]
        if weight_memory(lens32)["unembed_apart"]:
            apart[arch] = (weight_memory(lens32)["unembed_apart"], mem32, hf_mem32)
        for mode in modes:
            if mode == "none":
                rows.append(SupportRow(name, arch, "none (float32)", True, memory=1.0, max_dlogit=0.0, top1=1.0,
                                       hf_memory=1.0, vs_hf=_compare(ref, hf_ref)[0]))
                continue
            row = SupportRow(name, arch, mode, False)
            try:
                config = config_for_mode(mode)
                lens_q = quantize_(copy.deepcopy(lens32), config)
                logits = _logits(lens_q, tokens, hf=False)
                row.max_dlogit, row.top1 = _compare(logits, ref)
                mem = weight_memory(lens_q)
                row.memory, row.linear_memory = mem["total"] / mem32, mem["linear"] / mem["linear_float32"]
                row.works = True
                if include_hf:
                    hf_config = config_for_mode(mode, llm_int8_skip_modules=_HF_SKIPS[name]) if name in _HF_SKIPS else config
                    _, hf_q = _load(name, device, hf_config)
                    hf_logits = _logits(hf_q, tokens, hf=True)
                    row.hf_max_dlogit, row.hf_top1 = _compare(hf_logits, hf_ref)
                    row.hf_memory = weight_memory(hf_q)["total"] / hf_mem32
                    like = lens_q if name not in _HF_SKIPS else quantize_(copy.deepcopy(lens32), hf_config)
                    row.vs_hf = _compare(_logits(like, tokens, hf=False), hf_logits)[0]
            except (LensError, RuntimeError, ValueError, NotImplementedError) as err:
                row.error = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
            rows.append(row)
    import bitsandbytes
    import transformers

    notes = [f"bitsandbytes {bitsandbytes.__version__}, transformers {transformers.__version__}, torch {torch.__version__}; "
             f"{len(prompts)} prompts, every position; eager attention on both sides; memory = all weights as held "
             "(each storage once) vs float32.",
             "Δ vs HF: max |Δ logit| between lensutil and HuggingFace in the same mode (float32, or the same bytes "
             "through the same bitsandbytes kernels); 0 is bit for bit.",
             "Mixtral: HuggingFace leaves the fused experts in float32 (its bnb integration replaces nn.Linear only); "
             "lensutil quantises them. 'Δ vs HF' compares with lensutil skipping them too (llm_int8_skip_modules)."]
    if apart:
        notes.append("W_U: lensutil holds the unembedding apart from the embedding, as TransformerLens does (an edit of one "
                     "never reaches the other); where the checkpoint ties them HuggingFace holds that matrix once. In float32: "
                     + "; ".join(f"{arch} +{b / 2**20:.1f} MiB ({mem / 2**20:.1f} vs HF {hf / 2**20:.1f} MiB)"
                                 for arch, (b, mem, hf) in apart.items())
                     + ". It stays full precision in every mode, so 'memory' (vs lensutil's own float32) includes it.")
    keep = {"Mixtral": "tiny-mixtral" in models}
    return SupportTable(rows, device, [n for n in notes if keep.get(n.split(":")[0], True)])


__all__ = ["quantization_support", "SupportTable", "SupportRow", "PROMPTS", "mode_of"]
