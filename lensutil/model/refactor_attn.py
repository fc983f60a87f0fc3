"""refactor_factored_attn_matrices: TransformerLens' optional weight processing of each head's Q/K and V/O.

A head's behaviour depends only on two products: the bilinear form W_QK = W_Q @ W_K^T (with the
biases, see below) and W_OV = W_V @ W_O. Any factorisation of them computes the same function; this
one picks the factorisation from the singular value decomposition, so the factors have orthogonal
columns (Elhage et al., "A Mathematical Framework for Transformer Circuits"; TransformerLens 2.18's
HookedTransformer.refactor_factored_attn_matrices):

- OV: b_V is moved into b_O first (attention rows sum to 1, so z's bias part is b_V, and
  sum_h b_V[h] @ W_O[h] is added to every output), then W_OV = U S Vh^T gives W_V = U S, W_O = Vh^T:
  W_O becomes a rotation onto its image and z keeps the norm of the head's output.
- QK: the biases enter the bilinear form (x W_Q + b_Q)(y W_K + b_K)^T, so they are appended to the
  weights as one more input row ([x, 1] @ [W_Q; b_Q]); that d_model+1 by d_model+1 matrix is
  split evenly, W_Q' = U sqrt(S), W_K' = V sqrt(S), and the last rows are the new biases.

The decompositions are computed in float64 and cast back, so the products change by float32's
rounding of the new factors only (the logits by ~1e-5 on a small model; tests/test_tl_compat.py).
Not valid, and refused with a ConfigError: rotary positions (the QK form then depends on the two
positions), and grouped-query attention (one W_K serves several W_Q, so no per-head factorisation
keeps every pair's product).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import HookedTransformerConfig
from ..errors import ConfigError

StateDict = dict[str, Tensor]


def refusal(cfg: HookedTransformerConfig) -> str | None:
    """Why the refactoring cannot keep this model's function, or None when it can."""
    if cfg.positional_embedding_type == "rotary":
        return ("not valid with rotary positional embeddings: the query-key form depends on both positions, "
                "so W_Q @ W_K^T is not what the head computes")
    if cfg.n_key_value_heads is not None and cfg.n_key_value_heads != cfg.n_heads:
        return (f"not valid with grouped-query attention (n_key_value_heads={cfg.n_key_value_heads}, "
                f"n_heads={cfg.n_heads}): one W_K serves several queries, so no per-head factorisation keeps them all")
    return None


def _even_split(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """(U sqrt(S), sqrt(S) Vh^T) of A @ B, per head: the same product, singular values shared evenly."""
    U, S, Vh = torch.linalg.svd(A @ B, full_matrices=False)
    k = A.shape[-1]  # the product has rank <= d_head: keep that many directions
    root = S[..., :k].sqrt()
    return U[..., :k] * root[..., None, :], root[..., :, None] * Vh[..., :k, :]


def refactor_factored_attn_matrices(state_dict: StateDict, cfg: HookedTransformerConfig) -> StateDict:
    """A new state dict whose W_Q/W_K/b_Q/b_K and W_V/W_O/b_V/b_O are the SVD factorisations above (input unchanged)."""
    why = refusal(cfg)
    if why is not None:
        raise ConfigError(f"refactor_factored_attn_matrices is {why}. Load without it (refactor_factored_attn_matrices=False).")
    sd = dict(state_dict)
    for layer in range(cfg.n_layers):
        p = f"blocks.{layer}.attn."
        dtype = sd[p + "W_Q"].dtype
        wide = {n: sd[p + n].double() for n in ("W_Q", "b_Q", "W_K", "b_K", "W_V", "b_V", "W_O", "b_O")}
        q_eff = torch.cat([wide["W_Q"], wide["b_Q"][:, None, :]], dim=1)  # [head, d_model + 1, d_head]
        k_eff = torch.cat([wide["W_K"], wide["b_K"][:, None, :]], dim=1)
        q_new, k_new_t = _even_split(q_eff, k_eff.transpose(-1, -2))
        k_new = k_new_t.transpose(-1, -2)
        sd[p + "W_Q"], sd[p + "b_Q"] = q_new[:, :-1, :].to(dtype), q_new[:, -1, :].to(dtype)
        sd[p + "W_K"], sd[p + "b_K"] = k_new[:, :-1, :].to(dtype), k_new[:, -1, :].to(dtype)

        b_O = wide["b_O"] + torch.einsum("he,hem->m", wide["b_V"], wide["W_O"])
        U, S, Vh = torch.linalg.svd(wide["W_V"] @ wide["W_O"], full_matrices=False)
        k = wide["W_V"].shape[-1]
        sd[p + "W_V"] = (U[..., :k] * S[..., None, :k]).to(dtype)
        sd[p + "W_O"] = Vh[..., :k, :].to(dtype)
        sd[p + "b_V"] = torch.zeros_like(sd[p + "b_V"])
        sd[p + "b_O"] = b_O.to(dtype)
    return sd
