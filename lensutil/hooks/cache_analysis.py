"""ActivationCache's residual-stream methods, TransformerLens' semantics: accumulated_resid, decompose_resid,
stack_head_results, apply_ln_to_stack and logit_attrs, on the activations the cache holds.

Axis glossary: as lensutil/hooks/activation_cache.py."""

from __future__ import annotations

import warnings

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import LensError, OffloadedWeightError
from ..utils import PosSlice, slice_along


class ResidualStreamAnalysis:
    """Mixed into ActivationCache: these methods read the cache (self[name]) and its model."""

    # ---- residual stream analysis (TransformerLens semantics) ---------------------------------

    @property
    def _n_layers(self) -> int:
        return self.model.cfg.n_layers

    def _last_layer(self, layer: int | None) -> int:
        return self._n_layers if layer is None or layer == -1 else layer

    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: PosSlice = None,
        mlp_input: bool = False,
        return_labels: bool = False,
    ) -> Float[Tensor, "layers_covered *batch_and_pos_dims d_model"] | tuple[Tensor, list[str]]:
        """The residual stream at the start of each layer up to `layer` (default: all, plus the final one).

        layer=k gives resid_pre of layers 0..k (k == n_layers means the final resid_post);
        incl_mid adds resid_mid between them; mlp_input adds resid_mid of layer k (what its MLP reads).
        apply_ln: up to the unembed (the default), ln_final applied to each snapshot by itself
        (apply_ln_to_stack(recompute_ln=True): its weight too, so `stack @ W_U` is the logit lens);
        up to a block, that block's ln1 (ln2 with mlp_input) with its cached scale.
        """
        layer = self._last_layer(layer)
        parts, labels = [], []
        for l in range(layer + 1):
            if l == self._n_layers:
                parts.append(self[("resid_post", self._n_layers - 1)])
                labels.append("final_post")
                continue
            parts.append(self[("resid_pre", l)])
            labels.append(f"{l}_pre")
            if (incl_mid and l < layer) or (mlp_input and l == layer):
                parts.append(self[("resid_mid", l)])
                labels.append(f"{l}_mid")
        stack = torch.stack([slice_along(p, pos_slice, -2) for p in parts])
        if apply_ln:
            # As TransformerLens 2.18: up to the unembed, each snapshot gets ln_final with its own
            # statistics (the logit lens); before a block, that block's cached norm scale.
            recompute = layer == self._n_layers
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice, recompute_ln=recompute)
        return (stack, labels) if return_labels else stack

    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: str = "all",
        apply_ln: bool = False,
        pos_slice: PosSlice = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> Float[Tensor, "num_components *batch_and_pos_dims d_model"] | tuple[Tensor, list[str]]:
        """The outputs that sum to the residual stream entering `layer`: embeddings, then each attn/mlp output.

        mode "attn" or "mlp" keeps only those outputs; mlp_input adds layer `layer`'s attention output
        (so the sum is what that layer's MLP reads).
        """
        if mode not in ("all", "attn", "mlp"):
            raise LensError(f"decompose_resid mode must be 'all', 'attn' or 'mlp', not {mode!r}.")
        layer = self._last_layer(layer)
        parts, labels = [], []
        if incl_embeds:
            parts.append(self["hook_embed"])
            labels.append("embed")
            # Only learned positions add a vector to the residual stream; rotary ones act inside attention.
            if getattr(self.model.cfg, "positional_embedding_type", "standard") == "standard":
                parts.append(self["hook_pos_embed"])
                labels.append("pos_embed")
        for l in range(layer):
            if mode != "mlp":
                parts.append(self[("attn_out", l)])
                labels.append(f"{l}_attn_out")
            if mode != "attn":
                parts.append(self[("mlp_out", l)])
                labels.append(f"{l}_mlp_out")
        if mlp_input and mode != "mlp":
            parts.append(self[("attn_out", layer)])
            labels.append(f"{layer}_attn_out")
        if not parts:
            raise LensError("decompose_resid found nothing to stack: use incl_embeds=True or a layer above 0.")
        stack = torch.stack([slice_along(p, pos_slice, -2) for p in parts])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def _head_results(self, l: int) -> Float[Tensor, "*batch pos head_index d_model"]:
        name = f"blocks.{l}.attn.hook_result"
        if name in self.cache_dict:
            return self.cache_dict[name]
        # Each head's output is its z times its slice of W_O; attn_out is their sum plus b_O.
        z = self[("z", l)]
        W_O = _weight(self.model, f"blocks.{l}.attn.W_O").detach().to(device=z.device, dtype=z.dtype)
        return torch.einsum("...hd,hdm->...hm", z, W_O)

    def stack_head_results(
        self,
        layer: int = -1,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: PosSlice = None,
        apply_ln: bool = False,
    ) -> Float[Tensor, "num_components *batch_and_pos_dims d_model"] | tuple[Tensor, list[str]]:
        """Every head's output (layer-major, labels "L{l}H{h}") for layers below `layer` (-1: all).

        Uses attn.hook_result when cached, else computes it from hook_z and W_O (no need for
        use_attn_result). incl_remainder appends resid_post[layer-1] minus the heads' sum.
        """
        layer = self._last_layer(layer)
        n_heads = self.model.cfg.n_heads
        per_layer = [slice_along(self._head_results(l), pos_slice, -3) for l in range(layer)]
        labels = [f"L{l}H{h}" for l in range(layer) for h in range(n_heads)]
        if per_layer:
            # [..., head_index, d_model] per layer -> [layer*head, ..., d_model]
            stack = torch.cat(per_layer, dim=-2).movedim(-2, 0)
        else:
            resid = slice_along(self[("resid_pre", 0)], pos_slice, -2)
            stack = resid.new_zeros((0, *resid.shape))
        if incl_remainder:
            total = slice_along(self[("resid_post", layer - 1)] if layer > 0 else self[("resid_pre", 0)], pos_slice, -2)
            stack = torch.cat([stack, (total - stack.sum(0))[None]])
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def apply_ln_to_stack(
        self,
        residual_stack: Float[Tensor, "num_components *batch_and_pos_dims d_model"],
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice: PosSlice = None,
        batch_slice: PosSlice = None,
        has_batch_dim: bool = True,
        recompute_ln: bool = False,
    ) -> Float[Tensor, "num_components *batch_and_pos_dims d_model"]:
        """Apply the norm before `layer` (default: ln_final) to each component.

        By default with the cached scale: a norm is linear in its input once its scale is fixed, so
        each component's share of the normalised residual is (component - its mean for LayerNorm)
        / scale. The weight and bias are not applied (TransformerLens semantics: fold them into the
        next weights instead). `pos_slice` must be the one the stack was built with; it is applied
        to the scale only.

        recompute_ln=True (TransformerLens 2.18; the final norm only) runs model.ln_final on each
        component by itself: its own mean and scale, and ln_final's weight and bias too (a model
        processed with fold_ln has none left). That reads each component as a whole residual
        stream, as the logit lens does with accumulated_resid; it is not additive over components,
        so decompositions keep the cached scale. Hooks on ln_final fire, as in TransformerLens.
        """
        norm = getattr(self.model.cfg, "normalization_type", None)
        if norm not in _LAYER_NORMS | _RMS_NORMS:
            return residual_stack  # no norm, nothing to apply
        layer = self._last_layer(layer)
        if has_batch_dim:
            residual_stack = slice_along(residual_stack, batch_slice, 1)
        if recompute_ln and layer == self._n_layers:
            return self._recompute_final_norm(residual_stack)
        if recompute_ln:  # TransformerLens ignores it here without a word
            warnings.warn(
                f"recompute_ln=True recomputes only the final norm (layer=None, -1 or {self._n_layers}), as in "
                f"TransformerLens; for layer={layer} the cached scale of blocks.{layer}.ln{2 if mlp_input else 1} is used.",
                stacklevel=2,
            )
        if norm in _LAYER_NORMS:
            residual_stack = residual_stack - residual_stack.mean(-1, keepdim=True)
        if layer == self._n_layers:
            scale = self["ln_final.hook_scale"]
        else:
            scale = self[f"blocks.{layer}.ln{2 if mlp_input else 1}.hook_scale"]
        scale = slice_along(scale, pos_slice, -2)  # [*batch, pos, 1]: the last axis broadcasts
        if self.has_batch_dim:
            scale = slice_along(scale, batch_slice, 0)
        return residual_stack / scale.to(residual_stack.device)

    def _recompute_final_norm(
        self, stack: Float[Tensor, "num_components *batch_and_pos_dims d_model"]
    ) -> Float[Tensor, "num_components *batch_and_pos_dims d_model"]:
        ln = self.model.ln_final
        param = next(ln.parameters(), None)  # LNPre/RMSPre have none
        device = stack.device if param is None else param.device
        out = []
        # Cached activations are detached; keep the result so unless the stack itself carries a gradient.
        with torch.set_grad_enabled(torch.is_grad_enabled() and stack.requires_grad):
            for component in stack:
                x = component.to(device)
                one_pos = x.ndim == 2  # [batch, d_model] (a pos_slice took one position): ln_final reads [batch, pos, d_model]
                y = ln(x.unsqueeze(1) if one_pos else x)
                out.append((y.squeeze(1) if one_pos else y).to(stack.device))
        return torch.stack(out) if out else stack.clone()

    def _residual_directions(self, tokens: Int[Tensor, "..."]) -> Float[Tensor, "... d_model"]:
        if hasattr(self.model, "tokens_to_residual_directions"):
            return self.model.tokens_to_residual_directions(tokens)
        W_U = getattr(self.model, "W_U", None)
        W_U = self.model.unembed.W_U if W_U is None else W_U
        return W_U[:, tokens.to(W_U.device)].movedim(0, -1)  # [d_model, ...] -> [..., d_model]

    def _as_tokens(self, tokens: str | int | Tensor) -> Tensor:
        if isinstance(tokens, str):
            return torch.as_tensor(self.model.to_single_token(tokens))
        return torch.as_tensor(tokens)

    def logit_attrs(
        self,
        residual_stack: Float[Tensor, "num_components *batch_and_pos_dims d_model"],
        tokens: str | int | Int[Tensor, "..."],
        incorrect_tokens: str | int | Int[Tensor, "..."] | None = None,
        pos_slice: PosSlice = None,
        batch_slice: PosSlice = None,
        has_batch_dim: bool = True,
    ) -> Float[Tensor, "num_components *batch_and_pos_dims_out"]:
        """Each component's direct contribution to the logit of `tokens` (minus `incorrect_tokens`).

        The stack goes through the final norm (apply_ln_to_stack) and is projected onto the
        tokens' unembedding directions; b_U is left out, as in TransformerLens.
        """
        tokens = self._as_tokens(tokens)
        directions = self._residual_directions(tokens)
        if incorrect_tokens is not None:
            incorrect_tokens = self._as_tokens(incorrect_tokens)
            if incorrect_tokens.shape != tokens.shape:
                raise LensError(
                    f"tokens has shape {tuple(tokens.shape)} but incorrect_tokens has {tuple(incorrect_tokens.shape)}; "
                    "logit differences pair them up one to one."
                )
            directions = directions - self._residual_directions(incorrect_tokens)
        scaled = self.apply_ln_to_stack(
            residual_stack, layer=-1, pos_slice=pos_slice, batch_slice=batch_slice, has_batch_dim=has_batch_dim
        )
        directions = directions.detach().to(device=scaled.device, dtype=scaled.dtype)
        return (scaled * directions).sum(-1)


_LAYER_NORMS = {"LN", "LNPre"}  # centre, then divide by the scale


_RMS_NORMS = {"RMS", "RMSPre"}  # divide by the scale only


def _weight(model, name: str) -> Tensor:
    """A block's weight by its state_dict name. If its block is offloaded, the model reads it from where
    it is kept (HookedTransformer.read_weight): the cache knows nothing of placement."""
    module, _, attr = name.rpartition(".")
    try:
        return getattr(model.get_submodule(module), attr)
    except OffloadedWeightError:
        return model.read_weight(name)
