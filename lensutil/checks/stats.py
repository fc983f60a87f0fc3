"""What the checks report: error statistics and divergence reports, shared by the decoder and encoder checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..errors import LensError


Quantity = Literal["logprobs", "logits", "probs"]


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


def _first_tensor(output) -> Tensor:
    # HF attention modules return (output, weights); decoder layers return a tensor or a tuple.
    return output[0] if isinstance(output, (tuple, list)) else output
