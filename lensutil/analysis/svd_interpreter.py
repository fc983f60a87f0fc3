"""What a head's OV circuit or an MLP layer writes, read through the unembedding: TransformerLens' SVDInterpreter.

For a weight matrix M whose rows/outputs live in the residual stream, the right singular vectors of M
are the residual directions it reads or writes most; each, multiplied by W_U, becomes a score over
the vocabulary ([d_vocab]), the view of Millidge & Black's "The Singular Value Decompositions of
Transformer Weight Matrices are Highly Interpretable". The matrices, as in TransformerLens 2.18:

- "OV": W_V[h] @ W_O[h] of one head ([d_model, d_model]); its right singular vectors are what the head writes.
- "w_in": W_in^T ([d_mlp, d_model], scaled by ln2's w when the norm was not folded): what the neurons read.
- "w_out": W_out ([d_mlp, d_model]): what the neurons write.

get_singular_vectors returns [d_vocab, 1, num_vectors], the i-th column being the i-th singular vector
(largest singular value first) times W_U. Singular vectors have an arbitrary sign, so a column may
come out negated on another machine or torch version.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ..errors import SVDInterpreterError
from ..factored_matrix import FactoredMatrix

OUTPUT_EMBEDDING = "unembed.W_U"
VECTOR_TYPES = ["OV", "w_in", "w_out"]


class SVDInterpreter:
    """Singular vectors of a model's OV, W_in and W_out matrices, projected onto the vocabulary."""

    def __init__(self, model):
        self.model = model
        self.cfg = model.cfg
        self.params = dict(model.named_parameters())

    def get_singular_vectors(
        self,
        vector_type: Literal["OV", "w_in", "w_out"],
        layer_index: int,
        num_vectors: int = 10,
        head_index: int | None = None,
    ) -> Tensor:
        """[d_vocab, 1, num_vectors]: the top num_vectors right singular vectors of the matrix, times W_U."""
        if vector_type not in VECTOR_TYPES:
            raise SVDInterpreterError(f"Vector type must be in {VECTOR_TYPES}, instead got {vector_type!r}")
        if head_index is None and vector_type == "OV":
            raise SVDInterpreterError(f"Head index optional only for w_in and w_out, got {vector_type}")
        self._check_layer(layer_index)
        if vector_type == "OV":
            V = self._get_OV_matrix(layer_index, head_index).svd()[2].mT  # rows: right singular vectors
        else:
            matrix = self._get_w_in_matrix(layer_index) if vector_type == "w_in" else self._get_w_out_matrix(layer_index)
            V = torch.linalg.svd(matrix, full_matrices=False)[2]
        return self._get_singular_vectors_from_matrix(V, self.params[OUTPUT_EMBEDDING], num_vectors)

    def _check_layer(self, layer_index: int) -> None:
        if not 0 <= layer_index < self.cfg.n_layers:
            raise SVDInterpreterError(f"Layer index must be between 0 and {self.cfg.n_layers - 1} but got {layer_index}")

    def _get_singular_vectors_from_matrix(self, V: Tensor, embedding: Tensor, num_vectors: int = 10) -> Tensor:
        if not 0 < num_vectors <= V.shape[0]:
            raise SVDInterpreterError(f"num_vectors must be between 1 and {V.shape[0]} (the matrix's rank bound), got {num_vectors}")
        vectors = V[:num_vectors].float() @ embedding.float()  # [num_vectors, d_vocab]
        return vectors.T.unsqueeze(1).detach()

    def _get_OV_matrix(self, layer_index: int, head_index: int) -> FactoredMatrix:
        self._check_layer(layer_index)
        if not 0 <= head_index < self.cfg.n_heads:
            raise SVDInterpreterError(f"Head index must be between 0 and {self.cfg.n_heads - 1} but got {head_index}")
        attn = self.model.blocks[layer_index].attn
        return FactoredMatrix(attn.W_V[head_index], attn.W_O[head_index])

    def _get_w_in_matrix(self, layer_index: int) -> Tensor:
        self._check_layer(layer_index)
        w_in = self.params[f"blocks.{layer_index}.mlp.W_in"].T
        ln2_w = self.params.get(f"blocks.{layer_index}.ln2.w")  # present when fold_ln was off
        return w_in * ln2_w if ln2_w is not None else w_in

    def _get_w_out_matrix(self, layer_index: int) -> Tensor:
        self._check_layer(layer_index)
        return self.params[f"blocks.{layer_index}.mlp.W_out"]
