"""Is my model right? Checks against HuggingFace, and a checklist for a model's setup.

- `compare_with_hf`: how far the hooked model's outputs are from HuggingFace's on the same tokens.
- `error_table`: that error for every dtype x weight-processing option (SYMPTOMS.md item 12).
- `locate_divergence`: where, component by component, two models that should agree first disagree.
- `routing_agreement`: per mixture-of-experts layer, the share of tokens routed to HuggingFace's experts.
- `validate_model_setup`: shapes, hooks, cache keys, masks, generation, config (SYMPTOMS.md item 18).

Every comparison runs each model in its own dtype, then measures |Δ| in float64, so the measurement
adds no rounding of its own. By default we compare log-probabilities, not logits: centring the
unembedding subtracts a constant from every logit of a position, which changes logits but not
log-probs (softmax is shift-invariant), and a user only ever sees the distribution.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from . import tokens as tok
from .config import DEFAULT_ATTN_IMPLEMENTATION
from .errors import LensError
from .setup_checks import _dtype_name
from .setup_checks import Check as Check, SetupReport as SetupReport  # re-exported
from .setup_checks import bound_check as bound_check, validate_model_setup as validate_model_setup  # re-exported

if TYPE_CHECKING:
    from .model import HookedTransformer

Quantity = Literal["logprobs", "logits", "probs"]

# Short prompts (<= 16 tokens with BOS): half precision on a CPU is slow, and these already cover
# prose, code and numbers. Different lengths, so the batch is padded and masking is exercised.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "The capital of France is",
    "def add(a, b):\n    return a +",
    "Once upon a time, there was a little",
    "1, 2, 3, 4, 5,",
)
OPTIONS: tuple[str, ...] = ("none", "fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases", "all")
_PROCESSING = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")
_APPLIED_FLAGS = ("folded_ln", "centered_writing_weights", "centered_unembed", "folded_value_biases")


def _dtype(d: torch.dtype | str) -> torch.dtype:
    if isinstance(d, torch.dtype):
        return d
    value = getattr(torch, str(d).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise LensError(f"Unknown dtype {d!r}; use 'float32', 'bfloat16' or 'float16'.")
    return value


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


# ---- error statistics ----------------------------------------------------------------------------


@dataclass
class ErrorStats:
    """Summary of |Δ| between two models' outputs (over real token positions and the vocabulary)."""

    max: float
    mean: float
    median: float
    std: float
    n: int
    on: str = "logprobs"

    @classmethod
    def of(cls, diff: Tensor, on: str = "logprobs") -> "ErrorStats":
        d = diff.detach().double().abs().flatten()
        return cls(d.max().item(), d.mean().item(), d.median().item(), d.std(correction=0).item(), d.numel(), on)

    def __str__(self) -> str:
        return (f"|Δ {self.on}|: max {self.max:.3g}, mean {self.mean:.3g}, median {self.median:.3g}, "
                f"std {self.std:.3g} (n={self.n})")


def _transform(logits: Tensor, on: Quantity) -> Tensor:
    logits = logits.double()
    if on == "logits":
        return logits
    if on == "logprobs":
        return torch.log_softmax(logits, dim=-1)
    if on == "probs":
        return torch.softmax(logits, dim=-1)
    raise LensError(f"on must be 'logprobs', 'logits' or 'probs', got {on!r}.")


@torch.no_grad()
def compare_with_hf(
    model: "HookedTransformer",
    hf_model=None,
    prompts: str | list[str] | tuple[str, ...] = DEFAULT_PROMPTS,
    on: Quantity = "logprobs",
) -> ErrorStats:
    """|Δ| between this model and HuggingFace's `AutoModelForCausalLM` on the same token ids.

    `hf_model` None loads the reference for `model.cfg.model_name` in the model's dtype and
    attention mode (cfg.attn_implementation: "sdpa" against HF's "sdpa", "eager" against "eager",
    so the two run the same kernels and float32 agrees bit for bit where the maths is the same). A padded
    batch gets the same attention mask and position ids (cumsum(mask) - 1) on both sides, and only
    real positions are compared.
    """
    if getattr(model, "is_encoder", False):  # HookedEncoder: logits or hidden states, pairs allowed
        from .encoder_checks import compare_with_hf as compare_encoder

        return compare_encoder(model, hf_model, None if prompts is DEFAULT_PROMPTS else prompts, on)
    _transform(torch.zeros(1), on)  # validate `on` before loading anything
    if hf_model is None:
        from .loading import load_hf

        hf_model, _ = load_hf(model.cfg.model_name, dtype=model.cfg.dtype, attn_implementation=model.cfg.attn_implementation)
        hf_model.to(model.cfg.device)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    tokens, mask = tok.tokenize(model, prompts)
    ours = model(tokens, attention_mask=mask)
    theirs = _hf_logits(hf_model, tokens, mask)
    real = mask.bool().to(ours.device)
    diff = _transform(ours, on)[real] - _transform(theirs.to(ours.device), on)[real]
    return ErrorStats.of(diff, on)


def _hf_logits(hf_model, tokens: Tensor, mask: Tensor) -> Tensor:
    dev = _device_of(hf_model)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # as HuggingFace's generate computes them
    out = hf_model(input_ids=tokens.to(dev), attention_mask=mask.to(dev), position_ids=positions.to(dev))
    return out.logits


# ---- the dtype x option table --------------------------------------------------------------------


def _option_kwargs(option: str) -> dict[str, bool]:
    if option == "none":
        return {o: False for o in _PROCESSING}
    if option == "all":
        return {o: True for o in _PROCESSING}
    if option in _PROCESSING:
        return {o: o == option for o in _PROCESSING}
    raise LensError(f"Unknown option {option!r}; use one of {OPTIONS}.")


@dataclass
class ErrorTable:
    """One row per dtype x option: |Δ| statistics against HuggingFace (reference: see `reference`)."""

    model_name: str
    on: str
    rows: list[dict] = field(default_factory=list)
    reference: str = "same_dtype"  # or "float32": HuggingFace in float32 whatever the row's dtype

    _COLUMNS = ("dtype", "option", "max", "mean", "median", "std")

    def add(self, dtype, option: str, stats: ErrorStats, not_applied: str = "") -> None:
        """Append a row; `not_applied` names options processing skipped (they do not apply to this model)."""
        self.rows.append({"dtype": _dtype_name(dtype), "option": option, "max": stats.max, "mean": stats.mean,
                          "median": stats.median, "std": stats.std, "n": stats.n, "not_applied": not_applied})

    def _columns(self) -> tuple[str, ...]:
        return self._COLUMNS + (("not applied",) if any(r.get("not_applied") for r in self.rows) else ())

    def _cells(self) -> list[list[str]]:
        extra = len(self._columns()) > len(self._COLUMNS)
        return [[r["dtype"], r["option"], *(f"{r[c]:.2e}" for c in ("max", "mean", "median", "std")),
                 *([r.get("not_applied") or "-"] if extra else [])] for r in self.rows]

    def __str__(self) -> str:
        columns = self._columns()
        cells = [list(columns), *self._cells()]
        widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
        against = "in the same dtype" if self.reference == "same_dtype" else "in float32"
        lines = [f"{self.model_name}: |Δ {self.on}| against HuggingFace {against}"]
        for j, row in enumerate(cells):
            lines.append("  ".join(c.rjust(w) if 2 <= i < 6 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
            if j == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def to_markdown(self) -> str:
        columns = self._columns()
        head = "| " + " | ".join(columns) + " |"
        rule = "|" + "|".join(["---"] * 2 + ["---:"] * 4 + ["---"] * (len(columns) - 6)) + "|"
        return "\n".join([head, rule, *("| " + " | ".join(r) + " |" for r in self._cells())])

    def get(self, dtype: str, option: str) -> dict:
        for r in self.rows:
            if r["dtype"] == _dtype_name(dtype) and r["option"] == option:
                return r
        raise LensError(f"No row for dtype={dtype!r}, option={option!r} in this table.")

    def plot(self, ax=None):
        """Log-scale bars: for each dtype a group of options; pale bar = max |Δ|, solid bar = mean |Δ|."""
        import matplotlib.pyplot as plt  # only the plot needs matplotlib

        if ax is None:
            _, ax = plt.subplots(figsize=(9, 4))
        dtypes = list(dict.fromkeys(r["dtype"] for r in self.rows))
        options = list(dict.fromkeys(r["option"] for r in self.rows))
        width = 0.8 / len(options)
        floor = 1e-12  # an exact 0 has no place on a log axis
        for j, option in enumerate(options):
            color = f"C{j}"
            for i, dtype in enumerate(dtypes):
                row = next((r for r in self.rows if r["dtype"] == dtype and r["option"] == option), None)
                if row is None:
                    continue
                x = i + (j - (len(options) - 1) / 2) * width
                ax.bar(x, max(row["max"], floor), width, color=color, alpha=0.35, label=option if i == 0 else None)
                ax.bar(x, max(row["mean"], floor), width * 0.6, color=color)
        ax.set_yscale("log")
        ax.set_xticks(range(len(dtypes)), dtypes)
        ax.set_ylabel(f"|Δ {self.on}| vs HuggingFace")
        ax.set_title(f"{self.model_name}: max (pale) and mean (solid) error per processing option")
        ax.legend(fontsize="small", ncols=2)
        return ax


def error_table(
    model_name: str,
    dtypes: tuple[str, ...] = ("float32", "bfloat16", "float16"),
    options: tuple[str, ...] = OPTIONS,
    prompts: str | list[str] | tuple[str, ...] = DEFAULT_PROMPTS,
    on: Quantity = "logprobs",
    device: str | None = None,
    reference: Literal["same_dtype", "float32"] = "same_dtype",
    attn_implementation: Literal["sdpa", "eager"] = DEFAULT_ATTN_IMPLEMENTATION,
) -> ErrorTable:
    """Measure |Δ| against HuggingFace for each dtype x processing option.

    "none" = no processing, "all" = every option, an option's name = only that one. Each lensutil
    model is converted and processed from the float32 weights and then cast (as from_pretrained
    does). Its reference is the HuggingFace model in the same dtype ("same_dtype": does lensutil
    agree with HuggingFace?) or in float32 ("float32": how far is this dtype/option from the
    float32 answer?), on the same device. Both sides use the same attn_implementation.
    """
    if reference not in ("same_dtype", "float32"):
        raise LensError(f"reference must be 'same_dtype' or 'float32', got {reference!r}.")
    from .loading import from_pretrained_no_processing, load_hf

    for option in options:
        _option_kwargs(option)  # fail on a typo before loading anything
    if reference not in ("same_dtype", "float32"):
        raise LensError(f"reference must be 'same_dtype' or 'float32', got {reference!r}.")
    dtypes = [_dtype(d) for d in dtypes]
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    hf32, tokenizer = load_hf(model_name, dtype=torch.float32, attn_implementation=attn_implementation)
    hf32.to(device)
    refs = {d: hf32 if reference == "float32" or d == torch.float32
            else load_hf(model_name, dtype=d, attn_implementation=attn_implementation)[0].to(device) for d in dtypes}
    # Convert once; process each option once in float32; then cast to each dtype. This is exactly
    # what from_pretrained(..., dtype=d, **option) does, without repeating the shared steps.
    base = from_pretrained_no_processing(model_name, hf_model=hf32, tokenizer=tokenizer, device=device,
                                         attn_implementation=attn_implementation)
    table = ErrorTable(model_name, on, reference=reference)
    results: dict[tuple, tuple[ErrorStats, str]] = {}
    for option in options:
        processed = copy.deepcopy(base, memo={id(tokenizer): tokenizer})
        skipped = ""
        if option != "none":
            with warnings.catch_warnings():  # the skip is recorded in the table instead
                warnings.simplefilter("ignore")
                report = processed.process_weights_(**_option_kwargs(option))
            skipped = ", ".join(k for k, why in report.skipped.items() if "nothing to fold" not in why)
        for dtype in dtypes:
            model = processed if dtype == torch.float32 else copy.deepcopy(processed, memo={id(tokenizer): tokenizer}).to(dtype)
            results[dtype, option] = (compare_with_hf(model, refs[dtype], prompts, on), skipped)
            del model
    for dtype in dtypes:
        for option in options:
            stats, skipped = results[dtype, option]
            table.add(dtype, option, stats, skipped)
    return table


# ---- where two models first differ ---------------------------------------------------------------


@dataclass
class DivergenceReport:
    """Component-by-component |Δ| between lensutil and HuggingFace, in forward order."""

    table: list[dict]  # rows: component, hook, max, mean
    atol: float

    @property
    def first(self) -> dict | None:
        """The first row whose max |Δ| exceeds atol, or None when everything matches."""
        return next((r for r in self.table if not r["max"] <= self.atol), None)  # `not <=` catches NaN

    def __str__(self) -> str:
        first = self.first
        if first is None:
            worst = max(self.table, key=lambda r: r["max"])
            return (f"no divergence: every component matches HuggingFace within atol {self.atol:g} "
                    f"(largest max |Δ| {worst['max']:.3g}, at {worst['component']})")
        where = self.table.index(first)
        before = "everything before matches" if where else "it is the very first component compared"
        return f"first divergence: {first['component']} (max |Δ| {first['max']:.3g} > atol {self.atol:g}); {before}"

    def to_text(self) -> str:
        """The whole table, one component a line, with the verdict underneath."""
        w = max(len(r["component"]) for r in self.table)
        lines = [f"{'component':<{w}}  {'max |Δ|':>9}  {'mean |Δ|':>9}"]
        for r in self.table:
            mark = "" if r["max"] <= self.atol else "  <-- over atol"
            lines.append(f"{r['component']:<{w}}  {r['max']:>9.2e}  {r['mean']:>9.2e}{mark}")
        return "\n".join([*lines, str(self)])


_INDICES = "#indices"  # a router's third output, the chosen experts (HF's MixtralTopKRouter returns logits, weights, indices)


def _expert_sets_differ(ours: Tensor, theirs: Tensor) -> Tensor:
    """Per token, whether two [..., top_k] expert choices differ as sets (order within top-k aside)."""
    k = theirs.shape[-1]
    return (ours.reshape(-1, k).sort(-1).values != theirs.reshape(-1, k).sort(-1).values).any(-1)


@torch.no_grad()
def routing_agreement(
    model: "HookedTransformer",
    hf_model=None,
    input: str | list[str] | tuple[str, ...] | Tensor = DEFAULT_PROMPTS,
) -> list[float]:
    """Per MoE layer, the share of real tokens whose set of experts is the same as HuggingFace's.

    lensutil's own (TransformerLens has no such check). `hf_model` None loads the reference for
    model.cfg.model_name in the model's dtype. Prompts are padded as compare_with_hf pads them,
    and padding positions are not counted. 1.0 on every layer: the two route identically.
    """
    if model.cfg.mlp_type != "moe":
        raise LensError(f"routing_agreement needs a mixture-of-experts model (cfg.mlp_type='moe'); this one is {model.cfg.mlp_type!r}.")
    from .adapters import get_adapter

    if hf_model is None:
        from .loading import load_hf

        hf_model, _ = load_hf(model.cfg.model_name, dtype=model.cfg.dtype, attn_implementation=model.cfg.attn_implementation)
        hf_model.to(model.cfg.device)
    layout = get_adapter(hf_model.config).layout
    if isinstance(input, Tensor):
        tokens = input[None] if input.ndim == 1 else input
        mask = torch.ones_like(tokens)
    else:
        tokens, mask = tok.tokenize(model, [input] if isinstance(input, str) else list(input))
    theirs: list[Tensor] = []
    handles = [hf_model.get_submodule(f"{layout.layers}.{i}.{layout.mlp}.gate").register_forward_hook(
        lambda module, args, output: theirs.append(output[2].detach())) for i in range(model.cfg.n_layers)]
    try:
        _hf_logits(hf_model, tokens, mask)
    finally:
        for h in handles:
            h.remove()
    names = [f"blocks.{i}.mlp.hook_expert_indices" for i in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=names)
    real = mask.bool().reshape(-1).to(model.cfg.device)
    return [1.0 - _expert_sets_differ(cache[n], t.to(model.cfg.device))[real].double().mean().item()
            for n, t in zip(names, theirs)]


def _first_tensor(output) -> Tensor:
    # HF attention modules return (output, weights); decoder layers return a tensor or a tuple.
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def locate_divergence(
    model: "HookedTransformer",
    hf_model=None,
    input: str | Tensor = "The quick brown fox jumps over the lazy dog",
    atol: float = 1e-4,
) -> DivergenceReport:
    """Run both models once and compare embeddings, each layer's attention, MLP and residual
    stream, the final norm and the logits, in that order; the report names the first mismatch."""
    if getattr(model, "is_encoder", False):
        from .encoder_checks import locate_divergence as locate_encoder

        return locate_encoder(model, hf_model, input, atol)
    applied = [f for f in _APPLIED_FLAGS if getattr(model.cfg, f, False)]
    if applied:
        raise LensError(
            f"This model's weights were processed ({', '.join(applied)}), which changes intermediate activations "
            "on purpose, so they cannot be compared with HuggingFace's. Load it with "
            "HookedTransformer.from_pretrained_no_processing(...) for this check (compare_with_hf works on either)."
        )
    from .adapters import get_adapter

    if hf_model is None:
        from .loading import load_hf

        hf_model, _ = load_hf(model.cfg.model_name, dtype=model.cfg.dtype, attn_implementation=model.cfg.attn_implementation)
        hf_model.to(model.cfg.device)
    layout = get_adapter(hf_model.config).layout
    tokens = model.to_tokens(input) if isinstance(input, str) else torch.as_tensor(input)
    tokens = tokens[None] if tokens.ndim == 1 else tokens

    # (display name, lensutil hook or "logits", HF module path or "logits"), in forward order
    plan = [("embeddings", "hook_embed", layout.embed)]
    for i in range(model.cfg.n_layers):
        layer = f"{layout.layers}.{i}"
        plan.append((f"blocks.{i} attention output", f"blocks.{i}.hook_attn_out", f"{layer}.{layout.attn}"))
        if model.cfg.mlp_type == "moe":  # the router's logits, then its discrete choice (share of tokens routed differently)
            router = f"{layer}.{layout.mlp}.gate"
            plan += [(f"blocks.{i} MoE router logits", f"blocks.{i}.mlp.hook_router_logits", router),
                     (f"blocks.{i} MoE expert choice", f"blocks.{i}.mlp.hook_expert_indices", router + _INDICES)]
        plan += [
            (f"blocks.{i} MLP output", f"blocks.{i}.hook_mlp_out", f"{layer}.{layout.mlp}"),
            (f"blocks.{i} residual stream after the block", f"blocks.{i}.hook_resid_post", layer),
        ]
    plan += [("final norm", "ln_final.hook_normalized", layout.final_norm), ("logits", "logits", "logits")]

    captured: dict[str, Tensor] = {}
    handles = []
    try:
        for _, _, path in plan[:-1]:
            def grab(module, args, output, path=path):
                captured[path] = (output[2] if path.endswith(_INDICES) else _first_tensor(output)).detach()
            handles.append(hf_model.get_submodule(path.removesuffix(_INDICES)).register_forward_hook(grab))
        captured["logits"] = hf_model(input_ids=tokens.to(_device_of(hf_model))).logits
    finally:
        for h in handles:
            h.remove()
    logits, cache = model.run_with_cache(tokens, names_filter=[hook for _, hook, _ in plan[:-1]])

    rows = []
    for component, hook, path in plan:
        ours = logits if hook == "logits" else cache[hook]
        if hook == "ln_final.hook_normalized" and model.cfg.normalization_type == "RMS":
            # RMSNorm's hook_normalized is before the weight (TransformerLens); HF's module output is after it.
            ours = model.ln_final.w * ours
        theirs = captured[path].to(ours.device)
        if path.endswith(_INDICES):  # 1 where a token's set of experts differs, 0 where it is the same
            diff = _expert_sets_differ(ours, theirs).double()
        else:
            diff = (ours.double().reshape(theirs.shape) - theirs.double()).abs()
        rows.append({"component": component, "hook": hook, "max": diff.max().item(), "mean": diff.mean().item()})
    return DivergenceReport(rows, atol)


# ---- is the model set up right? ------------------------------------------------------------------
