"""FactoredMatrix: a matrix M = A @ B kept as its two factors, with TransformerLens 2.x's behaviour.

Circuit analysis meets products such as a head's OV circuit W_V @ W_O ([d_model, d_model], rank
d_head): storing A [..., ldim, mdim] and B [..., mdim, rdim] costs (ldim + rdim) * mdim instead of
ldim * rdim, and the SVD, eigenvalues and norm of M follow from small matrices. Leading dimensions
(layers, heads) broadcast as in torch.matmul.

Axis names: ldim, rdim are M's rows and columns; mdim the inner (hidden) dimension.

TransformerLens' conventions kept on purpose (its users' code relies on them):
- `svd()` returns (U, S, Vh) with M = U @ diag(S) @ Vh.mT: "Vh" is V, not V's transpose.
- A mismatched inner dimension raises an AssertionError (lensutil's FactoredMatrixShapeError is
  one), leading dimensions that do not broadcast torch's RuntimeError.
Deliberately different (docs/tl_compat.md): the SVD is cached per matrix and forgotten when A or B
is replaced or edited in place, where TransformerLens' class-wide lru_cache keeps every matrix
ever decomposed alive and answers with a stale SVD after an in-place edit.
"""

from __future__ import annotations

import torch
from jaxtyping import Complex, Float
from torch import Tensor

from .errors import FactoredMatrixBroadcastError, FactoredMatrixShapeError


def get_corner(tensor, n: int = 3):
    """The top-left n x n... corner of a tensor (or FactoredMatrix): the first n along every dimension."""
    if isinstance(tensor, FactoredMatrix):
        return tensor.get_corner(n)
    return tensor[tuple(slice(n) for _ in range(tensor.ndim))]


class FactoredMatrix:
    """M = A @ B, kept factored. A: [..., ldim, mdim], B: [..., mdim, rdim]; leading dims broadcast."""

    def __init__(self, A: Float[Tensor, "... ldim mdim"], B: Float[Tensor, "... mdim rdim"]):
        if A.size(-1) != B.size(-2):
            raise FactoredMatrixShapeError(
                f"Factored matrix must match on inner dimension: A has shape {tuple(A.shape)}, B {tuple(B.shape)} "
                f"(A's last dimension must equal B's second to last)."
            )
        self.ldim, self.mdim, self.rdim = A.size(-2), A.size(-1), B.size(-1)
        self.has_leading_dims = A.ndim > 2 or B.ndim > 2
        try:
            leading = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        except RuntimeError as e:
            raise FactoredMatrixBroadcastError(
                f"Shape mismatch: the leading dimensions of A {tuple(A.shape[:-2])} and B {tuple(B.shape[:-2])} do not "
                f"broadcast (each pair, counted from the right, must be equal or 1): {e}"
            ) from None
        self.shape = leading + (self.ldim, self.rdim)
        self.A = A.broadcast_to(leading + (self.ldim, self.mdim))
        self.B = B.broadcast_to(leading + (self.mdim, self.rdim))
        self._svd_memo: tuple | None = None

    # ---- products --------------------------------------------------------------------------
    def __matmul__(self, other):
        """self @ other: a FactoredMatrix for a matrix or FactoredMatrix, a tensor for a vector."""
        if isinstance(other, FactoredMatrix):
            return (self @ other.A) @ other.B
        if not isinstance(other, Tensor):
            return NotImplemented
        if other.ndim < 2:  # a vector: M @ v, computed as A @ (B @ v)
            return (self.A @ (self.B @ other.unsqueeze(-1))).squeeze(-1)
        if other.size(-2) != self.rdim:
            raise FactoredMatrixShapeError(
                f"Right matrix must match on inner dimension: self has shape {tuple(self.shape)}, other {tuple(other.shape)}."
            )
        # Keep the hidden dimension as small as possible: fold `other` into B when that is cheaper.
        if self.rdim > self.mdim:
            return FactoredMatrix(self.A, self.B @ other)
        return FactoredMatrix(self.AB, other)

    def __rmatmul__(self, other):
        """other @ self, for a tensor `other` (a FactoredMatrix on the left uses its own __matmul__)."""
        if isinstance(other, FactoredMatrix):
            return other.A @ (other.B @ self)
        if not isinstance(other, Tensor):
            return NotImplemented
        if other.size(-1) != self.ldim:
            raise FactoredMatrixShapeError(
                f"Left matrix must match on inner dimension: self has shape {tuple(self.shape)}, other {tuple(other.shape)}."
            )
        if other.ndim < 2:
            return ((other.unsqueeze(-2) @ self.A) @ self.B).squeeze(-2)
        if self.ldim > self.mdim:
            return FactoredMatrix(other @ self.A, self.B)
        return FactoredMatrix(other, self.AB)

    def __mul__(self, scalar) -> FactoredMatrix:
        """Scalar times M: the scalar scales A (scaling either factor scales the product)."""
        if isinstance(scalar, Tensor) and scalar.numel() != 1:
            raise FactoredMatrixShapeError(
                f"Tensor must be a scalar for use with * but has shape {tuple(scalar.shape)}; for a matrix product use @."
            )
        return FactoredMatrix(self.A * scalar, self.B)

    __rmul__ = __mul__

    @property
    def AB(self) -> Float[Tensor, "*leading_dims ldim rdim"]:
        """The full product (ldim x rdim: as large as the factorisation avoids)."""
        return self.A @ self.B

    @property
    def BA(self) -> Float[Tensor, "*leading_dims rdim ldim"]:
        """The reverse product B @ A; defined only for a square M."""
        if self.rdim != self.ldim:
            raise FactoredMatrixShapeError(f"BA needs a square matrix (ldim == rdim); this one has shape {tuple(self.shape)}.")
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        return FactoredMatrix(self.B.transpose(-2, -1), self.A.transpose(-2, -1))

    @property
    def pair(self) -> tuple[Tensor, Tensor]:
        return (self.A, self.B)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    # ---- decompositions ----------------------------------------------------------------------
    def svd(self) -> tuple[Float[Tensor, "*leading_dims ldim mdim"], Float[Tensor, "*leading_dims mdim"], Float[Tensor, "*leading_dims rdim mdim"]]:
        """(U, S, Vh) with M = U @ diag(S) @ Vh.mT (TransformerLens' convention: Vh holds V's columns).

        From the SVDs of the factors: A = Ua Sa Va^T, B = Ub Sb Vb^T, so M = Ua (Sa Va^T Ub Sb) Vb^T and
        the SVD of the small middle matrix Um Sm Vm^T gives M = (Ua Um) Sm (Vb Vm)^T.
        """
        key = (self.A, self.B, self.A._version, self.B._version)
        memo = self._svd_memo
        if memo is None or memo[0][0] is not key[0] or memo[0][1] is not key[1] or memo[0][2:] != key[2:]:
            Ua, Sa, Vha = torch.linalg.svd(self.A, full_matrices=False)
            Ub, Sb, Vhb = torch.linalg.svd(self.B, full_matrices=False)
            middle = Sa[..., :, None] * (Vha @ Ub) * Sb[..., None, :]
            Um, Sm, Vhm = torch.linalg.svd(middle, full_matrices=False)
            memo = self._svd_memo = (key, (Ua @ Um, Sm, Vhb.mH @ Vhm.mH))
        return memo[1]

    @property
    def U(self) -> Float[Tensor, "*leading_dims ldim mdim"]:
        return self.svd()[0]

    @property
    def S(self) -> Float[Tensor, "*leading_dims mdim"]:
        return self.svd()[1]

    @property
    def Vh(self) -> Float[Tensor, "*leading_dims rdim mdim"]:
        return self.svd()[2]

    @property
    def eigenvalues(self) -> Complex[Tensor, "*leading_dims mdim"]:
        """Eigenvalues of M, from B @ A (mdim x mdim): if BAv = kv then AB(Av) = k(Av), so AB and BA share
        their non-zero eigenvalues. 16-bit floats are computed in float32 (torch has no 16-bit eig)."""
        ba = self.BA
        if ba.dtype in (torch.float16, torch.bfloat16):
            ba = ba.float()
        return torch.linalg.eig(ba).eigenvalues

    def norm(self) -> Float[Tensor, "*leading_dims"]:
        """The Frobenius norm: the root of the sum of squared singular values."""
        return self.S.pow(2).sum(-1).sqrt()

    def make_even(self) -> FactoredMatrix:
        """The same M as (U sqrt(S)) @ (sqrt(S) V^T): each factor holds half of the singular values."""
        root = self.S.sqrt()
        return FactoredMatrix(self.U * root[..., None, :], root[..., :, None] * self.Vh.mT)

    def collapse_l(self) -> Float[Tensor, "*leading_dims mdim rdim"]:
        """M without its left orthogonal factor U: diag(S) @ V^T."""
        return self.S[..., :, None] * self.Vh.mT

    def collapse_r(self) -> Float[Tensor, "*leading_dims ldim mdim"]:
        """M without its right orthogonal factor V^T: U @ diag(S)."""
        return self.U * self.S[..., None, :]

    # ---- shape ---------------------------------------------------------------------------------
    def unsqueeze(self, k: int) -> FactoredMatrix:
        return FactoredMatrix(self.A.unsqueeze(k), self.B.unsqueeze(k))

    def get_corner(self, k: int = 3) -> Tensor:
        """The top-left k x k corner of M (and of every leading dimension), computed from k rows and columns."""
        return get_corner(self.A[..., :k, :] @ self.B[..., :, :k], k)

    def __getitem__(self, idx) -> FactoredMatrix:
        """Index the leading dimensions, and optionally M's rows (ldim) and columns (rdim).

        An integer row or column index keeps its dimension (as a slice of one), so the result stays a matrix.
        """
        idx = idx if isinstance(idx, tuple) else (idx,)
        n_leading = len(self.shape) - 2
        n_given = sum(i is not None for i in idx)

        def keep(i):
            return slice(i, i + 1) if isinstance(i, int) else i

        if n_given <= n_leading:
            return FactoredMatrix(self.A[idx], self.B[idx])
        if n_given == n_leading + 1:  # rows too: they index A; B keeps all of its rows
            idx = idx[:-1] + (keep(idx[-1]),)
            return FactoredMatrix(self.A[idx], self.B[idx[:-1]])
        if n_given == n_leading + 2:  # rows and columns
            rows, cols = keep(idx[-2]), keep(idx[-1])
            return FactoredMatrix(self.A[idx[:-2] + (rows,)], self.B[idx[:-2] + (slice(None), cols)])
        raise IndexError(f"{idx} is too long an index for a FactoredMatrix of shape {tuple(self.shape)}.")

    def __repr__(self) -> str:
        return f"FactoredMatrix: Shape({self.shape}), Hidden Dim({self.mdim})"


def composition_scores(left: FactoredMatrix, right: FactoredMatrix, broadcast_dims: bool = True) -> Tensor:
    """||left @ right||_F / (||left||_F ||right||_F): how much `right` reads what `left` writes.

    A Mathematical Framework for Transformer Circuits' Q-, K- and V-composition scores. With
    broadcast_dims, left's leading dims come first and right's after them (every pair of heads);
    otherwise they broadcast as they stand. The norms are taken of the collapsed forms (diag(S) V^T for
    left, U diag(S) for right), which drop orthogonal factors and so leave every norm unchanged.
    """
    if broadcast_dims:
        n_left, n_right = left.ndim - 2, right.ndim - 2
        for i in range(n_left):
            right = right.unsqueeze(i)
        for i in range(n_right):
            left = left.unsqueeze(i + n_left)
    if left.rdim != right.ldim:
        raise FactoredMatrixShapeError(
            f"Composition needs left's columns to match right's rows: shapes {tuple(left.shape)} and {tuple(right.shape)}."
        )
    l_collapsed, r_collapsed = left.collapse_l(), right.collapse_r()
    frobenius = (-2, -1)
    return (l_collapsed @ r_collapsed).norm(dim=frobenius) / r_collapsed.norm(dim=frobenius) / l_collapsed.norm(dim=frobenius)
