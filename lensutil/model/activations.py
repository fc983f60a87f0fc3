"""The MLP activation functions, by the names config.act_fn takes (TransformerLens' names).

`ACTIVATIONS` maps each name to a plain function; `make_activation` gives what an MLP holds, which
for "xielu" is the trainable `XIELU` module (its two parameters load from a checkpoint, as
TransformerLens' and HuggingFace's do). "solu_ln" is SoLU followed by a LayerNorm over d_mlp: the
function here is SoLU, and the MLP adds the LayerNorm (lensutil/model/mlp.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn


def gelu_new(x: Tensor) -> Tensor:
    # GPT-2's tanh approximation, written as HuggingFace writes it so rounding matches.
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def gelu_fast(x: Tensor) -> Tensor:
    # The same approximation with the constant rounded to 10 digits and x^3 factored (HF's FastGELU).
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def solu(x: Float[Tensor, "batch pos d_mlp"]) -> Float[Tensor, "batch pos d_mlp"]:
    """SoLU (Elhage et al. 2022): x * softmax(x) over the neurons. "solu_ln" adds a LayerNorm after it."""
    return x * F.softmax(x, dim=-1)


# xIELU (Huang & Schlag 2024, arXiv:2411.13010), the fixed form: quadratic for x > 0, an
# exponential-minus-linear for x <= 0, each plus beta * x. eps keeps expm1's argument below zero.
_XIELU_ALPHA_P, _XIELU_ALPHA_N, _XIELU_BETA, _XIELU_EPS = 0.8, 0.8, 0.5, -1e-6


def _xielu(x: Tensor, alpha_p, alpha_n, beta, eps: Tensor) -> Tensor:
    negative = (torch.expm1(torch.min(x, eps)) - x) * alpha_n + beta * x
    return torch.where(x > 0, alpha_p * x * x + beta * x, negative)


def xielu(x: Float[Tensor, "batch pos d_mlp"]) -> Float[Tensor, "batch pos d_mlp"]:
    """xIELU with its default parameters (alpha_p = alpha_n = 0.8, beta = 0.5)."""
    eps = torch.tensor(_XIELU_EPS, dtype=x.dtype, device=x.device)
    return _xielu(x, _XIELU_ALPHA_P, _XIELU_ALPHA_N, _XIELU_BETA, eps)


class XIELU(nn.Module):
    """Trainable xIELU, parameterised as HuggingFace's XIELUActivation: alpha_p and alpha_n are kept
    through softplus (so they stay positive while training), alpha_n as its excess over beta; beta
    and eps are buffers. With the default arguments it computes `xielu`."""

    def __init__(self, alpha_p_init: float = _XIELU_ALPHA_P, alpha_n_init: float = _XIELU_ALPHA_N,
                 beta_init: float = _XIELU_BETA, eps: float = _XIELU_EPS):
        super().__init__()
        inverse_softplus = lambda v: torch.log(torch.expm1(torch.tensor(v, dtype=torch.float32)))  # noqa: E731
        self.alpha_p = nn.Parameter(inverse_softplus(alpha_p_init))
        self.alpha_n = nn.Parameter(inverse_softplus(alpha_n_init - beta_init))
        self.register_buffer("beta", torch.tensor(beta_init, dtype=torch.float32))
        self.register_buffer("eps", torch.tensor(eps, dtype=torch.float32))

    def forward(self, x: Float[Tensor, "batch pos d_mlp"]) -> Float[Tensor, "batch pos d_mlp"]:
        alpha_p, alpha_n = F.softplus(self.alpha_p), self.beta + F.softplus(self.alpha_n)
        return _xielu(x, alpha_p, alpha_n, self.beta, self.eps)


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu_new": gelu_new,
    "gelu_fast": gelu_fast,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "silu": F.silu,
    "relu": F.relu,
    "solu": solu,
    "solu_ln": solu,
    "xielu": xielu,
}


def make_activation(name: str) -> Callable[[Tensor], Tensor]:
    """What an MLP holds for act_fn=name: a fresh XIELU module for "xielu", the plain function otherwise."""
    return XIELU() if name == "xielu" else ACTIVATIONS[name]
