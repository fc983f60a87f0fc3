"""HookedEncoder: a BERT-style encoder with HookedTransformer's hook plumbing and ActivationCache.

The blocks are the decoder's TransformerBlock under encoder config fields (attention_dir=
"bidirectional", norm_position="post"); the embedding block, MLM head and pooler are in
encoder_parts.py. Names follow TransformerLens 2.x's HookedEncoder: embed.hook_embed,
embed.hook_pos_embed, embed.hook_token_type_embed, hook_full_embed, blocks.{i}.hook_resid_pre /
hook_attn_out / hook_resid_mid / hook_mlp_out / hook_resid_post / hook_normalized_resid_post,
mlm_head.ln.*, pooler.hook_pooler_out. Differences from TransformerLens, each to match HuggingFace:
the embeddings add (word + token type) + position, and the MLM transform uses the config's activation.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from ..config import HookedTransformerConfig
from ..errors import InputError, LensError
from ..hooks.hook_points import HookPoint
from ..hooks.root_module import HookedRootModule
from ..text import encoder_tokens as etok, tokens as tok
from . import doors, initialization
from .block import TransformerBlock
from .context import AttentionContext
from .embed import Unembed
from .encoder_parts import EncoderEmbed, MLMHead, NSPHead, Pooler
from .transformer import HookedTransformer

EncoderReturn = Literal["logits", "embeddings", "pooled"] | None

_NOT_A_DECODER = (
    "HookedEncoder is an encoder (BERT: every token sees the whole input, both ways), not a causal language "
    "model, so it has no next token to {what}. "
)


def as_encoder_config(cfg: HookedTransformerConfig) -> HookedTransformerConfig:
    """A copy of a decoder-style config (TransformerLens' defaults) read as TransformerLens' HookedEncoder reads it.

    TransformerLens' HookedEncoder accepts any config and builds BERT's structure from it: post-LN
    blocks, two token types, and all of BERT's heads: the MLM head, the pooler and the
    next-sentence head (it also keeps the config's causal mask, which an encoder does not use: here
    every token sees every other, as in BERT).
    """
    return dataclasses.replace(cfg, attention_dir="bidirectional", norm_position="post",
                               n_token_types=cfg.n_token_types or 2, mlm_head=True, pooler=True, nsp_head=True)


class HookedEncoder(HookedRootModule):
    is_encoder = True

    def __init__(self, cfg: HookedTransformerConfig, tokenizer=None):
        super().__init__()
        if cfg.attention_dir != "bidirectional" or cfg.n_token_types < 1:
            cfg = as_encoder_config(cfg)
        if tokenizer is None and cfg.tokenizer_name is not None:  # as TransformerLens (loading/hf_source.py)
            tokenizer = doors.call("model.tokenizer_from_name", cfg.tokenizer_name)
        tok.take_vocab_size(cfg, tokenizer)  # d_vocab=-1: the tokenizer's, as TransformerLens
        self.cfg, self.tokenizer = cfg, tokenizer
        self.embed = EncoderEmbed(cfg)
        self.hook_full_embed = HookPoint("batch pos d_model")  # after the embedding LayerNorm
        self.blocks = nn.ModuleList(TransformerBlock(cfg, i) for i in range(cfg.n_layers))
        if cfg.mlm_head:
            self.mlm_head, self.unembed = MLMHead(cfg), Unembed(cfg)
        if cfg.pooler:
            self.pooler = Pooler(cfg)
        if cfg.nsp_head:
            self.nsp_head = NSPHead(cfg)
        initialization.init_after_construction(self)  # skipped when loading (lensutil/model/initialization.py)
        self.setup()
        self.to(cfg.device)

    init_weights = HookedTransformer.init_weights
    # the same flag-gated hooks as the decoder (hook_result, hook_q_input, hook_mlp_in, ...)
    hook_flag = HookedTransformer.hook_flag
    _set_flag = HookedTransformer._set_flag
    set_use_attn_result = HookedTransformer.set_use_attn_result
    set_use_split_qkv_input = HookedTransformer.set_use_split_qkv_input
    set_use_attn_in = HookedTransformer.set_use_attn_in
    set_use_hook_mlp_in = HookedTransformer.set_use_hook_mlp_in

    def forward(
        self,
        input: str | tuple[str, str] | list | Int[Tensor, "batch pos"],
        return_type: EncoderReturn = "logits",
        token_type_ids: Int[Tensor, "batch pos"] | None = None,
        one_zero_attention_mask: Int[Tensor, "batch pos"] | None = None,
        *,
        attention_mask: Int[Tensor, "batch pos"] | None = None,
    ):
        """Run the encoder. `input` is token ids, a text, a pair (text_a, text_b) or a list of either.

        return_type: "logits" (MLM models: [batch, pos, d_vocab]), "embeddings" (final hidden states,
        HF's last_hidden_state), "pooled" (models with a pooler: HF's pooler_output) or None.
        Text is tokenised with its token types and mask; token ids with padding need a mask.
        """
        if return_type in ("loss", "both"):
            raise InputError(_NOT_A_DECODER.format(what="score") + "For a masked-LM loss, take the cross-entropy of "
                             "model(tokens) at the [MASK] positions; for filling a blank, model.predict_masked(text).")
        if return_type not in ("logits", "embeddings", "pooled", None):
            raise InputError(f"return_type must be 'logits', 'embeddings', 'pooled' or None, got {return_type!r}.")
        if one_zero_attention_mask is not None and attention_mask is not None:
            raise InputError("Pass one_zero_attention_mask (TransformerLens' name) or attention_mask, not both.")
        mask = one_zero_attention_mask if one_zero_attention_mask is not None else attention_mask
        if isinstance(input, (str, tuple, list)):
            tokens, text_types, text_mask = etok.tokenize_input(self, input)
            token_type_ids = text_types if token_type_ids is None else token_type_ids
            mask = text_mask if mask is None else mask
        else:
            tokens = torch.as_tensor(input, device=self.cfg.device)
            if tokens.is_floating_point():
                raise InputError("Token ids must be integers; got a float tensor.")
            tokens = tokens[None] if tokens.ndim == 1 else tokens
            if mask is None:
                etok.refuse_unmasked_padding(self, tokens)
        tok.check_token_ids(tokens, self.cfg.d_vocab)
        batch, pos = tokens.shape
        if pos > self.cfg.n_ctx:
            raise InputError(f"{pos} tokens exceed model.cfg.n_ctx={self.cfg.n_ctx}; shorten the input (to_tokens truncates).")
        key_mask = None if mask is None else tok.check_attention_mask(torch.as_tensor(mask, device=tokens.device), batch, pos)
        token_type_ids = etok.check_token_types(self, token_type_ids, tokens)
        # Absolute positions 0..pos-1 in every row, as HF's BertEmbeddings (BERT pads on the right).
        positions = torch.arange(pos, device=tokens.device).expand(batch, pos)
        # Padding queries are computed as HF computes them (they attend to the real keys), not zeroed.
        ctx = AttentionContext.build(self.cfg, positions, key_mask, None, 0)
        resid = self.hook_full_embed(self.embed(tokens, token_type_ids, positions))
        for block in self.blocks:
            resid = block(resid, ctx)
        pooled = self.pooler(resid) if self.cfg.pooler else None
        if return_type is None:
            # As TransformerLens: the whole model runs (the MLM head's hooks fire), nothing is returned.
            if self.cfg.mlm_head:
                self.unembed(self.mlm_head(resid))
            return None
        if return_type == "embeddings":
            return resid
        if return_type == "pooled":
            if pooled is None:
                raise InputError(f"{self.cfg.model_name} has no pooler; use return_type='embeddings' (e.g. mean-pool over the mask).")
            return pooled
        if not self.cfg.mlm_head:
            raise InputError(
                f"{self.cfg.model_name} ({self.cfg.original_architecture}) has no masked-LM head, so no logits. Use "
                "return_type='embeddings' (final hidden states) or 'pooled' (the pooler output)."
            )
        return self.unembed(self.mlm_head(resid))

    # ---- decoder-only calls, refused with what to do instead --------------------------------
    def generate(self, *args, **kwargs):
        raise LensError(_NOT_A_DECODER.format(what="generate") + "Fill a blank with model.predict_masked('... [MASK] ...'), "
                        "or take sentence embeddings with model(texts, return_type='embeddings'). To generate text, "
                        "load a causal model with HookedTransformer.from_pretrained (e.g. 'smollm2-135m').")

    # ---- one-line doors ---------------------------------------------------------------------
    def to_tokens(self, input, text_pair=None, *, return_token_type_ids: bool = False, move_to_device: bool = True,
                  truncate: bool = True):
        return etok.to_tokens(self, input, text_pair, return_token_type_ids=return_token_type_ids,
                              move_to_device=move_to_device, truncate=truncate)

    def encoder_output(self, tokens, token_type_ids=None, one_zero_attention_mask=None) -> Float[Tensor, "batch pos d_model"]:
        """The final residual stream (TransformerLens' encoder_output; forward's return_type="embeddings").

        The class's forward, named: BertNextSentencePrediction.run_with_cache runs the encoder with its
        own forward in place of this one, and this is called inside it (TransformerLens' is no forward either)."""
        return HookedEncoder.forward(self, tokens, "embeddings", token_type_ids, one_zero_attention_mask)

    def to_str_tokens(self, input) -> list:
        return etok.to_str_tokens(self, input)

    def to_string(self, tokens) -> str | list[str]:
        return tok.to_string(self, tokens)

    def predict_masked(self, text, top_k: int = 5):
        return etok.predict_masked(self, text, top_k)

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs) -> "HookedEncoder":
        return doors.call("HookedEncoder.from_pretrained", name_or_path, **kwargs)  # loading/encoder.py (doors.py says why)

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)  # cfg follows .to / .half / .cuda, as in HookedTransformer
        p = next(self.parameters(), None)
        if p is not None:
            self.cfg.device, self.cfg.dtype = str(p.device), p.dtype
        return out

    W_E = property(lambda self: self.embed.embed.W_E)  # [d_vocab, d_model]
    W_pos = property(lambda self: self.embed.pos_embed.W_pos)  # [n_ctx, d_model]
    W_token_type = property(lambda self: self.embed.token_type_embed.W_token_type)  # [n_token_types, d_model]
    W_U = property(lambda self: self.unembed.W_U)  # [d_model, d_vocab] (MLM models)
    _stacked = HookedTransformer._stacked
    W_Q, W_K, W_V, W_O = HookedTransformer.W_Q, HookedTransformer.W_K, HookedTransformer.W_V, HookedTransformer.W_O
    W_in, W_out = HookedTransformer.W_in, HookedTransformer.W_out

    def tokens_to_residual_directions(self, tokens) -> Float[Tensor, "... d_model"]:
        return HookedTransformer.tokens_to_residual_directions(self, tokens)

    def to_single_token(self, string: str) -> int:
        return tok.to_single_token(self, string)
