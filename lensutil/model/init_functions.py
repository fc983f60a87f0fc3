"""TransformerLens' weight initialisers, in its fan convention (its `utils.init_*` functions).

TransformerLens stores matrices as [d_in, d_out] and attention heads as [n_heads, d_model, d_head],
where torch's own initialisers assume [d_out, d_in]; so fan in and fan out are counted here:
a vector has fan_in 1 and fan_out its length, a matrix [fan_in, fan_out], a head stack
[n_heads, fan_in, d_head] with fan_out n_heads * d_head.
"""

from __future__ import annotations

import math

from torch import Tensor, nn


def calc_fan_in_and_fan_out(tensor: Tensor) -> tuple[int, int]:
    shape = tensor.shape
    if len(shape) == 1:
        return 1, shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 3:
        return shape[1], shape[0] * shape[2]
    raise ValueError(f"Fan in and fan out are defined for 1-, 2- and 3-dimensional weights, not shape {tuple(shape)}.")


def init_xavier_uniform_(param: Tensor, gain: float = 1.0) -> Tensor:
    """Uniform in +-gain * sqrt(6 / (fan_in + fan_out)), in place."""
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return nn.init.uniform_(param, -bound, bound)


def init_xavier_normal_(param: Tensor, gain: float = 1.0) -> Tensor:
    """Normal with std gain * sqrt(2 / (fan_in + fan_out)), in place."""
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    return nn.init.normal_(param, mean=0.0, std=gain * math.sqrt(2.0 / (fan_in + fan_out)))


def _kaiming_std(param: Tensor, a: float, nonlinearity: str, gain: float, mode: str) -> float:
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    fan = fan_in if mode == "fan_in" else fan_out
    return gain * nn.init.calculate_gain(nonlinearity, a) / math.sqrt(fan)


def init_kaiming_uniform_(param: Tensor, a: float = 0, nonlinearity: str = "relu", gain: float = 1.0, mode: str = "fan_in") -> Tensor:
    """Uniform with std gain * calculate_gain(nonlinearity, a) / sqrt(fan) (bound sqrt(3) times that), in place."""
    bound = math.sqrt(3.0) * _kaiming_std(param, a, nonlinearity, gain, mode)
    return nn.init.uniform_(param, -bound, bound)


def init_kaiming_normal_(param: Tensor, a: float = 0, nonlinearity: str = "relu", gain: float = 1.0, mode: str = "fan_in") -> Tensor:
    """Normal with std gain * calculate_gain(nonlinearity, a) / sqrt(fan), in place."""
    return nn.init.normal_(param, mean=0.0, std=_kaiming_std(param, a, nonlinearity, gain, mode))
