"""The model's weights stacked over layers, and the circuits made of them (TransformerLens' properties).

`model.W_Q` is [n_layers, n_heads, d_model, d_head], one block's `attn.W_Q` per layer; `model.OV` is
the FactoredMatrix W_V @ W_O per layer and head ([n_layers, n_heads, d_model, d_model]) and `model.QK`
W_Q @ W_K^T. Stacking copies: an edit must go to the block's parameter, as in TransformerLens.
Grouped-query attention gives W_K, W_V, b_K, b_V per query head (repeated), so circuits index query heads.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import ConfigError, InputError
from ..factored_matrix import FactoredMatrix, composition_scores


class CircuitWeights:
    """Mixed into HookedTransformer: read-only views of its weights in TransformerLens' stacked shapes."""

    def _stacked(self, path: str) -> Tensor:
        part, name = path.split(".")
        # On cfg.device: a model placed over several devices holds each block's weights on its own.
        return torch.stack([getattr(getattr(b, part), name).to(self.cfg.device) for b in self.blocks])

    W_Q = property(lambda self: self._stacked("attn.W_Q"))  # [n_layers, n_heads, d_model, d_head]
    W_K = property(lambda self: self._stacked("attn.W_K"))  # per query head, GQA's repeated (TransformerLens)
    W_V = property(lambda self: self._stacked("attn.W_V"))  # [n_layers, n_heads, d_model, d_head]
    W_O = property(lambda self: self._stacked("attn.W_O"))  # [n_layers, n_heads, d_head, d_model]
    b_Q = property(lambda self: self._stacked("attn.b_Q"))  # [n_layers, n_heads, d_head]
    b_K = property(lambda self: self._stacked("attn.b_K"))
    b_V = property(lambda self: self._stacked("attn.b_V"))
    b_O = property(lambda self: self._stacked("attn.b_O"))  # [n_layers, d_model]
    W_in = property(lambda self: self._stacked("mlp.W_in"))  # [n_layers, d_model, d_mlp]
    W_out = property(lambda self: self._stacked("mlp.W_out"))  # [n_layers, d_mlp, d_model]
    b_in = property(lambda self: self._stacked("mlp.b_in"))  # [n_layers, d_mlp]
    b_out = property(lambda self: self._stacked("mlp.b_out"))  # [n_layers, d_model]

    @property
    def W_gate(self) -> Float[Tensor, "n_layers d_model d_mlp"] | None:
        """The gate projections of gated MLPs; None for a dense MLP (as TransformerLens)."""
        if not all(hasattr(b.mlp, "W_gate") for b in self.blocks):
            return None
        return self._stacked("mlp.W_gate")

    @property
    def b_U(self) -> Float[Tensor, "d_vocab"]:
        return self.unembed.b_U

    @property
    def W_pos(self) -> Float[Tensor, "n_ctx d_model"]:
        if not hasattr(self, "pos_embed"):
            raise ConfigError(
                f"W_pos exists only with learned absolute positions; this model's positional_embedding_type is "
                f"{self.cfg.positional_embedding_type!r}."
            )
        return self.pos_embed.W_pos

    @property
    def W_E_pos(self) -> Float[Tensor, "d_vocab+n_ctx d_model"]:
        """Token and position embeddings as one (overcomplete) basis of the input space."""
        return torch.cat([self.W_E, self.W_pos], dim=0)

    @property
    def QK(self) -> FactoredMatrix:
        """W_Q @ W_K^T per layer and head: [n_layers, n_heads, d_model, d_model], factored."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """W_V @ W_O per layer and head: [n_layers, n_heads, d_model, d_model], factored."""
        return FactoredMatrix(self.W_V, self.W_O)

    def all_head_labels(self) -> list[str]:
        return [f"L{l}H{h}" for l in range(self.cfg.n_layers) for h in range(self.cfg.n_heads)]

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True) -> Float[Tensor, "d_model"]:
        """The sum of the output biases (b_O, and b_out unless include_mlp_biases=False) written before
        layer `layer` (0..n_layers); with mlp_input, also that layer's b_O (what its MLP reads)."""
        if not 0 <= layer <= self.cfg.n_layers or (mlp_input and layer == self.cfg.n_layers):
            raise InputError(f"layer must be in 0..{self.cfg.n_layers - (1 if mlp_input else 0)} here, got {layer}.")
        total = torch.zeros(self.cfg.d_model, device=self.cfg.device, dtype=self.cfg.dtype)
        for block in self.blocks[:layer]:
            total = total + block.attn.b_O.to(total.device)
            if include_mlp_biases:
                total = total + block.mlp.b_out.to(total.device)
        if mlp_input:
            total = total + self.blocks[layer].attn.b_O.to(total.device)
        return total

    def all_composition_scores(self, mode: str) -> Float[Tensor, "n_layers n_heads n_layers n_heads"]:
        """Q-, K- or V-composition scores of every pair of heads (left head's OV into right head's QK or OV),
        zero where the right head is not in a later layer than the left one."""
        right = {"Q": lambda: self.QK, "K": lambda: self.QK.T, "V": lambda: self.OV}.get(mode)
        if right is None:
            raise ValueError(f"mode must be one of ['Q', 'K', 'V'], not {mode!r}")
        scores = composition_scores(self.OV, right(), broadcast_dims=True)
        layers = torch.arange(self.cfg.n_layers, device=scores.device)
        later = layers[:, None, None, None] < layers[None, None, :, None]
        return torch.where(later, scores, torch.zeros_like(scores))
