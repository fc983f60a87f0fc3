"""Small tensor helpers that TransformerLens 2.x keeps in `transformer_lens.utils`, under its names.

Each is written from the behaviour TransformerLens documents; `lensutil.transformer_lens.utils`
re-exports them. Nothing here knows about models.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from .errors import InputError
from .factored_matrix import get_corner as get_corner


def to_numpy(tensor: Any) -> np.ndarray:
    """A numpy array from a tensor (detached, on the CPU), list, tuple, number, string or array."""
    if isinstance(tensor, np.ndarray):
        return tensor
    if isinstance(tensor, Tensor):
        return tensor.detach().cpu().numpy()
    if isinstance(tensor, (list, tuple, int, float, bool, str)):
        return np.array(tensor)
    raise ValueError(f"to_numpy takes a tensor, array, list, tuple or number, not {type(tensor).__name__}.")


def remove_batch_dim(tensor: Float[Tensor, "1 ..."]) -> Float[Tensor, "..."]:
    """Drop a leading dimension of size 1; any other tensor comes back unchanged."""
    return tensor.squeeze(0) if tensor.shape[0] == 1 else tensor


def transpose(tensor: Float[Tensor, "... a b"]) -> Float[Tensor, "... b a"]:
    """Swap the last two dimensions."""
    return tensor.transpose(-1, -2)


def is_square(x: Tensor) -> bool:
    """Whether x is a square matrix (exactly two dimensions, of equal size)."""
    return x.ndim == 2 and x.shape[0] == x.shape[1]


def is_lower_triangular(x: Tensor) -> bool:
    """Whether x is a square matrix with nothing above its diagonal."""
    return is_square(x) and bool(x.equal(x.tril()))


def override_or_use_default_value(default_flag: Any, override: Any = None) -> Any:
    """`override` unless it is None, else `default_flag`."""
    return default_flag if override is None else override


def is_library_available(name: str) -> bool:
    """Whether a module of that name can be imported here (without importing it)."""
    return importlib.util.find_spec(name) is not None


def get_offset_position_ids(past_kv_pos_offset: int, attention_mask: Int[Tensor, "batch offset_pos"]) -> Int[Tensor, "batch pos"]:
    """Position ids counted from each row's first attended token (left padding gets 0), from past_kv_pos_offset on."""
    positions = attention_mask.cumsum(dim=1) - 1
    return positions.clamp(min=0)[:, past_kv_pos_offset:]


def get_cumsum_along_dim(tensor: Tensor, dim: int, reverse: bool = False) -> Tensor:
    """Cumulative sum along `dim`; with reverse, summed from the end."""
    if reverse:
        return tensor.flip(dims=(dim,)).cumsum(dim=dim).flip(dims=(dim,))
    return tensor.cumsum(dim=dim)


def repeat_along_head_dimension(tensor: Float[Tensor, "batch pos d_model"], n_heads: int, clone_tensor: bool = True):
    """[batch, pos, d_model] -> [batch, pos, n_heads, d_model]; a copy unless clone_tensor=False (then a view)."""
    repeated = tensor.unsqueeze(-2).expand(*tensor.shape[:-1], n_heads, tensor.shape[-1])
    return repeated.clone() if clone_tensor else repeated


def get_nested_attr(obj: Any, attr_str: str) -> Any:
    """obj.a.b.c for "a.b.c"."""
    for attr in attr_str.split("."):
        obj = getattr(obj, attr)
    return obj


def set_nested_attr(obj: Any, attr_str: str, value: Any) -> None:
    """Set obj.a.b.c = value for "a.b.c"."""
    *path, last = attr_str.split(".")
    setattr(get_nested_attr(obj, ".".join(path)) if path else obj, last, value)


class Slice:
    """A slice of one dimension in TransformerLens' forms, which can also drop that dimension.

    None keeps everything; an int (or a 0-d tensor/array) picks one index and drops the dimension; a
    tuple is slice(*tuple) ((k,) is :k, (m, k) is m:k); a slice is itself; a list, tensor or array
    of indices keeps the dimension with those entries.
    """

    def __init__(self, input_slice=None):
        if isinstance(input_slice, tuple):
            self.slice, self.mode = slice(*input_slice), "slice"
        elif isinstance(input_slice, slice):
            self.slice, self.mode = input_slice, "slice"
        elif isinstance(input_slice, int) and not isinstance(input_slice, bool):
            self.slice, self.mode = input_slice, "int"
        elif isinstance(input_slice, (list, Tensor, np.ndarray)):
            self.slice, self.mode = to_numpy(input_slice), "array"
        elif input_slice is None:
            self.slice, self.mode = slice(None), "identity"
        else:
            raise ValueError(
                f"Slice takes None, an int, a tuple, a slice, or a list/tensor/array of indices; got {input_slice!r}."
            )

    def apply(self, tensor: Tensor, dim: int = 0) -> Tensor:
        """`tensor` sliced along `dim` (negative dims count from the end)."""
        index = [slice(None)] * tensor.ndim
        index[dim] = self.slice
        return tensor[tuple(index)]

    def indices(self, max_ctx: int | None = None) -> np.ndarray:
        """The indices this slice selects, of an axis of length max_ctx (needed unless the slice is an int)."""
        if self.mode == "int":
            return np.array([self.slice], dtype=np.int64)
        if max_ctx is None:
            raise ValueError("Slice.indices needs max_ctx (the axis length) unless the slice is a single int.")
        return np.arange(max_ctx, dtype=np.int64)[self.slice]

    @classmethod
    def unwrap(cls, slice_input) -> "Slice":
        """A Slice from a Slice or anything Slice() takes; an int keeps its dimension here (as [int])."""
        if isinstance(slice_input, Slice):
            return slice_input
        return cls([slice_input] if isinstance(slice_input, int) else slice_input)

    def __repr__(self) -> str:
        return f"Slice: {self.slice} Mode: {self.mode} "
