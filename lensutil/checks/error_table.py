"""error_table: the error against HuggingFace per dtype and weight-processing option."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..config import DEFAULT_ATTN_IMPLEMENTATION
from ..errors import LensError
from ..loading import hf_source
from ..loading.pretrained import from_pretrained_no_processing
from .compare import DEFAULT_PROMPTS, compare_with_hf
from .setup import _dtype_name
from .stats import ErrorStats, Quantity, _dtype


OPTIONS: tuple[str, ...] = ("none", "fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases", "all")


_PROCESSING = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")


_APPLIED_FLAGS = ("folded_ln", "centered_writing_weights", "centered_unembed", "folded_value_biases")


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
    for option in options:
        _option_kwargs(option)  # fail on a typo before loading anything
    if reference not in ("same_dtype", "float32"):
        raise LensError(f"reference must be 'same_dtype' or 'float32', got {reference!r}.")
    dtypes = [_dtype(d) for d in dtypes]
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    hf32, tokenizer = hf_source.load_hf(model_name, dtype=torch.float32, attn_implementation=attn_implementation)
    hf32.to(device)
    refs = {d: hf32 if reference == "float32" or d == torch.float32
            else hf_source.load_hf(model_name, dtype=d, attn_implementation=attn_implementation)[0].to(device) for d in dtypes}
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
