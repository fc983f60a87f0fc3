"""BertNextSentencePrediction: does sentence B follow sentence A? (TransformerLens 2.x's class, on a HookedEncoder.)

A thin wrapper, as in TransformerLens: the encoder's final residual stream (encoder_output), its
pooler, then its next-sentence head; the encoder's hooks fire as in any forward. The encoder needs
both heads (a config-built HookedEncoder has them, as TransformerLens' always does).
"""

from __future__ import annotations

from typing import Literal

from jaxtyping import Float, Int
from torch import Tensor

from ..errors import InputError

PREDICTIONS = ("The sentences are sequential", "The sentences are NOT sequential")  # TransformerLens' strings


class BertNextSentencePrediction:
    def __init__(self, model):
        self.model = model

    def __call__(self, input, return_type: Literal["logits", "predictions"] | None = "logits",
                 token_type_ids=None, one_zero_attention_mask=None):
        return self.forward(input, return_type=return_type, token_type_ids=token_type_ids,
                            one_zero_attention_mask=one_zero_attention_mask)

    def to_tokens(self, input: list[str], move_to_device: bool = True, truncate: bool = True):
        """(tokens, token_type_ids, attention_mask) of the pair [sentence_a, sentence_b]."""
        if not isinstance(input, (list, tuple)) or len(input) != 2:
            raise InputError("Next sentence prediction task requires exactly two sentences: pass [sentence_a, sentence_b].")
        model = self.model
        enc = model.tokenizer(input[0], input[1], return_tensors="pt", padding=True, truncation=truncate,
                              max_length=model.cfg.n_ctx if truncate else None)
        out = (enc["input_ids"], enc["token_type_ids"], enc["attention_mask"])
        return tuple(t.to(model.cfg.device) for t in out) if move_to_device else out

    def forward(
        self, input: list[str] | Int[Tensor, "batch pos"], return_type: Literal["logits", "predictions"] | None = "logits",
        token_type_ids: Int[Tensor, "batch pos"] | None = None, one_zero_attention_mask: Int[Tensor, "batch pos"] | None = None,
    ) -> Float[Tensor, "batch 2"] | str | None:
        """Logits [batch, 2] (index 0: B follows A), TransformerLens' sentence for "predictions", or None."""
        if return_type not in ("logits", "predictions", None):
            raise InputError(f"return_type must be 'logits', 'predictions' or None, got {return_type!r}.")
        if isinstance(input, list):
            tokens, types, mask = self.to_tokens(input)
            token_type_ids = types if token_type_ids is None else token_type_ids
            one_zero_attention_mask = mask if one_zero_attention_mask is None else one_zero_attention_mask
        elif token_type_ids is None:
            raise InputError(
                "You are using the NSP task without specifying token_type_ids (0 for sentence A's tokens, 1 for B's): "
                "without them the pair reads as one sentence. Pass token_type_ids=..., or the two sentences as a list."
            )
        else:
            tokens = input
        model = self.model
        logits = model.nsp_head(model.pooler(model.encoder_output(tokens, token_type_ids, one_zero_attention_mask)))
        if return_type == "predictions":
            return PREDICTIONS[logits.log_softmax(dim=-1).argmax(dim=-1).item()]
        return None if return_type is None else logits

    def run_with_cache(self, *args, return_cache_object: bool = True, remove_batch_dim: bool = False, **kwargs):
        """(forward's output, the encoder's activations): the encoder's own run_with_cache (names_filter,
        incl_bwd, device, ...) around this forward instead of the encoder's."""
        model = self.model
        model.forward = self.forward  # for this call, the encoder runs as the NSP model (nn.Module calls self.forward)
        try:
            return model.run_with_cache(*args, return_cache_object=return_cache_object, remove_batch_dim=remove_batch_dim,
                                        **kwargs)
        finally:
            del model.forward
