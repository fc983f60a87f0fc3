"""`support_table()`: what lensutil supports, measured on a small model of each family, never written by hand.

For each line of lensutil/checks/families.py the small zoo model is loaded into lensutil and into
HuggingFace and the row says, in float32:
- max |Δ logit| against HuggingFace in eager and in sdpa attention (each side in the same mode), on
  compare_with_hf's padded batch of prompts. Printed as "0" when exactly zero, else its value;
- whether greedy generation with the KV cache gives HuggingFace's tokens (decoders);
- whether every hook fires, each flag-gated one with its flag on, with the shape its HookPoint documents;
- what each weight-processing option does: ✓ applied and log-probs still within PROCESSING_BOUND of
  HuggingFace's (the maths is exact; only float32 rounding differs), skipped (process_weights_ says
  why) or refused (loading raises, saying why);
- optionally, which bitsandbytes modes run here (quantization_support): the one machine-dependent column.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import math
import re
import warnings

import torch

from ..config import FLAG_GATED_HOOKS
from ..errors import ConfigError, LensError
from ..loading import hf_source
from ..loading.encoder import from_pretrained as encoder_from_pretrained
from ..loading.pretrained import from_pretrained_no_processing
from ..loading.zoo_bert import ENCODER_NAMES
from ..model.processing import process_weights_
from ..text import tokens as tok
from .compare import DEFAULT_PROMPTS, compare_with_hf
from .families import FAMILIES, Family

PROCESSING = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")
# Processing re-rounds float32 weights, so log-probs move by float32 rounding only: measured up to
# 5e-5 on smollm2-135m with every option (the doctor's bound, lensutil/checks/cli.py); an option whose
# maths were wrong moves them by orders of magnitude more.
PROCESSING_BOUND = 1e-4
GENERATED_TOKENS = 20
# Hooks are checked in passes: with no flag on, every always-on hook (some change shape with a flag:
# use_split_qkv_input gives ln1 a head axis, as in TransformerLens); then the flag-gated hooks, with
# their flags on, in two passes because hook_attn_in and the split q/k/v inputs (two views of one
# input) cannot be on together.
_FLAG_PASSES = ((), ("use_attn_result", "use_split_qkv_input", "use_hook_mlp_in"), ("use_attn_in",))


@dataclasses.dataclass
class HookCheck:
    total: int  # hooks in model.hook_dict
    problems: list[str]  # "name: why" for each hook that did not fire or had another shape than documented
    refused: dict[str, str]  # hook -> why it cannot fire on this model (its flag is refused, e.g. use_attn_in with GQA)

    @property
    def good(self) -> int:
        return self.total - len(self.problems) - len(self.refused)

    def cell(self, reasons: list[str]) -> str:
        text = f"{'✗' if self.problems else '✓'} {self.good}/{self.total - len(self.refused)}"
        for why in dict.fromkeys(self.refused.values()):
            reasons.append(why) if why not in reasons else None
            n = sum(1 for w in self.refused.values() if w == why)
            text += f"; {n} refused [{reasons.index(why) + 1}]"
        return text


@dataclasses.dataclass
class Row:
    family: str
    hf_classes: tuple[str, ...]
    model: str
    dlogit_eager: float
    dlogit_sdpa: float
    generation_equal: bool | None  # None: an encoder (no generate)
    hooks: HookCheck
    processing: dict[str, tuple[str, str]]  # option -> ("✓" | "skipped" | "refused" | "✗", why)
    quantization: str | None = None  # machine-dependent: which bitsandbytes modes run here

    @property
    def exact(self) -> bool:
        """Logits bit-exact in both modes, generation equal, every hook right, no processing option that moves outputs."""
        return (self.dlogit_eager == 0 and self.dlogit_sdpa == 0 and self.generation_equal is not False
                and not self.hooks.problems and all(status != "✗" for status, _ in self.processing.values()))


def _delta(value: float) -> str:
    return "0" if value == 0 else f"{value:.3g}"


def _options(row: Row, reasons: list[str]) -> str:
    """e.g. '✓ fold_ln, center_unembed; skipped center_writing_weights [1]'; reasons collects the footnotes."""
    parts = []
    for status in ("✓", "skipped", "refused", "✗"):
        names = []
        for option, (s, why) in row.processing.items():
            if s != status:
                continue
            if why and status != "✓":
                if why not in reasons:
                    reasons.append(why)
                option += f" [{reasons.index(why) + 1}]"
            names.append(option)
        if names:
            parts.append(f"{status} {', '.join(names)}")
    return "; ".join(parts)


MACHINE_INDEPENDENT = ("family", "HF classes", "zoo model", "max |Δ logit| eager", "max |Δ logit| sdpa",
                       "greedy generation = HF (KV cache)", "hooks fire with documented shapes", "weight processing")


@dataclasses.dataclass
class SupportTable:
    rows: list[Row]
    notes: list[str] = dataclasses.field(default_factory=list)

    def header(self) -> list[str]:
        quantization = any(r.quantization is not None for r in self.rows)
        return [*MACHINE_INDEPENDENT, *(["bitsandbytes here"] if quantization else [])]

    def cells(self) -> tuple[list[list[str]], list[str]]:
        reasons: list[str] = []
        cells = []
        for r in self.rows:
            hooks = r.hooks.cell(reasons)
            gen = "n/a (encoder)" if r.generation_equal is None else ("✓" if r.generation_equal else "✗")
            cells.append([r.family, ", ".join(f"`{c}`" for c in r.hf_classes), f"`{r.model}`", _delta(r.dlogit_eager),
                          _delta(r.dlogit_sdpa), gen, hooks, _options(r, reasons),
                          *([r.quantization or "-"] if len(self.header()) > len(MACHINE_INDEPENDENT) else [])])
        return cells, reasons

    def to_markdown(self) -> str:
        cells, reasons = self.cells()
        head = self.header()
        # "|" inside a cell (e.g. max |Δ logit|) is escaped in the header and the body alike, or the table breaks.
        line = lambda xs: "| " + " | ".join(x.replace("|", "\\|") for x in xs) + " |"  # noqa: E731
        out = [line(head), "|" + " --- |" * len(head), *map(line, cells)]
        problems = [f"- {r.family}: {p}" for r in self.rows for p in r.hooks.problems]
        out += ["", *[f"[{i}] {why}  " for i, why in enumerate(reasons, 1)]] if reasons else []
        out += ["", "Hooks that did not fire as documented:", *problems] if problems else []
        return "\n".join(out + (["", *self.notes] if self.notes else [])) + "\n"

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def __str__(self) -> str:
        cells, reasons = self.cells()
        head = self.header()
        widths = [max(len(x) for x in col) for col in zip(head, *cells)]
        line = lambda xs: "  ".join(x.replace("`", "").ljust(w) for x, w in zip(xs, widths)).rstrip()  # noqa: E731
        problems = [f"  {r.family}: {p}" for r in self.rows for p in r.hooks.problems]
        return "\n".join([line(head), *map(line, cells), *[f"[{i}] {why}" for i, why in enumerate(reasons, 1)],
                          *(["hooks that did not fire as documented:", *problems] if problems else []), *self.notes])

    __repr__ = __str__


def machine_independent(markdown: str) -> list[str]:
    """A to_markdown() text less its machine-dependent column: what must read the same on every machine."""
    out = []
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]  # "\|" inside a cell is not a separator
            line = "|".join(["", *cells[: len(MACHINE_INDEPENDENT)], ""])
        out.append(line.rstrip())
    return out


# ---- the measurements ---------------------------------------------------------------------------


def _load(family: Family, attn_implementation: str):
    """lensutil (no processing) and HuggingFace, float32, both in `attn_implementation`."""
    if family.tiny in ENCODER_NAMES:
        import transformers

        from ..architectures.registry import get_adapter
        from ..loading.progress_bars import quiet_local_loading

        source = hf_source.resolve_source(family.tiny)
        with quiet_local_loading():
            config = transformers.AutoConfig.from_pretrained(source)
            auto = getattr(transformers, get_adapter(config).auto_class)
            hf = auto.from_pretrained(source, dtype=torch.float32, attn_implementation=attn_implementation).eval()
            tokenizer = transformers.AutoTokenizer.from_pretrained(source)
        model = encoder_from_pretrained(family.tiny, hf_model=hf, tokenizer=tokenizer, attn_implementation=attn_implementation)
        return model, hf
    hf, tokenizer = hf_source.load_hf(family.tiny, attn_implementation=attn_implementation)
    model = from_pretrained_no_processing(family.tiny, hf_model=hf, tokenizer=tokenizer, attn_implementation=attn_implementation)
    return model, hf


def _generation_equal(model, hf) -> bool:
    tokens = model.to_tokens(DEFAULT_PROMPTS[0])
    ours = model.generate(tokens, max_new_tokens=GENERATED_TOKENS, do_sample=False, stop_at_eos=False, verbose=False)
    theirs = hf.generate(tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=GENERATED_TOKENS,
                         min_new_tokens=GENERATED_TOKENS, do_sample=False)
    return ours.tolist() == theirs.tolist()


def _axes(model, batch: int, pos: int) -> dict[str, int | None]:
    cfg = model.cfg
    return {"batch": batch, "pos": pos, "key_pos": pos, "d_model": cfg.d_model, "d_head": cfg.d_head,
            "head_index": cfg.n_heads, "kv_head_index": cfg.n_key_value_heads or cfg.n_heads, "d_mlp": cfg.d_mlp,
            "d_vocab": cfg.d_vocab, "expert_index": cfg.num_experts, "top_k": cfg.experts_per_token, "1": 1,
            # an MoE expert's width (Qwen MoE's moe_intermediate_size; Mixtral's is d_mlp), and a shared expert's
            "d_mlp_expert": cfg.d_mlp_expert or cfg.d_mlp, "d_mlp_shared_expert": cfg.d_mlp_shared_expert,
            "routed": None}  # an expert sees the tokens routed to it: any number up to batch * pos


def _shape_problem(shape: tuple[int, ...], comment: str, axes: dict, batch: int, pos: int) -> str | None:
    """None if `shape` is what `comment` documents; an axis "a*b" is one axis of size a times b (OLMo 2's q/k norms)."""
    names = comment.split()
    if len(names) != len(shape):
        return f"shape {shape}, documented [{comment}]"
    for axis, size in zip(names, shape):
        if missing := [part for part in axis.split("*") if part not in axes]:
            return f"axis {missing[0]!r} of [{comment}] has no size in lensutil/checks/support_table.py _axes"
        parts = [axes[part] for part in axis.split("*")]
        want = None if None in parts else math.prod(parts)
        if (want is None and not 0 <= size <= batch * pos) or (want is not None and size != want):
            return f"shape {shape}, documented [{comment}]"
    return None


@torch.no_grad()
def _hooks(model) -> HookCheck:
    """Every hook fires, each with the shape its HookPoint documents, on a padded batch (flags on where needed)."""
    encoder = getattr(model, "is_encoder", False)
    prompts = list(DEFAULT_PROMPTS[:2])
    seen: dict[str, tuple[int, ...]] = {}
    unavailable: dict[str, str] = {}  # flag -> why this model refuses it
    gated = lambda name: any(name.endswith("." + suffix) for suffix in FLAG_GATED_HOOKS)  # noqa: E731
    restore = {f: getattr(model.cfg, f) for f in set(FLAG_GATED_HOOKS.values())}
    try:
        for flags in _FLAG_PASSES:
            for flag in restore:
                getattr(model, f"set_{flag}")(False)
            try:
                for flag in flags:
                    getattr(model, f"set_{flag}")(True)
            except ConfigError as err:  # e.g. use_attn_in with grouped-query attention: its hooks cannot fire
                unavailable[flag] = str(err)
                continue
            if encoder:
                # the output that runs every part: the MLM head's logits, else the pooler's
                out = "logits" if model.cfg.mlm_head else "pooled" if model.cfg.pooler else "embeddings"
                _, cache = model.run_with_cache(prompts, return_type=out)
            else:
                tokens, mask = tok.tokenize(model, prompts)
                _, cache = model.run_with_cache(tokens, attention_mask=mask)
            # a pass speaks for the hooks it is about: the always-on ones with no flag, else the gated ones
            seen.update({n: tuple(cache[n].shape) for n in cache.keys() if gated(n) == bool(flags)})
    finally:
        for flag in restore:
            getattr(model, f"set_{flag}")(False)
        for flag, value in restore.items():
            if value:
                getattr(model, f"set_{flag}")(True)
    batch = len(prompts)
    pos = next(s for n, s in seen.items() if model.hook_dict[n].shape_comment == "batch pos d_model")[1]
    axes = _axes(model, batch, pos)
    problems, refused = [], {}
    for name, hook in model.hook_dict.items():
        flag = next((f for suffix, f in FLAG_GATED_HOOKS.items() if name.endswith("." + suffix)), None)
        if name not in seen and flag in unavailable:
            refused[name] = f"needs {flag}, which this model refuses: {unavailable[flag]}"
        elif name not in seen:
            problems.append(f"{name}: did not fire")
        elif hook.shape_comment and (why := _shape_problem(seen[name], hook.shape_comment, axes, batch, pos)):
            problems.append(f"{name}: {why}")
    return HookCheck(len(model.hook_dict), problems, refused)


def _processing(family: Family, model, hf) -> dict[str, tuple[str, str]]:
    """Each option alone: applied and within PROCESSING_BOUND (✓), ✗ beyond it, skipped or refused with the reason."""
    out = {}
    for option in PROCESSING:
        wanted = {o: o == option for o in PROCESSING}
        if getattr(model, "is_encoder", False):
            try:
                encoder_from_pretrained(family.tiny, hf_model=hf, attn_implementation="eager", **wanted)
            except LensError as err:
                out[option] = ("refused", str(err).split(". ")[0].split(": ", 1)[-1].strip().rstrip(".") + ".")
                continue
            out[option] = ("✗", "the encoder loader accepted it; the table has no check for an encoder's processing")
            continue
        processed = copy.deepcopy(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the report below says what was skipped and why
            report = process_weights_(processed, **wanted)
        if option in report.skipped:
            out[option] = ("skipped", report.skipped[option])
            continue
        error = compare_with_hf(processed, hf).max
        out[option] = ("✓", "") if error <= PROCESSING_BOUND else ("✗", f"log-probs moved by {error:.3g}")
    return out


def _quantization(family: Family) -> str:
    from .quantization_support import quantization_support  # bitsandbytes is imported only when asked

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            table = quantization_support(models=(family.tiny,), modes=("8-bit", "4-bit nf4"), include_hf=False)
    except LensError as err:  # e.g. a BertModel: quantization_support compares logits, and it has none
        return f"not measured ({type(err).__name__}: {str(err).split('. ')[0]})"
    return ", ".join(f"{r.mode} {'✓' if r.works else '✗'}" for r in table.rows) + f" ({table.device})"


def support_row(family: Family, quantization: bool = False) -> Row:
    """One family's row (seconds on a laptop CPU; the quantisation column adds a few more)."""
    eager, hf_eager = _load(family, "eager")
    sdpa, hf_sdpa = _load(family, "sdpa")
    encoder = getattr(eager, "is_encoder", False)
    return Row(
        family=family.name, hf_classes=family.hf_classes, model=family.tiny,
        dlogit_eager=compare_with_hf(eager, hf_eager, on="logits").max,
        dlogit_sdpa=compare_with_hf(sdpa, hf_sdpa, on="logits").max,
        generation_equal=None if encoder else _generation_equal(sdpa, hf_sdpa),
        hooks=_hooks(eager),
        processing=_processing(family, eager, hf_eager),
        quantization=_quantization(family) if quantization else None,
    )


def support_table(families: list[str] | tuple[Family, ...] | None = None, quantization: bool = False) -> SupportTable:
    """Measure every family (or those named) and return a table that prints, and renders as markdown.

    families: None for all of FAMILIES, else family names or zoo names from it, or Family entries.
    quantization: add the machine-dependent bitsandbytes column (quantization_support, 8-bit and nf4).
    """
    chosen = list(FAMILIES) if families is None else [_family(f) for f in families]
    notes = ["float32 throughout. Δ columns: compare_with_hf's padded batch of "
             f"{len(DEFAULT_PROMPTS)} prompts, every real position "
             "(`0`: bit for bit). Generation: "
             f"{GENERATED_TOKENS} greedy tokens. Weight processing, each option alone: ✓ applied, log-probs within "
             f"{PROCESSING_BOUND:g} of HuggingFace's."]
    return SupportTable([support_row(f, quantization) for f in chosen], notes)


def _family(which: str | Family) -> Family:
    if isinstance(which, Family):
        return which
    for family in FAMILIES:
        if which in (family.name, family.tiny):
            return family
    raise LensError(f"No family {which!r} in the support table. Families: {', '.join(f.name for f in FAMILIES)} "
                    f"(or their zoo models: {', '.join(f.tiny for f in FAMILIES)}).")


__all__ = ["support_table", "support_row", "machine_independent", "SupportTable", "Row", "FAMILIES", "Family"]
